"""The app of the many-workers test: the middleware over a store shared by every worker process.

Configured by the ``MTLS_IT_*`` variables of :mod:`tests.integration.apps` (roots, intermediates,
proxy, trusted proxies), plus:

``MTLS_WK_STORE``
    the store URL every worker opens (``sqlite:////tmp/.../mtls.db``, ``postgresql://...``);
    the test process registers the users and certificates there first.
``MTLS_WK_OCSP``
    an OCSP responder URL: revocation ``require`` for the leaf, asked there (else revocation off).
``MTLS_WK_REVOCATION_CACHE``
    the ``revocation_cache`` Redis URL (optional).

Every answer carries ``X-Worker-Pid``, so that a client behind one port can tell the workers
apart; ``/.ready`` answers outside the middleware (readiness probes leave no history rows).

    gunicorn --workers 4 'tests.integration.workers_app:wsgi_app()'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from mtls_middleware import ENVIRON_KEY, MTLSConfig
from mtls_middleware.stores import open_store
from mtls_middleware.wsgi import MTLSMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
READY_PATH = "/.ready"


def _echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    identity = environ.get(ENVIRON_KEY)
    body = json.dumps(
        {
            "user_id": identity.user_id if identity else None,
            "revocation": identity.revocation if identity else None,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def config_from_env() -> MTLSConfig:
    env = os.environ
    ocsp = env.get("MTLS_WK_OCSP") or None
    return MTLSConfig(
        trust_roots=env["MTLS_IT_ROOTS"],
        intermediates=env.get("MTLS_IT_INTERMEDIATES") or (),
        store=open_store(env["MTLS_WK_STORE"]),
        proxy=env.get("MTLS_IT_PROXY") or None,
        trusted_proxies=[a for a in env.get("MTLS_IT_TRUSTED", "").split(",") if a],
        revocation="require" if ocsp else "off",
        revocation_scope="leaf",
        ocsp_responder=ocsp,
        revocation_cache=env.get("MTLS_WK_REVOCATION_CACHE") or None,
    )


def wsgi_app() -> WSGIApp:
    """gunicorn factory (called in each worker: no state crosses a fork)."""
    protected = MTLSMiddleware(_echo, config_from_env())

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        pid = str(os.getpid())

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", pid)], exc_info)

        if environ.get("PATH_INFO") == READY_PATH:
            start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        return protected(environ, start)

    return app
