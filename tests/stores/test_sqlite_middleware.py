"""The SQLite store behind the middleware: another process's change is seen by the next request,
and every request leaves exactly one history row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.test import Client

from mtls_middleware import MTLSConfig
from mtls_middleware.stores import SQLiteStore, open_store
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware


def _ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def _environ(leaf: Issued, pki: TestPKI) -> dict[str, str]:
    return {
        "SSL_CLIENT_CERT": leaf.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "SSL_CLIENT_CERT_CHAIN_0": pki.issuing.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "REMOTE_ADDR": "127.0.0.1",
    }


@pytest.fixture
def database(tmp_path: Path, alice: Issued) -> Path:
    path = tmp_path / "mtls.db"
    with SQLiteStore(path) as store:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
    return path


def _in_another_process(path: Path, code: str) -> None:
    script = f"from mtls_middleware.stores import open_store\nstore = open_store({f'sqlite:///{path}'!r})\n{code}\nstore.close()\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param("store.delete_certificate({fp!r})", "unknown_certificate", id="certificate-deleted"),
        pytest.param("store.set_user_active('alice', False)", "user_inactive", id="user-deactivated"),
        pytest.param("store.set_org('acme', cert_auth=False)", "certificate_auth_disabled", id="org-switched-off"),
    ],
)
def test_a_change_in_another_process_refuses_the_next_request(
    database: Path, pki: TestPKI, alice: Issued, change: str, reason: str
) -> None:
    store = open_store(f"sqlite:///{database}")
    try:
        client = Client(MTLSMiddleware(_ok, MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")))
        for _ in range(2):  # the second answered from the verdict cache
            assert client.get("/", environ_overrides=_environ(alice, pki)).status_code == 200
        _in_another_process(database, change.format(fp=alice.fingerprint))
        response = client.get("/", environ_overrides=_environ(alice, pki))
        assert response.status_code == 403
        assert response.json["error"] == reason
    finally:
        store.close()


def test_a_burst_of_requests_leaves_one_row_each(database: Path, pki: TestPKI, alice: Issued, bob: Issued) -> None:
    store = open_store(f"sqlite:///{database}")
    client = Client(MTLSMiddleware(_ok, MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")))
    for index in range(300):
        leaf = alice if index % 3 else bob
        client.get("/", environ_overrides=_environ(leaf, pki))
    store.close()  # flushes
    with SQLiteStore(database) as reopened:
        rows = reopened.login_history(limit=None)
        assert len(rows) == 300
        assert sum(r.outcome == "accepted" for r in rows) == 200
        assert sum(r.outcome == "unknown_certificate" for r in rows) == 100
