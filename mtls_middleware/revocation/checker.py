"""The revocation policy: which certificates are checked, OCSP first then the CRL, and what a
failure means in each mode.

``require`` fails closed: a certificate whose status cannot be established is refused
(``revocation_unavailable``, or ``no_revocation_source`` when nothing names a place to ask).
``soft-fail`` refuses only what is known to be revoked and notes the rest; ``off`` asks nothing.
Every check is recorded (method, where, cached or not, how long) for the login history.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from ..errors import ConfigurationError, Reason, RevocationError
from .base import SourceFailure, StatusAnswer, StatusSource
from .crl import CRLSource
from .fetch import Fetcher
from .ocsp import OCSPSource
from .shared import SharedCache, check_url

__all__ = ["CheckRecord", "RevocationChecker", "RevocationOutcome", "RevocationPolicy"]

#: How long a soft-fail outcome may be reused before the status is asked again.
SOFT_FAIL_TTL = 60.0
#: CA subjects remembered for the records (bounded: cleared when full).
_MAX_SUBJECTS = 1024

_MODES = ("require", "soft-fail", "off")
_SCOPES = ("chain", "leaf")


def _http_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://"))


@dataclass(frozen=True, kw_only=True)
class RevocationPolicy:
    """How revocation is checked; validated when built.

    ``mode``: ``"require"`` (fail closed), ``"soft-fail"`` (refuse only what is known revoked) or
    ``"off"``. ``scope``: ``"chain"`` checks every certificate but the trust anchor, ``"leaf"`` the
    client certificate only. ``crl_files``: local CRLs (PEM or DER), read when the checker is built
    and re-read when their mtime changes. ``crl_urls``: extra CRL URLs. ``ocsp``: ask OCSP at all;
    ``ocsp_responder`` overrides every certificate's responder; ``ocsp_responder_certificates`` are
    pinned responder certificates; ``ocsp_nonce`` sends a nonce. ``timeout``: seconds to connect
    and per read; ``deadline``: total seconds of revocation I/O per request. ``clock_skew``:
    tolerance on thisUpdate/nextUpdate. ``max_age``: refuse data whose thisUpdate is older (seconds).
    ``max_ocsp_bytes``/``max_crl_bytes``: size caps. ``crl_signers``: candidate certificates for
    CRLs signed by a separate key of the issuing CA. ``shared_cache``: a ``redis://`` URL (or a
    :class:`~.shared.SharedCache`) where verified OCSP responses and CRLs are shared between
    processes; every process verifies what it reads from there again.

    Raises:
        ConfigurationError: a value out of range or of the wrong kind.
    """

    mode: Literal["require", "soft-fail", "off"] = "require"
    scope: Literal["chain", "leaf"] = "chain"
    crl_files: tuple[str, ...] = ()
    crl_urls: tuple[str, ...] = ()
    ocsp: bool = True
    ocsp_responder: str | None = None
    ocsp_responder_certificates: tuple[x509.Certificate, ...] = ()
    ocsp_nonce: bool = False
    timeout: float = 3.0
    deadline: float = 10.0
    clock_skew: float = 300.0
    max_age: float | None = None
    max_ocsp_bytes: int = 64 * 1024
    max_crl_bytes: int = 128 * 1024 * 1024
    crl_signers: tuple[x509.Certificate, ...] = ()
    shared_cache: str | SharedCache | None = None

    def __post_init__(self) -> None:
        # Accept any sequence (a list from a config file, Path objects) but store tuples of str.
        for name in ("crl_files", "crl_urls", "ocsp_responder_certificates", "crl_signers"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ConfigurationError(
                    detail=f"revocation {name} must be a sequence, not {type(value).__name__}"
                )
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "crl_files", tuple(str(f) for f in self.crl_files))
        if self.mode not in _MODES:
            raise ConfigurationError(
                detail=f"revocation mode must be one of {', '.join(_MODES)}, not {self.mode!r}"
            )
        if self.scope not in _SCOPES:
            raise ConfigurationError(detail=f"revocation scope must be 'chain' or 'leaf', not {self.scope!r}")
        for url in self.crl_urls:
            if not isinstance(url, str) or not _http_url(url):
                raise ConfigurationError(detail=f"CRL URL {url!r} must be an http:// or https:// URL")
        if self.ocsp_responder is not None and not _http_url(self.ocsp_responder):
            raise ConfigurationError(detail=f"OCSP responder {self.ocsp_responder!r} must be an http(s) URL")
        for name in ("ocsp_responder_certificates", "crl_signers"):
            if not all(isinstance(c, x509.Certificate) for c in getattr(self, name)):
                raise ConfigurationError(detail=f"revocation {name} must hold x509.Certificate objects")
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigurationError(detail=f"revocation {name} must be a positive number of seconds")
        if self.timeout > self.deadline:
            raise ConfigurationError(detail="revocation timeout must not exceed the deadline")
        skew = self.clock_skew
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew < math.inf:
            raise ConfigurationError(detail="revocation clock_skew must be a non-negative number of seconds")
        if self.max_age is not None and (
            isinstance(self.max_age, bool)
            or not isinstance(self.max_age, (int, float))
            or not self.max_age > 0
        ):
            raise ConfigurationError(detail="revocation max_age must be None or a positive number of seconds")
        for name in ("max_ocsp_bytes", "max_crl_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(detail=f"revocation {name} must be a positive integer")
        if self.shared_cache is not None and not isinstance(self.shared_cache, SharedCache):
            check_url(self.shared_cache)


@dataclass(frozen=True)
class CheckRecord:
    """What one status check did, for the login history.

    ``method``: ``"ocsp"``, ``"crl"`` or ``"none"``; ``status``: ``"good"``, ``"revoked"``,
    ``"unknown"``, ``"failed"`` or ``"no-source"``; ``source``: the responder URL, CRL URL or file.
    """

    subject: str
    serial: str
    method: str
    status: str
    source: str | None
    cached: bool
    elapsed: float
    detail: str


@dataclass(frozen=True)
class RevocationOutcome:
    """How the status of a path was established.

    ``summary``: short, e.g. ``"ocsp:good,crl:good"`` (one item per checked certificate, the leaf
    first), ``"soft-fail:revocation_unavailable"`` or ``"off"``. ``expires``: POSIX time until
    which the outcome (and a verdict built on it) may be reused; ``math.inf`` when unbounded.
    """

    summary: str
    checks: tuple[CheckRecord, ...] = field(default=())
    expires: float = math.inf

    def describe(self) -> str:
        """One line for the history: per check, the method, where, cached or not, milliseconds."""
        if not self.checks:
            return self.summary
        parts = []
        for c in self.checks:
            where = f" via {c.source}" if c.source else ""
            cached = " cached" if c.cached else ""
            why = f" ({c.detail})" if c.detail and c.status not in ("good",) else ""
            parts.append(f"{c.subject}: {c.method} {c.status}{where}{cached} {c.elapsed * 1000:.0f} ms{why}")
        return f"{self.summary}; " + "; ".join(parts)


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except Exception:
        return "<unreadable subject>"


def _serial(cert: x509.Certificate) -> str:
    try:
        return format(cert.serial_number, "x")
    except Exception:
        return "?"


@dataclass
class _Finding:
    """The outcome for one certificate: an answer, or why there is none."""

    answer: StatusAnswer | None = None
    reason: Reason | None = None
    detail: str = ""


class RevocationChecker:
    """Checks the revocation status of validated paths under a :class:`RevocationPolicy`.

    Sources default to OCSP (when ``policy.ocsp``) and CRLs, both
    over one :class:`Fetcher`, and both sharing what they fetch through ``policy.shared_cache``
    when one is named. Blocking: never call :meth:`check` on an event-loop thread.

    Raises:
        ConfigurationError: a configured CRL file cannot be read; a shared cache URL redis-py
            cannot use (or redis-py is not installed).
    """

    def __init__(
        self,
        policy: RevocationPolicy,
        *,
        fetcher: Fetcher | None = None,
        ocsp: StatusSource | None = None,
        crl: StatusSource | None = None,
    ) -> None:
        self.policy = policy
        self._fetcher = fetcher or Fetcher(timeout=policy.timeout)
        self._subjects: dict[x509.Certificate, str] = {}
        self.shared_cache: SharedCache | None = None
        if policy.mode != "off" and policy.shared_cache is not None:
            self.shared_cache = (
                policy.shared_cache
                if isinstance(policy.shared_cache, SharedCache)
                else SharedCache(
                    policy.shared_cache,
                    # One Redis round trip must stay small next to a fetch; the lock lives as long
                    # as a holder's fetch may; a waiter gives up after one fetch timeout.
                    timeout=min(0.5, policy.timeout),
                    lock_ttl=policy.deadline,
                    wait=policy.timeout,
                )
            )
        self._ocsp: StatusSource | None = None
        if policy.ocsp and policy.mode != "off":
            self._ocsp = ocsp if ocsp is not None else self._default_ocsp()
        self._crl: StatusSource | None = None
        if policy.mode != "off":
            self._crl = (
                crl
                if crl is not None
                else CRLSource(
                    self._fetcher,
                    files=policy.crl_files,
                    urls=policy.crl_urls,
                    signers=policy.crl_signers,
                    max_bytes=policy.max_crl_bytes,
                    clock_skew=policy.clock_skew,
                    max_age=policy.max_age,
                    shared=self.shared_cache,
                )
            )

    def _default_ocsp(self) -> StatusSource:
        p = self.policy
        return OCSPSource(
            self._fetcher,
            responder=p.ocsp_responder,
            pinned=p.ocsp_responder_certificates,
            nonce=p.ocsp_nonce,
            max_bytes=p.max_ocsp_bytes,
            clock_skew=p.clock_skew,
            max_age=p.max_age,
            shared=self.shared_cache,
        )

    @property
    def crl_source(self) -> StatusSource | None:
        return self._crl

    @property
    def ocsp_source(self) -> StatusSource | None:
        return self._ocsp

    def check(
        self,
        path: Sequence[x509.Certificate],
        *,
        now: dt.datetime | None = None,
        leaf_subject: str | None = None,
    ) -> RevocationOutcome:
        """Establish the status of ``path`` (validated, leaf first, trust anchor last).

        ``leaf_subject`` is the leaf's RFC 4514 subject when the caller has it already (it names
        the leaf in the records; formatting it again costs more than a cached OCSP answer).

        Returns the outcome; in soft-fail mode an outcome whose summary starts with
        ``"soft-fail:"`` and which expires within a minute when some status was not established.

        Raises:
            RevocationError: ``certificate_revoked`` (any mode but off); in require mode also
                ``no_revocation_source`` (nothing to ask for a certificate) and
                ``revocation_unavailable`` (every source failed; the detail lists them).
                ``context["checks"]`` holds the :class:`CheckRecord` tuple.
        """
        policy = self.policy
        if policy.mode == "off":
            return RevocationOutcome("off")
        moment = now if now is not None else dt.datetime.now(dt.timezone.utc)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        deadline = time.monotonic() + policy.deadline
        last = len(path) - 1  # the trust anchor is never checked
        count = min(last, 1) if policy.scope == "leaf" else last
        records: list[CheckRecord] = []
        summary: list[str] = []
        expires = math.inf
        unresolved: list[tuple[int, _Finding]] = []
        for index in range(count):
            cert, issuer = path[index], path[index + 1]
            subject = leaf_subject if index == 0 and leaf_subject is not None else self._subject(cert)
            finding = self._one(cert, issuer, path[index + 2 :], deadline, moment, records, subject)
            answer = finding.answer
            if answer is not None and answer.status == "revoked":
                raise RevocationError(
                    Reason.CERTIFICATE_REVOKED,
                    self._revoked_detail(index, last, cert, answer),
                    checks=tuple(records),
                    index=index,
                    method=answer.method,
                    source=answer.source,
                    revoked_at=answer.revoked_at,
                    revocation_reason=answer.reason,
                )
            if answer is None:
                unresolved.append((index, finding))
                summary.append("none" if finding.reason is Reason.NO_REVOCATION_SOURCE else "failed")
            else:
                summary.append(f"{answer.method}:{answer.status}")
                expires = min(expires, answer.expires)
        if unresolved:
            index, finding = unresolved[0]
            reason = finding.reason or Reason.REVOCATION_UNAVAILABLE
            detail = "; ".join(f"{_role(i, last)} {_subject(path[i])}: {f.detail}" for i, f in unresolved)
            if policy.mode == "require":
                raise RevocationError(reason, detail, checks=tuple(records), index=index)
            return RevocationOutcome(
                f"soft-fail:{reason.value}", tuple(records), min(expires, time.time() + SOFT_FAIL_TTL)
            )
        return RevocationOutcome(",".join(summary) or "none", tuple(records), expires)

    def _one(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        above: Sequence[x509.Certificate],
        deadline: float,
        now: dt.datetime,
        records: list[CheckRecord],
        subject: str,
    ) -> _Finding:
        """OCSP first; the CRL when OCSP failed, said unknown, or is not offered."""
        serial = _serial(cert)
        failures: list[str] = []
        asked = False
        for source in (self._ocsp, self._crl):
            if source is None:
                continue
            try:
                where = source.locations(cert, issuer)
            except Exception as exc:  # a malformed extension: no location, noted
                failures.append(f"{source.method}: unreadable locations ({type(exc).__name__})")
                continue
            if not where:
                continue
            asked = True
            started = time.monotonic()
            try:
                answer = source.status(cert, issuer, deadline=deadline, now=now, above=above, where=where)
            except SourceFailure as failure:
                elapsed = time.monotonic() - started
                records.append(
                    CheckRecord(
                        subject,
                        serial,
                        source.method,
                        "failed",
                        failure.source,
                        False,
                        elapsed,
                        failure.detail,
                    )
                )
                failures.append(f"{source.method} {failure.source}: {failure.detail}")
                continue
            except Exception as exc:  # fail closed on a fault of a source, and say what it was
                elapsed = time.monotonic() - started
                detail = f"unexpected {type(exc).__name__}: {exc}"
                records.append(
                    CheckRecord(subject, serial, source.method, "failed", None, False, elapsed, detail)
                )
                failures.append(f"{source.method}: {detail}")
                continue
            detail = ""
            if answer.status == "revoked":
                detail = f"revoked at {answer.revoked_at} ({answer.reason or 'no reason given'})"
            records.append(
                CheckRecord(
                    subject,
                    serial,
                    answer.method,
                    answer.status,
                    answer.source,
                    answer.cached,
                    answer.elapsed,
                    detail,
                )
            )
            if answer.status in ("good", "revoked"):
                return _Finding(answer)
            failures.append(f"{answer.method} {answer.source}: the status is unknown")
        if not asked:
            records.append(
                CheckRecord(
                    subject, serial, "none", "no-source", None, False, 0.0, "names no OCSP responder or CRL"
                )
            )
            why = (
                "; ".join(failures)
                or "the certificate names no OCSP responder and no CRL, and none is configured"
            )
            return _Finding(None, Reason.NO_REVOCATION_SOURCE, why)
        return _Finding(None, Reason.REVOCATION_UNAVAILABLE, "; ".join(failures))

    @staticmethod
    def _revoked_detail(index: int, last: int, cert: x509.Certificate, answer: StatusAnswer) -> str:
        when = f"{answer.revoked_at:%Y-%m-%d %H:%M:%S}Z" if answer.revoked_at else "an unknown time"
        return (
            f"{_role(index, last)} {_subject(cert)} (serial {_serial(cert)}) is revoked according to "
            f"{answer.method} {answer.source}: revoked at {when}, reason {answer.reason or 'unspecified'}"
        )

    def _subject(self, cert: x509.Certificate) -> str:
        # CA certificates recur on every request; a certificate hashes and compares by its DER.
        subjects = self._subjects
        text = subjects.get(cert)
        if text is None:
            text = _subject(cert)
            if len(subjects) >= _MAX_SUBJECTS:
                subjects.clear()
            subjects[cert] = text
        return text

    def close(self) -> None:
        """Stop the sources' background refreshers; close the shared cache's connections."""
        for source in (self._ocsp, self._crl):
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()
        if self.shared_cache is not None:
            self.shared_cache.close()


def _role(index: int, last: int) -> str:
    return "the client certificate" if index == 0 else f"intermediate {index}"
