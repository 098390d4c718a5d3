"""The identity attached to an accepted request, and the map stage that finds its user."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cryptography import x509
from cryptography.x509.oid import NameOID

from .errors import AuthorizationError, NoCertificateError, Reason
from .stores.base import ENFORCE_MTLS, Principal, Store

if TYPE_CHECKING:
    from .revocation.checker import CheckRecord

__all__ = [
    "ENFORCE_MTLS",
    "ENVIRON_KEY",
    "FingerprintMapper",
    "Identity",
    "IdentityMapper",
    "SanEmailMapper",
    "SubjectMapper",
    "UpnMapper",
    "authorize",
    "require_certificate_login",
]

#: Where the identity of an accepted request is put: ``environ[...]`` (WSGI), ``scope[...]`` (ASGI).
ENVIRON_KEY = "mtls_middleware.identity"

_UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@dataclass(frozen=True)
class Identity:
    """Who an accepted request comes from, and how that was established.

    ``fingerprint`` is the SHA-256 of the leaf's DER (lowercase hex); ``subject`` and ``issuer``
    are RFC 4514 strings; ``serial`` is lowercase hex; ``chain`` is the validated path, leaf first
    and trust anchor last; ``source`` says where the certificate came from (``tls:environ``,
    ``tls:socket``, ``tls:asgi``, ``proxy:nginx`` ...); ``revocation`` how status was established
    (``"ocsp:good"``, ``"crl:good"``, ``"soft-fail:..."`` or ``"off"``), and ``revocation_checks``
    what each check did (method, responder or CRL, cache hit, time).
    """

    user_id: str
    org: str
    fingerprint: str
    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    certificate: x509.Certificate = field(repr=False)
    chain: tuple[x509.Certificate, ...] = field(repr=False)
    source: str
    revocation: str = "off"
    revocation_checks: tuple[CheckRecord, ...] = field(default=(), repr=False)
    permissions: frozenset[str] = frozenset()

    def has_permission(self, permission: str) -> bool:
        return permission in self.permissions


@runtime_checkable
class IdentityMapper(Protocol):
    """Finds the owner of a validated leaf certificate in the store; None when there is none."""

    def map(self, leaf: x509.Certificate, fingerprint: str, store: Store) -> Principal | None: ...


class FingerprintMapper:
    """The default: the exact registered certificate (SHA-256 fingerprint) names the user."""

    def map(self, leaf: x509.Certificate, fingerprint: str, store: Store) -> Principal | None:
        return store.resolve_certificate(fingerprint)


def _san(leaf: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


class SanEmailMapper:
    """Map by the first rfc822Name of the SAN: the user id is the e-mail address (lower-cased)."""

    def map(self, leaf: x509.Certificate, fingerprint: str, store: Store) -> Principal | None:
        san = _san(leaf)
        if san is None:
            return None
        for email in san.get_values_for_type(x509.RFC822Name):
            principal = store.resolve_user(email.lower())
            if principal is not None:
                return principal
        return None


class UpnMapper:
    """Map by the Microsoft UPN otherName of the SAN (PIV/CAC and AD smart cards)."""

    def map(self, leaf: x509.Certificate, fingerprint: str, store: Store) -> Principal | None:
        san = _san(leaf)
        if san is None:
            return None
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id != _UPN_OID:
                continue
            upn = _der_utf8(other.value)
            if upn is not None:
                principal = store.resolve_user(upn)
                if principal is not None:
                    return principal
        return None


class SubjectMapper:
    """Map by the subject: the full RFC 4514 string, or one attribute such as the CN."""

    def __init__(self, attribute: x509.ObjectIdentifier | None = NameOID.COMMON_NAME) -> None:
        self.attribute = attribute

    def map(self, leaf: x509.Certificate, fingerprint: str, store: Store) -> Principal | None:
        if self.attribute is None:
            return store.resolve_user(leaf.subject.rfc4514_string())
        for attr in leaf.subject.get_attributes_for_oid(self.attribute):
            value = attr.value if isinstance(attr.value, str) else attr.value.decode()
            principal = store.resolve_user(value)
            if principal is not None:
                return principal
        return None


def _der_utf8(value: bytes) -> str | None:
    """Decode a DER UTF8String (the UPN's encoding); None for anything else."""
    if len(value) < 2 or value[0] != 0x0C:
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(value) < 2 + count:
            return None
        length = int.from_bytes(value[2 : 2 + count], "big")
        offset = 2 + count
    body = value[offset : offset + length]
    if len(body) != length:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def authorize(principal: Principal) -> None:
    """The authorize stage: may this store user log in by certificate now?

    Raises:
        AuthorizationError: ``certificate_auth_disabled`` (the organisation is switched off; checked
            first, as it says more) or ``user_inactive``.
    """
    if not principal.org_cert_auth:
        raise AuthorizationError(
            Reason.CERTIFICATE_AUTH_DISABLED,
            f"certificate login is disabled for organisation {principal.org!r}",
        )
    if not principal.active:
        raise AuthorizationError(Reason.USER_INACTIVE, f"user {principal.user_id!r} is deactivated")


def require_certificate_login(store: Store, user_id: str, identity: Identity | None) -> None:
    """Refuse a user who must log in by certificate but arrived another way.

    For apps with other login methods (passwords, SSO): call it after such a login succeeds,
    with the request's certificate identity (None when the request carried none). A user whose
    permissions include ``enforce_mtls`` passes only when ``identity`` is that user's own.
    Users unknown to the store pass: they are not the store's to restrict.

    Raises:
        NoCertificateError: ``no_certificate``, the user must present their certificate.
    """
    principal = store.resolve_user(user_id)
    if principal is None or ENFORCE_MTLS not in principal.permissions:
        return
    if identity is not None and identity.user_id == user_id and identity.org == principal.org:
        return
    raise NoCertificateError(
        Reason.NO_CERTIFICATE,
        f"user {user_id!r} must log in with a client certificate (enforce_mtls)",
    )
