"""Write the example's demo PKI, CRLs and user store into ``demo/`` (replacing what is there).

    python make_demo.py

``demo/`` then holds: ``root.pem`` (the CA to trust), ``intermediates.pem``, ``server.pem`` and
``server.key`` for nginx (``localhost``, 127.0.0.1), the CRLs of both CAs, ``mtls.db`` (a SQLite
store) and client certificates with their keys:

- ``alice``: registered to user alice (organisation acme): accepted;
- ``bob``: from the same CA, registered to nobody: ``unknown_certificate``;
- ``eve``: registered to user eve, but revoked in the issuing CA's CRL: ``certificate_revoked``;
- ``mallory``: from another CA: ``untrusted_issuer``.

For the browser login of ``login_app.py`` it also writes ``secret_key`` (the key that signs Flask
sessions, shared by every worker) and ``alice.p12``, alice's certificate and key to import into a
browser (password ``demo``).

The keys are generated here by mtls_middleware.testing, for trying things out only.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from mtls_middleware.stores import open_store
from mtls_middleware.testing import TestPKI, crl_bytes, make_crl

DEMO = Path(__file__).resolve().parent / "demo"


def make_demo(directory: Path = DEMO) -> Path:
    """Write the demo files into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPKI(org="mtls_middleware demo")
    pki.write(directory)
    (directory / "intermediates.pem").write_bytes(pki.issuing.cert_pem)
    pki.issue_server("localhost").write(directory, "server")
    clients = {
        "alice": pki.issue_client("alice"),
        "bob": pki.issue_client("bob"),
        "eve": pki.issue_client("eve"),
        "mallory": TestPKI(org="Some other CA").issue_client("mallory"),
    }
    for stem, issued in clients.items():
        issued.write(directory, stem)
    alice = clients["alice"]
    p12 = pkcs12.serialize_key_and_certificates(
        b"alice", alice.key, alice.cert, list(alice.intermediates), BestAvailableEncryption(b"demo")
    )
    _write_private(directory / "alice.p12", p12)
    _write_private(directory / "secret_key", secrets.token_hex(32).encode())

    next_update = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    revoked = make_crl(pki.issuing, [clients["eve"].cert.serial_number], next_update=next_update)
    (directory / "issuing.crl").write_bytes(crl_bytes(revoked, pem=True))
    (directory / "root.crl").write_bytes(crl_bytes(make_crl(pki.root, next_update=next_update), pem=True))

    database = directory / "mtls.db"
    for stale in directory.glob("mtls.db*"):
        stale.unlink()
    store = open_store(f"sqlite:///{database}")
    try:
        for user in ("alice", "eve"):
            store.add_user(user, org="acme")
            store.upload_certificate(clients[user].chain_pem, user_id=user, label=f"{user}'s laptop")
    finally:
        store.close()
    return directory


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def main() -> int:
    directory = make_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO)
    print(f"demo PKI and store written to {directory}; then run ./run.sh and try:")
    for who in ("alice", "bob", "eve", "mallory"):
        print(
            f"  curl --cacert {directory}/root.pem --cert {directory}/{who}.pem --key {directory}/{who}.key "
            "https://localhost:8443/"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
