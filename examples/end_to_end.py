"""End-to-end demo; the same as ``mtls-admin demo`` (see mtls_middleware/admin/demo.py).

A demo PKI with an OCSP responder and CRLs, a SQLite store with users and certificates, our TLS
listener in front of a small app with ``revocation="require"``, real mTLS requests with good and
bad certificates, each outcome and the login history printed. Loopback only; nothing is left
running; exit status 0 when every case got its expected outcome.

    python examples/end_to_end.py [--port 8443] [--dir DIR] [--json] [--keep-running] [--ocsp-down]
"""

from __future__ import annotations

import sys

from mtls_middleware.admin.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
