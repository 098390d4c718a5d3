"""Stores: who owns which certificate. ``open_store(url)`` picks one by URL."""

from __future__ import annotations

from .base import (
    API_ONLY,
    ENFORCE_MTLS,
    KNOWN_PERMISSIONS,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Principal,
    Store,
    Upload,
    UserRecord,
    check_upload,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "API_ONLY",
    "ENFORCE_MTLS",
    "KNOWN_PERMISSIONS",
    "BatchRefused",
    "CertificateRecord",
    "MemoryStore",
    "OrgRecord",
    "Principal",
    "SQLiteStore",
    "Store",
    "Upload",
    "UserRecord",
    "check_upload",
    "open_store",
]


def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    ``memory://`` (a new, empty in-process store each time); ``sqlite:///relative/path.db``
    (relative to the working directory), ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``
    (see :mod:`mtls_middleware.stores.sqlite`). The file and its schema are created when missing.

    Raises:
        ConfigurationError: an unknown or unsupported scheme, a malformed URL, or a database that
            cannot be opened (see :class:`SQLiteStore`).
    """
    from ..errors import ConfigurationError
    from .sqlite import path_from_url

    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SQLiteStore(path_from_url(url))
    raise ConfigurationError(
        detail=f"store URL {url!r} has an unsupported scheme; use 'memory://' or "
        "'sqlite:///path/to.db' (postgresql:// is not available in this version)"
    )
