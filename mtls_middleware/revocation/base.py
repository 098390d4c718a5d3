"""What every revocation source answers, and how it fails.

A source (OCSP, CRL) either gives a *verified* answer for one certificate, a
:class:`StatusAnswer`, or raises :class:`SourceFailure` saying why it could not. The checker
decides what an answer or a failure means under the configured mode; sources hold no policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509

__all__ = ["Method", "SourceFailure", "Status", "StatusAnswer", "StatusSource"]

Method = Literal["ocsp", "crl"]
Status = Literal["good", "revoked", "unknown"]


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """A verified revocation status for one certificate.

    ``source`` is the responder URL, CRL URL or CRL file the answer came from; ``expires`` a POSIX
    time until which the answer (and any verdict built on it) may be reused: the response's
    nextUpdate at the latest. ``cached`` says the answer came from the source's cache, ``elapsed``
    how many seconds fetching and verifying took (0 on a cache hit). ``revoked_at`` and ``reason``
    (a CRL reason name such as ``keyCompromise``) are set for a revoked certificate when known.
    """

    status: Status
    method: Method
    source: str
    expires: float
    this_update: dt.datetime | None = None
    next_update: dt.datetime | None = None
    cached: bool = False
    elapsed: float = 0.0
    revoked_at: dt.datetime | None = None
    reason: str | None = None


class SourceFailure(Exception):
    """A source could not give a verified answer: unreachable, slow, malformed, badly signed, stale.

    Internal to the revocation stage: the checker falls back to the next source, and turns the
    last failure into ``revocation_unavailable`` (or a soft-fail note). ``detail`` goes to the
    login history, never to the client.
    """

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


@runtime_checkable
class StatusSource(Protocol):
    """One way of learning a certificate's status (OCSP, CRL)."""

    method: Method

    def locations(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, ...]:
        """Where the status of ``cert`` can be asked (URLs, files); empty when nowhere."""

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
        """The verified status of ``cert`` (issued by ``issuer``), judged at ``now``.

        ``deadline`` is a :func:`time.monotonic` instant after which no more I/O may start or
        continue. ``above`` holds the certificates above ``issuer`` in the validated path,
        nearest first (a CRL signed by a separate key of the CA is vouched for by them).
        ``where`` is what :meth:`locations` returned, when the caller asked already.

        Raises:
            SourceFailure: no verified answer could be had from any of :meth:`locations`.
        """
