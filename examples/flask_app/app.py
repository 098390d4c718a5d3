"""A small Flask app whose users log in with client certificates, behind nginx.

nginx terminates TLS, asks for a client certificate and forwards it in a header; the extension
(``MTLS(app)``) validates it against the demo CA, checks its CRLs and finds its user in the SQLite
store. Everything is configured through ``app.config["MTLS_*"]``; ``FLASK_MTLS_*`` environment
variables override any value (``FLASK_MTLS_STORE=sqlite:////srv/mtls.db``; lists as JSON:
``FLASK_MTLS_TRUSTED_PROXIES='["10.0.0.5"]'``). Start it with ``run.sh``; see README.md.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, g

from mtls_middleware.contrib.flask import MTLS, current_identity

#: Where make_demo.py writes the demo PKI, the CRLs and the store.
DEMO = Path(__file__).resolve().parent / "demo"


def create_app() -> Flask:
    """The app factory (``gunicorn 'app:create_app()'``)."""
    app = Flask(__name__)
    app.config.from_mapping(
        MTLS_TRUST_ROOTS=str(DEMO / "root.pem"),  # the CA your users' certificates chain to
        MTLS_INTERMEDIATES=str(DEMO / "intermediates.pem"),  # nginx forwards only the leaf
        MTLS_STORE=f"sqlite:///{DEMO / 'mtls.db'}",  # users and their certificates (mtls-admin)
        MTLS_PROXY="nginx",  # read X-SSL-Client-Cert / X-SSL-Client-Verify ...
        MTLS_TRUSTED_PROXIES=["127.0.0.1"],  # ... only from nginx's address
        MTLS_CRLS=[str(DEMO / "root.crl"), str(DEMO / "issuing.crl")],  # revocation="require"
        MTLS_EXEMPT_PATHS=["/health"],  # for the load balancer's probe
    )
    app.config.from_prefixed_env()
    MTLS(app)

    @app.get("/")
    def hello() -> dict[str, str]:
        # current_identity is g.mtls_identity, also usable outside views (templates, helpers).
        return {
            "hello": current_identity.user_id,
            "org": g.mtls_identity.org,
            "fingerprint": current_identity.fingerprint,
            "revocation": current_identity.revocation,
        }

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
