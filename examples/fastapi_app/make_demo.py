"""Write the example's demo PKI, CRLs and user store into ``demo/`` (replacing what is there).

    python make_demo.py [DIRECTORY]

``demo/`` then holds: ``root.pem`` (the CA to trust), ``intermediates.pem``, ``server.pem`` and
``server.key`` for nginx or Envoy (``localhost``, 127.0.0.1), the CRLs of both CAs, ``mtls.db``
(a SQLite store) and client certificates with their keys:

- ``alice``: registered to user alice (organisation acme): accepted;
- ``bob``: from the same CA, registered to nobody: ``unknown_certificate``;
- ``carol``: registered to user carol, who is deactivated: ``user_inactive``;
- ``eve``: registered to user eve, but revoked in the issuing CA's CRL: ``certificate_revoked``;
- ``mallory``: from another CA: ``untrusted_issuer``.

The keys are generated here by mtls_middleware.testing, for trying things out only.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from mtls_middleware.stores import open_store
from mtls_middleware.testing import TestPKI, crl_bytes, make_crl

DEMO = Path(__file__).resolve().parent / "demo"
CLIENTS = ("alice", "bob", "carol", "eve", "mallory")


def make_demo(directory: Path = DEMO) -> Path:
    """Write the demo files into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPKI(org="mtls_middleware demo")
    pki.write(directory)
    (directory / "intermediates.pem").write_bytes(pki.issuing.cert_pem)
    pki.issue_server("localhost").write(directory, "server")
    clients = {name: pki.issue_client(name) for name in CLIENTS if name != "mallory"}
    clients["mallory"] = TestPKI(org="Some other CA").issue_client("mallory")
    for stem, issued in clients.items():
        issued.write(directory, stem)

    # Revocation is "require" (fail closed): both CAs publish a CRL; eve's certificate is revoked.
    next_update = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    issuing_crl = make_crl(pki.issuing, [clients["eve"].cert.serial_number], next_update=next_update)
    (directory / "issuing.crl").write_bytes(crl_bytes(issuing_crl, pem=True))
    (directory / "root.crl").write_bytes(crl_bytes(make_crl(pki.root, next_update=next_update), pem=True))

    for stale in directory.glob("mtls.db*"):
        stale.unlink()
    store = open_store(f"sqlite:///{directory / 'mtls.db'}")
    try:
        for user in ("alice", "carol", "eve"):
            store.add_user(user, org="acme", active=user != "carol")
            store.upload_certificate(clients[user].chain_pem, user_id=user, label=f"{user}'s laptop")
    finally:
        store.close()
    return directory


def main() -> int:
    directory = make_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO)
    print(f"demo PKI and store written to {directory}; then run ./run-uvicorn.sh and try:")
    for who in CLIENTS:
        print(
            f"  curl --cacert {directory}/root.pem --cert {directory}/{who}.pem "
            f"--key {directory}/{who}.key https://localhost:8443/whoami"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
