"""Stores: who owns which certificate. ``open_store(url)`` picks one by URL."""

from __future__ import annotations

from .base import (
    API_ONLY,
    ENFORCE_MTLS,
    KNOWN_PERMISSIONS,
    MANAGE_CERTIFICATES,
    AuditEntry,
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
    "MANAGE_CERTIFICATES",
    "AuditEntry",
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
    ``postgresql://user@host/dbname`` or ``postgres://...`` (``?schema=NAME`` picks the PostgreSQL
    schema; see :mod:`mtls_middleware.stores.postgres`; needs the ``postgresql`` extra).
    ``django://`` (or ``django://ALIAS`` for another database of ``settings.DATABASES``): the
    Django app's store (:mod:`mtls_middleware.contrib.django`), inside a configured Django project.

    Raises:
        ConfigurationError: an unknown or unsupported scheme, a malformed URL, a missing extra,
            or a database that cannot be opened (see :class:`SQLiteStore`,
            :class:`~mtls_middleware.stores.postgres.PostgresStore`).
    """
    from ..errors import ConfigurationError
    from .sqlite import path_from_url

    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SQLiteStore(path_from_url(url))
    if scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                detail=f"store URL {url.split('@')[-1]!r} needs psycopg 3: "
                "pip install 'mtls_middleware[postgresql]'"
            ) from None
        from .postgres import PostgresStore

        return PostgresStore(url)
    if scheme == "django":
        # django:// is the default database; django://ALIAS another one of settings.DATABASES.
        using = url.split("://", 1)[1].strip("/") if "://" in url else ""
        try:
            from ..contrib.django.store import DjangoStore
        except ImportError as exc:
            raise ConfigurationError(
                detail=f"store URL {url!r} needs Django: pip install 'mtls_middleware[django]' ({exc})"
            ) from None
        store: Store = DjangoStore(using=using or "default")
        return store
    raise ConfigurationError(
        detail=f"store URL {url!r} has an unsupported scheme; use 'memory://', "
        "'sqlite:///path/to.db', 'postgresql://user@host/dbname' or 'django://'"
    )
