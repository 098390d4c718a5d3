"""What the stores share beyond the protocol (private): row conversions, the query filters, the
checks of a batch upload, and the plumbing of the stores whose history a thread writes.

Each store keeps its engine's SQL (or ORM calls) in its own module; what is here is engine-neutral.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import weakref
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from cryptography import x509

from ..errors import MTLSError
from ..history import ACCEPTED, HistoryWriter, LoginRecord, history_cutoff, timestamp
from .base import (
    AuditEntry,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Principal,
    Upload,
    UserRecord,
    check_audit_entry,
    check_label,
    check_org,
    check_permissions,
    check_upload,
    check_uploads,
    check_user_id,
    duplicate,
    record_from_upload,
    unknown_user,
)

_T = TypeVar("_T")
_S = TypeVar("_S", bound="WrittenHistory")

# -- rows and records ---------------------------------------------------------------------------

#: The columns of a certificate row, in the order :func:`certificate_from_row` reads them.
CERT_COLUMNS = (
    "fingerprint, user_id, org, label, pem, subject, issuer, serial, not_before, not_after, uploaded_at,"
    " uploaded_by"
)
#: The columns of a user row (:func:`user_from_row`).
USER_COLUMNS = "user_id, org, active, permissions"
#: The columns of the login history in LoginRecord's field order: records are rows, rows records.
HISTORY_COLUMNS = ", ".join(LoginRecord._fields)
#: The columns of an audit row, ``id`` first.
AUDIT_COLUMNS = "id, actor, action, target, before, after, time"

_INT64 = 2**63


def select_from(columns: str, table: str) -> str:
    """``SELECT columns FROM table``, both from our own literals (never from input)."""
    return f"SELECT {columns} FROM {table}"  # noqa: S608


def clamp64(value: int) -> int:
    """``value`` clamped into a signed 64-bit integer (a database column would refuse a bigger one)."""
    return max(-_INT64, min(_INT64 - 1, int(value)))


def _unchanged(value: _T) -> _T:
    return value


def certificate_from_row(row: Sequence[Any], when: Callable[[Any], dt.datetime]) -> CertificateRecord:
    """A row of :data:`CERT_COLUMNS` as a record; ``when`` turns a stored time into an aware one."""
    return CertificateRecord(
        fingerprint=row[0],
        user_id=row[1],
        org=row[2],
        label=row[3],
        pem=bytes(row[4]),
        subject=row[5],
        issuer=row[6],
        serial=row[7],
        not_before=when(row[8]),
        not_after=when(row[9]),
        uploaded_at=when(row[10]),
        uploaded_by=row[11],
    )


def principal_from_row(row: Sequence[Any], permissions: Callable[[Any], frozenset[str]]) -> Principal:
    """A row ``(user_id, org, active, org_cert_auth, permissions)``; ``permissions`` decodes the last."""
    return Principal(
        user_id=row[0],
        org=row[1],
        active=bool(row[2]),
        org_cert_auth=bool(row[3]),
        permissions=permissions(row[4]),
    )


def user_from_row(row: Sequence[Any], permissions: Callable[[Any], frozenset[str]]) -> UserRecord:
    """A row of :data:`USER_COLUMNS`; ``permissions`` decodes the last column."""
    return UserRecord(row[0], row[1], bool(row[2]), permissions(row[3]))


# -- the query filters --------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryFilter:
    """The arguments of ``login_history``."""

    user_id: str | None
    failed_only: bool
    outcome: str | None
    since: dt.datetime | None
    until: dt.datetime | None
    limit: int | None


@dataclass(frozen=True)
class AuditFilter:
    """The arguments of ``audit_log``."""

    actor: str | None
    target: str | None
    action: str | None
    since: dt.datetime | None
    until: dt.datetime | None
    before_id: int | None
    limit: int | None


class UploadBatch(NamedTuple):
    """A batch upload: the uploads, what :func:`~.base.check_uploads` made of each (its leaf or
    the error refusing it) and the uploader."""

    uploads: Sequence[Upload]
    parsed: Sequence[x509.Certificate | MTLSError]
    uploaded_by: str | None


class StoreFront:
    """The protocol's methods whose arguments every store checks and gathers the same way, once:
    each runs the store's own ``_name`` (its engine's queries) with the checked arguments.

    ``_refuse_user_id`` and ``_refuse_org`` are where a store adds limits of its engine (a length,
    a NUL character), right after the common check of the same value.
    """

    # -- organisations ------------------------------------------------------------------------
    def set_org(self, org: str, *, cert_auth: bool) -> OrgRecord:
        check_org(org)
        self._refuse_org(org)
        return self._set_org(org, bool(cert_auth))

    def _set_org(self, org: str, cert_auth: bool) -> OrgRecord:
        raise NotImplementedError

    # -- users --------------------------------------------------------------------------------
    def add_user(
        self,
        user_id: str,
        *,
        org: str = "default",
        active: bool = True,
        permissions: Iterable[str] = (),
    ) -> UserRecord:
        check_user_id(user_id)
        self._refuse_user_id(user_id)
        check_org(org)
        self._refuse_org(org)
        return self._add_user(UserRecord(user_id, org, bool(active), check_permissions(permissions)))

    def _refuse_user_id(self, user_id: str) -> None:
        """Raise ManagementError(unknown_user) for a user id this store cannot keep."""

    def _refuse_org(self, org: str) -> None:
        """Raise ConfigurationError for an organisation name this store cannot keep."""

    def _add_user(self, record: UserRecord) -> UserRecord:
        raise NotImplementedError

    def set_user_permissions(self, user_id: str, permissions: Iterable[str]) -> UserRecord:
        return self._set_user_permissions(user_id, check_permissions(permissions))

    def _set_user_permissions(self, user_id: str, names: frozenset[str]) -> UserRecord:
        raise NotImplementedError

    # -- certificates -------------------------------------------------------------------------
    def upload_certificate(
        self,
        pem: bytes,
        *,
        user_id: str,
        label: str | None = None,
        uploaded_by: str | None = None,
    ) -> CertificateRecord:
        leaf, _chain = check_upload(pem)
        check_label(label)
        check_user_id(user_id)
        return self._upload_certificate(Upload(pem, user_id, label), leaf, uploaded_by)

    def _upload_certificate(
        self, upload: Upload, leaf: x509.Certificate, uploaded_by: str | None
    ) -> CertificateRecord:
        raise NotImplementedError

    def upload_certificates(
        self, uploads: Sequence[Upload], *, uploaded_by: str | None = None
    ) -> list[CertificateRecord]:
        return self._upload_certificates(UploadBatch(uploads, check_uploads(uploads), uploaded_by))

    def _upload_certificates(self, batch: UploadBatch) -> list[CertificateRecord]:
        raise NotImplementedError

    def find_fingerprints(self, prefix: str, *, limit: int = 2) -> list[str]:
        prefix = prefix.lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []  # and an empty or non-hex prefix matches nothing
        return self._find_fingerprints(prefix, limit)

    def _find_fingerprints(self, prefix: str, limit: int) -> list[str]:
        raise NotImplementedError

    def rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        check_label(label)
        return self._rename_certificate(fingerprint, label)

    def _rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        raise NotImplementedError

    # -- login history and audit --------------------------------------------------------------
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
        return self._login_history(HistoryFilter(user_id, failed_only, outcome, since, until, limit))

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
        return self._audit_log(AuditFilter(actor, target, action, since, until, before_id, limit))

    def _login_history(self, query: HistoryFilter) -> list[LoginRecord]:
        raise NotImplementedError

    def prune_history(self, *, older_than: dt.timedelta) -> int:
        return self._prune_history(history_cutoff(older_than))

    def _prune_history(self, cutoff: float) -> int:
        raise NotImplementedError

    def record_audit(self, entry: AuditEntry) -> AuditEntry:
        return self._record_audit(check_audit_entry(entry))

    def _record_audit(self, checked: AuditEntry) -> AuditEntry:
        raise NotImplementedError

    def _audit_log(self, query: AuditFilter) -> list[AuditEntry]:
        raise NotImplementedError


class SQLStoreFront(StoreFront):
    """The uploads of the SQL stores: one transaction (``_write``) and one ``_insert`` per
    certificate, which runs in a savepoint of its own, so that a refused one leaves the rest of a
    batch going (every refusal is then named, and the whole batch rolled back)."""

    def _write(self, *, invalidates: bool) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _insert(
        self, conn: Any, upload: Upload, leaf: x509.Certificate, uploaded_by: str | None
    ) -> CertificateRecord:
        raise NotImplementedError

    def _upload_certificate(
        self, upload: Upload, leaf: x509.Certificate, uploaded_by: str | None
    ) -> CertificateRecord:
        with self._write(invalidates=True) as conn:
            record = self._insert(conn, upload, leaf, uploaded_by)
        return record

    def _upload_certificates(self, batch: UploadBatch) -> list[CertificateRecord]:
        uploads, parsed, uploaded_by = batch
        with self._write(invalidates=bool(uploads)) as conn:
            return insert_all(
                uploads, parsed, lambda upload, leaf: self._insert(conn, upload, leaf, uploaded_by)
            )


class SQLQuery:
    """A ``SELECT`` with ANDed conditions and their parameters; ``mark`` is the driver's
    placeholder (``?`` or ``%s``). Column names and operators come from our literals only."""

    def __init__(self, select: str, mark: str) -> None:
        self.select = select
        self.mark = mark
        self.conditions: list[str] = []
        self.args: list[object] = []

    def where(self, column: str, op: str, value: object) -> SQLQuery:
        self.conditions.append(f"{column} {op} {self.mark}")
        self.args.append(value)
        return self

    def equal(self, **columns: object) -> SQLQuery:
        """``column = value`` for each value that is not None."""
        for column, value in columns.items():
            if value is not None:
                self.where(column, "=", value)
        return self

    def sql(self, order: str, limit: int | None = None, integer: Callable[[int], int] = _unchanged) -> str:
        """The query text (``args`` gets the limit's parameter); ``integer`` fits the limit to the
        engine."""
        text = where(self.select, self.conditions) + f" ORDER BY {order}"
        if limit is not None:
            text += f" LIMIT {self.mark}"
            self.args.append(max(0, integer(limit)))
        return text


def where(select: str, conditions: Sequence[str]) -> str:
    """``select`` with the (literal, parameterised) ``conditions`` ANDed."""
    return select + (" WHERE " + " AND ".join(conditions) if conditions else "")


def history_sql(
    select: str,
    mark: str,
    query: HistoryFilter,
    *,
    text: Callable[[str], object] = _unchanged,
    integer: Callable[[int], int] = _unchanged,
) -> tuple[str, list[object]]:
    """The SQL of a ``login_history`` call over a table of :data:`HISTORY_COLUMNS` with an ``id``;
    ``text`` fits a text value to the engine."""
    found = SQLQuery(select, mark)
    if query.user_id is not None:
        found.where("user_id", "=", text(query.user_id))
    if query.failed_only:
        found.conditions.append(f"outcome <> '{ACCEPTED}'")
    if query.outcome is not None:
        found.where("outcome", "=", text(str(query.outcome)))
    if query.since is not None:
        found.where("time", ">=", timestamp(query.since))
    if query.until is not None:
        found.where("time", "<", timestamp(query.until))
    return found.sql("time DESC, id DESC", query.limit, integer), found.args


def audit_sql(
    select: str, mark: str, query: AuditFilter, *, when: Callable[[dt.datetime], object]
) -> tuple[str, list[object]]:
    """The SQL of an ``audit_log`` call over a table of :data:`AUDIT_COLUMNS`; ``when`` is how the
    table keeps a time (a naive datetime is UTC)."""
    found = SQLQuery(select, mark)
    for column, value in (("actor", query.actor), ("target", query.target), ("action", query.action)):
        if value is not None:
            found.where(column, "=", str(value))
    if query.since is not None:
        found.where("time", ">=", when(query.since))
    if query.until is not None:
        found.where("time", "<", when(query.until))
    if query.before_id is not None:
        found.where("id", "<", clamp64(query.before_id))
    return found.sql("id DESC", query.limit, clamp64), found.args


def audit_matches(query: AuditFilter) -> Callable[[AuditEntry], bool]:
    """A predicate for the ``audit_log`` filters, for a store that filters in Python."""
    low = None if query.since is None else timestamp(query.since)
    high = None if query.until is None else timestamp(query.until)

    def keep(entry: AuditEntry) -> bool:
        return (
            (query.before_id is None or entry.id < query.before_id)
            and (query.actor is None or entry.actor == query.actor)
            and (query.target is None or entry.target == query.target)
            and (query.action is None or entry.action == query.action)
            and (low is None or entry.time.timestamp() >= low)
            and (high is None or entry.time.timestamp() < high)
        )

    return keep


# -- uploads ------------------------------------------------------------------------------------


def upload_record(
    upload: Upload, leaf: x509.Certificate, org: str, uploaded_by: str | None
) -> CertificateRecord:
    """The record an accepted upload to a user of ``org`` becomes."""
    return record_from_upload(
        upload.pem, leaf, user_id=upload.user_id, org=org, label=upload.label, uploaded_by=uploaded_by
    )


def insert_all(
    uploads: Sequence[Upload],
    parsed: Sequence[x509.Certificate | MTLSError],
    insert: Callable[[Upload, x509.Certificate], CertificateRecord],
) -> list[CertificateRecord]:
    """``insert`` every upload that :func:`~.base.check_uploads` accepted (``parsed``), one by one,
    inside the caller's transaction.

    Raises:
        BatchRefused: naming every refused upload (raised in the transaction, it rolls it back).
    """
    records: list[CertificateRecord] = []
    refusals: list[tuple[int, MTLSError]] = []
    for index, (upload, leaf) in enumerate(zip(uploads, parsed, strict=True)):
        if isinstance(leaf, MTLSError):
            refusals.append((index, leaf))
            continue
        try:
            records.append(insert(upload, leaf))
        except MTLSError as exc:
            refusals.append((index, exc))
    if refusals:
        raise BatchRefused(refusals, total=len(uploads))
    return records


def batch_candidates(
    uploads: Sequence[Upload],
    parsed: Sequence[x509.Certificate | MTLSError],
    owners: Mapping[str, _T],
    org_of: Callable[[_T], str],
    uploaded_by: str | None,
    refusals: list[tuple[int, MTLSError]],
) -> list[tuple[int, CertificateRecord, _T]]:
    """For a store that checks a whole batch before it writes: the record each accepted upload
    becomes, with its index and its owner (from ``owners``, by user id); ``refusals`` gets the
    uploads refused by the checks or for want of an owner."""
    candidates: list[tuple[int, CertificateRecord, _T]] = []
    for index, (upload, leaf) in enumerate(zip(uploads, parsed, strict=True)):
        if isinstance(leaf, MTLSError):
            refusals.append((index, leaf))
            continue
        owner = owners.get(upload.user_id)
        if owner is None:
            refusals.append((index, unknown_user(upload.user_id)))
            continue
        record = upload_record(upload, leaf, org_of(owner), uploaded_by)
        candidates.append((index, record, owner))
    return candidates


def first_of_each(
    candidates: Iterable[tuple[int, CertificateRecord, _T]],
    taken: Container[str],
    refusals: list[tuple[int, MTLSError]],
) -> list[tuple[int, CertificateRecord, _T]]:
    """The candidates whose fingerprint is neither ``taken`` (registered already) nor earlier in
    the batch; ``refusals`` gets the others as duplicates."""
    kept: list[tuple[int, CertificateRecord, _T]] = []
    seen: set[str] = set()
    for candidate in candidates:
        index, record, _owner = candidate
        if record.fingerprint in taken or record.fingerprint in seen:
            refusals.append((index, duplicate(record.fingerprint)))
            continue
        seen.add(record.fingerprint)
        kept.append(candidate)
    return kept


# -- the stores whose history a HistoryWriter writes --------------------------------------------


class WrittenHistory:
    """``record`` into a :class:`HistoryWriter` (``self._writer``), ``flush`` it, and the context
    manager that closes the store."""

    _writer: HistoryWriter

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    @property
    def history_writer(self) -> HistoryWriter:
        """The login-history writer (its ``waits``, ``written`` and ``lost`` counters)."""
        return self._writer

    def record(self, record: LoginRecord) -> None:  # replaced per instance by the writer's
        self._writer.record(record)

    def flush(self, timeout: float | None = None) -> bool:
        return self._writer.flush(timeout)


# Stores reopened in a child after fork(): each has ``_closed`` and ``_after_fork()``.
_FORKABLE: weakref.WeakSet[Any] = weakref.WeakSet()


def reopen_after_fork(store: Any) -> None:
    """Have ``store._after_fork()`` called in every child forked while ``store`` is open."""
    _FORKABLE.add(store)


def _after_fork_in_child(stores: Iterable[Any] = _FORKABLE) -> None:
    for store in list(stores):
        if not store._closed:
            store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child))
