"""The store protocol, its records, and the upload rules every store enforces."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..certs import MAX_CHAIN_LENGTH, fingerprint, parse_chain
from ..errors import CertificateError, ManagementError, Reason, ValidationError
from ..history import LoginRecord

__all__ = [
    "MAX_UPLOAD_BYTES",
    "CertificateRecord",
    "Principal",
    "Store",
    "UserRecord",
    "check_upload",
]

#: The largest PEM upload accepted (the seeds' 1 MB).
MAX_UPLOAD_BYTES = 1_000_000


@dataclass(frozen=True)
class Principal:
    """What the authorize stage needs to know of a certificate's owner, in one lookup."""

    user_id: str
    org: str
    active: bool = True
    org_cert_auth: bool = True
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    org: str
    active: bool = True
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CertificateRecord:
    """A registered certificate. ``pem`` is the upload exactly as it was received."""

    fingerprint: str
    user_id: str
    org: str
    label: str
    pem: bytes
    subject: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    uploaded_at: dt.datetime
    uploaded_by: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def days_left(self, now: dt.datetime | None = None) -> int:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (self.not_after - now).days


def _eku(cert: x509.Certificate) -> frozenset[x509.ObjectIdentifier] | None:
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def check_upload(
    pem: bytes, *, now: dt.datetime | None = None, allow_dual_purpose_eku: bool = False
) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    """Apply the upload rules to ``pem``; return the leaf and the whole parsed chain.

    Rules: PEM only; at most 1 MB; 1 to 10 certificates; the leaf not expired and already valid;
    the Client Authentication EKU present; not both client- and server-auth EKUs unless allowed.

    Raises:
        CertificateError: ``certificate_too_large``, ``chain_too_long``, ``malformed_certificate``.
        ValidationError: ``certificate_expired``, ``certificate_not_yet_valid``,
            ``missing_client_auth_eku``, ``dual_purpose_eku``.
    """
    if len(pem) > MAX_UPLOAD_BYTES:
        raise CertificateError(
            Reason.CERTIFICATE_TOO_LARGE,
            f"upload of {len(pem)} bytes; the limit is {MAX_UPLOAD_BYTES}",
        )
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CertificateError(Reason.MALFORMED_CERTIFICATE, "uploads must be PEM certificates")
    if b"PRIVATE KEY-----" in pem:
        # The upload is stored and handed back as it came: a key in it would be kept and served.
        raise CertificateError(
            Reason.MALFORMED_CERTIFICATE,
            "the upload holds a private key; upload the certificate(s) only, never the key",
        )
    chain = parse_chain([pem], max_certificates=MAX_CHAIN_LENGTH, max_bytes=MAX_UPLOAD_BYTES)
    leaf = chain.leaf
    now = now or dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise ValidationError(
            Reason.CERTIFICATE_EXPIRED, f"the certificate expired at {leaf.not_valid_after_utc}"
        )
    if leaf.not_valid_before_utc > now:
        raise ValidationError(
            Reason.CERTIFICATE_NOT_YET_VALID,
            f"the certificate is valid only from {leaf.not_valid_before_utc}",
        )
    try:
        eku = _eku(leaf)
    except ValueError as exc:
        raise CertificateError(Reason.MALFORMED_CERTIFICATE, f"bad extension: {exc}") from None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValidationError(
            Reason.MISSING_CLIENT_AUTH_EKU, "the certificate lacks the Client Authentication EKU"
        )
    if ExtendedKeyUsageOID.SERVER_AUTH in eku and not allow_dual_purpose_eku:
        raise ValidationError(
            Reason.DUAL_PURPOSE_EKU, "the certificate carries both client- and server-auth EKUs"
        )
    return leaf, chain.certificates


def record_from_upload(
    pem: bytes,
    leaf: x509.Certificate,
    *,
    user_id: str,
    org: str,
    label: str | None,
    uploaded_by: str | None,
    now: dt.datetime | None = None,
) -> CertificateRecord:
    """The :class:`CertificateRecord` an accepted upload becomes."""
    subject = leaf.subject.rfc4514_string()
    return CertificateRecord(
        fingerprint=fingerprint(leaf),
        user_id=user_id,
        org=org,
        label=label if label is not None else subject,
        pem=pem,
        subject=subject,
        issuer=leaf.issuer.rfc4514_string(),
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        uploaded_at=(now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0),
        uploaded_by=uploaded_by,
    )


@runtime_checkable
class Store(Protocol):
    """Users, organisations and their certificates; the pipeline's map and authorize stages.

    ``generation`` changes whenever something that can invalidate an accepted verdict changes
    (a certificate deleted, a user deactivated, an organisation switched off); the verdict cache
    compares it on every hit, so reading it must be cheap.
    """

    @property
    def generation(self) -> int: ...

    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        """The owner of the certificate with this SHA-256 fingerprint, or None."""

    def resolve_user(self, user_id: str) -> Principal | None:
        """The user with this id (for mappers that map by SAN, UPN or subject), or None."""

    def add_user(
        self,
        user_id: str,
        *,
        org: str = "default",
        active: bool = True,
        permissions: Sequence[str] = (),
    ) -> UserRecord: ...

    def set_user_active(self, user_id: str, active: bool) -> UserRecord: ...

    def set_org(self, org: str, *, cert_auth: bool) -> None: ...

    def upload_certificate(
        self,
        pem: bytes,
        *,
        user_id: str,
        label: str | None = None,
        uploaded_by: str | None = None,
    ) -> CertificateRecord: ...

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]: ...

    def get_certificate(self, fingerprint: str) -> CertificateRecord: ...

    def download_certificate(self, fingerprint: str) -> bytes: ...

    def rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord: ...

    def delete_certificate(self, fingerprint: str) -> None: ...

    def login_history(
        self, *, user_id: str | None = None, failed_only: bool = False, limit: int = 100
    ) -> list[LoginRecord]: ...

    def record(self, record: LoginRecord) -> None: ...


def not_found(what: str) -> ManagementError:
    return ManagementError(Reason.NOT_FOUND, f"{what} not found")
