"""Stores: who owns which certificate. ``open_store(url)`` picks one by URL."""

from __future__ import annotations

from .base import CertificateRecord, Principal, Store, UserRecord, check_upload
from .memory import MemoryStore

__all__ = [
    "CertificateRecord",
    "MemoryStore",
    "Principal",
    "Store",
    "UserRecord",
    "check_upload",
    "open_store",
]


def open_store(url: str) -> Store:
    """Open the store named by ``url``: ``memory://`` (more schemes arrive with their stores).

    Raises:
        ConfigurationError: an unknown or unsupported scheme.
    """
    from ..errors import ConfigurationError

    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore()
    raise ConfigurationError(
        detail=f"store URL {url!r} has an unsupported scheme; use 'memory://' "
        "(sqlite:// and postgresql:// stores are not available in this version)"
    )
