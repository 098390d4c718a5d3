"""The one exception hierarchy of mtls_middleware and its stable reason codes.

Every refusal the library makes is an :class:`MTLSError` that carries a :class:`Reason`. The reason
decides the HTTP status and the one human sentence a client may see; ``detail`` (what exactly failed)
goes to the login history and the log only, never to the client.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AuthorizationError",
    "CertificateError",
    "ConfigurationError",
    "MTLSError",
    "ManagementError",
    "NoCertificateError",
    "ProxyError",
    "Reason",
    "RevocationError",
    "ValidationError",
]


class Reason(str, enum.Enum):
    """Stable, machine-readable reason codes. New codes may be added; none is ever renamed."""

    NO_CERTIFICATE = "no_certificate"
    UNTRUSTED_PROXY = "untrusted_proxy"
    PROXY_VERIFICATION_FAILED = "proxy_verification_failed"
    MALFORMED_CERTIFICATE = "malformed_certificate"
    CERTIFICATE_TOO_LARGE = "certificate_too_large"
    CHAIN_TOO_LONG = "chain_too_long"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"
    UNTRUSTED_ISSUER = "untrusted_issuer"
    CHAIN_INVALID = "chain_invalid"
    MISSING_CLIENT_AUTH_EKU = "missing_client_auth_eku"
    DUAL_PURPOSE_EKU = "dual_purpose_eku"
    CERTIFICATE_REVOKED = "certificate_revoked"
    NO_REVOCATION_SOURCE = "no_revocation_source"
    REVOCATION_UNAVAILABLE = "revocation_unavailable"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    USER_INACTIVE = "user_inactive"
    CERTIFICATE_AUTH_DISABLED = "certificate_auth_disabled"
    # Management (upload, rename, delete ...).
    DUPLICATE_CERTIFICATE = "duplicate_certificate"
    UNKNOWN_USER = "unknown_user"
    NOT_FOUND = "not_found"
    # The REST API (mtls_middleware.admin.rest): the request itself, and the caller's rights.
    PERMISSION_DENIED = "permission_denied"
    DUPLICATE_USER = "duplicate_user"
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    # Never caused by client input: a bad configuration at start-up, or a fault of ours (fail closed).
    CONFIGURATION_ERROR = "configuration_error"
    INTERNAL_ERROR = "internal_error"
    # The shared store (PostgreSQL) cannot be reached: nothing is known about the certificate.
    STORE_UNAVAILABLE = "store_unavailable"

    def __str__(self) -> str:
        return self.value

    @property
    def status(self) -> int:
        """The HTTP status a refusal with this reason is answered with."""
        return _STATUS[self]

    @property
    def message(self) -> str:
        """One fixed sentence for humans; safe to show to any client."""
        return _MESSAGE[self]


_STATUS: Mapping[Reason, int] = {
    Reason.NO_CERTIFICATE: 401,
    Reason.UNTRUSTED_PROXY: 401,
    Reason.PROXY_VERIFICATION_FAILED: 403,
    Reason.MALFORMED_CERTIFICATE: 400,
    Reason.CERTIFICATE_TOO_LARGE: 400,
    Reason.CHAIN_TOO_LONG: 403,
    Reason.CERTIFICATE_EXPIRED: 403,
    Reason.CERTIFICATE_NOT_YET_VALID: 403,
    Reason.UNTRUSTED_ISSUER: 403,
    Reason.CHAIN_INVALID: 403,
    Reason.MISSING_CLIENT_AUTH_EKU: 403,
    Reason.DUAL_PURPOSE_EKU: 403,
    Reason.CERTIFICATE_REVOKED: 403,
    Reason.NO_REVOCATION_SOURCE: 403,
    Reason.REVOCATION_UNAVAILABLE: 503,
    Reason.UNKNOWN_CERTIFICATE: 403,
    Reason.USER_INACTIVE: 403,
    Reason.CERTIFICATE_AUTH_DISABLED: 403,
    Reason.DUPLICATE_CERTIFICATE: 409,
    Reason.UNKNOWN_USER: 404,
    Reason.NOT_FOUND: 404,
    Reason.PERMISSION_DENIED: 403,
    Reason.DUPLICATE_USER: 409,
    Reason.INVALID_REQUEST: 400,
    Reason.REQUEST_TOO_LARGE: 413,
    Reason.METHOD_NOT_ALLOWED: 405,
    Reason.UNSUPPORTED_MEDIA_TYPE: 415,
    Reason.CONFIGURATION_ERROR: 500,
    Reason.INTERNAL_ERROR: 500,
    Reason.STORE_UNAVAILABLE: 503,
}

_MESSAGE: Mapping[Reason, str] = {
    Reason.NO_CERTIFICATE: "A client certificate is required.",
    Reason.UNTRUSTED_PROXY: "Client certificate headers are accepted only from a trusted proxy.",
    Reason.PROXY_VERIFICATION_FAILED: "The proxy reported that the client certificate failed verification.",
    Reason.MALFORMED_CERTIFICATE: "The client certificate could not be parsed.",
    Reason.CERTIFICATE_TOO_LARGE: "The client certificate is larger than allowed.",
    Reason.CHAIN_TOO_LONG: "The client certificate chain has more certificates than allowed.",
    Reason.CERTIFICATE_EXPIRED: "A certificate of the chain has expired.",
    Reason.CERTIFICATE_NOT_YET_VALID: "A certificate of the chain is not valid yet.",
    Reason.UNTRUSTED_ISSUER: "The client certificate was not issued by a trusted authority.",
    Reason.CHAIN_INVALID: "The client certificate chain breaks a validation rule.",
    Reason.MISSING_CLIENT_AUTH_EKU: "The client certificate is not meant for client authentication.",
    Reason.DUAL_PURPOSE_EKU: "Certificates for both client and server authentication are not accepted.",
    Reason.CERTIFICATE_REVOKED: "The client certificate has been revoked.",
    Reason.NO_REVOCATION_SOURCE: "The revocation status of the client certificate cannot be checked.",
    Reason.REVOCATION_UNAVAILABLE: "The revocation status of the client certificate is unavailable.",
    Reason.UNKNOWN_CERTIFICATE: "The client certificate is not registered to any user.",
    Reason.USER_INACTIVE: "The user of this certificate is deactivated.",
    Reason.CERTIFICATE_AUTH_DISABLED: "Certificate login is disabled for this organisation.",
    Reason.DUPLICATE_CERTIFICATE: "This certificate is already registered.",
    Reason.UNKNOWN_USER: "No such user.",
    Reason.NOT_FOUND: "Not found.",
    Reason.PERMISSION_DENIED: "The user of this certificate may not do this.",
    Reason.DUPLICATE_USER: "This user already exists.",
    Reason.INVALID_REQUEST: "The request is malformed or has an invalid parameter.",
    Reason.REQUEST_TOO_LARGE: "The request body is larger than allowed.",
    Reason.METHOD_NOT_ALLOWED: "This method is not allowed here.",
    Reason.UNSUPPORTED_MEDIA_TYPE: "This content type is not accepted here.",
    Reason.CONFIGURATION_ERROR: "The server is misconfigured.",
    Reason.INTERNAL_ERROR: "The request could not be authenticated because of a server fault.",
    Reason.STORE_UNAVAILABLE: "The certificate store is unavailable; try again later.",
}


class MTLSError(Exception):
    """Base of every error the library raises.

    ``reason`` is the stable code, ``status`` the HTTP status that goes with it, ``detail`` a sentence
    for operators (login history, log) and ``context`` structured facts (for example the failing
    certificate's subject). Clients are shown only ``reason`` and ``reason.message``.
    """

    default_reason: Reason = Reason.INTERNAL_ERROR

    def __init__(
        self, reason: Reason | None = None, detail: str = "", **context: Any
    ) -> None:
        self.reason: Reason = reason if reason is not None else self.default_reason
        self.detail = detail or self.reason.message
        self.context: dict[str, Any] = context
        super().__init__(f"{self.reason.value}: {self.detail}")

    @property
    def status(self) -> int:
        return self.reason.status

    def to_json(self) -> dict[str, str]:
        """The body a client is shown: the code and the fixed human sentence, nothing else."""
        return {"error": self.reason.value, "message": self.reason.message}


class ConfigurationError(MTLSError, ValueError):
    """A configuration that cannot work safely; raised when it is built, never per request."""

    default_reason = Reason.CONFIGURATION_ERROR


class NoCertificateError(MTLSError):
    """No client certificate reached us."""

    default_reason = Reason.NO_CERTIFICATE


class ProxyError(MTLSError):
    """Certificate headers from an untrusted peer, or a proxy that reports failed verification."""

    default_reason = Reason.UNTRUSTED_PROXY


class CertificateError(MTLSError):
    """The presented bytes are not an acceptable certificate chain (encoding, size, count)."""

    default_reason = Reason.MALFORMED_CERTIFICATE


class ValidationError(MTLSError):
    """The chain does not validate to a trusted root, or breaks a certificate rule."""

    default_reason = Reason.CHAIN_INVALID


class RevocationError(MTLSError):
    """The certificate is revoked, or its status could not be established."""

    default_reason = Reason.REVOCATION_UNAVAILABLE


class AuthorizationError(MTLSError):
    """A valid certificate that maps to no user, an inactive user, or a disabled organisation."""

    default_reason = Reason.UNKNOWN_CERTIFICATE


class ManagementError(MTLSError):
    """A certificate-management operation (upload, rename, delete ...) was refused."""

    default_reason = Reason.NOT_FOUND
