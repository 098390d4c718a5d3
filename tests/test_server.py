"""server.py: the pyOpenSSL TLS listener, driven by real handshakes on 127.0.0.1.

The listener requests a client certificate and accepts any at the handshake, so every bad
certificate reaches the middleware, gets its reason code, and lands in the login history. Clients:
Python's ``ssl`` + ``http.client``, ``curl``, and pyOpenSSL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import socket
import ssl
import struct
import subprocess
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig, Reason
from mtls_middleware.errors import ConfigurationError
from mtls_middleware.server import TLSServer, make_server
from mtls_middleware.testing import SERVER_AUTH, Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware
from tests.conftest import require_service

LOOPBACK = "127.0.0.1"
#: Guards against a hang (a failed test, not a timing assertion).
TIMEOUT = 10


# -- materials --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    issued: Issued
    cert: Path  # the leaf, then whatever intermediates this client sends
    key: Path


@dataclass(frozen=True)
class Files:
    root: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, Client]


@pytest.fixture(scope="module")
def files(pki: TestPKI, other_pki: TestPKI, alice: Issued, tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("server")
    root = pki.write(directory)
    server_cert, server_key = pki.issue_server("localhost").write(directory, "server")
    now = dt.datetime.now(dt.timezone.utc)
    issued = {
        "alice": alice,
        "expired": pki.issue_client(
            "expired", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1)
        ),
        "server-eku": pki.issue_client("server only", eku=(SERVER_AUTH,)),
        "foreign": other_pki.issue_client("mallory"),
    }
    clients = {stem: Client(cert, *cert.write(directory, stem)) for stem, cert in issued.items()}
    leaf = directory / "alice-leaf.pem"
    leaf.write_bytes(alice.cert_pem)
    clients["alice-leaf"] = Client(alice, leaf, clients["alice"].key)
    return Files(root, server_cert, server_key, clients)


class EchoApp:
    """The protected app: remembers each environ; ``/slow`` waits until released."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.seen.append(environ)
        if environ["PATH_INFO"] == "/slow":
            self.entered.set()
            self.release.wait(TIMEOUT)
        if environ["PATH_INFO"] == "/database-down":
            raise ConnectionRefusedError("the app's own database refused")
        identity = environ.get(ENVIRON_KEY)
        body = json.dumps({"user_id": identity.user_id if identity else None}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


@dataclass
class Listener:
    server: TLSServer
    store: MemoryStore
    app: EchoApp
    thread: threading.Thread = field(repr=False)

    @property
    def port(self) -> int:
        return self.server.server_port

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.store.login_history(limit=100)]


def start(files: Files, store: MemoryStore, **options: Any) -> Listener:
    echo = EchoApp()
    # No intermediates configured: the issuing CA must come from the client, through the listener.
    config = MTLSConfig(trust_roots=files.root, store=store, revocation="off")
    server = make_server(
        MTLSMiddleware(echo, config),
        certfile=files.server_cert,
        keyfile=files.server_key,
        trust_roots=files.root,
        port=0,
        **options,
    )
    thread = threading.Thread(target=server.serve_forever, name="test-listener", daemon=True)
    thread.start()
    return Listener(server, store, echo, thread)


def stop(listener: Listener) -> None:
    listener.server.shutdown()
    listener.thread.join(TIMEOUT)
    assert not listener.thread.is_alive()


@pytest.fixture
def listener(files: Files, store: MemoryStore) -> Iterator[Listener]:
    running = start(files, store)
    try:
        yield running
    finally:
        stop(running)


# -- clients ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def client_context(files: Files, client: Client | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.root))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def python_get(
    port: int, files: Files, client: Client | None, path: str = "/", headers: dict[str, str] | None = None
) -> Answer:
    conn = http.client.HTTPSConnection(LOOPBACK, port, context=client_context(files, client), timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.read(), {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def curl_get(port: int, files: Files, client: Client | None) -> Answer:
    argv = [require_service("curl"), "--silent", "--show-error", "--noproxy", "*", "--max-time", str(TIMEOUT)]
    argv += ["--cacert", str(files.root), "--write-out", "\n%{http_code}"]
    if client is not None:
        argv += ["--cert", str(client.cert), "--key", str(client.key)]
    argv.append(f"https://{LOOPBACK}:{port}/")
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT + 5, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    body, _, status = done.stdout.rpartition(b"\n")
    return Answer(int(status), body)


def pyopenssl_get(port: int, files: Files, client: Client | None) -> Answer:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(str(files.root))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_: bool(_[-1]))
    if client is not None:
        ctx.use_certificate_chain_file(str(client.cert))
        ctx.use_privatekey_file(str(client.key))
    with socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as sock:
        # pyOpenSSL needs a blocking socket; the kernel's receive timeout still guards a hang.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", TIMEOUT, 0))
        conn = SSL.Connection(ctx, sock)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"localhost")
        conn.do_handshake()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return Answer(int(head.split()[1]), body)


def raw_exchange(port: int, files: Files, client: Client | None, request: bytes) -> bytes:
    """Send ``request`` as is over TLS; everything the server answers until it closes."""
    ctx = client_context(files, client)
    with (
        socket.create_connection((LOOPBACK, port), timeout=TIMEOUT) as plain,
        ctx.wrap_socket(plain, server_hostname="localhost") as sock,
    ):
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(ssl.SSLEOFError, ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


FETCHERS = [
    pytest.param(python_get, id="python-ssl"),
    pytest.param(curl_get, id="curl"),
    pytest.param(pyopenssl_get, id="pyopenssl"),
]

CASES = [
    pytest.param("alice", 200, "accepted", id="good"),
    pytest.param("expired", 403, "certificate_expired", id="expired"),
    pytest.param("server-eku", 403, "missing_client_auth_eku", id="server-auth-eku-only"),
    pytest.param("foreign", 403, "untrusted_issuer", id="unknown-ca"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
]


# -- the verdict is the middleware's, with its reason in the history --------------------------


@pytest.mark.parametrize("fetch", FETCHERS)
@pytest.mark.parametrize(("name", "status", "outcome"), CASES)
def test_every_certificate_reaches_the_middleware_and_the_history(
    listener: Listener, files: Files, fetch: Any, name: str | None, status: int, outcome: str
) -> None:
    client = files.clients[name] if name else None
    answer = fetch(listener.port, files, client)
    assert answer.status == status
    if status == 200:
        assert answer.json == {"user_id": "alice"}
    else:
        assert answer.json["error"] == outcome
    records = listener.store.login_history(limit=10)
    assert [r.outcome for r in records] == [outcome]
    if client is not None:
        assert records[0].fingerprint == client.issued.fingerprint


def test_the_chain_the_client_sent_reaches_the_app(
    listener: Listener, files: Files, pki: TestPKI, alice: Issued
) -> None:
    answer = python_get(listener.port, files, files.clients["alice"])
    assert answer.status == 200
    environ = listener.app.seen[-1]
    assert environ["SSL_CLIENT_CERT"] == alice.cert_pem.decode()
    assert environ["SSL_CLIENT_CERT_CHAIN_0"] == pki.issuing.cert_pem.decode()
    assert "SSL_CLIENT_CERT_CHAIN_1" not in environ
    assert environ[ENVIRON_KEY].chain == (alice.cert, pki.issuing.cert, pki.root.cert)


def test_a_leaf_without_its_intermediate_has_no_path(listener: Listener, files: Files) -> None:
    # The counterpart of the test above: the config names no intermediates, so the path to the
    # root exists only when the client's intermediate is handed on.
    answer = python_get(listener.port, files, files.clients["alice-leaf"])
    assert (answer.status, answer.json["error"]) == (403, "untrusted_issuer")
    assert listener.outcomes() == ["untrusted_issuer"]


def test_tls_facts_in_the_environ(listener: Listener, files: Files) -> None:
    ctx = client_context(files, files.clients["alice"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection(LOOPBACK, listener.port, context=ctx, timeout=TIMEOUT)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        assert isinstance(conn.sock, ssl.SSLSocket)
        negotiated = conn.sock.cipher()
        assert negotiated is not None
        cipher = negotiated[0]
    finally:
        conn.close()
    environ = listener.app.seen[-1]
    assert environ["HTTPS"] == "on"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SSL_PROTOCOL"] == "TLSv1.2"
    assert environ["SSL_CIPHER"] == cipher
    assert cipher.startswith("ECDHE-")


def test_certificate_headers_from_the_client_are_not_taken_for_the_tls_layer(
    listener: Listener, files: Files, alice: Issued
) -> None:
    leaf = alice.cert_pem.decode().replace("\n", "")
    answer = python_get(
        listener.port, files, None, headers={"SSL_CLIENT_CERT": leaf, "SSL-Client-Cert": leaf}
    )
    assert (answer.status, answer.json["error"]) == (401, "no_certificate")


# -- TLS and connection handling --------------------------------------------------------------


def test_tls_1_1_is_refused_at_the_handshake(listener: Listener, files: Files) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(files.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is: that is the point
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
    with (
        socket.create_connection((LOOPBACK, listener.port), timeout=TIMEOUT) as sock,
        pytest.raises(ssl.SSLError) as caught,
    ):
        ctx.wrap_socket(sock, server_hostname="localhost")
    # The server's alert, not a client-side refusal to try.
    assert "PROTOCOL_VERSION" in str(caught.value.reason).upper()
    assert python_get(listener.port, files, files.clients["alice"]).status == 200


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="plain-http"),
        pytest.param(b"\x16\x03\x01\x00\x05garbage" + bytes(range(256)), id="garbage-record"),
        pytest.param(b"", id="connect-and-close"),
    ],
)
def test_a_bad_handshake_is_dropped_and_the_server_goes_on(
    listener: Listener, files: Files, payload: bytes
) -> None:
    with socket.create_connection((LOOPBACK, listener.port), timeout=TIMEOUT) as sock:
        if payload:
            sock.sendall(payload)
            answer = b""
            try:
                while chunk := sock.recv(4096):
                    answer += chunk
            except ConnectionResetError:
                pass
            if payload.startswith(b"GET"):
                assert answer.startswith(b"HTTP/1.1 400 ")  # told to use https://, in plain HTTP
    assert python_get(listener.port, files, files.clients["alice"]).status == 200
    assert listener.outcomes() == ["accepted"]


def test_a_silent_client_is_cut_off_after_the_handshake_timeout(files: Files, store: MemoryStore) -> None:
    running = start(files, store, handshake_timeout=0.3, max_connections=1)
    try:
        with socket.create_connection((LOOPBACK, running.port), timeout=TIMEOUT) as silent:
            assert silent.recv(1) == b""  # closed by the server, long before our own timeout
        # The only connection slot is free again.
        assert python_get(running.port, files, files.clients["alice"]).status == 200
    finally:
        stop(running)


def test_a_client_dribbling_its_headers_is_cut_off(files: Files, store: MemoryStore) -> None:
    # Every byte comes well inside the per-read timeout; only a deadline on the whole request
    # head ends this. Without one the loop sends all its bytes and the connection is still open.
    running = start(files, store, idle_timeout=0.5, max_connections=1)
    try:
        ctx = client_context(files, files.clients["alice"])
        with (
            socket.create_connection((LOOPBACK, running.port), timeout=TIMEOUT) as plain,
            ctx.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            sock.settimeout(0.1)  # the pause between two bytes, spent waiting for the server
            closed = False
            for _ in range(150):
                try:
                    sock.sendall(b"a")
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    continue
                except (ssl.SSLEOFError, ConnectionError):
                    closed = True
                if closed:
                    break
            assert closed
        # The only connection slot is free again.
        assert python_get(running.port, files, files.clients["alice"]).status == 200
    finally:
        stop(running)


def test_request_headers_over_the_limit_are_refused(listener: Listener, files: Files) -> None:
    # Each line is within http.server's own 64 KiB line limit; together they are not.
    headers = {f"X-Big-{n}": "a" * 8000 for n in range(10)}
    answer = python_get(listener.port, files, files.clients["alice"], headers=headers)
    assert answer.status == 431
    assert listener.app.seen == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: one\r\n two\r\n\r\n", id="crlf-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: one\n two\r\n\r\n", id="lf-fold"),
        pytest.param(b"GET http://[::1/ HTTP/1.1\r\nHost: localhost\r\n\r\n", id="bad-absolute-target"),
    ],
)
def test_malformed_requests_get_400(listener: Listener, files: Files, request_bytes: bytes) -> None:
    answer = raw_exchange(listener.port, files, files.clients["alice"], request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert listener.app.seen == []


def test_a_connection_error_raised_by_the_app_is_a_500(listener: Listener, files: Files) -> None:
    # Not mistaken for the client hanging up: the client gets an answer, the log the traceback.
    answer = python_get(listener.port, files, files.clients["alice"], "/database-down")
    assert answer.status == 500


def test_concurrent_clients_are_all_served(listener: Listener, files: Files) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda _: python_get(listener.port, files, files.clients["alice"]), range(20))
        )
    assert [a.status for a in answers] == [200] * 20
    assert listener.outcomes() == ["accepted"] * 20


def test_keep_alive_and_shutdown_with_an_idle_connection_open(files: Files, store: MemoryStore) -> None:
    # A long grace period: only closing idle connections at once lets shutdown return.
    running = start(files, store, shutdown_timeout=60, idle_timeout=60)
    conn = http.client.HTTPSConnection(
        LOOPBACK, running.port, context=client_context(files, files.clients["alice"]), timeout=TIMEOUT
    )
    try:
        for _ in range(2):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None
            response.read()
        first, second = running.app.seen
        assert first["REMOTE_PORT"] == second["REMOTE_PORT"]  # one connection, kept alive
        stopper = threading.Thread(target=running.server.shutdown)
        stopper.start()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        running.thread.join(TIMEOUT)
        assert not running.thread.is_alive()
        assert conn.sock is not None
        assert conn.sock.recv(1) == b""  # the idle connection was closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, running.port), timeout=TIMEOUT).close()
    finally:
        conn.close()
        stop(running)


def test_shutdown_lets_a_request_in_progress_finish(listener: Listener, files: Files) -> None:
    answers: list[Answer] = []
    request = threading.Thread(
        target=lambda: answers.append(python_get(listener.port, files, files.clients["alice"], "/slow"))
    )
    request.start()
    assert listener.app.entered.wait(TIMEOUT)
    stopper = threading.Thread(target=listener.server.shutdown)
    stopper.start()
    while listener.server.socket.fileno() != -1 and stopper.is_alive():
        stopper.join(0.01)  # until the listening socket is closed: the shutdown has begun
    listener.app.release.set()
    request.join(TIMEOUT)
    stopper.join(TIMEOUT)
    assert [(a.status, a.headers.get("connection")) for a in answers] == [(200, "close")]
    assert not stopper.is_alive()


def test_context_manager_closes_the_socket(files: Files, store: MemoryStore) -> None:
    with make_server(
        MTLSMiddleware(EchoApp(), MTLSConfig(trust_roots=files.root, store=store, revocation="off")),
        certfile=files.server_cert,
        keyfile=files.server_key,
        trust_roots=files.root,
        port=0,
    ) as server:
        port = server.server_port
        assert port != 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, port), timeout=TIMEOUT).close()


def test_certificates_and_key_as_objects(pki: TestPKI, store: MemoryStore, files: Files) -> None:
    issued = pki.issue_server("localhost")
    server = make_server(
        MTLSMiddleware(EchoApp(), MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")),
        certfile=list(issued.chain),
        keyfile=issued.key,
        trust_roots=[pki.root.cert],
        port=0,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert python_get(server.server_port, files, files.clients["alice"]).status == 200
    finally:
        server.shutdown()
        thread.join(TIMEOUT)


# -- configuration errors ---------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("broken", "mentions"),
    [
        pytest.param("cert-missing", "certfile", id="certfile-unreadable"),
        pytest.param("cert-garbage", "certfile", id="certfile-not-pem"),
        pytest.param("key-missing", "keyfile", id="keyfile-unreadable"),
        pytest.param("key-garbage", "keyfile", id="keyfile-not-pem"),
        pytest.param("key-encrypted", "encrypted", id="keyfile-encrypted"),
        pytest.param("key-mismatch", "does not belong", id="key-of-another-certificate"),
        pytest.param("roots-missing", "trust_roots", id="roots-unreadable"),
        pytest.param("roots-garbage", "trust_roots", id="roots-not-pem"),
    ],
)
def test_bad_configuration_raises_configuration_error(
    tmp_path: Path, files: Files, bob: Issued, broken: str, mentions: str
) -> None:
    cert, key, roots = files.server_cert, files.server_key, files.root
    garbage = _write(
        tmp_path, "garbage.pem", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    missing = tmp_path / "missing.pem"
    if broken == "cert-missing":
        cert = missing
    elif broken == "cert-garbage":
        cert = garbage
    elif broken == "key-missing":
        key = missing
    elif broken == "key-garbage":
        key = garbage
    elif broken == "key-encrypted":
        key = _write(
            tmp_path,
            "encrypted.key",
            bob.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
        )
    elif broken == "key-mismatch":
        key = _write(tmp_path, "bob.key", bob.key_pem)
    elif broken == "roots-missing":
        roots = missing
    else:
        roots = garbage
    with pytest.raises(ConfigurationError) as caught:
        make_server(lambda e, s: [], certfile=cert, keyfile=key, trust_roots=roots, port=0)
    assert caught.value.reason is Reason.CONFIGURATION_ERROR
    assert mentions in caught.value.detail
