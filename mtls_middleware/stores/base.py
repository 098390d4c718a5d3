"""The store protocol, its records, and the upload rules every store enforces."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..certs import MAX_CHAIN_LENGTH, fingerprint, parse_chain
from ..errors import (
    CertificateError,
    ConfigurationError,
    ManagementError,
    MTLSError,
    Reason,
    ValidationError,
)
from ..history import LoginRecord

__all__ = [
    "API_ONLY",
    "ENFORCE_MTLS",
    "KNOWN_PERMISSIONS",
    "MANAGE_CERTIFICATES",
    "MAX_UPLOAD_BYTES",
    "AuditEntry",
    "BatchRefused",
    "CertificateRecord",
    "OrgRecord",
    "Principal",
    "Store",
    "Upload",
    "UserRecord",
    "check_upload",
]

#: The largest PEM upload accepted (the seeds' 1 MB).
MAX_UPLOAD_BYTES = 1_000_000

#: Permission: certificate login is the only way in for the user (an app with other login methods
#: checks it with ``mtls_middleware.identity.require_certificate_login``).
ENFORCE_MTLS = "enforce_mtls"
#: Permission: the user is an API client (a machine account); what that allows is the app's to say.
API_ONLY = "api_only"
#: Permission: the user may manage certificates, users and organisations through the REST API
#: (``mtls_middleware.admin.rest``).
MANAGE_CERTIFICATES = "manage_certificates"
#: The permission names the library itself knows. Stores accept any other non-empty name as well,
#: for the application's own use; the middleware hands them on in ``Identity.permissions``.
KNOWN_PERMISSIONS = frozenset({ENFORCE_MTLS, API_ONLY, MANAGE_CERTIFICATES})


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
    """A user: the organisation it belongs to, whether it may sign in, and its permissions."""

    user_id: str
    org: str
    active: bool = True
    permissions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OrgRecord:
    """An organisation and whether certificate login is enabled for it (on unless switched off)."""

    org: str
    cert_auth: bool = True


@dataclass(frozen=True)
class Upload:
    """One certificate of a batch upload (:meth:`Store.upload_certificates`)."""

    pem: bytes
    user_id: str
    label: str | None = None


class BatchRefused(ManagementError):
    """A batch upload stored nothing because some of its uploads were refused.

    ``refusals`` lists every refused upload as ``(index in the batch, error)``; ``reason`` is the
    first one's reason (so a caller that handles only ``ManagementError`` still sees a real code).
    """

    def __init__(self, refusals: Sequence[tuple[int, MTLSError]], *, total: int) -> None:
        self.refusals: list[tuple[int, MTLSError]] = sorted(refusals, key=lambda item: item[0])
        first_index, first = self.refusals[0]
        super().__init__(
            first.reason,
            f"{len(self.refusals)} of {total} uploads refused, nothing stored; "
            f"the first, #{first_index}: {first.reason.value}: {first.detail}",
        )


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


@dataclass(frozen=True)
class AuditEntry:
    """One management change: who (``actor``, a user id), what (``action``, e.g.
    ``"certificate.upload"``, ``"certificate.rename"``, ``"certificate.delete"``,
    ``"certificate.import"``, ``"user.create"``, ``"user.update"``, ``"org.set"``), on what
    (``target``: a fingerprint, user id or organisation), the state ``before`` and ``after`` (JSON
    objects; None where there was or is none) and when (``time``, UTC).

    ``id`` is 0 until :meth:`Store.record_audit` stores the entry; stored ids increase.
    """

    actor: str
    action: str
    target: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    time: dt.datetime
    id: int = 0


def _json_object(value: object, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigurationError(detail=f"an audit entry's {what} must be a JSON object or None")
    try:
        decoded: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:  # lone surrogates, NaN, sets, ...
        raise ConfigurationError(detail=f"an audit entry's {what} is not JSON: {exc}") from None
    return decoded


def check_audit_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` as every store keeps and returns it: ``time`` aware UTC (a naive one is taken as
    UTC), ``before`` and ``after`` as their JSON round trip (tuples become lists), ``id`` 0.

    Raises:
        ConfigurationError: an empty or non-UTF-8 actor, action or target; ``before``/``after``
            not a JSON object; ``time`` not a datetime.
    """
    for what in ("actor", "action", "target"):
        value = getattr(entry, what)
        if not _storable(value) or not value:
            raise ConfigurationError(detail=f"an audit entry's {what} must be non-empty UTF-8 text")
    if not isinstance(entry.time, dt.datetime):
        raise ConfigurationError(detail="an audit entry's time must be a datetime")
    when = entry.time
    when = when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    return replace(
        entry,
        before=_json_object(entry.before, "before"),
        after=_json_object(entry.after, "after"),
        time=when,
        id=0,
    )


def audit_json(value: dict[str, Any] | None) -> str | None:
    """The stored text of a checked ``before``/``after`` (None stays None)."""
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


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


def _storable(value: object) -> bool:
    """A str every store can keep: SQLite refuses lone surrogates (undecodable bytes from a
    command line or a file decoded with ``surrogateescape``) where a dict would take them."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_user_id(user_id: str) -> str:
    """Raises ManagementError(unknown_user) for an empty user id or one that is not UTF-8 text."""
    if not _storable(user_id) or not user_id:
        raise ManagementError(Reason.UNKNOWN_USER, "a user id must be non-empty UTF-8 text")
    return user_id


def check_org(org: str) -> str:
    """Raises ConfigurationError for an empty organisation name or one that is not UTF-8 text."""
    if not _storable(org) or not org:
        raise ConfigurationError(detail="an organisation name must be non-empty UTF-8 text")
    return org


def check_label(label: str | None) -> None:
    """Raises ConfigurationError for a label that is not UTF-8 text (None: the subject)."""
    if label is not None and not _storable(label):
        raise ConfigurationError(detail="a certificate label must be UTF-8 text")


def check_uploads(uploads: Sequence[Upload]) -> list[x509.Certificate | MTLSError]:
    """For each upload of a batch, its leaf if :func:`check_upload` and the label and user id
    checks accept it, else the MTLSError that refuses it."""
    checked: list[x509.Certificate | MTLSError] = []
    for upload in uploads:
        try:
            leaf, _chain = check_upload(upload.pem)
            check_label(upload.label)
            check_user_id(upload.user_id)
        except MTLSError as exc:
            checked.append(exc)
        else:
            checked.append(leaf)
    return checked


def check_permissions(permissions: Iterable[str]) -> frozenset[str]:
    """The permission names as a set.

    Raises:
        ConfigurationError: a name that is not a non-empty string (a lone string is refused too:
            it would otherwise become a set of its characters).
    """
    if isinstance(permissions, (str, bytes)):
        raise ConfigurationError(detail="permissions must be a sequence of names, not one string")
    names = frozenset(permissions)
    for name in names:
        if not _storable(name) or not name.strip():
            raise ConfigurationError(detail=f"permission names must be non-empty UTF-8 text, got {name!r}")
    return names


def unknown_user(user_id: str) -> ManagementError:
    return ManagementError(Reason.UNKNOWN_USER, f"no user {user_id!r}")


def duplicate(fingerprint: str) -> ManagementError:
    return ManagementError(
        Reason.DUPLICATE_CERTIFICATE, f"certificate {fingerprint} is already registered"
    )


@runtime_checkable
class Store(Protocol):
    """Users, organisations and their certificates; the pipeline's map and authorize stages.

    Every store (memory, SQLite, ...) has these methods with the same semantics; the CLI, the REST
    API and the Django admin are thin layers over them.

    Certificates are unique across the whole store: one certificate belongs to exactly one user of
    one organisation, so uploading it again, for the same or any other user, is refused with
    ``duplicate_certificate``. Fingerprints (SHA-256 of the leaf's DER, hex) are accepted in either
    case; records carry them lowercase.

    ``generation`` changes whenever something that can invalidate a verdict changes: a certificate
    uploaded or deleted, a user added, changed, deactivated or given other permissions, an
    organisation switched. Renames and login history do not change it. The verdict cache compares
    it on every hit, so reading it costs well under 0.5 µs.
    """

    @property
    def generation(self) -> int: ...

    # -- the pipeline -------------------------------------------------------------------------
    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        """The owner of the certificate with this SHA-256 fingerprint, or None."""

    def resolve_user(self, user_id: str) -> Principal | None:
        """The user with this id (for mappers that map by SAN, UPN or subject), or None."""

    # -- organisations ------------------------------------------------------------------------
    def set_org(self, org: str, *, cert_auth: bool) -> OrgRecord:
        """Create or switch an organisation. Raises ConfigurationError for an empty name."""

    def list_orgs(self) -> list[OrgRecord]:
        """Every organisation, by name; one first seen through ``add_user`` has cert_auth on."""

    # -- users --------------------------------------------------------------------------------
    def add_user(
        self,
        user_id: str,
        *,
        org: str = "default",
        active: bool = True,
        permissions: Iterable[str] = (),
    ) -> UserRecord:
        """Add the user, or replace an existing one's org, active flag and permissions.

        Permissions are names (see :data:`KNOWN_PERMISSIONS`). Moving a user to another
        organisation moves its certificates with it.

        Raises:
            ManagementError: ``unknown_user`` for an empty user id.
            ConfigurationError: an empty organisation or permission name.
        """

    def get_user(self, user_id: str) -> UserRecord:
        """Raises ManagementError(unknown_user) when there is no such user."""

    def list_users(self, *, org: str | None = None) -> list[UserRecord]:
        """The users (of ``org``), by user id."""

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        """Raises ManagementError(unknown_user) when there is no such user."""

    def set_user_permissions(self, user_id: str, permissions: Iterable[str]) -> UserRecord:
        """Replace the user's permissions.

        Raises:
            ManagementError: ``unknown_user``.
            ConfigurationError: an empty permission name.
        """

    # -- certificates -------------------------------------------------------------------------
    def upload_certificate(
        self,
        pem: bytes,
        *,
        user_id: str,
        label: str | None = None,
        uploaded_by: str | None = None,
    ) -> CertificateRecord:
        """Register ``pem`` (kept byte for byte) to ``user_id``; the label defaults to the subject.

        Raises:
            CertificateError, ValidationError: the rules of :func:`check_upload`.
            ManagementError: ``unknown_user``, ``duplicate_certificate``.
            ConfigurationError: a label that is not UTF-8 text.
        """

    def upload_certificates(
        self, uploads: Sequence[Upload], *, uploaded_by: str | None = None
    ) -> list[CertificateRecord]:
        """Register every upload, or none: all-or-nothing (CSV import).

        A certificate twice in the batch is a duplicate at its second place.

        Raises:
            BatchRefused: one or more uploads were refused; ``refusals`` lists them all.
        """

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]:
        """The certificates (of ``user_id``, of ``org``), in upload order."""

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        """Raises ManagementError(not_found)."""

    def find_fingerprints(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` registered fingerprints that start with ``prefix`` (hex, any case),
        in order; for tools that accept an abbreviated fingerprint. An empty or non-hex prefix
        matches nothing."""

    def download_certificate(self, fingerprint: str) -> bytes:
        """The PEM exactly as uploaded. Raises ManagementError(not_found)."""

    def rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        """Raises ManagementError(not_found); ConfigurationError for a label that is not UTF-8 text."""

    def delete_certificate(self, fingerprint: str) -> None:
        """Raises ManagementError(not_found)."""

    # -- login history ------------------------------------------------------------------------
    def record(self, record: LoginRecord) -> None:
        """Keep ``record``; never blocks beyond an append (or, when the buffer is full, until
        the writer has made room)."""

    def login_history(
        self,
        *,
        user_id: str | None = None,
        failed_only: bool = False,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = 100,
    ) -> list[LoginRecord]:
        """Matching records, newest first: ``since <= time < until`` (a naive datetime is UTC),
        ``outcome`` a reason code or ``"accepted"``; ``limit=None`` for all. Includes everything
        this process recorded before the call."""

    def prune_history(self, *, older_than: dt.timedelta) -> int:
        """Remove records older than ``older_than``; return how many were removed."""

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record recorded so far is stored; False if ``timeout`` passed first."""

    # -- audit --------------------------------------------------------------------------------
    def record_audit(self, entry: AuditEntry) -> AuditEntry:
        """Store ``entry`` (see :func:`check_audit_entry` for how it is normalised); return it with
        its id, greater than every id stored before.

        Raises:
            ConfigurationError: an empty actor, action or target, or before/after not JSON objects.
        """

    def audit_log(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        before_id: int | None = None,
        limit: int | None = 100,
    ) -> list[AuditEntry]:
        """Matching entries, newest (highest id) first: ``since <= time < until`` (a naive datetime
        is UTC); ``before_id`` is a cursor: only entries with ``id < before_id``; ``limit=None``
        for all."""

    def close(self) -> None:
        """Flush and release the store's resources. Idempotent."""


def not_found(what: str) -> ManagementError:
    return ManagementError(Reason.NOT_FOUND, f"{what} not found")
