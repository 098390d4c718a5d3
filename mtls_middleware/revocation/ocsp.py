"""OCSP (RFC 6960, with the RFC 5019 profile for transport): one certificate's status, verified.

:class:`OCSPSource` asks the responder named in the certificate's Authority Information Access
extension (or a configured override) about one certificate and its issuer, and accepts an answer
only when all of this holds:

- the response status is ``successful``;
- it is signed by the issuer itself, by a responder certificate included in the response that the
  issuer issued and signed, which carries the OCSP-signing EKU and is valid now (RFC 6960 §4.2.2.2),
  or by a configured (pinned) responder certificate;
- a SingleResponse carries our CertID (compared with the hash algorithm the response uses);
- thisUpdate is not in the future and nextUpdate not past (both with ``clock_skew``), and
  thisUpdate is not older than ``max_age`` when that is set;
- the nonce is echoed exactly, when one was sent.

Verified answers are cached per (issuer key hash, serial) until their nextUpdate; an answer without
a nextUpdate is used for the call that fetched it only. Concurrent checks of the same certificate
share one fetch. With a :class:`~.shared.SharedCache` the raw responses are shared between
processes too (never with a nonce); what is read from there is verified like a fetched response,
and refused when it is older (by thisUpdate) than an answer this process already accepted.
Every way of failing is an :class:`OCSPFailure` with a short, stable ``kind``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hmac
import os
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Literal

from cachetools import LRUCache
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)

from ..errors import ConfigurationError
from .base import Method, SourceFailure, Status, StatusAnswer
from .fetch import Fetcher, FetchError, SingleFlight
from .shared import Claim, SharedCache

__all__ = ["FailureKind", "OCSPFailure", "OCSPSource"]

FailureKind = Literal[
    "no-responder",  # no AIA OCSP URL and no override
    "unreachable",  # connection refused, DNS, reset
    "timeout",  # connect/read timeout, or the caller's deadline ran out
    "http",  # an HTTP status other than 200
    "too-large",  # the body is over max_bytes
    "malformed",  # not a DER OCSPResponse, or fields that cannot be read
    "status",  # responseStatus other than successful (tryLater, unauthorized ...)
    "signature",  # the signature does not verify, or uses an algorithm we do not accept
    "unauthorized-signer",  # signed by a key that may not speak for the issuer
    "nonce",  # the nonce we sent is not echoed exactly
    "certid",  # no SingleResponse for our certificate
    "stale",  # nextUpdate past, or thisUpdate older than max_age
    "future",  # thisUpdate in the future
    "internal",  # a fault of ours (a bug): still reported as a failure, never raised raw
    "multiple",  # several locations failed in different ways (see ``failures``)
]

#: Responders are tried in the order the certificate lists them; more than this is not a
#: certificate a CA issued to be useful, and each one costs a round trip of the request's time.
_MAX_LOCATIONS = 4
#: Issuers whose CertID hashes are remembered (a deployment trusts a handful of issuing CAs).
_MAX_ISSUERS = 256
# The newest thisUpdate per CertID is remembered for at least this many certificates.
_MIN_NEWEST = 1024
#: RFC 5019 §5: use GET when the encoded request is small enough for every cache and proxy.
_GET_LIMIT = 255
_NONCE_BYTES = 32  # RFC 8954: 1 to 32 octets
_CONTENT_TYPE_REQUEST = "application/ocsp-request"
_CONTENT_TYPE_RESPONSE = "application/ocsp-response"

_RSA_PKCS1 = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA1,
        SignatureAlgorithmOID.RSA_WITH_SHA224,
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
        SignatureAlgorithmOID.RSA_WITH_SHA3_224,
        SignatureAlgorithmOID.RSA_WITH_SHA3_256,
        SignatureAlgorithmOID.RSA_WITH_SHA3_384,
        SignatureAlgorithmOID.RSA_WITH_SHA3_512,
    }
)
_ECDSA = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA1,
        SignatureAlgorithmOID.ECDSA_WITH_SHA224,
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
        SignatureAlgorithmOID.ECDSA_WITH_SHA3_224,
        SignatureAlgorithmOID.ECDSA_WITH_SHA3_256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA3_384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA3_512,
    }
)

_CacheKey = tuple[bytes, int]


class OCSPFailure(SourceFailure):
    """OCSP gave no verified answer; ``kind`` says how, in one stable word (see :data:`FailureKind`).

    When several responders were tried, ``failures`` holds each one's failure, ``detail`` joins
    them, and ``kind`` is theirs when they agree, else ``"multiple"``.
    """

    def __init__(
        self,
        source: str,
        detail: str,
        *,
        kind: FailureKind,
        failures: tuple[OCSPFailure, ...] = (),
    ) -> None:
        super().__init__(source, detail)
        self.kind: FailureKind = kind
        self.failures = failures or (self,)

    @classmethod
    def combine(cls, failures: Sequence[OCSPFailure]) -> OCSPFailure:
        """One failure standing for all of ``failures`` (at least one)."""
        if len(failures) == 1:
            return failures[0]
        kinds = {f.kind for f in failures}
        return cls(
            ", ".join(f.source for f in failures),
            "; ".join(f"{f.source}: {f.detail}" for f in failures),
            kind=kinds.pop() if len(kinds) == 1 else "multiple",
            failures=tuple(failures),
        )


class OCSPSource:
    """Revocation status by OCSP: a :class:`~.base.StatusSource` with ``method = "ocsp"``.

    Thread-safe; blocking (run it off any event loop). One instance holds one cache: share it.

    Args:
        fetcher: the HTTP client (timeouts and the deadline are enforced there).
        responder: ask this URL instead of the certificates' AIA OCSP URLs.
        pinned: responder certificates trusted to sign for any issuer, for responders the issuer did
            not delegate to: a response whose responder ID names one (by name or key hash) and that
            verifies under its key is accepted; being configured, they need no EKU or validity.
        nonce: send a random nonce and require it echoed (forces POST; defeats HTTP caching).
        max_bytes: the largest response read.
        clock_skew: seconds of clock difference tolerated on thisUpdate and nextUpdate.
        max_age: refuse responses whose thisUpdate is older than this many seconds (None: no limit
            beyond nextUpdate).
        cache_size: how many verified answers to keep (least recently used go first); 0 disables.
        shared: a cache shared with other processes (Redis), for the raw responses; not used
            with ``nonce``.

    Raises:
        ConfigurationError: an argument that cannot work (non-HTTP responder URL, a non-positive
            size or age, a pinned object that is not a certificate).
    """

    method: Method = "ocsp"

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        responder: str | None = None,
        pinned: Sequence[x509.Certificate] = (),
        nonce: bool = False,
        max_bytes: int = 65536,
        clock_skew: float = 300.0,
        max_age: float | None = None,
        cache_size: int = 10000,
        shared: SharedCache | None = None,
    ) -> None:
        if responder is not None and not _fetchable(responder):
            raise ConfigurationError(
                detail=f"the OCSP responder {responder!r} is not an http:// or https:// URL"
            )
        if max_bytes <= 0:
            raise ConfigurationError(detail="the OCSP response size limit must be positive")
        if clock_skew < 0:
            raise ConfigurationError(detail="the OCSP clock skew must not be negative")
        if max_age is not None and max_age <= 0:
            raise ConfigurationError(detail="the OCSP max_age must be positive (or None for no limit)")
        if cache_size < 0:
            raise ConfigurationError(detail="the OCSP cache size must not be negative")
        for cert in pinned:
            if not isinstance(cert, x509.Certificate):
                raise ConfigurationError(detail="pinned OCSP responders must be x509.Certificate objects")
        self.fetcher = fetcher
        self.responder = responder
        self.pinned = tuple(pinned)
        self.nonce = nonce
        self.max_bytes = max_bytes
        self.clock_skew = dt.timedelta(seconds=clock_skew)
        self.max_age = dt.timedelta(seconds=max_age) if max_age is not None else None
        self._cache: LRUCache[_CacheKey, StatusAnswer] | None = (
            LRUCache(maxsize=cache_size) if cache_size else None
        )
        self._lock = threading.Lock()
        self._issuer_hashes: dict[x509.Certificate, tuple[bytes, bytes]] = {}
        self._flight: SingleFlight[StatusAnswer] = SingleFlight()
        # A response to a nonce is good for the request that sent it only.
        self.shared = shared if not nonce else None
        # The newest thisUpdate accepted per CertID: an older copy from the shared cache (a replay
        # of a superseded "good" by whoever can write to Redis) is refused, even once the answer
        # itself has left the local cache.
        self._newest: LRUCache[_CacheKey, dt.datetime] = LRUCache(maxsize=max(cache_size, _MIN_NEWEST))

    # --- StatusSource ------------------------------------------------------------------------

    def locations(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, ...]:
        """The override responder, else the certificate's AIA OCSP URLs (http/https only, at most 4)."""
        if self.responder is not None:
            return (self.responder,)
        try:
            aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        except (x509.ExtensionNotFound, ValueError):  # absent, or unreadable (e.g. duplicated)
            return ()
        urls: list[str] = []
        for description in aia:
            location = description.access_location
            if (
                description.access_method == AuthorityInformationAccessOID.OCSP
                and isinstance(location, x509.UniformResourceIdentifier)
                and _fetchable(location.value)
                and location.value not in urls
            ):
                urls.append(location.value)
        return tuple(urls[:_MAX_LOCATIONS])

    def status(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        *,
        deadline: float,
        now: dt.datetime,
        above: Sequence[x509.Certificate] = (),
        where: tuple[str, ...] | None = None,
    ) -> StatusAnswer:
        """The verified OCSP status of ``cert`` (issued by ``issuer``), judged at ``now``.

        ``above`` is not used (OCSP responses are vouched for by the issuer itself); ``where`` is
        :meth:`locations`' answer when the caller has it.

        A cached answer still valid at ``now`` is returned with ``cached=True`` and ``elapsed=0``.
        Otherwise each location is tried in turn until one gives a verified answer; callers asking
        about the same certificate meanwhile wait for that work instead of repeating it. A naive
        ``now`` is taken as UTC. ``unknown`` is an answer, not a failure (the checker falls back).

        Raises:
            OCSPFailure: no verified answer (every location's failure is in ``failures``); no other
                exception leaves this method.
        """
        try:
            return self._status(cert, issuer, deadline, _utc(now), where)
        except OCSPFailure:
            raise
        except Exception as exc:
            raise OCSPFailure("ocsp", f"unexpected {type(exc).__name__}: {exc}", kind="internal") from exc

    # --- the work ----------------------------------------------------------------------------

    def _status(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        deadline: float,
        now: dt.datetime,
        where: tuple[str, ...] | None,
    ) -> StatusAnswer:
        urls = self.locations(cert, issuer) if where is None else where
        if not urls:
            raise OCSPFailure(
                "ocsp",
                "no OCSP responder: none in the certificate's AIA and none configured",
                kind="no-responder",
            )
        cert_id = self._sha1_cert_id(cert, issuer)
        key: _CacheKey = (cert_id[1], cert_id[2])
        hit = self._cached(key, now)
        if hit is not None:
            return hit

        def fetch() -> StatusAnswer:
            # A caller may have missed the cache just before the previous fetch stored its answer.
            again = self._cached(key, now)
            return again if again is not None else self._fetch(urls, cert, issuer, cert_id, deadline, now)

        try:
            return self._flight.do(key, fetch, timeout=max(0.0, deadline - time.monotonic()))
        except OCSPFailure:
            raise
        except FetchError:  # this caller's time ran out while another's fetch was in flight
            raise OCSPFailure(
                ", ".join(urls), "gave up waiting for the fetch already in flight", kind="timeout"
            ) from None

    def _sha1_cert_id(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[bytes, bytes, int]:
        # The issuer's two hashes are the same for every certificate it signed: building an OCSP
        # request to learn them costs more than the rest of a cache hit together.
        hashed = self._issuer_hashes.get(issuer)
        if hashed is None:
            # CertIDs use SHA-1: every responder supports it; it identifies, it does not protect.
            name_hash, key_hash, _ = _cert_id(cert, issuer, hashes.SHA1())  # noqa: S303
            hashed = (name_hash, key_hash)
            with self._lock:
                if len(self._issuer_hashes) >= _MAX_ISSUERS:
                    self._issuer_hashes.clear()
                self._issuer_hashes[issuer] = hashed
        return hashed[0], hashed[1], cert.serial_number

    def _cached(self, key: _CacheKey, now: dt.datetime) -> StatusAnswer | None:
        if self._cache is None:
            return None
        with self._lock:
            answer = self._cache.get(key)
            if answer is None:
                return None
            if answer.expires <= now.timestamp():
                del self._cache[key]
                return None
        return answer  # stored as a cache hit reads it: cached=True, elapsed=0

    def _fetch(
        self,
        urls: tuple[str, ...],
        cert: x509.Certificate,
        issuer: x509.Certificate,
        cert_id: tuple[bytes, bytes, int],
        deadline: float,
        now: dt.datetime,
    ) -> StatusAnswer:
        shared = self.shared
        claim = Claim()
        shared_key = f"{cert_id[1].hex()}:{cert_id[2]:x}"
        if shared is not None:
            # Stored as ``responder URL \n DER``: capped like a fetched response, plus its label.
            cap = self.max_bytes + 1 + max((len(url.encode()) for url in urls), default=0)
            claim = shared.claim("ocsp", shared_key, deadline=deadline, max_bytes=cap)
            if claim.data is not None:
                answer = self._from_shared(claim.data, urls, cert, issuer, cert_id, now)
                if answer is not None:
                    self._keep(answer, cert_id, now)
                    return answer
                shared.reject("ocsp", shared_key, claim.data, deadline=deadline)
        failures: list[OCSPFailure] = []
        try:
            for url in urls:
                if time.monotonic() >= deadline:
                    failures.append(OCSPFailure(url, "no time left to ask this responder", kind="timeout"))
                    break
                try:
                    answer, body = self._ask(url, cert, issuer, cert_id, deadline, now)
                except OCSPFailure as exc:
                    failures.append(exc)
                except FetchError as exc:
                    failures.append(OCSPFailure(url, exc.detail, kind=exc.kind))
                except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                    # cryptography parses lazily: a field of a hostile response can fail on access.
                    failures.append(OCSPFailure(url, f"unreadable response: {exc}", kind="malformed"))
                else:
                    self._keep(answer, cert_id, now)
                    if shared is not None and body is not None:
                        token, claim.token = claim.token, None
                        shared.publish(
                            "ocsp",
                            shared_key,
                            url.encode() + b"\n" + body,
                            ttl=answer.expires - time.time(),
                            token=token,
                            deadline=deadline,
                        )
                    return answer
            raise OCSPFailure.combine(failures)
        finally:
            if shared is not None:
                shared.release("ocsp", shared_key, claim.token, deadline=deadline)

    def _keep(self, answer: StatusAnswer, cert_id: tuple[bytes, bytes, int], now: dt.datetime) -> None:
        if self.shared is not None and answer.this_update is not None:
            with self._lock:
                seen = self._newest.get((cert_id[1], cert_id[2]))
                if seen is None or answer.this_update > seen:
                    self._newest[(cert_id[1], cert_id[2])] = answer.this_update
        if self._cache is not None and answer.expires > now.timestamp():
            with self._lock:
                self._cache[(cert_id[1], cert_id[2])] = dataclasses.replace(answer, cached=True, elapsed=0.0)

    def _from_shared(
        self,
        data: bytes,
        urls: tuple[str, ...],
        cert: x509.Certificate,
        issuer: x509.Certificate,
        cert_id: tuple[bytes, bytes, int],
        now: dt.datetime,
    ) -> StatusAnswer | None:
        """The answer in ``data`` (``responder URL \\n DER`` from the shared cache), verified as a
        fetched response is; None when it does not verify or is no longer fresh."""
        started = time.monotonic()
        label, _, body = data.partition(b"\n")
        url = label.decode("utf-8", "replace")
        if url not in urls:  # the label is only for the history: never name a place we did not ask
            url = urls[0]
        try:
            answer = self._verify(url, body, cert, issuer, cert_id, now, None, started)
        except (OCSPFailure, ValueError, TypeError, UnsupportedAlgorithm):
            return None
        if answer.expires <= now.timestamp():
            return None
        with self._lock:
            seen = self._newest.get((cert_id[1], cert_id[2]))
        if seen is not None and answer.this_update is not None and answer.this_update < seen:
            return None  # older than one this process already accepted: a replay, or a lagging copy
        return dataclasses.replace(answer, cached=True)

    def _ask(
        self,
        url: str,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        cert_id: tuple[bytes, bytes, int],
        deadline: float,
        now: dt.datetime,
    ) -> tuple[StatusAnswer, bytes | None]:
        """The verified answer of the responder at ``url``, and the response bytes when they may
        be shared with other processes (not with a nonce)."""
        started = time.monotonic()
        nonce = os.urandom(_NONCE_BYTES) if self.nonce else None
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        request = builder.build().public_bytes(serialization.Encoding.DER)
        encoded = urllib.parse.quote(base64.b64encode(request).decode("ascii"), safe="")
        # A nonce makes every request unique: GET would only pollute HTTP caches.
        if nonce is None and len(encoded) < _GET_LIMIT and not urllib.parse.urlsplit(url).query:
            target = url + encoded if url.endswith("/") else f"{url}/{encoded}"
            body = self.fetcher.get(
                target, max_bytes=self.max_bytes, deadline=deadline, accept=_CONTENT_TYPE_RESPONSE
            )
        else:
            body = self.fetcher.post(
                url, request, content_type=_CONTENT_TYPE_REQUEST, max_bytes=self.max_bytes, deadline=deadline
            )
        answer = self._verify(url, body, cert, issuer, cert_id, now, nonce, started)
        return answer, (body if nonce is None else None)

    def _verify(
        self,
        url: str,
        body: bytes,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        cert_id: tuple[bytes, bytes, int],
        now: dt.datetime,
        nonce: bytes | None,
        started: float,
    ) -> StatusAnswer:
        """The answer in the DER response ``body``, once every check of the module docstring holds."""
        try:
            response = ocsp.load_der_ocsp_response(body)
        except ValueError:
            raise OCSPFailure(url, f"not a DER OCSP response ({len(body)} bytes)", kind="malformed") from None
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise OCSPFailure(
                url, f"the responder answered {response.response_status.name.lower()}", kind="status"
            )
        self._check_signer(url, response, issuer, now)
        if nonce is not None:
            _check_nonce(url, response, nonce)
        single = _single_for(response, cert, issuer, cert_id)
        if single is None:
            raise OCSPFailure(url, "the response has no answer for this certificate's CertID", kind="certid")

        this_update = single.this_update_utc
        next_update = single.next_update_utc
        if this_update > now + self.clock_skew:
            raise OCSPFailure(url, f"thisUpdate {this_update.isoformat()} is in the future", kind="future")
        if next_update is not None and next_update < now - self.clock_skew:
            raise OCSPFailure(url, f"stale: nextUpdate {next_update.isoformat()} has passed", kind="stale")
        if self.max_age is not None and this_update < now - self.max_age:
            raise OCSPFailure(
                url, f"stale: thisUpdate {this_update.isoformat()} is older than max_age", kind="stale"
            )
        # Without a nextUpdate the responder promises nothing about tomorrow: use it for this call.
        expires = next_update.timestamp() if next_update is not None else now.timestamp()
        if self.max_age is not None:
            expires = min(expires, (this_update + self.max_age).timestamp())

        cert_status = single.certificate_status
        revoked_at: dt.datetime | None = None
        reason: str | None = None
        if cert_status == ocsp.OCSPCertStatus.GOOD:
            status: Status = "good"
        elif cert_status == ocsp.OCSPCertStatus.REVOKED:
            status = "revoked"
            revoked_at = single.revocation_time_utc
            flag = single.revocation_reason
            reason = flag.value if flag is not None else None
        else:
            status = "unknown"
        return StatusAnswer(
            status=status,
            method="ocsp",
            source=url,
            expires=expires,
            this_update=this_update,
            next_update=next_update,
            cached=False,
            elapsed=time.monotonic() - started,
            revoked_at=revoked_at,
            reason=reason,
        )

    def _check_signer(
        self, url: str, response: ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
    ) -> None:
        """Accept the response's signer and signature, or raise (``unauthorized-signer``/``signature``)."""
        candidates: list[tuple[x509.Certificate, str]] = [(issuer, "issuer")]
        candidates += [(cert, "pinned") for cert in self.pinned]
        candidates += [(cert, "delegated") for cert in response.certificates]
        named = [(cert, role) for cert, role in candidates if _is_responder(response, cert)]
        if not named:
            raise OCSPFailure(
                url,
                "the responder ID names neither the issuer, a pinned responder, nor a certificate "
                "in the response",
                kind="unauthorized-signer",
            )
        refusals: list[str] = []
        bad_signatures: list[str] = []
        for cert, role in named:
            if role == "delegated":
                refusal = _delegation_refusal(cert, issuer, now)
                if refusal is not None:
                    refusals.append(f"responder certificate {cert.subject.rfc4514_string()}: {refusal}")
                    continue
            problem = _signature_problem(cert.public_key(), response)
            if problem is None:
                return
            bad_signatures.append(f"{role} key: {problem}")
        if bad_signatures:
            raise OCSPFailure(url, "; ".join(bad_signatures), kind="signature")
        raise OCSPFailure(url, "; ".join(refusals), kind="unauthorized-signer")


# --- helpers ---------------------------------------------------------------------------------


def _utc(now: dt.datetime) -> dt.datetime:
    return now.replace(tzinfo=dt.timezone.utc) if now.tzinfo is None else now.astimezone(dt.timezone.utc)


def _fetchable(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _cert_id(
    cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes, int]:
    """(issuerNameHash, issuerKeyHash, serialNumber) of ``cert`` under ``algorithm``.

    Raises:
        ValueError: ``algorithm`` is not one OCSP CertIDs use (SHA-1, SHA-2).
    """
    # cryptography computes exactly these hashes for a request; let it, rather than re-deriving
    # the subjectPublicKey bit string here.
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash, request.serial_number


def _single_for(
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    sha1_id: tuple[bytes, bytes, int],
) -> ocsp.OCSPSingleResponse | None:
    """The SingleResponse about ``cert``, compared under the hash algorithm each one uses."""
    ids: dict[str, tuple[bytes, bytes, int] | None] = {"sha1": sha1_id}
    for single in response.responses:
        if single.serial_number != sha1_id[2]:
            continue
        try:
            algorithm = single.hash_algorithm
        except UnsupportedAlgorithm:
            continue
        if algorithm.name not in ids:
            try:
                ids[algorithm.name] = _cert_id(cert, issuer, algorithm)
            except ValueError:  # a hash OCSP CertIDs do not use
                ids[algorithm.name] = None
        expected = ids[algorithm.name]
        if (
            expected is not None
            and single.issuer_name_hash == expected[0]
            and single.issuer_key_hash == expected[1]
        ):
            return single
    return None


def _check_nonce(url: str, response: ocsp.OCSPResponse, nonce: bytes) -> None:
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        raise OCSPFailure(url, "the responder did not echo the nonce sent", kind="nonce") from None
    if not hmac.compare_digest(echoed, nonce):
        raise OCSPFailure(url, "the responder echoed a nonce other than the one sent", kind="nonce")


def _is_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the response's ResponderID (byName or byKey) names ``cert``."""
    name = response.responder_name
    if name is not None:
        return cert.subject == name
    key_hash = response.responder_key_hash
    if key_hash is None:
        return False
    try:
        # RFC 6960 byKey: SHA-1 of the subjectPublicKey bit string, which is what RFC 5280's
        # method (1) key identifier is.
        digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return hmac.compare_digest(digest, key_hash)


def _delegation_refusal(
    responder: x509.Certificate, issuer: x509.Certificate, now: dt.datetime
) -> str | None:
    """Why ``responder`` may not sign for ``issuer`` (RFC 6960 §4.2.2.2), or None when it may."""
    try:
        responder.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return "not issued and signed by the certificate's issuer"
    try:
        eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "no Extended Key Usage (id-kp-OCSPSigning is required)"
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        return "its Extended Key Usage lacks id-kp-OCSPSigning"
    if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
        return "not valid now"
    return None


def _signature_problem(public_key: object, response: ocsp.OCSPResponse) -> str | None:
    """Why the response's signature does not verify under ``public_key``, or None when it does.

    cryptography offers no one-call verification of an OCSP response: the algorithm is read from
    the response and must belong to the key's family (an RSA key with an ECDSA OID is refused).
    """
    oid = response.signature_algorithm_oid
    data, signature = response.tbs_response_bytes, response.signature
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and oid in _RSA_PKCS1:
            public_key.verify(signature, data, padding.PKCS1v15(), _hash(response))
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and oid in _ECDSA:
            public_key.verify(signature, data, ec.ECDSA(_hash(response)))
        elif (isinstance(public_key, ed25519.Ed25519PublicKey) and oid == SignatureAlgorithmOID.ED25519) or (
            isinstance(public_key, ed448.Ed448PublicKey) and oid == SignatureAlgorithmOID.ED448
        ):
            public_key.verify(signature, data)
        else:
            return f"unsupported signature algorithm {oid.dotted_string} for a {type(public_key).__name__}"
    except InvalidSignature:
        return "the signature does not verify"
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        return f"unsupported signature algorithm: {exc}"
    return None


def _hash(response: ocsp.OCSPResponse) -> hashes.HashAlgorithm:
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise ValueError("no hash algorithm in the signature algorithm")
    return algorithm
