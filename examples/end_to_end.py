"""End-to-end demo: mtls_middleware's own TLS listener (it requests a client certificate and lets the
middleware judge it), the middleware in front of a small app with the SQLite store and revocation
checked against the CAs' CRLs, and real mTLS requests with good and bad certificates; each outcome
is printed with its reason code, then the login history. Loopback only; nothing is left running.

    python examples/end_to_end.py
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import shutil
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls_middleware import ENVIRON_KEY, MTLSConfig
from mtls_middleware.server import make_server
from mtls_middleware.stores import open_store
from mtls_middleware.testing import Issued, TestPKI, crl_bytes, make_crl
from mtls_middleware.wsgi import MTLSMiddleware


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The protected app: it only ever sees authenticated requests."""
    identity = environ[ENVIRON_KEY]
    body = json.dumps(
        {"hello": identity.user_id, "org": identity.org, "revocation": identity.revocation}
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


def _short(body: str) -> str:
    """The reason code of a refusal, or the body as it is."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    return str(data["error"]) if isinstance(data, dict) and "error" in data else body


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mtls-demo-"))
    pki = TestPKI(org="Demo Corp")
    root = pki.write(work)
    server_cert, server_key = pki.issue_server("localhost").write(work, "server")

    now = dt.datetime.now(dt.timezone.utc)
    users: dict[str, Issued] = {
        "alice (registered)": pki.issue_client("alice", san_emails=("alice@demo.example",)),
        "bob (valid, not registered)": pki.issue_client("bob"),
        "carol (user deactivated)": pki.issue_client("carol"),
        "erin (expired)": pki.issue_client(
            "erin", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        # A stdlib ssl server would drop these at the handshake; this listener lets the middleware
        # refuse them with a reason, and the login history records it.
        "dave (no client-auth EKU)": pki.issue_client("dave", eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,)),
        "mallory (unknown CA)": TestPKI(org="Evil Corp").issue_client("mallory"),
        "frank (revoked)": pki.issue_client("frank"),
    }
    # The embedded default store: a SQLite file shared by every worker process on the machine.
    store = open_store(f"sqlite:///{work / 'mtls.db'}")
    store.add_user("frank", org="demo")
    store.upload_certificate(users["frank (revoked)"].chain_pem, user_id="frank")
    store.add_user("alice", org="demo")
    store.upload_certificate(users["alice (registered)"].chain_pem, user_id="alice")
    store.add_user("carol", org="demo")
    store.upload_certificate(users["carol (user deactivated)"].chain_pem, user_id="carol")
    store.set_user_active("carol", False)

    # The CAs' CRLs: the issuing CA has revoked frank's certificate; the root has revoked nothing.
    # (A real deployment also gets them from the certificates' distribution points, and asks the
    # OCSP responders first.)
    issuing_crl, root_crl = work / "issuing.crl", work / "root.crl"
    issuing_crl.write_bytes(crl_bytes(make_crl(pki.issuing, [users["frank (revoked)"].cert.serial_number])))
    root_crl.write_bytes(crl_bytes(make_crl(pki.root)))

    # The listener hands the app the whole chain the client sent (leaf + issuing CA), so the
    # config names only the root. Revocation is "require": status that cannot be established
    # refuses the request.
    config = MTLSConfig(
        trust_roots=root, store=store, revocation="require", crls=[issuing_crl, root_crl]
    )
    app = MTLSMiddleware(hello_app, config)

    server = make_server(
        app, certfile=server_cert, keyfile=server_key, trust_roots=root, host="127.0.0.1", port=0
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"TLS server on https://localhost:{server.server_port}/ (client certificate requested)\n")
    try:
        cases: list[tuple[str, tuple[Path, Path] | None]] = [
            (name, issued.write(work, name.split()[0])) for name, issued in users.items()
        ]
        cases.append(("(no certificate)", None))
        for name, files in cases:
            status, body = request(server.server_port, root, files)
            print(f"{name:30} -> {status:16} {_short(body)}", flush=True)
    finally:
        server.shutdown()
        thread.join(timeout=5)

    print("\nLogin history (newest first):")
    print(f"{'time':20} {'outcome':24} {'user':8} {'revocation':24} subject")
    for record in store.login_history(limit=20):
        when = dt.datetime.fromtimestamp(record.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{when:20} {record.outcome:24} {record.user_id or '-':8} "
            f"{record.revocation or '-':24} {record.subject or '-'}"
        )
    store.close()
    shutil.rmtree(work, ignore_errors=True)  # the demo's keys live only as long as the demo
    return 0


if __name__ == "__main__":
    sys.exit(main())
