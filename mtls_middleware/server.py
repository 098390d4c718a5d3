"""A TLS listener that requests client certificates but leaves the verdict to the middleware.

For deployments without a reverse proxy, and for the demo::

    from mtls_middleware.server import serve
    serve(app, certfile="server.pem", keyfile="server.key", trust_roots="roots.pem")

Why not the stdlib ``ssl`` module: with ``ssl`` the handshake itself judges the client certificate.
An expired certificate, an unknown issuer or a missing Client Authentication EKU ends the
connection before any HTTP is spoken, so the user sees "connection reset" and the login history
never learns why. This listener uses pyOpenSSL (``OpenSSL.SSL``): it *requests* a certificate
(``VERIFY_PEER`` without ``FAIL_IF_NO_PEER_CERT``), advertises the trust roots only as the list of
acceptable CA names, accepts whatever is presented (a verify callback that always agrees) and hands
the whole presented chain to the app. ``MTLSMiddleware`` then judges it, answers with a reason code
and records the attempt. The app behind this server must therefore be wrapped in
``MTLSMiddleware``: on its own the listener authenticates nobody.

What the app receives, besides the usual WSGI keys: ``SSL_CLIENT_CERT`` (the leaf, PEM),
``SSL_CLIENT_CERT_CHAIN_0`` ... (the certificates the client sent after its leaf, PEM, in the
order sent; at most :data:`~mtls_middleware.certs.MAX_CHAIN_LENGTH` of them, enough for the
middleware to say ``chain_too_long``), ``HTTPS=on``, ``wsgi.url_scheme=https``, ``SSL_PROTOCOL``
(``TLSv1.3``) and ``SSL_CIPHER`` (OpenSSL's name). These are the mod_ssl names that
:mod:`mtls_middleware.sources.tls` reads; a client cannot forge them, since a request header always
arrives with an ``HTTP_`` prefix, and headers whose names contain ``_`` are dropped altogether.

TLS: 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AEAD ciphers; no compression, no
renegotiation, no session resumption (a resumed session carries no certificate chain, and the
middleware must see the chain of every connection).

HTTP: a small HTTP/1.1 server built from :mod:`http.server`'s request parsing and a WSGI runner of
its own, rather than werkzeug's dev server: werkzeug's ``BaseWSGIServer`` wraps sockets with an
``ssl.SSLContext`` only and calls ``sys.exit`` when it cannot bind, and its request handler closes
every connection after one answer. This one keeps connections alive (a response without
``Content-Length`` is sent chunked), runs one thread per connection up to ``max_connections``
(further connections wait in the listen backlog), does the handshake in that thread under
``handshake_timeout`` (a silent client cannot hold the accept loop or a thread), closes a
connection idle for ``idle_timeout``, and logs and drops a failed handshake (plain HTTP sent to the
TLS port, garbage) without disturbing other connections. A request line and its headers must
arrive whole within ``idle_timeout`` (a client dribbling bytes cannot hold a thread either) and
within 64 KiB (431 otherwise); a folded (obs-fold) header line or a malformed request target is a
400. :meth:`TLSServer.shutdown` stops
accepting, closes idle connections at once, lets requests in progress finish for up to
``shutdown_timeout`` seconds, then closes whatever is left.

Logging goes to the ``mtls_middleware.server`` logger: one INFO line per request (an access log),
INFO for failed handshakes, ERROR with the traceback when the app raises (the client gets a bare
500).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import logging
import os
import select
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import IO, TYPE_CHECKING, Any, Final, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from werkzeug.serving import DechunkedInput
from werkzeug.wsgi import LimitedStream

from .certs import MAX_CHAIN_LENGTH
from .config import _load_certificates
from .errors import ConfigurationError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TLSServer",
    "make_context",
    "make_server",
    "serve",
]

log = logging.getLogger("mtls_middleware.server")

#: Loopback only unless told otherwise: exposing a port is a decision, not a default.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8443

StrPath = str | os.PathLike[str]
CertificateInput = StrPath | bytes | x509.Certificate | Sequence[x509.Certificate]
KeyInput = StrPath | bytes | PrivateKeyTypes
RootsInput = StrPath | bytes | Sequence[x509.Certificate]

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only. TLS 1.3 suites are OpenSSL's defaults.
_TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
_SESSION_ID_CONTEXT = b"mtls_middleware.server"
_MAX_REQUEST_BODY_DRAIN = 64 * 1024  # unread body we swallow to keep a connection alive
_MAX_HEADER_BYTES = 64 * 1024  # all header lines of one request (http.server caps each line only)
_SEND_CHUNK = 16 * 1024  # one TLS record's worth
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# -- the TLS context ----------------------------------------------------------------------------


def _read(value: StrPath, what: str) -> bytes:
    try:
        with open(value, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigurationError(
            detail=f"{what}: cannot read {os.fspath(value)!r} ({exc.strerror or exc})"
        ) from None


def _server_certificates(value: CertificateInput) -> tuple[x509.Certificate, ...]:
    if isinstance(value, x509.Certificate):
        return (value,)
    if isinstance(value, (str, os.PathLike)):
        return _server_certificates(_read(value, "certfile"))
    if isinstance(value, bytes):
        try:
            certs = tuple(x509.load_pem_x509_certificates(value))
        except ValueError:
            raise ConfigurationError(
                detail="certfile: no PEM certificate could be read; give the server certificate "
                "(then its intermediates) as PEM 'CERTIFICATE' blocks"
            ) from None
        return certs
    certs = tuple(value)
    if not certs or not all(isinstance(c, x509.Certificate) for c in certs):
        raise ConfigurationError(detail="certfile: expected cryptography x509.Certificate objects")
    return certs


def _private_key(value: KeyInput) -> PrivateKeyTypes:
    if isinstance(value, (str, os.PathLike)):
        value = _read(value, "keyfile")
    if not isinstance(value, bytes):
        return value
    try:
        return serialization.load_pem_private_key(value, password=None)
    except TypeError:
        raise ConfigurationError(
            detail="keyfile: the private key is encrypted; give an unencrypted PEM key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(detail="keyfile: no PEM private key could be read") from None


def _accept_any(_conn: SSL.Connection, _cert: Any, _errno: int, _depth: int, _ok: int) -> bool:
    # The handshake does not judge: MTLSMiddleware does, and records why it refuses.
    return True


def make_context(certfile: CertificateInput, keyfile: KeyInput, trust_roots: RootsInput) -> SSL.Context:
    """The server's pyOpenSSL context: TLS 1.2+, requests (never requires) a client certificate.

    ``certfile`` is the server certificate followed by its intermediates (a PEM path, PEM bytes or
    certificates); ``keyfile`` its unencrypted private key (a PEM path, PEM bytes or a
    cryptography key); ``trust_roots`` (a PEM path, PEM bytes or certificates) are only *named* to
    clients as acceptable issuers: nothing is verified at the handshake.

    Raises:
        ConfigurationError: a file cannot be read or holds no certificate / key, the key is
            encrypted or does not belong to the certificate, or ``trust_roots`` is empty.
    """
    chain = _server_certificates(certfile)
    if not chain:
        raise ConfigurationError(detail="certfile: holds no certificate")
    key = _private_key(keyfile)
    roots = _load_certificates(trust_roots, "trust_roots")
    if not roots:
        raise ConfigurationError(detail="trust_roots is empty: name at least one CA to request")

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(_TLS12_CIPHERS)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_SINGLE_ECDH_USE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_NO_TICKET
        | SSL.OP_IGNORE_UNEXPECTED_EOF
    )
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)  # type: ignore[arg-type]  # pyOpenSSL takes the key types it knows
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as exc:
        raise ConfigurationError(
            detail=f"keyfile does not belong to the certificate in certfile, or is unusable ({exc})"
        ) from None
    for root in roots:
        ctx.add_client_ca(root)
    ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
    return ctx


# -- one connection -----------------------------------------------------------------------------


class _PeerGone(ConnectionResetError):
    """The client hung up or broke TLS: the connection, not the app, failed."""


class _PeerSilent(TimeoutError):
    """The client sent nothing in time: the connection, not the app, failed."""


def _wait(sock: socket.socket, *, write: bool, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _PeerSilent("timed out")
    # poll(), not select(): select fails on descriptors above 1023, which a busy process reaches.
    poller = select.poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    if not poller.poll(remaining * 1000):
        raise _PeerSilent("timed out")


class _TLSStream(io.RawIOBase):
    """The decrypted byte stream of one connection, for http.server's ``rfile`` and ``wfile``.

    The socket is non-blocking underneath; every read waits at most ``timeout`` seconds for the
    peer, and never past ``deadline`` when one is set. A peer that hangs up, cleanly or not, reads
    as end of file; other TLS failures raise :class:`_PeerGone`, and silence :class:`_PeerSilent`.
    """

    def __init__(self, conn: SSL.Connection, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._conn = conn
        self._sock = sock
        self.timeout = timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        deadline = time.monotonic() + self.timeout
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        while True:
            try:
                return self._conn.recv_into(buffer)
            except SSL.WantReadError:
                _wait(self._sock, write=False, deadline=deadline)
            except SSL.WantWriteError:
                _wait(self._sock, write=True, deadline=deadline)
            except SSL.ZeroReturnError:
                return 0
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] in (-1, 0):  # EOF without close_notify
                    return 0
                raise _PeerGone(f"TLS read failed: {exc}") from None
            except SSL.Error as exc:
                raise _PeerGone(f"TLS read failed: {exc}") from None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        deadline = time.monotonic() + self.timeout
        sent = 0
        while sent < len(view):
            try:
                sent += self._conn.send(view[sent : sent + _SEND_CHUNK])
            except SSL.WantWriteError:
                _wait(self._sock, write=True, deadline=deadline)
            except SSL.WantReadError:
                _wait(self._sock, write=False, deadline=deadline)
            except SSL.Error as exc:
                raise _PeerGone(f"TLS write failed: {exc}") from None
        return sent


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _tls_environ(conn: SSL.Connection) -> dict[str, str]:
    """The environ keys of this connection's TLS session (computed once per connection)."""
    values = {
        "HTTPS": "on",
        "SSL_PROTOCOL": conn.get_protocol_version_name(),
        "SSL_CIPHER": conn.get_cipher_name() or "",
    }
    leaf = conn.get_peer_certificate(as_cryptography=True)
    if leaf is None:
        return values
    values["SSL_CLIENT_CERT"] = _pem(leaf)
    sent = list(conn.get_peer_cert_chain(as_cryptography=True) or ())
    # On the server side OpenSSL gives the chain without the leaf (client side: with it); should a
    # version ever include it, it must not be handed on twice.
    if sent and sent[0] == leaf:
        sent = sent[1:]
    for index, cert in enumerate(sent[:MAX_CHAIN_LENGTH]):
        values[f"SSL_CLIENT_CERT_CHAIN_{index}"] = _pem(cert)
    return values


class _Connection:
    """Book-keeping for shutdown: the raw socket, and whether a request is being answered."""

    __slots__ = ("busy", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.busy = False

    def abort(self) -> None:
        # shutdown(), not close(): the owning thread may be blocked on the descriptor; this wakes
        # it (end of file) and it closes the socket itself.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _RequestReader(io.BufferedReader):
    """``rfile``: while ``budget`` is set, the lines read (the headers) may total that many bytes."""

    budget: int | None = None

    def readline(self, size: int | None = -1, /) -> bytes:
        line = super().readline(size)
        if self.budget is not None:
            self.budget -= len(line)
            if self.budget < 0:
                # parse_request answers LineTooLong with 431.
                raise http.client.LineTooLong(f"request headers over {_MAX_HEADER_BYTES} bytes")
        return line


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 over an established TLS stream, each request handed to the WSGI app."""

    protocol_version = "HTTP/1.1"
    server_version = "mtls_middleware"
    sys_version = ""
    server: TLSServer  # type: ignore[assignment]

    def __init__(
        self,
        stream: _TLSStream,
        tls_environ: dict[str, str],
        state: _Connection,
        address: Any,
        server: TLSServer,
    ) -> None:
        self.stream = stream
        self.tls_environ = tls_environ
        self.connection_state = state
        # BaseRequestHandler.__init__ runs the whole connection: setup(), handle(), finish().
        super().__init__(state.sock, address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.reader = _RequestReader(self.stream, 64 * 1024)
        self.rfile = self.reader
        self.wfile = self.stream  # type: ignore[assignment]  # raw: every write goes out at once

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.rfile.close()

    def handle_one_request(self) -> None:
        # The per-read timeout alone would let a client sending a byte a minute hold this thread
        # for ever: the request line and headers get idle_timeout in all.
        self.stream.deadline = time.monotonic() + self.stream.timeout
        super().handle_one_request()
        if self.server.closing:
            self.close_connection = True

    def parse_request(self) -> bool:
        self.reader.budget = _MAX_HEADER_BYTES
        try:
            if not super().parse_request():
                return False
        finally:
            self.reader.budget = None
        # The body has no deadline of its own: only the per-read timeout.
        self.stream.deadline = None
        if any("\r" in value or "\n" in value for value in self.headers.values()):
            # RFC 9112 5.2: reject obs-fold rather than guess where the value ends.
            self.send_error(HTTPStatus.BAD_REQUEST, "Folded header line")
            return False
        return True

    def _run(self) -> None:
        self.connection_state.busy = True
        try:
            _WSGIRunner(self).run()
        finally:
            self.connection_state.busy = False

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _run

    def address_string(self) -> str:
        return str(self.client_address[0])

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class _WSGIRunner:
    """Runs the app for one parsed request and writes its answer (PEP 3333)."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.head = handler.command == "HEAD"

    def environ(self) -> WSGIEnvironment:
        h = self.handler
        server = h.server
        path, _, query = h.path.partition("?")
        if "://" in path:  # absolute-form request target
            path = urllib.parse.urlsplit(path).path or "/"
        environ: dict[str, Any] = {
            "REQUEST_METHOD": h.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": h.path,
            "RAW_URI": h.path,
            "SERVER_NAME": server.server_address[0],
            "SERVER_PORT": str(server.server_port),
            "SERVER_PROTOCOL": h.request_version,
            "SERVER_SOFTWARE": h.server_version,
            "REMOTE_ADDR": str(h.client_address[0]),
            "REMOTE_PORT": str(h.client_address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in h.headers.items():
            if "_" in name:  # X_Foo would collide with X-Foo; nginx drops them too
                continue
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = f"HTTP_{key}"
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        body = cast(IO[bytes], h.rfile)
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            environ["wsgi.input"] = DechunkedInput(body)
            environ["wsgi.input_terminated"] = True
            h.close_connection = True  # what the app leaves unread cannot be skipped safely
        else:
            try:
                length = max(0, int(h.headers.get("Content-Length") or 0))
            except ValueError:
                length = 0
                h.close_connection = True
            environ["wsgi.input"] = LimitedStream(body, length)
        environ.update(h.tls_environ)  # last: nothing above may shadow the TLS facts
        return environ

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,
    ) -> Callable[[bytes], object]:
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.status = status
        self.headers = list(headers)
        return self.write

    def _send_headers(self) -> None:
        h = self.handler
        if self.status is None:
            raise AssertionError("the app wrote before calling start_response")
        code_text, _, reason = self.status.partition(" ")
        code = int(code_text)
        names = {name.lower() for name, _ in self.headers}
        if h.server.closing:
            h.close_connection = True
        if "connection" in names:
            wanted = {v.strip().lower() for n, v in self.headers if n.lower() == "connection"}
            if "close" in wanted:
                h.close_connection = True
        no_body = self.head or 100 <= code < 200 or code in (204, 304)
        if "content-length" not in names and not no_body:
            if h.request_version == "HTTP/1.1":
                self.chunked = True
            else:
                h.close_connection = True  # an HTTP/1.0 body ends when the connection does
        h.send_response(code, reason)
        for name, value in self.headers:
            if name.lower() != "connection":
                h.send_header(name, value)
        if self.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        if h.close_connection:
            h.send_header("Connection", "close")
        h.end_headers()
        self.headers_sent = True

    def write(self, data: bytes) -> None:
        if not self.headers_sent:
            self._send_headers()
        if not data or self.head:
            return
        if self.chunked:
            self.handler.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.handler.wfile.write(data)

    def run(self) -> None:
        h = self.handler
        try:
            environ = self.environ()
        except ValueError:  # an absolute-form target urlsplit refuses ("http://[::1/")
            h.send_error(HTTPStatus.BAD_REQUEST, "Bad request target")
            return
        try:
            result: Iterable[bytes] = h.server.app(environ, self.start_response)
            try:
                for data in result:
                    self.write(data)
                if not self.headers_sent:
                    self.write(b"")
                if self.chunked:
                    h.wfile.write(b"0\r\n\r\n")
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except (_PeerGone, _PeerSilent):
            # Only the client's failures: a ConnectionError the app raises (its database is down)
            # is the app's error, logged and answered 500 below.
            h.close_connection = True
            raise
        except Exception:
            log.exception("mtls_middleware.server: the app raised on %s %s", h.command, h.path)
            h.close_connection = True
            if not self.headers_sent:
                body = b"Internal Server Error\n"
                self.status, self.chunked = None, False
                self.start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                )
                self.write(body)
            return
        self._finish_body(environ)

    def _finish_body(self, environ: WSGIEnvironment) -> None:
        # Keep-alive needs the next request line to be next on the stream: swallow a small
        # unread body, and close rather than read a large one.
        h = self.handler
        stream = environ["wsgi.input"]
        if h.close_connection or not isinstance(stream, LimitedStream):
            return
        if stream.is_exhausted:
            return
        if stream.limit > _MAX_REQUEST_BODY_DRAIN:
            h.close_connection = True
        else:
            stream.exhaust()


# -- the server ---------------------------------------------------------------------------------


class TLSServer:
    """A threaded HTTPS server for one WSGI app; see the module docstring.

    Made by :func:`make_server`: the socket is bound (and listening) when this object exists.
    Use :meth:`serve_forever` (blocking) and :meth:`shutdown`, or ``with`` (which shuts down on
    leaving the block).
    """

    def __init__(
        self,
        app: WSGIApplication,
        context: SSL.Context,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        shutdown_timeout: float = 5.0,
        max_connections: int = 100,
        backlog: int = 128,
    ) -> None:
        if max_connections < 1:
            raise ConfigurationError(detail=f"max_connections={max_connections!r}: give at least 1")
        for name, value in (
            ("handshake_timeout", handshake_timeout),
            ("idle_timeout", idle_timeout),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(detail=f"{name}={value!r}: give a positive number of seconds")
        self.app = app
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.shutdown_timeout = shutdown_timeout
        self.closing = False

        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(backlog)
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]

        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, _Connection] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._serving: int | None = None  # ident of the thread in serve_forever
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False

    @property
    def server_port(self) -> int:
        """The port actually bound (useful with ``port=0``)."""
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"https://{f'[{host}]' if ':' in host else host}:{self.server_port}/"

    # -- accepting --------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and serve connections until :meth:`shutdown`; then close everything and return.

        Raises:
            RuntimeError: the server was shut down already, or is served by another thread.
        """
        with self._lock:
            if self._closed or self.closing:
                raise RuntimeError("this server has been shut down")
            if self._serving is not None:
                raise RuntimeError("serve_forever is already running")
            self._serving = threading.get_ident()
            self._stopped.clear()
        poller = select.poll()
        poller.register(self.socket, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        listening = self.socket.fileno()
        try:
            while not self.closing:
                if not self._slots.acquire(timeout=poll_interval):
                    continue  # every thread busy: let connections wait in the backlog
                try:
                    ready = {fd for fd, _ in poller.poll(poll_interval * 1000)}
                    sock = self._accept() if listening in ready and not self.closing else None
                except BaseException:
                    self._slots.release()
                    raise
                if sock is None:
                    self._slots.release()
                else:
                    self._start(*sock)
        finally:
            try:
                self._close_all()
            finally:
                with self._lock:
                    self._serving = None
                self._stopped.set()

    def _accept(self) -> tuple[socket.socket, Any] | None:
        try:
            return self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # out of descriptors, a connection reset while queued ...
            log.warning("accept failed: %s", exc)
            return None

    def _start(self, sock: socket.socket, address: Any) -> None:
        state = _Connection(sock)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(state, address),
            name=f"mtls-tls {address[0]}:{address[1]}",
            daemon=True,
        )
        with self._lock:
            self._connections[thread] = state
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._connections.pop(thread, None)
            sock.close()
            self._slots.release()
            raise

    def _serve_connection(self, state: _Connection, address: Any) -> None:
        sock = state.sock
        conn: SSL.Connection | None = None
        try:
            sock.setblocking(False)
            conn = SSL.Connection(self.context, sock)
            conn.set_accept_state()
            if not self._handshake(conn, sock, address):
                return
            _Handler(_TLSStream(conn, sock, self.idle_timeout), _tls_environ(conn), state, address, self)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("%s: connection ended: %s", address[0], exc)
        except Exception:
            log.exception("mtls_middleware.server: connection from %s failed", address[0])
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.shutdown()  # close_notify, best effort (the socket is non-blocking)
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._connections.pop(threading.current_thread(), None)
            self._slots.release()

    def _handshake(self, conn: SSL.Connection, sock: socket.socket, address: Any) -> bool:
        deadline = time.monotonic() + self.handshake_timeout
        try:
            while True:
                try:
                    conn.do_handshake()
                    return True
                except SSL.WantReadError:
                    _wait(sock, write=False, deadline=deadline)
                except SSL.WantWriteError:
                    _wait(sock, write=True, deadline=deadline)
        except TimeoutError:
            log.info("%s: no TLS handshake within %.0f s; closed", address[0], self.handshake_timeout)
        except (SSL.Error, OSError) as exc:
            why = _describe(exc)
            log.info("%s: TLS handshake failed (%s); closed", address[0], why)
            if why == _PLAIN_HTTP:
                _answer_plain_http(sock)
        return False

    # -- stopping ----------------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close idle connections, give requests in progress time to finish.

        Requests being answered get up to ``timeout`` seconds (default ``shutdown_timeout``) and
        are then cut off; the listening socket is closed. Returns when done. Called on the thread
        that runs :meth:`serve_forever` (from a signal handler), it only asks: serve_forever does
        the rest before it returns. Calling it again is harmless.
        """
        self.closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        with self._lock:
            serving = self._serving
        if serving == threading.get_ident():
            return
        if serving is not None:
            self._stopped.wait()
        else:
            self._close_all(timeout)

    def _close_all(self, timeout: float | None = None) -> None:
        self.closing = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self.socket.close()
        with self._lock:
            states = list(self._connections.items())
        for _, state in states:
            if not state.busy:
                state.abort()
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        for thread, state in states:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                state.abort()
                thread.join(1.0)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def server_close(self) -> None:
        """Alias of :meth:`shutdown`, for code written against :mod:`socketserver`."""
        self.shutdown()

    def __enter__(self) -> TLSServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


_PLAIN_HTTP = "plain HTTP sent to the TLS port"
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 38\r\n\r\nThis port speaks HTTPS: use https://.\n"
)


def _answer_plain_http(sock: socket.socket) -> None:
    # Like nginx's 497: a browser pointed at http:// learns why, instead of a reset.
    with contextlib.suppress(OSError):
        sock.send(_PLAIN_HTTP_ANSWER)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # what is already queued; a reset would otherwise discard our answer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
        if "http request" in reasons:
            return _PLAIN_HTTP
        if reasons:
            return ", ".join(reasons)
    return str(exc) or type(exc).__name__


def make_server(
    app: WSGIApplication,
    *,
    certfile: CertificateInput,
    keyfile: KeyInput,
    trust_roots: RootsInput,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    handshake_timeout: float = 10.0,
    idle_timeout: float = 60.0,
    shutdown_timeout: float = 5.0,
    max_connections: int = 100,
) -> TLSServer:
    """A bound, listening :class:`TLSServer` for ``app``; call ``serve_forever()`` to serve.

    ``host`` defaults to 127.0.0.1 (loopback only); give ``"0.0.0.0"`` or ``"::"`` to listen on
    every interface. ``port=0`` lets the OS pick (see ``server_port``). ``app`` should be wrapped
    in :class:`~mtls_middleware.wsgi.MTLSMiddleware`: this server authenticates nobody itself.

    Raises:
        ConfigurationError: unreadable or unusable ``certfile`` / ``keyfile`` (no PEM, encrypted
            key, key that does not match the certificate), empty or unreadable ``trust_roots``,
            or a non-positive timeout or connection limit.
        OSError: the address cannot be bound (in use, not permitted, unknown host).
    """
    context = make_context(certfile, keyfile, trust_roots)
    return TLSServer(
        app,
        context,
        host=host,
        port=port,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        shutdown_timeout=shutdown_timeout,
        max_connections=max_connections,
    )


def serve(
    app: WSGIApplication,
    *,
    certfile: CertificateInput,
    keyfile: KeyInput,
    trust_roots: RootsInput,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    **options: Any,
) -> None:
    """Serve ``app`` over TLS until interrupted; blocks. ``options`` go to :func:`make_server`.

    Ctrl-C (KeyboardInterrupt) shuts the server down cleanly and then propagates.

    Raises:
        ConfigurationError: as :func:`make_server`.
        OSError: the address cannot be bound.
    """
    with make_server(
        app, certfile=certfile, keyfile=keyfile, trust_roots=trust_roots, host=host, port=port, **options
    ) as server:
        log.info("serving on %s (client certificates requested, judged by the app)", server.url)
        server.serve_forever()
