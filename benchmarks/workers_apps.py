"""The WSGI apps bench_workers.py serves with gunicorn (several workers); factories.

    gunicorn --chdir benchmarks --workers 4 'workers_apps:bare_app()'   the bare app
    gunicorn --chdir benchmarks --workers 4 'workers_apps:mtls_app()'   behind MTLSMiddleware

``mtls_app`` reads:

    MTLS_BENCH_ROOT            the trust anchor(s) (PEM file)
    MTLS_BENCH_INTERMEDIATES   the issuing CA(s) nginx does not forward (optional)
    MTLS_BENCH_STORE           the store URL every worker opens (``sqlite:////tmp/.../mtls.db``);
                               the benchmark registers the client certificate there first; with
                               ``memory://`` each worker registers MTLS_BENCH_CERT in its own
                               in-memory store (history kept in memory, no shared deletions)
    MTLS_BENCH_CERT            the client certificate (PEM file), for ``memory://``
    MTLS_BENCH_TRUSTED_PROXY   the proxy address whose headers are believed (default 127.0.0.1)

Proxy mode with the nginx profile and revocation off (the load generator plays nginx). Both apps
add ``X-Worker-Pid`` to every answer, refusals included, so that a client can tell the workers
behind one port apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from apps import hello

from mtls_middleware import MTLSConfig
from mtls_middleware.stores import open_store
from mtls_middleware.wsgi import MTLSMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _with_pid(inner: WSGIApp) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        pid = str(os.getpid())

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", pid)], exc_info)

        return inner(environ, start)

    return app


def bare_app() -> WSGIApp:
    return _with_pid(hello)


def mtls_app() -> WSGIApp:
    store = open_store(os.environ["MTLS_BENCH_STORE"])
    if os.environ["MTLS_BENCH_STORE"].startswith("memory:"):
        store.add_user("alice")
        store.upload_certificate(Path(os.environ["MTLS_BENCH_CERT"]).read_bytes(), user_id="alice")
    config = MTLSConfig(
        trust_roots=os.environ["MTLS_BENCH_ROOT"],
        intermediates=os.environ.get("MTLS_BENCH_INTERMEDIATES") or (),
        store=store,
        proxy="nginx",
        trusted_proxies=[os.environ.get("MTLS_BENCH_TRUSTED_PROXY", "127.0.0.1")],
        revocation="off",
    )
    return _with_pid(MTLSMiddleware(hello, config))
