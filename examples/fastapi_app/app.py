"""A small FastAPI app whose clients authenticate with certificates, behind nginx (or Envoy).

nginx terminates TLS, asks for a client certificate and forwards it in a header; our ASGI
middleware validates it against the demo CA, checks the CAs' CRLs and finds its user in the SQLite
store; endpoints receive the :class:`~mtls_middleware.Identity` as a dependency. Settings come from
``MTLS_*`` environment variables (defaults: the files make_demo.py writes into ``demo/``)::

    MTLS_TRUST_ROOTS=demo/root.pem  MTLS_INTERMEDIATES=demo/intermediates.pem
    MTLS_STORE=sqlite:///demo/mtls.db  MTLS_CRLS=demo/root.crl,demo/issuing.crl
    MTLS_PROXY=nginx  MTLS_TRUSTED_PROXIES=127.0.0.1   (MTLS_PROXY=envoy behind Envoy)

Start it with ``run-uvicorn.sh`` or ``run-hypercorn.sh``; see README.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from starlette.middleware.authentication import AuthenticationMiddleware

from mtls_middleware import MTLSConfig
from mtls_middleware.asgi import MTLSMiddleware
from mtls_middleware.contrib.fastapi import CertificateIdentity, install
from mtls_middleware.contrib.starlette import MTLSAuthBackend

#: Where make_demo.py writes the demo PKI, the CRLs and the store.
DEMO = Path(__file__).resolve().parent / "demo"


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def config_from_env(env: Mapping[str, str] = os.environ) -> MTLSConfig:
    """The middleware's configuration; a bad value stops the app at start-up, saying what to fix."""
    return MTLSConfig(
        trust_roots=env.get("MTLS_TRUST_ROOTS", str(DEMO / "root.pem")),  # your client CAs
        # nginx forwards the leaf only: name the issuing CAs (Envoy's XFCC Chain needs none).
        intermediates=env.get("MTLS_INTERMEDIATES", str(DEMO / "intermediates.pem")) or (),
        store=env.get("MTLS_STORE", f"sqlite:///{DEMO / 'mtls.db'}"),  # users and certificates (mtls-admin)
        proxy=env.get("MTLS_PROXY", "nginx") or None,  # read nginx's X-SSL-Client-Cert ...
        trusted_proxies=_list(env.get("MTLS_TRUSTED_PROXIES", "127.0.0.1")),  # ... from nginx only
        crls=_list(env.get("MTLS_CRLS", f"{DEMO / 'root.crl'},{DEMO / 'issuing.crl'}")),
        mode="optional" if env.get("MTLS_MODE") == "optional" else "required",
        exempt_paths=["/health"],  # the load balancer's probe
    )


def create_app(config: MTLSConfig | None = None) -> FastAPI:
    """The app factory (``uvicorn --factory app:create_app``, ``hypercorn 'app:create_app()'``)."""
    app = FastAPI(title="mtls_middleware FastAPI example")
    install(app)  # refusals as {"error", "message"}; mutualTLS in /openapi.json

    @app.get("/whoami")
    async def whoami(identity: CertificateIdentity, request: Request) -> dict[str, str]:
        return {
            "user_id": identity.user_id,
            "org": identity.org,
            "fingerprint": identity.fingerprint,
            "source": identity.source,
            "revocation": identity.revocation,
            # The same user through Starlette's authentication (request.user, @requires("mtls")).
            "display_name": request.user.display_name,
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, identity: CertificateIdentity) -> None:
        await websocket.accept()
        await websocket.send_json({"user_id": identity.user_id, "org": identity.org})
        await websocket.close()

    # The last added is the outermost: our middleware decides first, then Starlette's
    # AuthenticationMiddleware turns the identity into request.user and auth scopes.
    app.add_middleware(AuthenticationMiddleware, backend=MTLSAuthBackend())
    app.add_middleware(MTLSMiddleware, config=config or config_from_env())
    return app
