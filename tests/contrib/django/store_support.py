"""Helpers of the Django app's tests: the middleware over a store, ``manage.py`` in a child
process on the same database, waiting for a condition."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.test import Client

from mtls_middleware import MTLSConfig
from mtls_middleware.testing import Issued, TestPKI, client_certificate_environ
from mtls_middleware.wsgi import MTLSMiddleware

ROOT = Path(__file__).resolve().parents[3]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` (a bound for a failing test, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def middleware_client(store: Any, pki: TestPKI) -> Client:
    """A WSGI test client of a small app behind MTLSMiddleware over ``store`` (revocation off)."""
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    return Client(MTLSMiddleware(_app, config))


def get_as(client: Client, leaf: Issued) -> tuple[int, str | None]:
    """GET / presenting ``leaf``'s chain at the TLS layer: the status and the reason code."""
    response = client.get("/", environ_overrides={**client_certificate_environ(leaf.chain), "REMOTE_ADDR": "127.0.0.1"})
    error = response.json["error"] if response.status_code != 200 else None
    return response.status_code, error


def manage_py(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m django ARGS`` in a child process with these settings, on this process's
    database (the SQLite file; the PostgreSQL settings pass their schema on by themselves)."""
    from django.conf import settings

    env = {
        **os.environ,
        "MTLS_TEST_DJANGO_DB": str(settings.DATABASES["default"]["NAME"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )
