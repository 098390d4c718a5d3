"""The demo's revocation services: a small OCSP responder and a CRL server, on loopback.

:class:`OCSPResponder` speaks RFC 6960 over HTTP (POST of the DER request to its URL, or the RFC
5019 GET form ``URL/<base64 request>``). It answers for every CA registered with
:meth:`OCSPResponder.add_issuer`, each response signed by that CA's *delegated* responder
certificate (id-kp-OCSPSigning, issued by the CA, carried in the response), from a table:
``good`` or ``revoked`` for the serials registered with :meth:`OCSPResponder.set_status`,
``unknown`` for any other serial of a known CA. A request for a CA it does not serve gets the
unsuccessful status ``unauthorized``; bytes that are no OCSP request get ``malformedRequest``.
A nonce in the request is echoed.

:class:`CRLServer` serves DER CRLs by path over HTTP GET.

Both run a :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 in a thread of their own;
:meth:`stop` stops it, closes the socket and joins every thread it started. They serve the demo and
are not meant for production (no persistence, no pre-signed responses, no rate limits).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import threading
import urllib.parse
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509 import ocsp

from ..testing import Issued

__all__ = ["CRLServer", "OCSPResponder"]

#: How long an answer may be used (nextUpdate - thisUpdate).
_VALIDITY = dt.timedelta(minutes=10)
_MAX_REQUEST = 16 * 1024  # an OCSP request for one certificate is ~100 bytes
_STATUSES = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
}


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined by server_close(): nothing outlives stop().
    daemon_threads = False
    block_on_close = True
    request_queue_size = 64

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up early is no news


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: no thread waits on keep-alive
    timeout = 5.0
    service: _LoopbackService

    def do_GET(self) -> None:
        self.service.get(self)

    def do_POST(self) -> None:
        self.service.post(self)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the demo prints its own story

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


_S = TypeVar("_S", bound="_LoopbackService")


class _LoopbackService:
    """An HTTP service on 127.0.0.1 (port 0 unless given) served from a thread of its own."""

    path = "/"

    def __init__(self, port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"service": self})
        self._server = _Server(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None
        self.requests = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self: _S) -> _S:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mtls-demo {type(self).__name__}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; afterwards the port refuses connections. Calling it again is harmless."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def get(self, handler: _Handler) -> None:
        handler.send(405, b"method not allowed\n", "text/plain")

    def post(self, handler: _Handler) -> None:
        handler.send(405, b"method not allowed\n", "text/plain")


@dataclass(frozen=True)
class _Issuer:
    ca: Issued
    signer: Issued


class OCSPResponder(_LoopbackService):
    """An RFC 6960 responder at ``url`` (``http://127.0.0.1:PORT/ocsp``); see the module docstring."""

    path = "/ocsp"

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        # Keyed by (hash algorithm name, issuerNameHash, issuerKeyHash), as requests name the CA.
        self._issuers: dict[tuple[str, bytes, bytes], _Issuer] = {}
        self._table: dict[tuple[bytes, int], tuple[str, dt.datetime | None, x509.ReasonFlags | None]] = {}

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def add_issuer(self, ca: Issued, signer: Issued) -> None:
        """Answer for certificates ``ca`` issued, signing with ``signer`` (a delegated responder
        certificate ``ca`` issued with the OCSP-signing EKU)."""
        for algorithm in (hashes.SHA1(), hashes.SHA256()):  # noqa: S303 - SHA-1 CertIDs are RFC 5019's
            key = _ca_key(ca.cert, algorithm)
            with self._lock:
                self._issuers[key] = _Issuer(ca, signer)

    def set_status(
        self,
        ca: Issued,
        serial: int,
        status: str,
        *,
        revoked_at: dt.datetime | None = None,
        reason: x509.ReasonFlags | None = None,
    ) -> None:
        """Answer ``status`` (``good``, ``revoked`` or ``unknown``) for ``serial`` of ``ca``."""
        if status not in _STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(_STATUSES)}")
        with self._lock:
            self._table[(_ca_key(ca.cert, hashes.SHA256())[2], serial)] = (status, revoked_at, reason)

    def get(self, handler: _Handler) -> None:
        target = urllib.parse.urlsplit(handler.path).path
        prefix = self.path + "/"
        if not target.startswith(prefix):
            handler.send(404, b"not found\n", "text/plain")
            return
        try:
            der = base64.b64decode(urllib.parse.unquote(target[len(prefix) :]), validate=True)
        except ValueError:
            der = b""
        self._answer(handler, der)

    def post(self, handler: _Handler) -> None:
        length = handler.headers.get("Content-Length") or ""
        if urllib.parse.urlsplit(handler.path).path != self.path:
            handler.send(404, b"not found\n", "text/plain")
        elif not length.isdigit() or int(length) > _MAX_REQUEST:
            handler.send(413, b"request too large\n", "text/plain")
        else:
            self._answer(handler, handler.rfile.read(int(length)))

    def _answer(self, handler: _Handler, der: bytes) -> None:
        self._count()
        handler.send(200, self.respond(der), "application/ocsp-response")

    def respond(self, der: bytes) -> bytes:
        """The DER OCSPResponse to the DER OCSPRequest ``der``."""
        try:
            request = ocsp.load_der_ocsp_request(der)
            algorithm = request.hash_algorithm
            key = (algorithm.name, request.issuer_name_hash, request.issuer_key_hash)
            serial = request.serial_number
        except (ValueError, TypeError):
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        with self._lock:
            issuer = self._issuers.get(key)
            entry = (
                self._table.get((_ca_key(issuer.ca.cert, hashes.SHA256())[2], serial))
                if issuer is not None
                else None
            )
        if issuer is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        status, revoked_at, reason = entry or ("unknown", None, None)
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=serial,
            algorithm=algorithm,
            cert_status=_STATUSES[status],
            this_update=now,
            next_update=now + _VALIDITY,
            revocation_time=(revoked_at or now) if status == "revoked" else None,
            revocation_reason=reason if status == "revoked" else None,
        )
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            nonce = None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        signer = issuer.signer
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, signer.cert).certificates(
            [signer.cert]
        )
        eddsa = isinstance(signer.key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))
        response = builder.sign(signer.key, None if eddsa else hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


class CRLServer(_LoopbackService):
    """Serves DER CRLs at ``http://127.0.0.1:PORT/<name>`` (see :meth:`publish`)."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._crls: dict[str, bytes] = {}

    def url(self, name: str) -> str:
        """Where the CRL published as ``name`` is (or will be) served."""
        return f"{self.base_url}/{urllib.parse.quote(name)}"

    def publish(self, name: str, crl: x509.CertificateRevocationList) -> None:
        """Serve ``crl`` (DER) as ``name``, replacing what was served there."""
        with self._lock:
            self._crls["/" + urllib.parse.quote(name)] = crl.public_bytes(serialization.Encoding.DER)

    def get(self, handler: _Handler) -> None:
        with self._lock:
            body = self._crls.get(urllib.parse.urlsplit(handler.path).path)
        if body is None:
            handler.send(404, b"not found\n", "text/plain")
            return
        self._count()
        handler.send(200, body, "application/pkix-crl")


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def _ca_key(ca: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[str, bytes, bytes]:
    """How a CertID hashed with ``algorithm`` names ``ca``: (algorithm, name hash, key hash)."""
    name_hash = hashes.Hash(algorithm)
    name_hash.update(ca.subject.public_bytes())
    # The key hash covers the subjectPublicKey bits only: let cryptography find them, through a
    # throwaway request whose "issuer" is the CA (its name hash is the CA's issuer's, unused here).
    request = ocsp.OCSPRequestBuilder().add_certificate(ca, ca, algorithm).build()
    return algorithm.name, name_hash.finalize(), request.issuer_key_hash
