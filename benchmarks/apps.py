"""The WSGI apps bench_http.py serves with gunicorn; factories, configured by environment variables.

    gunicorn --chdir benchmarks 'apps:bare_app()'      the bare app
    gunicorn --chdir benchmarks 'apps:mtls_app()'      the same app behind MTLSMiddleware
    gunicorn --chdir benchmarks 'apps:timed_mtls_app()'  the latter, timing the middleware's own
                                                         share of every request (see below)

``mtls_app`` reads (all PEM files written by bench_http.py at run time, certificates only):

    MTLS_BENCH_ROOT            the trust anchor(s)
    MTLS_BENCH_INTERMEDIATES   the issuing CA(s) nginx does not forward (optional)
    MTLS_BENCH_CERT            the client certificate registered to the user ``alice``
    MTLS_BENCH_TRUSTED_PROXY   the proxy address whose headers are believed (default 127.0.0.1)

The middleware runs in proxy mode with the nginx profile and revocation off, as the benchmark's
client sends X-SSL-Client-Cert / X-SSL-Client-Verify itself from 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mtls_middleware import MemoryStore, MTLSConfig
from mtls_middleware.wsgi import MTLSMiddleware

_BODY = b"ok\n"
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY)))]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The app under test: as small as a WSGI app gets, so the middleware's share shows."""
    start_response("200 OK", _HEADERS)
    return [_BODY]


def bare_app() -> Callable[..., Iterable[bytes]]:
    return hello


def mtls_app() -> MTLSMiddleware:
    root = os.environ["MTLS_BENCH_ROOT"]
    intermediates = os.environ.get("MTLS_BENCH_INTERMEDIATES")
    cert = Path(os.environ["MTLS_BENCH_CERT"]).read_bytes()
    store = MemoryStore()
    store.add_user("alice")
    store.upload_certificate(cert, user_id="alice")
    config = MTLSConfig(
        trust_roots=root,
        store=store,
        proxy="nginx",
        trusted_proxies=[os.environ.get("MTLS_BENCH_TRUSTED_PROXY", "127.0.0.1")],
        revocation="off",
        intermediates=intermediates or (),
    )
    return MTLSMiddleware(hello, config)


#: The path where timed_mtls_app reports its measurements (answered without authentication).
STATS_PATH = "/__bench_stats"


def timed_mtls_app() -> Callable[..., Iterable[bytes]]:
    """``mtls_app`` timing, per request, the middleware call minus the inner app's own time.

    This is the middleware's added cost inside a real worker, between real requests: caches hold
    gunicorn's and the kernel's data there, not the middleware's, unlike a tight in-process loop.
    ``GET /__bench_stats`` answers JSON: count, mean and median of the added microseconds.
    Timing adds two perf_counter calls to the measured share (about 0.1 us).
    """
    middleware = mtls_app()
    counter = time.perf_counter
    inner_time = [0.0]
    added: list[float] = []

    def timed_inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t0 = counter()
        result = hello(environ, start_response)
        inner_time[0] = counter() - t0
        return result

    middleware.app = timed_inner

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = json.dumps(
                {
                    "count": len(added),
                    "mean_us": statistics.fmean(added) * 1e6 if added else None,
                    "median_us": statistics.median(added) * 1e6 if added else None,
                }
            ).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        inner_time[0] = 0.0
        t0 = counter()
        result = middleware(environ, start_response)
        elapsed = counter() - t0
        if len(added) < 1_000_000:
            added.append(elapsed - inner_time[0])
        return result

    return app
