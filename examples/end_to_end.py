"""End-to-end demo: a real TLS server that requests client certificates, the middleware in front of
a small app, and real mTLS requests with good and bad certificates; each outcome is printed, then
the login history. Loopback only; nothing is left running.

    python examples/end_to_end.py
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import shutil
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID
from werkzeug.serving import make_server

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The protected app: it only ever sees authenticated requests."""
    identity = environ[ENVIRON_KEY]
    body = json.dumps(
        {"hello": identity.user_id, "org": identity.org, "fingerprint": identity.fingerprint[:16]}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def request(port: int, root: Path, client: tuple[Path, Path] | None) -> tuple[str, str]:
    """One HTTPS request; returns (status, body) or ("handshake refused", why)."""
    context = ssl.create_default_context(cafile=str(root))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return f"{response.status} {response.reason}", response.read().decode()
    except (ssl.SSLError, ConnectionError) as exc:
        return "handshake refused", type(exc).__name__
    finally:
        conn.close()


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="mtls-demo-"))
    pki = TestPKI(org="Demo Corp")
    root = pki.write(work)
    server_cert, server_key = pki.issue_server("localhost").write(work, "server")

    users: dict[str, Issued] = {
        "alice (registered)": pki.issue_client("alice", san_emails=("alice@demo.example",)),
        "bob (valid, not registered)": pki.issue_client("bob"),
        "carol (user deactivated)": pki.issue_client("carol"),
        # OpenSSL itself refuses these two at the handshake (a stdlib server cannot defer the
        # verdict), so they never reach the middleware or the history.
        "dave (no client-auth EKU)": pki.issue_client("dave", eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,)),
        "mallory (unknown CA)": TestPKI(org="Evil Corp").issue_client("mallory"),
    }
    store = MemoryStore()
    store.add_user("alice", org="demo")
    store.upload_certificate(users["alice (registered)"].chain_pem, user_id="alice")
    store.add_user("carol", org="demo")
    store.upload_certificate(users["carol (user deactivated)"].chain_pem, user_id="carol")
    store.set_user_active("carol", False)

    # Python's ssl module (before 3.13) hands the app only the leaf, not the intermediates the
    # client sent: name the issuing CA so the middleware can build the path to the root.
    config = MTLSConfig(
        trust_roots=root, intermediates=[pki.issuing.cert], store=store, revocation="off"
    )
    app = MTLSMiddleware(hello_app, config)

    # The stdlib TLS layer requests a certificate and verifies the chain against our root; the
    # middleware then applies every other rule and records why.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(server_cert), str(server_key))
    context.load_verify_locations(str(root))
    context.verify_mode = ssl.CERT_OPTIONAL
    server = make_server("127.0.0.1", 0, app, ssl_context=context, threaded=True)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"TLS server on https://localhost:{port}/ (client certificate requested)\n")
    try:
        cases: list[tuple[str, tuple[Path, Path] | None]] = [
            (name, issued.write(work, name.split()[0])) for name, issued in users.items()
        ]
        cases.append(("(no certificate)", None))
        for name, files in cases:
            status, body = request(port, root, files)
            print(f"{name:30} -> {status:18} {body}", flush=True)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        socket.setdefaulttimeout(None)

    shutil.rmtree(work, ignore_errors=True)  # the demo's keys live only as long as the demo
    print("\nLogin history (newest first):")
    print(f"{'time':20} {'outcome':24} {'user':8} subject")
    for record in store.login_history(limit=20):
        when = dt.datetime.fromtimestamp(record.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when:20} {record.outcome:24} {record.user_id or '-':8} {record.subject or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
