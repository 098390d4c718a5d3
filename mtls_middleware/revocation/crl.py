"""Certificate revocation lists: fetch or load, verify, index once, answer each lookup in O(1).

A CRL is parsed and its revoked serials indexed once per fetched (or re-read) copy: the index
maps each serial to where its entry sits, and the few entries that are ever hit are decoded on
first use. Loading a million-entry CRL therefore costs one pass over its bytes, and a lookup is a
dict probe. Cached copies are used until their nextUpdate, or until ``max_age`` after their
thisUpdate when that comes first; when one enters the last tenth of that life, a single background
thread fetches the next one while requests keep using the current one. With a
:class:`~.shared.SharedCache` a fetched CRL, once judged authentic and fresh, is shared with the
other processes for the same life; a copy read from there is judged like a fetched one, and
refused and fetched from its URL when it does not pass, for whatever reason.

What we refuse rather than misjudge (a :class:`SourceFailure`, never a wrong "good"): delta and
indirect CRLs, unknown critical extensions (of the CRL or of any entry), a CRL whose
issuingDistributionPoint scope does not cover the certificate, a CRL without nextUpdate.
"""

from __future__ import annotations

import binascii
import datetime as dt
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from ..errors import ConfigurationError
from .base import Method, SourceFailure, StatusAnswer
from .fetch import Fetcher, SingleFlight
from .shared import SharedCache

__all__ = ["CRLSource", "IndexedCRL", "RevokedEntry", "load_crl"]

_PEM_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----(.*?)-----END X509 CRL-----", re.S)

#: CRL extensions we process (or that do not change the meaning of the list).
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.FRESHEST_CRL,
    }
)
_KNOWN_ENTRY_EXTENSIONS = frozenset(
    {
        CRLEntryExtensionOID.CRL_REASON,
        CRLEntryExtensionOID.INVALIDITY_DATE,
        x509.ObjectIdentifier("2.5.29.23"),  # holdInstructionCode
    }
)
#: Every reason a CRL can be partitioned by (RFC 5280 ReasonFlags, without "unused").
ALL_REASONS = frozenset(
    f for f in x509.ReasonFlags if f not in (x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl)
)
# DER BOOLEAN TRUE: a critical extension always contains it, so its absence rules them all out.
_DER_TRUE = b"\x01\x01\xff"
# Above this many suspect entries, one full pass through cryptography is cheaper than one scan each.
_SUSPECT_LIMIT = 32
_MAX_SIGNER_DEPTH = 3
# Refresh ahead when this share of a CRL's life is left; retry a failed refresh after this long.
_REFRESH_SHARE = 0.1
_REFRESH_RETRY = 30.0
# How often a local file's mtime is looked at, at most.
_FILE_CHECK_INTERVAL = 1.0


def crl_der(data: bytes) -> bytes:
    """The DER of a CRL given as DER or PEM (``-----BEGIN X509 CRL-----``).

    Raises:
        ValueError: PEM without a CRL block, or bad base64.
    """
    if data.lstrip()[:10] == b"-----BEGIN":
        match = _PEM_BLOCK.search(data)
        if match is None:
            raise ValueError("PEM data without an X509 CRL block")
        try:
            return binascii.a2b_base64(match.group(1))
        except binascii.Error as exc:
            raise ValueError(f"bad base64 in the PEM CRL: {exc}") from None
    return data


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """Parse a CRL given as PEM or DER.

    Raises:
        ValueError: not a CRL.
    """
    return x509.load_der_x509_crl(crl_der(data))


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked serial: when, and why (a CRL reason name such as ``keyCompromise``, or None)."""

    revoked_at: dt.datetime
    reason: str | None


def _tlv(d: bytes, p: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``p``."""
    if p + 2 > end:
        raise ValueError("truncated DER")
    tag, length = d[p], d[p + 1]
    p += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or p + n > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(d[p : p + n], "big")
        p += n
    if p + length > end:
        raise ValueError("truncated DER")
    return tag, p, p + length


_REASON_OID = bytes.fromhex("0603551d15")  # 2.5.29.21, cRLReason
#: RFC 5280 5.3.1 CRLReason codes, spelled as cryptography's ReasonFlags values.
_REASONS = {
    0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
    4: "superseded", 5: "cessationOfOperation", 6: "certificateHold", 8: "removeFromCRL",
    9: "privilegeWithdrawn", 10: "aACompromise",
}


def _decode_entry(d: bytes, p: int) -> RevokedEntry:
    """The revocation time and reason of the revokedCertificates entry at ``p``, from its DER.

    The library's own lookup by serial walks the whole list (a million entries for a large CA);
    the index already knows where the entry starts.

    Raises:
        ValueError, IndexError: not an entry as RFC 5280 5.1.2.6 encodes it.
    """
    _, start, end = _tlv(d, p, len(d))
    tag, _, after = _tlv(d, start, end)  # userCertificate
    if tag != 0x02:
        raise ValueError("entry without a serial")
    tag, t0, t1 = _tlv(d, after, end)
    text = d[t0:t1].decode("ascii")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):  # GeneralizedTime
        raise ValueError("unexpected revocationDate encoding")
    when = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    reason: str | None = None
    if t1 < end:
        tag, e0, e1 = _tlv(d, t1, end)  # crlEntryExtensions
        if tag != 0x30:
            raise ValueError("unexpected entry field")
        q = e0
        while q < e1:
            _, x0, x1 = _tlv(d, q, e1)
            q = x1
            if d[x0 : x0 + len(_REASON_OID)] != _REASON_OID:
                continue
            r = x0 + len(_REASON_OID)
            tag, v0, v1 = _tlv(d, r, x1)
            if tag == 0x01:  # critical BOOLEAN
                tag, v0, v1 = _tlv(d, v1, x1)
            if tag != 0x04:
                raise ValueError("cRLReason without an OCTET STRING")
            tag, n0, n1 = _tlv(d, v0, v1)
            if tag != 0x0A or n1 - n0 != 1 or d[n0] not in _REASONS:
                raise ValueError("unexpected cRLReason value")
            reason = _REASONS[d[n0]]
    return RevokedEntry(when, reason)


def _signature_ok(crl: x509.CertificateRevocationList, tbs: bytes, key: Any) -> bool:
    """Whether ``key`` signed ``tbs`` with the CRL's signature algorithm.

    Verifies over the received tbsCertList bytes: ``crl.is_signature_valid`` re-encodes the whole
    list first, which costs more than the hash for a large CRL.
    """
    try:
        signature = crl.signature
        params = crl.signature_algorithm_parameters
        if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, tbs)
        elif isinstance(key, rsa.RSAPublicKey):
            algorithm = crl.signature_hash_algorithm
            if algorithm is None or params is None:
                return False
            key.verify(signature, tbs, params, algorithm)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            key.verify(signature, tbs, params)
        elif isinstance(key, dsa.DSAPublicKey):
            algorithm = crl.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(signature, tbs, algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
    return True


def _key_id(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class IndexedCRL:
    """A parsed CRL with its revoked serials indexed for O(1) lookups.

    Building one parses the CRL (PEM or DER), optionally checks its signature with ``signer`` (a
    public key), and walks the revoked list once. Whether the CRL is usable at all is judged here
    too: :attr:`unusable` names the first reason it is not (delta or indirect CRL, unknown
    critical extension of the CRL or of an entry), None when it is. Thread-safe for lookups.

    Raises:
        ValueError: the data is not a well-formed CRL, or ``signer`` did not sign it.
    """

    __slots__ = (
        "_base",
        "_get",
        "_index",
        "_lock",
        "_verified",
        "crl",
        "idp",
        "is_revoked",
        "issuer",
        "next_update",
        "size",
        "source",
        "tbs",
        "this_update",
        "unusable",
        "vouched",
    )

    def __init__(self, data: bytes, *, signer: Any = None, source: str = "<memory>") -> None:
        der = crl_der(data)
        self.crl = x509.load_der_x509_crl(der)
        self.source = source
        self.size = len(der)
        _, start, end = _tlv(der, 0, len(der))
        _, tbs_start, tbs_end = _tlv(der, start, end)
        tbs_header = start
        self.tbs = der[tbs_header:tbs_end]
        self._base = tbs_header  # entry offsets are into der; self.tbs starts here
        self._lock = threading.Lock()
        self._verified: dict[bytes, bool] = {}
        #: Issuer certificates whose own key signed this CRL and which may sign CRLs (cRLSign).
        self.vouched: set[x509.Certificate] = set()
        if signer is not None and not self.is_signed_by(signer):
            raise ValueError("the CRL signature does not verify with the given key")
        self.issuer = self.crl.issuer
        self.this_update = self.crl.last_update_utc
        self.next_update = self.crl.next_update_utc
        self.idp: x509.IssuingDistributionPoint | None = None
        self.unusable: str | None = None
        list_start, list_end = self._revoked_list(der, tbs_start, tbs_end)
        self._index: dict[int, int | RevokedEntry] = (
            self._walk(der, list_start, list_end) if list_end > list_start else {}
        )
        self._get = self._index.get
        #: ``is_revoked(serial)``: whether the CRL lists ``serial``; the dict's own C-level test,
        #: which is all a request for a good certificate (the common case) costs.
        self.is_revoked = self._index.__contains__
        self.unusable = self._crl_extension_problem() or self._entry_extension_problem(
            der, list_start, list_end
        )

    # -- building ---------------------------------------------------------------------------------
    @staticmethod
    def _revoked_list(d: bytes, p: int, end: int) -> tuple[int, int]:
        """Content bounds of revokedCertificates inside tbsCertList (empty when absent)."""
        tag, _, after = _tlv(d, p, end)
        if tag == 0x02:  # version
            p = after
        for _ in range(3):  # signature, issuer, thisUpdate
            _, _, p = _tlv(d, p, end)
        if p < end and d[p] in (0x17, 0x18):  # nextUpdate
            _, _, p = _tlv(d, p, end)
        if p < end and d[p] == 0x30:
            _, start, stop = _tlv(d, p, end)
            return start, stop
        return p, p

    @staticmethod
    def _walk(d: bytes, p: int, end: int) -> dict[int, int | RevokedEntry]:
        """serial -> offset of its entry, in one pass (the hot loop of loading a large CRL)."""
        index: dict[int, int | RevokedEntry] = {}
        from_bytes = int.from_bytes
        try:
            while p < end:
                length = d[p + 1]
                if length < 0x80:
                    q = p + 2
                    following = q + length
                else:
                    n = length & 0x7F
                    q = p + 2 + n
                    following = q + from_bytes(d[p + 2 : q], "big")
                serial_length = d[q + 1]
                if d[p] != 0x30 or d[q] != 0x02 or serial_length & 0x80:
                    raise ValueError(f"malformed revoked-certificate entry at offset {p}")
                index[from_bytes(d[q + 2 : q + 2 + serial_length], "big", signed=True)] = p
                p = following
        except IndexError:
            raise ValueError("truncated revoked-certificate list") from None
        if p != end:
            raise ValueError("the revoked-certificate list does not end where its length says")
        return index

    def _crl_extension_problem(self) -> str | None:
        try:
            extensions = list(self.crl.extensions)
        except Exception as exc:  # duplicate or malformed extensions: unusable, not a crash
            return f"unreadable CRL extensions: {exc}"
        for ext in extensions:
            if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
                return "delta/indirect CRLs not supported (this is a delta CRL)"
            if ext.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
                idp = ext.value
                assert isinstance(idp, x509.IssuingDistributionPoint)  # by OID; for the type checker
                if idp.indirect_crl:
                    return "delta/indirect CRLs not supported (this is an indirect CRL)"
                if idp.only_contains_attribute_certs:
                    return "the CRL covers attribute certificates only"
                self.idp = idp
            elif ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
                return f"unknown critical CRL extension {ext.oid.dotted_string}"
        return None

    def _entry_extension_problem(self, d: bytes, start: int, end: int) -> str | None:
        """An unknown critical entry extension makes the whole CRL unusable (RFC 5280 5.3)."""
        hit = d.find(_DER_TRUE, start, end)
        if hit < 0:
            return None
        suspects: list[int] = []
        p = start
        while p < end and hit >= 0:
            _, _, following = _tlv(d, p, end)
            if hit < following:
                _, q, _ = _tlv(d, p, end)
                _, s, e = _tlv(d, q, following)
                suspects.append(int.from_bytes(d[s:e], "big", signed=True))
                hit = d.find(_DER_TRUE, following, end)
            p = following
        entries: Iterable[x509.RevokedCertificate]
        if len(suspects) > _SUSPECT_LIMIT:
            entries = iter(self.crl)
        else:
            found = (self.crl.get_revoked_certificate_by_serial_number(s) for s in suspects)
            entries = [r for r in found if r is not None]
        for entry in entries:
            try:
                extensions = list(entry.extensions)
            except Exception as exc:
                return f"unreadable CRL entry extensions (serial {entry.serial_number:x}): {exc}"
            for ext in extensions:
                if ext.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                    return "delta/indirect CRLs not supported (an entry names a certificate issuer)"
                if ext.critical and ext.oid not in _KNOWN_ENTRY_EXTENSIONS:
                    return (
                        f"unknown critical CRL entry extension {ext.oid.dotted_string} "
                        f"(serial {entry.serial_number:x})"
                    )
        return None

    # -- use --------------------------------------------------------------------------------------
    def is_signed_by(self, key: Any) -> bool:
        """Whether the public ``key`` signed this CRL (remembered per key)."""
        kid = _key_id(key)
        known = self._verified.get(kid)
        if known is None:
            known = self._verified[kid] = _signature_ok(self.crl, self.tbs, key)
        return known

    def lookup(self, serial: int) -> RevokedEntry | None:
        """The entry for ``serial``, or None when the CRL does not list it. O(1)."""
        found = self._get(serial)
        if found is None or found.__class__ is RevokedEntry:
            return found
        return self._decode(serial)

    def _decode(self, serial: int) -> RevokedEntry | None:
        # Only on a hit, once per serial: a revoked certificate is rare and then refused.
        with self._lock:
            found = self._index.get(serial)
            if isinstance(found, RevokedEntry):
                return found
            if found is not None:
                try:
                    decoded = _decode_entry(self.tbs, found - self._base)
                except (ValueError, IndexError):
                    decoded = None  # unusual encoding: the library's (linear) lookup decides
                if decoded is not None:
                    self._index[serial] = decoded
                    return decoded
            entry = self.crl.get_revoked_certificate_by_serial_number(serial)
            if entry is None:  # cannot happen for a serial we indexed; stay correct anyway
                return None
            reason: str | None = None
            try:
                ext = entry.extensions.get_extension_for_class(x509.CRLReason)
                reason = ext.value.reason.value
            except x509.ExtensionNotFound:
                pass
            decoded = RevokedEntry(entry.revocation_date_utc, reason)
            self._index[serial] = decoded
            return decoded

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, serial: object) -> bool:
        return serial in self._index


# -- distribution-point scope ---------------------------------------------------------------------
def _dp_names(
    full: Sequence[x509.GeneralName] | None, relative: x509.RelativeDistinguishedName | None, base: x509.Name
) -> set[x509.GeneralName]:
    if full:
        return set(full)
    if relative is not None:
        return {x509.DirectoryName(x509.Name([*base.rdns, relative]))}
    return set()


def _cdp(cert: x509.Certificate) -> list[x509.DistributionPoint]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value)
    except x509.ExtensionNotFound:
        return []


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _scope(crl: IndexedCRL, cert: x509.Certificate) -> frozenset[x509.ReasonFlags]:
    """The reasons for which ``crl`` speaks about ``cert``; SourceFailure when it does not cover it."""
    idp = crl.idp
    if idp is None:
        return ALL_REASONS
    if idp.only_contains_user_certs and _is_ca(cert):
        raise SourceFailure(crl.source, "the CRL covers end-entity certificates only; this is a CA")
    if idp.only_contains_ca_certs and not _is_ca(cert):
        raise SourceFailure(crl.source, "the CRL covers CA certificates only; this is an end entity")
    reasons = frozenset(idp.only_some_reasons) if idp.only_some_reasons else ALL_REASONS
    idp_names = _dp_names(idp.full_name, idp.relative_name, crl.issuer)
    if idp_names:
        for point in _cdp(cert):
            if point.crl_issuer:
                continue  # names a CRL issuer other than the CA: indirect, not supported
            if idp_names & _dp_names(point.full_name, point.relative_name, cert.issuer):
                if point.reasons:
                    reasons &= frozenset(point.reasons)
                break
        else:
            raise SourceFailure(
                crl.source, "the CRL is for another distribution point than the certificate names"
            )
    return reasons


# -- the source -----------------------------------------------------------------------------------
@dataclass
class _Cached:
    crl: IndexedCRL
    refreshing: bool = False
    last_attempt: float = 0.0
    last_error: str | None = None


@dataclass
class _Fetched:
    """A CRL obtained over HTTP or from the shared cache, until judged and shared.

    ``raw``: the bytes fetched from the URL (to share once judged); None for a copy read from the
    shared cache (``shared``), whose bytes are ``stored``. ``token``: the cluster-wide fetch lock,
    while it is held.
    """

    crl: IndexedCRL
    raw: bytes | None = None
    token: str | None = None
    shared: bool = False
    published: bool = False
    stored: bytes | None = None  # the bytes as read from the shared cache


@dataclass
class _LocalFile:
    path: str
    mtime_ns: int
    size: int
    crl: IndexedCRL
    checked: float


def _load_file(path: str) -> tuple[IndexedCRL, os.stat_result]:
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        data = handle.read()
    return IndexedCRL(data, source=path), st


class CRLSource:
    """Revocation status from CRLs: the certificate's HTTP distribution points, configured URLs,
    and local files (PEM or DER).

    Args:
        fetcher: the HTTP client (timeouts, size cap, deadline).
        files: local CRL files; read now and re-read when their mtime changes.
        urls: extra CRL URLs, consulted for a certificate whenever the CRL they serve is (or may
            be, before the first fetch) from the certificate's issuer.
        signers: candidate certificates for CRLs signed by a separate key of the issuing CA.
        max_bytes: the largest CRL fetched.
        clock_skew: seconds of tolerance on thisUpdate/nextUpdate.
        max_age: refuse a CRL whose thisUpdate is older than this many seconds (None: no limit).
        shared: a cache shared with other processes (Redis) for fetched CRLs.

    Raises:
        ConfigurationError: a file that cannot be read or is not a CRL.
    """

    method: Method = "crl"

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        files: Sequence[str] = (),
        urls: Sequence[str] = (),
        signers: Sequence[x509.Certificate] = (),
        max_bytes: int = 128 * 1024 * 1024,
        clock_skew: float = 300.0,
        max_age: float | None = None,
        refresh_timeout: float = 60.0,
        shared: SharedCache | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._urls = tuple(urls)
        self._signers = tuple(signers)
        self._max_bytes = max_bytes
        self._skew = dt.timedelta(seconds=clock_skew)
        self._max_age = None if max_age is None else dt.timedelta(seconds=max_age)
        self._refresh_timeout = refresh_timeout
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._flight: SingleFlight[_Fetched] = SingleFlight()
        self.shared = shared
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self.fetches = 0  # how many CRLs were fetched over HTTP (metrics, tests)
        self._files: dict[str, _LocalFile] = {}
        for path in files:
            try:
                crl, st = _load_file(str(path))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(detail=f"CRL file {path}: {exc}") from None
            self._files[str(path)] = _LocalFile(str(path), st.st_mtime_ns, st.st_size, crl, time.monotonic())

    # -- where ------------------------------------------------------------------------------------
    def locations(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, ...]:
        """Local files of ``issuer`` first (no I/O), then the certificate's HTTP distribution
        points, then configured URLs that serve (or may serve) ``issuer``'s CRL."""
        found = [p for p, f in self._files.items() if f.crl.issuer == issuer.subject]
        for point in _cdp(cert):
            if point.crl_issuer:
                continue
            for general in point.full_name or ():
                if isinstance(general, x509.UniformResourceIdentifier):
                    uri = general.value
                    if uri.lower().startswith(("http://", "https://")) and uri not in found:
                        found.append(uri)
        for url in self._urls:
            cached = self._cache.get(url)
            if url not in found and (cached is None or cached.crl.issuer == issuer.subject):
                found.append(url)
        return tuple(found)

    # -- status -----------------------------------------------------------------------------------
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
        """The status of ``cert`` from the CRLs of :meth:`locations` (``where``, when given).

        ``above``: the certificates above ``issuer`` in the validated path, nearest first; they
        are where a separate CRL-signing certificate's issuer is looked for.

        Raises:
            SourceFailure: no usable CRL covers the certificate (each location's problem listed);
                no other exception leaves this method.
        """
        try:
            return self._status(cert, issuer, above, deadline=deadline, now=now, depth=0, where=where)
        except SourceFailure:
            raise
        except Exception as exc:  # a hostile CRL field the checks above did not foresee: fail closed
            raise SourceFailure("crl", f"unexpected {type(exc).__name__}: {exc}") from exc

    def _status(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        above: Sequence[x509.Certificate],
        *,
        deadline: float,
        now: dt.datetime,
        depth: int,
        where: tuple[str, ...] | None = None,
    ) -> StatusAnswer:
        started = time.monotonic()
        locations = self.locations(cert, issuer) if where is None else where
        if not locations:
            raise SourceFailure("crl", "no CRL is known for this certificate's issuer")
        failures: list[SourceFailure] = []
        covered: frozenset[x509.ReasonFlags] = frozenset()
        expires = float("inf")
        good: StatusAnswer | None = None
        all_cached = True
        for location in locations:
            if time.monotonic() >= deadline:
                failures.append(SourceFailure(location, "the time allowed for revocation checking ran out"))
                break
            try:
                crl, fetched = self._obtain(location, deadline, now)
                cached = fetched is None
                try:
                    self._judge(crl, issuer, above, now=now, deadline=deadline, depth=depth)
                except SourceFailure:
                    if fetched is None or not fetched.shared:
                        self._unlock(location, fetched, deadline)
                        raise
                    # Redis vouches for nothing: a copy from there that fails, for whatever reason
                    # (another CA's genuine CRL stored under this URL too), is fetched afresh ...
                    from_redis = fetched
                    try:
                        fetched = self._fetch(location, deadline, use_shared=False)
                    except SourceFailure:
                        self._reject(location, from_redis, deadline)
                        raise
                    # ... and deleted, unless the URL serves that very CRL (a configured URL may
                    # serve another CA's): then Redis holds what the URL says, nothing forged.
                    if not _same(fetched.crl, from_redis.crl):
                        self._reject(location, from_redis, deadline)
                    crl = fetched.crl
                    try:
                        self._judge(crl, issuer, above, now=now, deadline=deadline, depth=depth)
                    except SourceFailure:
                        self._unlock(location, fetched, deadline)
                        raise
                if fetched is not None:
                    self._remember(location, crl)
                    self._share(location, fetched, deadline)
                reasons = _scope(crl, cert)
            except SourceFailure as failure:
                failures.append(failure)
                continue
            all_cached = all_cached and cached
            assert crl.next_update is not None  # _judge refuses a CRL without one
            serial = cert.serial_number
            entry = crl.lookup(serial) if crl.is_revoked(serial) else None
            if entry is not None and entry.reason != x509.ReasonFlags.remove_from_crl.value:
                return StatusAnswer(
                    status="revoked",
                    method="crl",
                    source=location,
                    expires=self._until(crl),
                    this_update=crl.this_update,
                    next_update=crl.next_update,
                    cached=cached,
                    elapsed=time.monotonic() - started,
                    revoked_at=entry.revoked_at,
                    reason=entry.reason,
                )
            covered |= reasons
            expires = min(expires, self._until(crl))
            if covered == ALL_REASONS:
                good = StatusAnswer(
                    status="good",
                    method="crl",
                    source=location,
                    expires=expires,
                    this_update=crl.this_update,
                    next_update=crl.next_update,
                    cached=all_cached,
                    elapsed=time.monotonic() - started,
                )
                return good
        if covered:
            missing = ", ".join(sorted(r.value for r in ALL_REASONS - covered))
            failures.append(SourceFailure("crl", f"the CRLs found do not cover the reasons {missing}"))
        raise SourceFailure(
            ", ".join(dict.fromkeys(f.source for f in failures)) or "crl",
            "; ".join(f"{f.source}: {f.detail}" for f in failures),
        )

    def _judge(
        self,
        crl: IndexedCRL,
        issuer: x509.Certificate,
        above: Sequence[x509.Certificate],
        *,
        now: dt.datetime,
        deadline: float,
        depth: int,
    ) -> None:
        """Raise SourceFailure unless ``crl`` is a usable, authentic, fresh CRL of ``issuer``."""
        source = crl.source
        # What does not change with time is judged once per copy and issuer (see _authentic).
        vouched = issuer in crl.vouched
        if not vouched and crl.issuer != issuer.subject:
            raise SourceFailure(
                source, f"the CRL is issued by {_rfc4514(crl.issuer)}, not by the certificate's issuer"
            )
        if crl.unusable:
            raise SourceFailure(source, crl.unusable)
        if crl.next_update is None:
            raise SourceFailure(source, "the CRL has no nextUpdate, so its freshness cannot be judged")
        if crl.next_update < now - self._skew:
            raise SourceFailure(
                source, f"the CRL is stale: nextUpdate {crl.next_update:%Y-%m-%d %H:%M:%S}Z is past"
            )
        if crl.this_update > now + self._skew:
            raise SourceFailure(
                source, f"the CRL's thisUpdate {crl.this_update:%Y-%m-%d %H:%M:%S}Z is in the future"
            )
        if self._max_age is not None and now - crl.this_update > self._max_age:
            raise SourceFailure(
                source, f"the CRL is older than allowed (thisUpdate {crl.this_update:%Y-%m-%d}"
            )
        if vouched:
            return
        why = self._authentic(crl, issuer, above, now=now, deadline=deadline, depth=depth)
        if why:
            raise SourceFailure(source, why)

    def _authentic(
        self,
        crl: IndexedCRL,
        issuer: x509.Certificate,
        above: Sequence[x509.Certificate],
        *,
        now: dt.datetime,
        deadline: float,
        depth: int,
    ) -> str | None:
        """None when the CA's own key or an authorised separate CRL key signed ``crl``; else why not."""
        own_ok = crl.is_signed_by(issuer.public_key())
        if own_ok:
            if _may_sign_crls(issuer):
                # Holds for as long as this copy is used; a separate signer's standing does not.
                crl.vouched.add(issuer)
                return None
            problem = "the CRL issuer is not authorized to sign CRLs (keyUsage lacks cRLSign)"
        else:
            problem = "the CRL signature does not verify with the issuer's key"
        if depth >= _MAX_SIGNER_DEPTH:
            return problem
        issuer_key = _key_id(issuer.public_key())
        parents = ([above[0]] if above else []) + [issuer]
        seen: set[bytes] = set()
        for candidate in (*self._signers, *above):
            if candidate.subject != crl.issuer or not _may_sign_crls(candidate, required=True):
                continue
            kid = _key_id(candidate.public_key())
            if kid == issuer_key or kid in seen or not crl.is_signed_by(candidate.public_key()):
                continue
            seen.add(kid)
            if any(candidate is c or candidate == c for c in above):
                # A CA of the validated path itself (a self-issued key rollover): its validity
                # was judged by path validation and its status is checked as part of the chain.
                return None
            if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
                problem = "the separate CRL-signing certificate is not valid now"
                continue
            for index, parent in enumerate(parents):
                try:
                    candidate.verify_directly_issued_by(parent)
                except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                    continue
                parent_above = above[1:] if index == 0 and above else above
                try:
                    answer = self._status(
                        candidate, parent, parent_above, deadline=deadline, now=now, depth=depth + 1
                    )
                except SourceFailure as failure:
                    problem = f"the status of the CRL-signing certificate is unknown: {failure.detail}"
                    continue
                if answer.status == "good":
                    return None
                problem = (
                    f"the CRL-signing certificate was revoked at {answer.revoked_at:%Y-%m-%d %H:%M:%S}Z"
                    f" ({answer.reason or 'no reason given'})"
                )
        return problem

    # -- obtaining CRLs ---------------------------------------------------------------------------
    def _until(self, crl: IndexedCRL) -> float:
        """When ``crl`` stops being usable (POSIX time): its nextUpdate, or ``max_age`` after its
        thisUpdate when that comes first."""
        until = crl.next_update.timestamp() if crl.next_update is not None else crl.this_update.timestamp()
        if self._max_age is not None:
            until = min(until, (crl.this_update + self._max_age).timestamp())
        return until

    def _obtain(
        self, location: str, deadline: float, now: dt.datetime
    ) -> tuple[IndexedCRL, _Fetched | None]:
        """(the CRL at ``location``, how it was obtained: None when it came from memory)."""
        local = self._files.get(location)
        if local is not None:
            return self._local(local), None
        with self._lock:
            cached = self._cache.get(location)
        if cached is not None and cached.crl.next_update is not None:
            # By the clock _judge uses: a copy kept past what it accepts would refuse every request.
            until = self._until(cached.crl)
            remaining = until - now.timestamp()
            if remaining > 0:
                life = until - cached.crl.this_update.timestamp()
                if remaining <= _REFRESH_SHARE * max(life, 0.0):
                    self._refresh_soon(location, cached)
                return cached.crl, None
        fetched = self._flight.do(
            location,
            lambda: self._fetch(location, deadline),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        return fetched.crl, fetched

    def _fetch(self, location: str, deadline: float, *, use_shared: bool = True) -> _Fetched:
        shared = self.shared if use_shared else None
        token: str | None = None
        if shared is not None:
            claim = shared.claim("crl", location, deadline=deadline, max_bytes=self._max_bytes)
            token = claim.token
            if claim.data is not None:
                try:
                    return _Fetched(IndexedCRL(claim.data, source=location), shared=True, stored=claim.data)
                except ValueError:
                    shared.reject("crl", location, claim.data, deadline=deadline)
        try:
            data = self._fetcher.get(
                location, max_bytes=self._max_bytes, deadline=deadline, accept="application/pkix-crl"
            )
            self.fetches += 1
            try:
                return _Fetched(IndexedCRL(data, source=location), raw=data, token=token)
            except ValueError as exc:
                raise SourceFailure(location, f"not a CRL: {exc}") from None
        except BaseException:
            if shared is not None:
                shared.release("crl", location, token, deadline=deadline)
            raise

    def _share(self, location: str, fetched: _Fetched, deadline: float) -> None:
        """Share a CRL fetched from its URL and judged authentic and fresh, once; drop the lock."""
        shared = self.shared
        if shared is None or fetched.published:
            return
        fetched.published = True  # the waiters of the local single flight hold the same object
        token, fetched.token = fetched.token, None
        crl = fetched.crl
        if fetched.raw is None or crl.next_update is None:
            shared.release("crl", location, token, deadline=deadline)
            return
        shared.publish(
            "crl", location, fetched.raw, ttl=self._until(crl) - time.time(), token=token, deadline=deadline
        )

    def _unlock(self, location: str, fetched: _Fetched | None, deadline: float) -> None:
        if self.shared is not None and fetched is not None:
            token, fetched.token = fetched.token, None
            self.shared.release("crl", location, token, deadline=deadline)

    def _reject(self, location: str, fetched: _Fetched, deadline: float) -> None:
        if self.shared is not None:
            stored = fetched.stored if fetched.stored is not None else _der_of(fetched.crl)
            self.shared.reject("crl", location, stored, deadline=deadline)

    def _remember(self, location: str, crl: IndexedCRL) -> None:
        # Only once judged authentic and fresh: a forged copy on the plain-HTTP path, cached, would
        # be refused on every request until the nextUpdate it names, and (by a later thisUpdate)
        # would keep the authentic CRL out.
        with self._lock:
            old = self._cache.get(location)
            # Never let an older copy (a replay, a lagging mirror) replace a newer one that is
            # still usable (nextUpdate, max_age).
            if (
                old is None
                or self._until(old.crl) <= time.time()
                or (old.crl is not crl and crl.this_update >= old.crl.this_update)
            ):
                self._cache[location] = _Cached(crl)

    def _local(self, local: _LocalFile) -> IndexedCRL:
        moment = time.monotonic()
        if moment - local.checked < _FILE_CHECK_INTERVAL:
            return local.crl
        local.checked = moment
        try:
            st = os.stat(local.path)
            if (st.st_mtime_ns, st.st_size) != (local.mtime_ns, local.size):
                crl, st = _load_file(local.path)
                local.crl, local.mtime_ns, local.size = crl, st.st_mtime_ns, st.st_size
        except (OSError, ValueError) as exc:
            local.checked = 0.0  # try again next time
            raise SourceFailure(local.path, f"the CRL file could not be re-read: {exc}") from None
        return local.crl

    def _refresh_soon(self, location: str, cached: _Cached) -> None:
        with self._lock:
            moment = time.monotonic()
            if self._closed or cached.refreshing or moment - cached.last_attempt < _REFRESH_RETRY:
                return
            cached.refreshing = True
            cached.last_attempt = moment
            thread = threading.Thread(
                target=self._refresh, args=(location, cached), name=f"crl-refresh {location}", daemon=True
            )
            self._threads.add(thread)
        thread.start()

    def _refresh(self, location: str, cached: _Cached) -> None:
        try:
            deadline = time.monotonic() + self._refresh_timeout
            crl = self._flight.do(location, lambda: self._fetch_refresh(location, cached, deadline))
            del crl
            cached.last_error = None
        except Exception as exc:  # a failed refresh keeps the current CRL; tried again later
            cached.last_error = str(exc)
        finally:
            with self._lock:
                cached.refreshing = False
                self._threads.discard(threading.current_thread())

    def _fetch_refresh(self, location: str, cached: _Cached, deadline: float) -> _Fetched:
        crl: IndexedCRL | None = None
        raw: bytes | None = None
        stored: bytes | None = None
        token: str | None = None
        shared = self.shared
        if shared is not None:
            # Another process may have refreshed it already; else fetch under the cluster lock.
            # The lock lives as long as the refresh may take (refresh_timeout, not a request's deadline).
            claim = shared.claim(
                "crl", location, deadline=deadline, max_bytes=self._max_bytes, lock_ttl=self._refresh_timeout
            )
            token = claim.token
            if claim.data is not None:
                try:
                    candidate = IndexedCRL(claim.data, source=location)
                except ValueError:
                    shared.reject("crl", location, claim.data, deadline=deadline)
                else:
                    if candidate.this_update > cached.crl.this_update:
                        crl, stored = candidate, claim.data
            if crl is None and token is None:
                answered, token = shared.try_lock(
                    "crl", location, deadline=deadline, lock_ttl=self._refresh_timeout
                )
                if answered and token is None:
                    # Keep the current copy (still valid) and look again at the next retry.
                    raise SourceFailure(location, "another process is refreshing this CRL")
        fetched = _Fetched(crl) if crl is not None else None
        try:
            if fetched is None:
                raw = self._fetcher.get(
                    location, max_bytes=self._max_bytes, deadline=deadline, accept="application/pkix-crl"
                )
                self.fetches += 1
                fetched = _Fetched(IndexedCRL(raw, source=location), raw=raw, token=token)
                token = None
            crl = fetched.crl
            try:
                self._replace(location, cached, crl, strict=fetched.raw is None)
            except SourceFailure:
                if shared is not None and fetched.raw is None:
                    # The next attempt asks the URL.
                    shared.reject("crl", location, stored or _der_of(crl), deadline=deadline)
                raise
        except BaseException:
            if shared is not None:
                shared.release(
                    "crl", location, fetched.token if fetched is not None else token, deadline=deadline
                )
            raise
        if shared is not None:
            shared.release("crl", location, token, deadline=deadline)
        self._share(location, fetched, deadline)
        return fetched

    def _replace(self, location: str, cached: _Cached, crl: IndexedCRL, *, strict: bool = False) -> None:
        """Put the refreshed ``crl`` in place of ``cached``, if it is a worthy successor.

        ``strict`` (a copy read from the shared cache): it must verify under a key that signed the
        current copy, even when none is remembered.
        """
        # Replace only with a copy signed by a key that vouched for the current one and not older.
        keys = [k for k, ok in cached.crl._verified.items() if ok]
        fresh = crl.this_update >= cached.crl.this_update and crl.issuer == cached.crl.issuer
        if not fresh or ((keys or strict) and not any(_signature_ok_by_id(crl, k) for k in keys)):
            raise SourceFailure(location, "the refreshed CRL is older or not signed like the current one")
        for k in keys:
            crl._verified[k] = True
        with self._lock:
            self._cache[location] = _Cached(crl, last_attempt=cached.last_attempt)

    def cached(self, location: str) -> IndexedCRL | None:
        """The CRL currently held for ``location`` (a URL or a configured file), if any."""
        local = self._files.get(location)
        if local is not None:
            return local.crl
        entry = self._cache.get(location)
        return entry.crl if entry else None

    def refreshes_running(self) -> int:
        """How many background refreshes are running (tests, metrics)."""
        with self._lock:
            return len(self._threads)

    def close(self, timeout: float = 5.0) -> None:
        """Stop starting refreshes and wait (up to ``timeout`` s each) for running ones."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


def _same(a: IndexedCRL, b: IndexedCRL) -> bool:
    """Whether ``a`` and ``b`` are the same CRL (the same signed bytes)."""
    return a.tbs == b.tbs and a.crl.signature == b.crl.signature


def _der_of(crl: IndexedCRL) -> bytes:
    return crl.crl.public_bytes(serialization.Encoding.DER)


def _signature_ok_by_id(crl: IndexedCRL, key_id: bytes) -> bool:
    key = serialization.load_der_public_key(key_id)
    return crl.is_signed_by(key)


def _may_sign_crls(cert: x509.Certificate, *, required: bool = False) -> bool:
    """keyUsage allows cRLSign; a certificate without keyUsage may, unless ``required``."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return not required
    return bool(usage.crl_sign)


def _rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except Exception:
        return repr(name)
