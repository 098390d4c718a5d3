"""A small OCSP responder for tests, built on cryptography's OCSPResponseBuilder.

It answers GET (``/<base64 request>``, any path prefix) and POST on 127.0.0.1 (port 0), counts the
requests it receives, and can be switched into a fault per test (:attr:`OCSPTestResponder.fault`):

=======================  ====================================================================
``None``                 a correct answer, signed by ``signer`` (the issuer unless given)
``"slow"``               answers only after ``slow_seconds`` (released at :meth:`stop`)
``"http-500"``           HTTP 500
``"garbage"``            200 with bytes that are no OCSP response
``"oversize"``           200 with ``oversize_bytes`` bytes
``"try-later"``          a well-formed unsuccessful response (responseStatus tryLater)
``"wrong-key"``          signed by an unrelated key, the responder ID naming the issuer
``"delegate-no-eku"``    a delegated signer issued by the issuer, without id-kp-OCSPSigning
``"delegate-other-ca"``  a delegated signer with the EKU, issued by another CA of the same name
``"delegate-expired"``   a delegated signer issued by the issuer with the EKU, expired
``"dsa"``                a correct delegated signer with a DSA key (an algorithm we refuse)
``"stale"``              thisUpdate two hours ago, nextUpdate one hour ago
``"future"``             thisUpdate one hour ahead
``"old"``                thisUpdate two hours ago, nextUpdate still ahead
``"no-next-update"``     no nextUpdate
``"nonce-mismatch"``     echoes a nonce other than the one sent
``"nonce-missing"``      echoes no nonce
``"wrong-serial"``       answers for the serial number after the one asked about
``"wrong-issuer-name"``  answers for the serial asked about, under another issuer name hash
``"wrong-issuer-key"``   answers for the serial asked about, under another issuer key hash
``"sha256-certid"``      a correct answer whose CertID uses SHA-256 instead of the request's hash
=======================  ====================================================================

Statuses default to good; :meth:`set_status` makes a serial revoked or unknown. ``clock_offset``
shifts the responder's clock (to simulate later times together with a ``now=`` argument).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import threading
import urllib.parse
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls_middleware.testing import Issued, PrivateKey, generate_key, make_certificate

__all__ = ["FAULTS", "OCSPTestResponder", "Revocation", "make_responder_certificate"]

FAULTS = (
    "slow",
    "http-500",
    "garbage",
    "oversize",
    "try-later",
    "wrong-key",
    "delegate-no-eku",
    "delegate-other-ca",
    "delegate-expired",
    "dsa",
    "stale",
    "future",
    "old",
    "no-next-update",
    "nonce-mismatch",
    "nonce-missing",
    "wrong-serial",
    "wrong-issuer-name",
    "wrong-issuer-key",
    "sha256-certid",
)

OCSP_SIGNING = ExtendedKeyUsageOID.OCSP_SIGNING
_SIGNER_FAULTS = ("delegate-no-eku", "delegate-other-ca", "delegate-expired", "dsa")


@dataclass(frozen=True)
class Revocation:
    """How a serial is answered: ``good``, ``unknown`` or ``revoked`` (with time and reason)."""

    status: str = "good"
    revoked_at: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None


def make_responder_certificate(
    issuer: Issued,
    common_name: str = "OCSP responder",
    *,
    eku: tuple[x509.ObjectIdentifier, ...] | None = (OCSP_SIGNING,),
    key: object | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A delegated OCSP responder certificate issued by ``issuer`` (id-kp-OCSPSigning by default)."""
    key = key or generate_key("ec")
    cert = make_certificate(
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]),
        key=key,  # type: ignore[arg-type]
        issuer=issuer.cert,
        issuer_key=issuer.key,
        eku=eku,
        not_before=not_before,
        not_after=not_after,
    )
    return Issued(cert, key)  # type: ignore[arg-type]


class OCSPTestResponder:
    """An HTTP OCSP responder on 127.0.0.1 for one issuer; see the module docstring for faults.

    ``signer`` signs the responses (the issuer itself when None; any :class:`Issued`, e.g. a
    delegated or pinned responder); ``include_signer`` puts its certificate in the response;
    ``by_key`` identifies the responder by key hash instead of by name. ``delay`` holds every
    answer back that many seconds (to make concurrent callers overlap).
    """

    def __init__(
        self,
        issuer: Issued,
        *,
        signer: Issued | None = None,
        include_signer: bool = True,
        by_key: bool = False,
        validity: dt.timedelta = dt.timedelta(minutes=10),
    ) -> None:
        self.issuer = issuer
        self.signer = signer
        self.include_signer = include_signer
        self.by_key = by_key
        self.validity = validity
        self._fault: str | None = None
        self.delay = 0.0
        self.slow_seconds = 10.0
        self.oversize_bytes = 256 * 1024
        self.clock_offset = dt.timedelta(0)
        self.statuses: dict[int, Revocation] = {}
        self.methods: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._fault_signers: dict[str, Issued] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the responder first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/ocsp"

    @property
    def fault(self) -> str | None:
        return self._fault

    @fault.setter
    def fault(self, fault: str | None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        if fault is not None and (fault in _SIGNER_FAULTS or fault == "wrong-key"):
            self._fault_signer(fault)  # now, not while a client waits (a DSA key takes a while)
        self._fault = fault

    @property
    def requests(self) -> int:
        """How many HTTP requests reached the responder."""
        with self._lock:
            return len(self.methods)

    def set_status(
        self,
        serial: int,
        status: str,
        *,
        revoked_at: dt.datetime | None = None,
        reason: x509.ReasonFlags | None = None,
    ) -> None:
        self.statuses[serial] = Revocation(status, revoked_at, reason)

    def start(self) -> OCSPTestResponder:
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                encoded = self.path.rsplit("/", 1)[-1]
                try:
                    body = base64.b64decode(urllib.parse.unquote(encoded), validate=True)
                except ValueError:
                    body = b""
                responder._handle(self, "GET", body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                responder._handle(self, "POST", self.rfile.read(length))

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that time out and hang up are part of the tests

        self._released.clear()
        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: afterwards the port refuses connections (the "down" fault)."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OCSPTestResponder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- answering ---------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        with self._lock:
            self.methods.append(method)
        fault = self.fault
        if self.delay:
            self._released.wait(self.delay)
        if fault == "slow":
            self._released.wait(self.slow_seconds)
        try:
            if fault == "http-500":
                self._send(handler, 500, b"responder broke")
            elif fault == "garbage":
                self._send(handler, 200, b"this is not an OCSP response")
            elif fault == "oversize":
                self._send(handler, 200, b"0" * self.oversize_bytes)
            else:
                self._send(handler, 200, self.respond(body))
        except OSError:
            pass  # the client gave up

    @staticmethod
    def _send(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/ocsp-response")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def respond(self, request_der: bytes) -> bytes:
        """The DER response to ``request_der`` under the current fault (no HTTP faults here)."""
        try:
            request = ocsp.load_der_ocsp_request(request_der)
        except ValueError:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        fault = self.fault
        if fault == "try-later":
            return _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)

        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + self.clock_offset
        this_update, next_update = now, now + self.validity
        if fault == "stale":
            this_update, next_update = now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)
        elif fault == "future":
            this_update, next_update = now + dt.timedelta(hours=1), now + dt.timedelta(hours=2)
        elif fault == "old":
            this_update = now - dt.timedelta(hours=2)
        elif fault == "no-next-update":
            next_update = None

        serial = request.serial_number
        answer = self.statuses.get(serial, Revocation())
        if fault == "wrong-serial":
            serial += 1
        name_hash, key_hash, algorithm = (
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.hash_algorithm,
        )
        if fault == "wrong-issuer-name":
            name_hash = bytes(b ^ 0xFF for b in name_hash)
        elif fault == "wrong-issuer-key":
            key_hash = bytes(b ^ 0xFF for b in key_hash)
        if fault == "sha256-certid":
            algorithm = hashes.SHA256()
            name_hash, key_hash = _issuer_hashes(self.issuer.cert, algorithm)
        status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[answer.status]
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash,
            issuer_key_hash=key_hash,
            serial_number=serial,
            algorithm=algorithm,
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=answer.revoked_at if answer.status == "revoked" else None,
            revocation_reason=answer.reason if answer.status == "revoked" else None,
        )

        nonce = _nonce(request)
        if fault == "nonce-mismatch":
            nonce = b"not the nonce you sent"
        elif fault == "nonce-missing":
            nonce = None
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)

        signer, key, named = self._signer(fault)
        encoding = ocsp.OCSPResponderEncoding.HASH if self.by_key else ocsp.OCSPResponderEncoding.NAME
        builder = builder.responder_id(encoding, named)
        if self.include_signer and named is not self.issuer.cert and fault != "wrong-key":
            builder = builder.certificates([signer])
        algorithm_for_signature = None if _is_eddsa(key) else hashes.SHA256()
        response = builder.sign(key, algorithm_for_signature)  # type: ignore[arg-type]
        return response.public_bytes(serialization.Encoding.DER)

    def _signer(self, fault: str | None) -> tuple[x509.Certificate, PrivateKey, x509.Certificate]:
        """(certificate to include, signing key, certificate the responder ID names)."""
        if fault == "wrong-key":
            # cryptography signs only with the key of the certificate the responder ID names, so
            # name the issuer through a certificate of the same subject and another key.
            impostor = self._fault_signer(fault)
            return impostor.cert, impostor.key, impostor.cert
        if fault in _SIGNER_FAULTS:
            delegate = self._fault_signer(fault)
            return delegate.cert, delegate.key, delegate.cert
        signer = self.signer or self.issuer
        return signer.cert, signer.key, signer.cert

    def _fault_signer(self, fault: str) -> Issued:
        if fault not in self._fault_signers:
            now = dt.datetime.now(dt.timezone.utc)
            if fault == "delegate-no-eku":
                delegate = make_responder_certificate(self.issuer, eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
            elif fault == "wrong-key":
                impostor_key = generate_key("ec")
                delegate = Issued(
                    make_certificate(subject=self.issuer.cert.subject, key=impostor_key, ca=True, eku=None),
                    impostor_key,
                )
            elif fault == "delegate-other-ca":
                # Another CA under the very same name: only the signature tells them apart.
                impostor_key = generate_key("ec")
                impostor = make_certificate(
                    subject=self.issuer.cert.subject, key=impostor_key, ca=True, eku=None
                )
                delegate = make_responder_certificate(Issued(impostor, impostor_key))
            elif fault == "delegate-expired":
                delegate = make_responder_certificate(
                    self.issuer,
                    not_before=now - dt.timedelta(days=2),
                    not_after=now - dt.timedelta(days=1),
                )
            else:  # dsa
                delegate = make_responder_certificate(
                    self.issuer, key=dsa.generate_private_key(key_size=2048)
                )
            self._fault_signers[fault] = delegate
        return self._fault_signers[fault]


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _is_eddsa(key: object) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

    return isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))


def _issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """issuerNameHash and issuerKeyHash of a CertID for a certificate ``issuer`` issued."""
    name_hash = hashes.Hash(algorithm)
    name_hash.update(issuer.subject.public_bytes())
    # The key hash covers the subjectPublicKey bits; let cryptography find them (the "certificate"
    # of this throwaway request does not matter for the key hash).
    request = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, algorithm).build()
    return name_hash.finalize(), request.issuer_key_hash
