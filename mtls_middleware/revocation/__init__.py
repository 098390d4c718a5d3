"""The revocation stage: OCSP first, the CRL when OCSP fails or is not offered; fail closed."""

from __future__ import annotations

from .base import SourceFailure, StatusAnswer, StatusSource
from .checker import CheckRecord, RevocationChecker, RevocationOutcome, RevocationPolicy
from .crl import CRLSource, IndexedCRL, RevokedEntry, load_crl

__all__ = [
    "CRLSource",
    "CheckRecord",
    "IndexedCRL",
    "RevocationChecker",
    "RevocationOutcome",
    "RevocationPolicy",
    "RevokedEntry",
    "SourceFailure",
    "StatusAnswer",
    "StatusSource",
    "load_crl",
]
