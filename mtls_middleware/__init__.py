"""mtls_middleware: authenticate WSGI and ASGI requests by X.509 client certificates.

Quick start (WSGI)::

    from mtls_middleware import MTLSConfig
    from mtls_middleware.wsgi import MTLSMiddleware

    config = MTLSConfig(trust_roots="roots.pem", store="memory://", revocation="off")
    app = MTLSMiddleware(app, config)

The ASGI middleware is ``mtls_middleware.asgi.MTLSMiddleware``, with the same configuration.
"""

from __future__ import annotations

from .authenticator import Authenticator
from .config import MTLSConfig
from .errors import (
    AuthorizationError,
    CertificateError,
    ConfigurationError,
    ManagementError,
    MTLSError,
    NoCertificateError,
    ProxyError,
    Reason,
    RevocationError,
    ValidationError,
)
from .history import ACCEPTED, HistorySink, LoginRecord, MemoryHistory
from .identity import (
    ENVIRON_KEY,
    FingerprintMapper,
    Identity,
    IdentityMapper,
    SanEmailMapper,
    SubjectMapper,
    UpnMapper,
)
from .sources import PROFILES, ProxyProfile
from .stores import CertificateRecord, MemoryStore, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "ACCEPTED",
    "ENVIRON_KEY",
    "PROFILES",
    "Authenticator",
    "AuthorizationError",
    "CertificateError",
    "CertificateRecord",
    "ConfigurationError",
    "FingerprintMapper",
    "HistorySink",
    "Identity",
    "IdentityMapper",
    "LoginRecord",
    "MTLSConfig",
    "MTLSError",
    "ManagementError",
    "MemoryHistory",
    "MemoryStore",
    "NoCertificateError",
    "ProxyError",
    "ProxyProfile",
    "Reason",
    "RevocationError",
    "SanEmailMapper",
    "Store",
    "SubjectMapper",
    "UpnMapper",
    "ValidationError",
    "__version__",
    "open_store",
]
