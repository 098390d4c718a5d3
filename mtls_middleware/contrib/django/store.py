"""``DjangoStore``: the :class:`~mtls_middleware.stores.base.Store` in your Django database.

Same rules as every store (the upload checks of :func:`~mtls_middleware.stores.base.check_upload`,
one certificate one owner store-wide, the PEM kept byte for byte), kept in the app's tables
(:mod:`.models`) of the database ``using`` (``"default"``). Uniqueness is decided by the
database's unique constraint, so two processes uploading the same certificate at once get one
success and one ``duplicate_certificate``.

Users are :class:`~.models.CertificateUser` rows keyed by the ``user_id`` string (see
:mod:`.models` for how they relate to ``AUTH_USER_MODEL``); user ids and organisation names are at
most 255 characters.

``generation`` is an attribute read of this process's counter and one clock comparison (see
:mod:`.signals`): a change made in this process shows at once, one made by another process (a
web worker, ``manage.py mtls``, the admin) within 0.5 s plus one query. While the counter's row
cannot be read (the database down or not answering), it is a new number at every read, within
:data:`.signals.STALE_AFTER` (2 s) at the latest: no cached verdict is served.

The login history is written by a :class:`~mtls_middleware.history.HistoryWriter` thread in
batches (``bulk_create``), on a database connection of its own; ``record`` costs an append.
``login_history`` and ``prune_history`` flush first.

An unreachable (or, with SQLite, locked beyond its timeout) database makes calls raise
``MTLSError(store_unavailable)`` (503) and raises the generation; other database faults are
``internal_error``.

The ORM must not run on an asyncio event loop thread: call the store from sync code or
``sync_to_async`` (the middleware does).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography import x509
from django.conf import settings
from django.core.exceptions import AppRegistryNotReady, ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, OperationalError, connections, transaction
from django.utils import timezone

from ...errors import ConfigurationError, ManagementError, MTLSError, Reason
from ...history import ACCEPTED, HistoryWriter, LoginRecord, timestamp
from ...stores._common import (
    AuditFilter,
    HistoryFilter,
    StoreFront,
    UploadBatch,
    WrittenHistory,
    batch_candidates,
    certificate_from_row,
    first_of_each,
    principal_from_row,
    upload_record,
)
from ...stores.base import (
    AuditEntry,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Principal,
    Upload,
    UserRecord,
    duplicate,
    not_found,
    unknown_user,
)

try:
    from . import models as m
except (ImproperlyConfigured, AppRegistryNotReady) as _exc:
    # Outside a Django project (``mtls-admin --db django://`` from a plain shell): say what to do.
    raise ConfigurationError(
        detail="the django:// store needs a configured Django project with "
        "'mtls_middleware.contrib.django' in INSTALLED_APPS: run 'manage.py mtls ...' instead of "
        f"mtls-admin, or call django.setup() first ({_exc})"
    ) from None
from .signals import bump, bump_in_transaction, suppressed, watch

__all__ = ["DjangoStore", "shared_store"]

_monotonic = time.monotonic  # bound once: the generation is read on every request

_MAX_ID = 2**63 - 1
_UTC = dt.timezone.utc


def _to_db(when: dt.datetime) -> dt.datetime:
    """An aware datetime as Django keeps it: aware with USE_TZ, else naive local time of
    TIME_ZONE (Django's convention then, which every backend and the admin follow)."""
    if settings.USE_TZ:
        return when.astimezone(_UTC)
    naive: dt.datetime = timezone.make_naive(when, timezone.get_default_timezone())
    return naive


def _from_db(when: dt.datetime) -> dt.datetime:
    """What :func:`_to_db` stored, as an aware UTC datetime."""
    if timezone.is_naive(when):
        when = timezone.make_aware(when, timezone.get_default_timezone())
    return when.astimezone(_UTC)


@functools.lru_cache(maxsize=1024)
def _permissions(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(names)


def _names(value: Any) -> frozenset[str]:
    return _permissions(tuple(value or ()))


def _check_name(value: str, what: str) -> None:
    if len(value) > m.NAME_LENGTH:
        raise ConfigurationError(detail=f"{what} is longer than {m.NAME_LENGTH} characters")


def _check_text(using: str, *values: str | None) -> None:
    # PostgreSQL text cannot hold NUL; the other stores keep it. Refuse it before the database
    # does (it would be an internal error there).
    if connections[using].vendor == "postgresql":
        for value in values:
            if value is not None and "\x00" in value:
                raise ConfigurationError(detail="text with a NUL character cannot be stored")


_CERT_FIELDS = (
    "fingerprint", "user__user_id", "user__org__name", "label", "pem", "subject", "issuer", "serial",
    "not_before", "not_after", "uploaded_at", "uploaded_by",
)
_HISTORY_FIELDS = LoginRecord._fields
# CharField lengths of the history table: a longer value (a hostile subject becomes none of these,
# but be sure) is cut rather than failing its whole batch.
_HISTORY_LIMITS = {"outcome": 64, "fingerprint": 64, "user_id": m.NAME_LENGTH, "org": m.NAME_LENGTH}


def _certificate(row: Sequence[Any]) -> CertificateRecord:
    return certificate_from_row(row, _from_db)


@functools.lru_cache(maxsize=1024)
def _decoded(text: str) -> frozenset[str]:
    # Few distinct sets exist; decoding JSON on every lookup would be a good part of its cost.
    return frozenset(json.loads(text))


def _raw_permissions(value: Any) -> frozenset[str]:
    # Raw SQL: the JSON column comes as text (SQLite) or already decoded (some drivers).
    return _decoded(value) if isinstance(value, str) else _names(value)


def _principal(row: Sequence[Any]) -> Principal:
    return principal_from_row(row, _raw_permissions)


def _resolve_sql(using: str) -> tuple[str, str]:
    """The lookups of the pipeline by fingerprint and by user id (``%s`` placeholders)."""

    def quote(name: str) -> str:
        return str(connections[using].ops.quote_name(name))

    def column(model: Any, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    cert, user, org = m.Certificate, m.CertificateUser, m.Organisation
    # Identifiers only, from our own models and quoted by the backend; values stay parameters.
    columns = ", ".join([
        f"u.{column(user, 'user_id')}", f"o.{column(org, 'name')}", f"u.{column(user, 'active')}",
        f"o.{column(org, 'cert_auth')}", f"u.{column(user, 'permissions')}",
    ])
    users = (
        f"{quote(user._meta.db_table)} u JOIN {quote(org._meta.db_table)} o"
        f" ON o.{column(org, 'id')} = u.{column(user, 'org')}"
    )
    select = f"SELECT {columns} FROM {users}"  # noqa: S608
    by_fingerprint = (
        f"{select} JOIN {quote(cert._meta.db_table)} c ON c.{column(cert, 'user')} = u.{column(user, 'id')}"
        f" WHERE c.{column(cert, 'fingerprint')} = %s"
    )
    return by_fingerprint, f"{select} WHERE u.{column(user, 'user_id')} = %s"


def _user(user: m.CertificateUser) -> UserRecord:
    return UserRecord(user.user_id, user.org.name, bool(user.active), _names(user.permissions))


def _attempt(record: LoginRecord) -> m.LoginAttempt:
    values = record._asdict()
    for name, limit in _HISTORY_LIMITS.items():
        value = values[name]
        if value is not None and len(value) > limit:
            values[name] = value[:limit]
    return m.LoginAttempt(**values)


def _audit(row: m.AuditEntry) -> AuditEntry:
    return AuditEntry(
        actor=row.actor, action=row.action, target=row.target, before=row.before, after=row.after,
        time=_from_db(row.time), id=row.id,
    )


class DjangoStore(WrittenHistory, StoreFront):
    """A :class:`~mtls_middleware.stores.base.Store` over the app's models (see the module docs).

    ``using`` names the database; ``history_queue`` bounds the login records buffered in memory
    (``record`` blocks beyond it) and ``history_batch`` is how many are inserted per statement.

    Raises:
        ConfigurationError: Django is not set up, the app is not in ``INSTALLED_APPS``, ``using``
            is no configured database, or its tables are missing (run ``manage.py migrate``).
    """

    def __init__(
        self, *, using: str = "default", history_queue: int = 10_000, history_batch: int = 500
    ) -> None:
        from django.apps import apps

        if not apps.ready or not apps.is_installed("mtls_middleware.contrib.django"):
            raise ConfigurationError(
                detail="DjangoStore needs Django set up with 'mtls_middleware.contrib.django' in "
                "INSTALLED_APPS"
            )
        if using not in settings.DATABASES:
            raise ConfigurationError(detail=f"DjangoStore: no database {using!r} in DATABASES")
        self.using = using
        self._sql = _resolve_sql(using)
        self._watch = watch(using)
        try:
            self._watch.acquire()
        except DatabaseError as exc:
            raise ConfigurationError(
                detail=f"DjangoStore: cannot read the mtls_middleware tables of database {using!r} "
                f"(run 'manage.py migrate'): {exc}"
            ) from None
        self._closed = False
        self._close_lock = threading.Lock()
        self._writer = HistoryWriter(
            functools.partial(_write_history, using), maxsize=history_queue,
            batch_size=history_batch, name=f"mtls-history-writer django:{using}",
        )
        # Bound directly: recording runs on every request.
        self.record = self._writer.record  # type: ignore[method-assign]
        _OPEN.add(self)

    def __repr__(self) -> str:
        return f"DjangoStore(using={self.using!r})"

    @property
    def generation(self) -> int:
        """This process's counter (see :mod:`.signals`); a new number at every read while the
        generation row has not been read for over :data:`.signals.STALE_AFTER` seconds."""
        found = self._watch
        if _monotonic() < found.fresh_until:
            return found.value
        return found.stale()

    # -- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Database faults as reason codes: an unreachable or locked database is
        ``store_unavailable`` (503; the generation is raised, as a change this process could not
        see may be behind it), any other fault ``internal_error``."""
        try:
            yield
        except OperationalError as exc:
            self._watch.unknown()
            connection = connections[self.using]
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()  # the next call reconnects
            raise MTLSError(
                Reason.STORE_UNAVAILABLE, f"Django database {self.using!r} is unavailable: {exc}"
            ) from exc
        except DatabaseError as exc:
            raise MTLSError(Reason.INTERNAL_ERROR, f"Django database {self.using!r}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, *, invalidates: bool) -> Iterator[None]:
        """One transaction; ``invalidates`` raises the generation once, whatever the saves inside
        would have signalled: as the transaction's last statement, or after the commit when the
        caller's own transaction surrounds this one (see :mod:`.signals`)."""
        nested = connections[self.using].in_atomic_block
        with self._errors(), transaction.atomic(using=self.using), suppressed(self.using):
            yield
            if invalidates:
                (bump if nested else bump_in_transaction)(self.using)

    def _users(self) -> Any:
        return m.CertificateUser.objects.using(self.using).select_related("org")

    def _certs(self) -> Any:
        return m.Certificate.objects.using(self.using)

    # -- the pipeline -----------------------------------------------------------------------
    # Literal SQL built once from the models' tables and columns: building an ORM query costs
    # several times the query itself, and these run on every verdict-cache miss.
    def _resolve(self, sql: str, value: str) -> Principal | None:
        with self._errors(), connections[self.using].cursor() as cursor:
            cursor.execute(sql, [value])
            row = cursor.fetchone()
        return None if row is None else _principal(row)

    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        return self._resolve(self._sql[0], fingerprint.lower())

    def resolve_user(self, user_id: str) -> Principal | None:
        return self._resolve(self._sql[1], user_id)

    # -- organisations ----------------------------------------------------------------------
    def _set_org(self, org: str, cert_auth: bool) -> OrgRecord:
        _check_text(self.using, org)
        with self._write(invalidates=True):
            m.Organisation.objects.using(self.using).update_or_create(
                name=org, defaults={"cert_auth": bool(cert_auth)}
            )
        return OrgRecord(org, bool(cert_auth))

    def list_orgs(self) -> list[OrgRecord]:
        with self._errors():
            rows = list(m.Organisation.objects.using(self.using).values_list("name", "cert_auth"))
        # Sorted here: code point order, as every store, whatever the database's collation.
        return [OrgRecord(name, bool(on)) for name, on in sorted(rows)]

    # -- users ------------------------------------------------------------------------------
    def _refuse_user_id(self, user_id: str) -> None:
        if len(user_id) > m.NAME_LENGTH:
            raise ManagementError(
                Reason.UNKNOWN_USER, f"a user id must be at most {m.NAME_LENGTH} characters"
            )

    def _refuse_org(self, org: str) -> None:
        _check_name(org, "an organisation name")

    def _add_user(self, record: UserRecord) -> UserRecord:
        user_id, org, names = record.user_id, record.org, record.permissions
        _check_text(self.using, user_id, org, *names)
        with self._write(invalidates=True):
            organisation, _ = m.Organisation.objects.using(self.using).get_or_create(name=org)
            m.CertificateUser.objects.using(self.using).update_or_create(
                user_id=user_id,
                defaults={"org": organisation, "active": record.active, "permissions": sorted(names)},
            )
        return record

    def get_user(self, user_id: str) -> UserRecord:
        with self._errors():
            user = self._users().filter(user_id=user_id).first()
        if user is None:
            raise unknown_user(user_id)
        return _user(user)

    def list_users(self, *, org: str | None = None) -> list[UserRecord]:
        users = self._users()
        if org is not None:
            users = users.filter(org__name=org)
        with self._errors():
            records = [_user(user) for user in users]
        return sorted(records, key=lambda u: u.user_id)

    def _update_user(self, user_id: str, **values: Any) -> UserRecord:
        with self._write(invalidates=True):
            user = self._users().select_for_update().filter(user_id=user_id).first()
            if user is None:
                raise unknown_user(user_id)
            for name, value in values.items():
                setattr(user, name, value)
            user.save(using=self.using, update_fields=list(values))
        return _user(user)

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        return self._update_user(user_id, active=bool(active))

    def _set_user_permissions(self, user_id: str, names: frozenset[str]) -> UserRecord:
        _check_text(self.using, *names)
        return self._update_user(user_id, permissions=sorted(names))

    # -- certificates -----------------------------------------------------------------------
    def _row(self, record: CertificateRecord, user: m.CertificateUser) -> m.Certificate:
        return m.Certificate(
            fingerprint=record.fingerprint,
            user=user,
            label=record.label,
            pem=record.pem,
            subject=record.subject,
            issuer=record.issuer,
            serial=record.serial,
            not_before=_to_db(record.not_before),
            not_after=_to_db(record.not_after),
            uploaded_at=_to_db(record.uploaded_at),
            uploaded_by=record.uploaded_by,
        )

    def _upload_certificate(
        self, upload: Upload, leaf: x509.Certificate, uploaded_by: str | None
    ) -> CertificateRecord:
        _check_text(self.using, upload.label, uploaded_by)
        with self._write(invalidates=True):
            user = self._users().filter(user_id=upload.user_id).first()
            if user is None:
                raise unknown_user(upload.user_id)
            record = upload_record(upload, leaf, user.org.name, uploaded_by)
            # No look-before-insert: the unique constraint decides, also between processes.
            try:
                with transaction.atomic(using=self.using):
                    self._row(record, user).save(using=self.using, force_insert=True)
            except IntegrityError:
                if self._certs().filter(fingerprint=record.fingerprint).exists():
                    raise duplicate(record.fingerprint) from None
                raise
        return record

    def _upload_certificates(self, batch: UploadBatch) -> list[CertificateRecord]:
        uploads, parsed, uploaded_by = batch
        for upload in uploads:
            _check_text(self.using, upload.label)
        _check_text(self.using, uploaded_by)
        refusals: list[tuple[int, MTLSError]] = []
        with self._write(invalidates=bool(uploads)):
            wanted = [
                upload.user_id
                for upload, leaf in zip(uploads, parsed, strict=True)
                if not isinstance(leaf, MTLSError)
            ]
            users = {u.user_id: u for u in self._users().filter(user_id__in=wanted)}
            candidates = batch_candidates(uploads, parsed, users, _org_name, uploaded_by, refusals)
            taken = set(
                self._certs()
                .filter(fingerprint__in=[record.fingerprint for _, record, _ in candidates])
                .values_list("fingerprint", flat=True)
            )
            kept = first_of_each(candidates, taken, refusals)
            records = [record for _, record, _ in kept]
            rows = [self._row(record, user) for _, record, user in kept]
            if refusals:
                raise BatchRefused(refusals, total=len(uploads))  # rolls the whole batch back
            try:
                with transaction.atomic(using=self.using):
                    m.Certificate.objects.using(self.using).bulk_create(rows)
            except IntegrityError:
                # Another process registered some of them meanwhile: name those.
                now_taken = set(
                    self._certs().filter(fingerprint__in=[r.fingerprint for r in records])
                    .values_list("fingerprint", flat=True)
                )
                raced = [
                    (index, duplicate(record.fingerprint))
                    for index, record, _ in candidates
                    if record.fingerprint in now_taken
                ]
                if not raced:
                    raise
                raise BatchRefused(raced, total=len(uploads)) from None
        return records

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]:
        certs = self._certs()
        if user_id is not None:
            certs = certs.filter(user__user_id=user_id)
        if org is not None:
            certs = certs.filter(user__org__name=org)
        with self._errors():
            rows = list(certs.order_by("id").values_list(*_CERT_FIELDS))
        return [_certificate(row) for row in rows]

    def _find_fingerprints(self, prefix: str, limit: int) -> list[str]:
        with self._errors():
            found = list(
                self._certs().filter(fingerprint__startswith=prefix)
                .order_by("fingerprint").values_list("fingerprint", flat=True)[: max(0, limit)]
            )
        return sorted(str(fp) for fp in found)

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        with self._errors():
            row = self._certs().filter(fingerprint=fingerprint.lower()).values_list(*_CERT_FIELDS).first()
        if row is None:
            raise not_found(f"certificate {fingerprint}")
        return _certificate(row)

    def download_certificate(self, fingerprint: str) -> bytes:
        with self._errors():
            pem = self._certs().filter(fingerprint=fingerprint.lower()).values_list("pem", flat=True).first()
        if pem is None:
            raise not_found(f"certificate {fingerprint}")
        return bytes(pem)

    def _rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        _check_text(self.using, label)
        with self._write(invalidates=False):
            if not self._certs().filter(fingerprint=fingerprint.lower()).update(label=label):
                raise not_found(f"certificate {fingerprint}")
        return self.get_certificate(fingerprint)

    def delete_certificate(self, fingerprint: str) -> None:
        with self._write(invalidates=True):
            deleted, _ = self._certs().filter(fingerprint=fingerprint.lower()).delete()
            if not deleted:
                raise not_found(f"certificate {fingerprint}")

    # -- history ----------------------------------------------------------------------------
    def _login_history(self, query: HistoryFilter) -> list[LoginRecord]:
        self._writer.flush(10.0)
        rows = m.LoginAttempt.objects.using(self.using)
        if query.user_id is not None:
            rows = rows.filter(user_id=query.user_id)
        if query.failed_only:
            rows = rows.exclude(outcome=ACCEPTED)
        if query.outcome is not None:
            rows = rows.filter(outcome=str(query.outcome))
        if query.since is not None:
            rows = rows.filter(time__gte=timestamp(query.since))
        if query.until is not None:
            rows = rows.filter(time__lt=timestamp(query.until))
        rows = rows.order_by("-time", "-id").values_list(*_HISTORY_FIELDS)
        if query.limit is not None:
            rows = rows[: max(0, query.limit)]
        with self._errors():
            return [LoginRecord._make(row) for row in rows]

    def _prune_history(self, cutoff: float) -> int:
        self._writer.flush(10.0)
        with self._write(invalidates=False):
            removed, _ = m.LoginAttempt.objects.using(self.using).filter(time__lt=cutoff).delete()
        return int(removed)

    # -- audit ------------------------------------------------------------------------------
    def _record_audit(self, checked: AuditEntry) -> AuditEntry:
        _check_text(self.using, checked.actor, checked.action, checked.target)
        with self._write(invalidates=False):
            row = m.AuditEntry.objects.using(self.using).create(
                actor=checked.actor, action=checked.action, target=checked.target,
                before=checked.before, after=checked.after, time=_to_db(checked.time),
            )
        return AuditEntry(
            actor=checked.actor, action=checked.action, target=checked.target,
            before=checked.before, after=checked.after, time=checked.time, id=row.id,
        )

    def _audit_log(self, query: AuditFilter) -> list[AuditEntry]:
        rows = m.AuditEntry.objects.using(self.using)
        if query.before_id is not None and query.before_id <= _MAX_ID:  # above every id the column holds
            rows = rows.filter(id__lt=query.before_id)
        for name, value in (("actor", query.actor), ("target", query.target), ("action", query.action)):
            if value is not None:
                rows = rows.filter(**{name: value})
        if query.since is not None:
            rows = rows.filter(time__gte=_to_db(_aware(query.since)))
        if query.until is not None:
            rows = rows.filter(time__lt=_to_db(_aware(query.until)))
        rows = rows.order_by("-id")
        if query.limit is not None:
            rows = rows[: max(0, query.limit)]
        with self._errors():
            return [_audit(row) for row in rows]

    def close(self) -> None:
        """Flush the history and stop this store's threads. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._writer.close()
        self._writer.seal()
        self._watch.release()
        _OPEN.discard(self)


def _org_name(user: m.CertificateUser) -> str:
    return str(user.org.name)


def _aware(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=_UTC) if when.tzinfo is None else when


def _write_history(using: str, batch: Sequence[LoginRecord]) -> None:
    """Insert ``batch`` (the HistoryWriter's callback, on its thread and that thread's connection)."""
    try:
        m.LoginAttempt.objects.using(using).bulk_create([_attempt(record) for record in batch])
    except DatabaseError:
        connections[using].close()  # a broken connection must not fail every later batch
        raise


#: The stores of this process not yet closed (tests flush them between cases).
_OPEN: weakref.WeakSet[DjangoStore] = weakref.WeakSet()
_SHARED: dict[str, DjangoStore] = {}
_SHARED_LOCK = threading.Lock()


def shared_store(using: str = "default") -> DjangoStore:
    """One :class:`DjangoStore` per database for the whole process (the admin's, the management
    command's, the middleware's when it names ``django://``): one polling thread, one writer."""
    with _SHARED_LOCK:
        store = _SHARED.get(using)
        if store is None or store._closed:
            store = _SHARED[using] = DjangoStore(using=using)
        return store
