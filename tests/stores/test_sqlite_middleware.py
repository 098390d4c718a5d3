"""The SQLite store behind the middleware: another process's change is seen by the next request,
and every request leaves exactly one history row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mtls_middleware.stores import SQLiteStore, open_store
from mtls_middleware.testing import Issued, TestPKI
from tests.stores.helpers import changes_refusing_alice, tls_environ, wsgi_client


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
    changes_refusing_alice(
        delete="store.delete_certificate({fp!r})",
        deactivate="store.set_user_active('alice', False)",
        org_off="store.set_org('acme', cert_auth=False)",
    ),
)
def test_a_change_in_another_process_refuses_the_next_request(
    database: Path, pki: TestPKI, alice: Issued, change: str, reason: str
) -> None:
    store = open_store(f"sqlite:///{database}")
    try:
        client = wsgi_client(store, pki)
        for _ in range(2):  # the second answered from the verdict cache
            assert client.get("/", environ_overrides=tls_environ(alice, pki)).status_code == 200
        _in_another_process(database, change.format(fp=alice.fingerprint))
        response = client.get("/", environ_overrides=tls_environ(alice, pki))
        assert response.status_code == 403
        assert response.json["error"] == reason
    finally:
        store.close()


def test_a_burst_of_requests_leaves_one_row_each(database: Path, pki: TestPKI, alice: Issued, bob: Issued) -> None:
    store = open_store(f"sqlite:///{database}")
    client = wsgi_client(store, pki)
    for index in range(300):
        leaf = alice if index % 3 else bob
        client.get("/", environ_overrides=tls_environ(leaf, pki))
    store.close()  # flushes
    with SQLiteStore(database) as reopened:
        rows = reopened.login_history(limit=None)
        assert len(rows) == 300
        assert sum(r.outcome == "accepted" for r in rows) == 200
        assert sum(r.outcome == "unknown_certificate" for r in rows) == 100
