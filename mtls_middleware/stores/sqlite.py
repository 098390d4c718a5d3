"""The embedded store: one SQLite file, shared by every worker process of one machine.

``open_store("sqlite:///mtls.db")`` (relative to the working directory),
``open_store("sqlite:////var/lib/app/mtls.db")`` (absolute) or ``open_store("sqlite:///:memory:")``
(one process only, for tests).

The file
    The schema is versioned with ``PRAGMA user_version`` and built by :data:`MIGRATIONS`, a list of
    steps applied in order, each inside one ``BEGIN IMMEDIATE`` transaction together with the new
    version number, so concurrent openers migrate exactly once. A file written by a newer version
    of the library is refused (``ConfigurationError``), and so is a file of some other application
    (``PRAGMA application_id``). The journal is in WAL mode (readers never wait for the writer) with
    a busy timeout for the writer lock. Management data is written with ``synchronous=FULL``; the
    login history with ``NORMAL`` (the WAL keeps it consistent; a power cut may lose its last
    records).

Several processes
    Every process has its own connections (one for the management and pipeline calls, guarded by a
    lock, and one for the history writer thread); a connection inherited through ``fork()`` is
    abandoned in the child, never used. Uniqueness is decided by the database: two processes that
    upload the same certificate at once both try the ``INSERT`` and the primary key lets exactly one
    in; the other gets ``duplicate_certificate``.

The generation, across processes
    The verdict cache reads ``generation`` on every request, so it must cost a memory read, not a
    query. Beside the database lives ``<db>-generation``, an 8-byte counter that every process maps
    into memory (``mmap``, shared); ``generation`` reads it through a ``ctypes`` view (about 0.1 µs).
    Every invalidating write increments ``meta.generation`` inside its write transaction (the
    SQLite writer lock makes those numbers unique and ordered) and, *after* the commit, publishes the
    number into the shared counter (under ``flock``, only ever raising it). Publishing after the
    commit matters: a process that sees the new number and then reads the database sees the change,
    so it can never cache a stale verdict under the new number. A delete in one process is seen by
    the next request of every other process. Opening the store raises the counter to
    ``meta.generation`` (a lost sidecar is rebuilt), and every bump goes above both numbers (a
    sidecar left from a deleted or restored database keeps working). The sidecar gets the
    database file's permissions; a symbolic link in its place is refused. Limits: a process
    killed between commit and publish leaves the change unpublished until the next invalidating
    write; writes made around the library (the ``sqlite3`` shell) are not seen; never delete the
    sidecar while processes run.

The login history
    ``record`` appends to a :class:`~mtls_middleware.history.HistoryWriter`, whose thread inserts
    in batches. ``login_history`` and ``prune_history`` flush first, so a process reads its own
    writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import fcntl
import functools
import json
import logging
import mmap
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from ..errors import ConfigurationError, MTLSError, Reason
from ..history import HistoryWriter, LoginRecord
from ._common import (
    AUDIT_COLUMNS,
    CERT_COLUMNS,
    HISTORY_COLUMNS,
    USER_COLUMNS,
    AuditFilter,
    HistoryFilter,
    SQLQuery,
    SQLStoreFront,
    WrittenHistory,
    audit_sql,
    certificate_from_row,
    history_sql,
    principal_from_row,
    reopen_after_fork,
    select_from,
    upload_record,
    user_from_row,
)
from .base import (
    AuditEntry,
    CertificateRecord,
    OrgRecord,
    Principal,
    Upload,
    UserRecord,
    audit_json,
    duplicate,
    not_found,
    unknown_user,
)

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "path_from_url"]

log = logging.getLogger("mtls_middleware")

#: ``PRAGMA application_id`` of our files ("mTLS" in ASCII).
APPLICATION_ID = 0x6D544C53

#: The schema, one step per version: step ``n`` takes a file from version ``n`` to ``n + 1``.
#: Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('generation', 0)",
        "CREATE TABLE orgs (org TEXT PRIMARY KEY, cert_auth INTEGER NOT NULL DEFAULT 1)",
        "CREATE TABLE users ("
        " user_id TEXT PRIMARY KEY,"
        " org TEXT NOT NULL REFERENCES orgs (org),"
        " active INTEGER NOT NULL DEFAULT 1,"
        " permissions TEXT NOT NULL DEFAULT '[]')",
        "CREATE INDEX users_org ON users (org)",
        "CREATE TABLE certificates ("
        " fingerprint TEXT PRIMARY KEY,"
        " user_id TEXT NOT NULL REFERENCES users (user_id),"
        " org TEXT NOT NULL,"
        " label TEXT NOT NULL,"
        " pem BLOB NOT NULL,"
        " subject TEXT NOT NULL,"
        " issuer TEXT NOT NULL,"
        " serial TEXT NOT NULL,"
        " not_before INTEGER NOT NULL,"
        " not_after INTEGER NOT NULL,"
        " uploaded_at INTEGER NOT NULL,"
        " uploaded_by TEXT)",
        "CREATE INDEX certificates_user ON certificates (user_id)",
        "CREATE INDEX certificates_org ON certificates (org)",
        "CREATE TABLE login_history ("
        " id INTEGER PRIMARY KEY,"
        " outcome TEXT NOT NULL,"
        " source TEXT NOT NULL,"
        " fingerprint TEXT,"
        " subject TEXT,"
        " issuer TEXT,"
        " serial TEXT,"
        " user_id TEXT,"
        " org TEXT,"
        " detail TEXT NOT NULL DEFAULT '',"
        " revocation TEXT,"
        " time REAL NOT NULL,"
        " peer TEXT)",
        "CREATE INDEX login_history_time ON login_history (time)",
        "CREATE INDEX login_history_user ON login_history (user_id, time)",
        "CREATE INDEX login_history_outcome ON login_history (outcome, time)",
    ),
    (
        # Times in integer microseconds: a REAL would not give back every datetime it was given.
        "CREATE TABLE audit_log ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " actor TEXT NOT NULL,"
        " action TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " before TEXT,"
        " after TEXT,"
        " time INTEGER NOT NULL)",
        "CREATE INDEX audit_log_actor ON audit_log (actor, id)",
        "CREATE INDEX audit_log_target ON audit_log (target, id)",
    ),
)

#: The version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)

# Literal SQL only; values always go in as parameters.
_SELECT_CERTS = select_from(CERT_COLUMNS, "certificates")
_INSERT_CERT = (
    "INSERT INTO certificates (fingerprint, user_id, org, label, pem, subject, issuer, serial,"
    " not_before, not_after, uploaded_at, uploaded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_HISTORY = select_from(HISTORY_COLUMNS, "login_history")
_INSERT_HISTORY = f"INSERT INTO login_history ({HISTORY_COLUMNS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608
_SELECT_AUDIT = select_from(AUDIT_COLUMNS, "audit_log")
_SELECT_USERS = select_from(USER_COLUMNS, "users")
_RESOLVE = (
    "SELECT u.user_id, u.org, u.active, COALESCE(o.cert_auth, 1), u.permissions"
    " FROM users AS u LEFT JOIN orgs AS o ON o.org = u.org"
)

_T = TypeVar("_T")

_SIDECAR_SUFFIX = "-generation"

# Connections inherited through fork(): never used nor closed in the child (closing could disturb
# the parent's locks), only kept from being collected.
_ABANDONED: list[sqlite3.Connection] = []


def path_from_url(url: str) -> str:
    """The database path of a ``sqlite:///...`` URL (``sqlite:////abs`` is absolute).

    Raises:
        ConfigurationError: not a ``sqlite:///`` URL, or no path.
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(
            detail=f"store URL {url!r}: use sqlite:///relative/path.db, sqlite:////absolute/path.db "
            "or sqlite:///:memory:"
        )
    return url[len(prefix):]


class _Closed:
    """Stands in for the generation counter of a closed store."""

    @property
    def value(self) -> int:
        raise MTLSError(Reason.INTERNAL_ERROR, "the store is closed")


def _open_sidecar(path: str) -> int:
    """Open ``path`` read-write, creating it with the database file's permissions.

    Whoever may write the counter may keep it from changing, and so keep cached verdicts alive:
    it gets the database's mode (as SQLite gives its ``-wal`` and ``-shm`` files), not 0666 less
    the umask, and a symbolic link in its place is refused rather than followed.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    database = os.stat(path.removesuffix(_SIDECAR_SUFFIX))
    mode = database.st_mode & 0o666
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits the database has
        if os.geteuid() == 0:  # root (mtls-admin run by an operator) must not lock the owner out
            os.fchown(fd, database.st_uid, database.st_gid)
    except OSError:
        os.close(fd)
        raise
    return fd


class _Generation:
    """The shared counter: an mmap'd ``<db>-generation`` file (anonymous memory for :memory:)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.fd: int | None = None
        if path is None:
            self.mm = mmap.mmap(-1, 8)
        else:
            self.fd = _open_sidecar(path)
            try:
                if os.fstat(self.fd).st_size < 8:
                    os.ftruncate(self.fd, 8)  # only ever grows it: a racing opener loses nothing
                self.mm = mmap.mmap(self.fd, 8)
            except OSError:
                os.close(self.fd)
                raise
        # Aligned (offset 0 of a page) and 8 bytes wide: one load, one store.
        self.cell: ctypes.c_uint64 | _Closed = ctypes.c_uint64.from_buffer(self.mm)

    def publish(self, value: int) -> None:
        """Raise the counter to ``value`` (never lower it)."""
        with self._lock:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                if self.cell.value < value:
                    self.cell.value = value  # type: ignore[misc]  # never a _Closed while open
            finally:
                if self.fd is not None:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)

    def after_fork(self) -> None:
        # The mapping is shared with the parent and stays; an flock, though, belongs to the open
        # file description, which the inherited descriptor shares with the parent.
        self._lock = threading.Lock()
        if self.path is not None and self.fd is not None:
            inherited, self.fd = self.fd, os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            os.close(inherited)

    def close(self) -> None:
        self.cell = _Closed()  # drops the ctypes view: the mmap can be closed only without it
        self.mm.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Database:
    """Connections to one file: the main one (behind a lock) and the history writer's one.

    The writer's callback is bound to this object, not to the store, so that the writer thread
    keeps no store alive.
    """

    def __init__(self, path: str, *, busy_timeout: float) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self.busy_timeout = busy_timeout
        self.lock = threading.RLock()
        self.history_lock = threading.Lock()
        self._main: sqlite3.Connection | None = None
        self._history: sqlite3.Connection | None = None
        self.closed = False

    def connect(self, *, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        return conn

    @property
    def main(self) -> sqlite3.Connection:
        """The main connection; use it only while holding ``lock``."""
        if self.closed:
            raise MTLSError(Reason.INTERNAL_ERROR, f"the store {self.path} is closed")
        if self._main is None:
            self._main = self.connect(synchronous="FULL")
        return self._main

    def write_history(self, batch: Sequence[LoginRecord]) -> None:
        """Insert ``batch`` in one transaction (the HistoryWriter's callback)."""
        if self.memory:  # one in-memory database is one connection
            with self.lock:
                _insert_history(self.main, batch)
            return
        with self.history_lock:
            if self.closed:
                raise MTLSError(Reason.INTERNAL_ERROR, f"the store {self.path} is closed")
            if self._history is None:
                self._history = self.connect(synchronous="NORMAL")
            _insert_history(self._history, batch)

    def after_fork(self) -> None:
        if self.memory:
            return  # documented as one process only
        self.lock = threading.RLock()
        self.history_lock = threading.Lock()
        for conn in (self._main, self._history):
            if conn is not None:
                _ABANDONED.append(conn)
        self._main = self._history = None

    def close(self) -> None:
        with self.lock, self.history_lock:
            self.closed = True
            for conn in (self._main, self._history):
                if conn is not None:
                    conn.close()
            self._main = self._history = None


def _insert_history(conn: sqlite3.Connection, batch: Sequence[LoginRecord]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT_HISTORY, batch)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; return the version found.

    Raises:
        ConfigurationError: a newer schema, or not a file of ours.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise ConfigurationError(
                detail=f"{path} belongs to another application (application_id {app_id:#x})"
            )
        if found > SCHEMA_VERSION:
            raise ConfigurationError(
                detail=f"{path} has schema version {found}, newer than this mtls_middleware "
                f"understands ({SCHEMA_VERSION}); upgrade mtls_middleware"
            )
        if found == 0 and app_id == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise ConfigurationError(
                    detail=f"{path} is an SQLite database of another application; "
                    "give mtls_middleware a file of its own"
                )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            # Integers from our own constants: PRAGMAs take no parameters.
            conn.execute(f"PRAGMA user_version = {version + 1}")
        if found < SCHEMA_VERSION:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if found < SCHEMA_VERSION:
        log.info("mtls_middleware: %s migrated from schema %d to %d", path, found, SCHEMA_VERSION)
    return int(found)


def _wal(conn: sqlite3.Connection, path: str) -> None:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() == "wal":
        return
    # Switching needs a moment alone with the file; openers racing for it retry.
    for _ in range(50):
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            threading.Event().wait(0.05)
    if str(mode).lower() != "wal":
        log.warning(
            "mtls_middleware: %s stays in journal mode %s (WAL unsupported on this filesystem?); "
            "readers will wait for writers", path, mode,
        )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _micros(when: dt.datetime) -> int:
    """``when`` (naive: UTC) in exact integer microseconds since the epoch."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _from_micros(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


def _ts(when: dt.datetime) -> int:
    return int(when.timestamp())


def _dt(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def _certificate(row: Sequence[Any]) -> CertificateRecord:
    return certificate_from_row(row, _dt)


def _cert_row(record: CertificateRecord) -> tuple[Any, ...]:
    return (
        record.fingerprint,
        record.user_id,
        record.org,
        record.label,
        record.pem,
        record.subject,
        record.issuer,
        record.serial,
        _ts(record.not_before),
        _ts(record.not_after),
        _ts(record.uploaded_at),
        record.uploaded_by,
    )


@functools.lru_cache(maxsize=1024)
def _permissions(text: str) -> frozenset[str]:
    # Few distinct sets exist; decoding JSON on every lookup would be a third of its cost.
    return frozenset(json.loads(text))


def _user(row: Sequence[Any]) -> UserRecord:
    return user_from_row(row, _permissions)


def _permissions_text(names: frozenset[str]) -> str:
    return json.dumps(sorted(names))


def _is_duplicate(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)


class SQLiteStore(WrittenHistory, SQLStoreFront):
    """A :class:`~mtls_middleware.stores.base.Store` in one SQLite file (see the module docs).

    ``busy_timeout`` (seconds) is how long a write waits for another process's write;
    ``history_queue`` bounds the login records buffered in memory (``record`` blocks beyond it) and
    ``history_batch`` is how many are inserted per transaction.

    Raises:
        ConfigurationError: the file cannot be opened or created, has a newer schema, or belongs to
            another application.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        history_queue: int = 10_000,
        history_batch: int = 500,
    ) -> None:
        path = os.fspath(path)
        self.path = path
        self._db = _Database(path, busy_timeout=busy_timeout)
        try:
            with self._db.lock:
                conn = self._db.main
                if not self._db.memory:
                    _wal(conn, path)
                self.schema_version_found = _migrate(conn, path)
                current = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
            self._gen = _Generation(None if self._db.memory else path + _SIDECAR_SUFFIX)
        except sqlite3.Error as exc:
            self._db.close()
            hint = "" if self._db.memory else f" (does {Path(path).parent} exist and is it writable?)"
            raise ConfigurationError(detail=f"cannot open the SQLite store {path}: {exc}{hint}") from None
        except OSError as exc:
            self._db.close()
            raise ConfigurationError(
                detail=f"cannot open the generation file beside the SQLite store {path}: {exc}"
            ) from None
        except BaseException:
            self._db.close()
            raise
        self._gen.publish(current)
        self._cell = self._gen.cell
        self._writer = HistoryWriter(
            self._db.write_history, maxsize=history_queue, batch_size=history_batch,
            name=f"mtls-history-writer {Path(path).name}",
        )
        # Bound directly: recording runs on every request.
        self.record = self._writer.record  # type: ignore[method-assign]
        self._closed = False
        reopen_after_fork(self)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    @property
    def generation(self) -> int:
        return self._cell.value

    # -- plumbing ---------------------------------------------------------------------------
    def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._db.lock:
            try:
                return work(self._db.main)
            except sqlite3.Error as exc:
                raise MTLSError(Reason.INTERNAL_ERROR, f"database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, *, invalidates: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``invalidates`` bumps and, after the commit, publishes the
        generation. Errors roll back; sqlite3 errors other than those handled by the caller
        become internal_error."""
        published = 0
        with self._db.lock:
            conn = self._db.main
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise MTLSError(Reason.INTERNAL_ERROR, f"database {self.path}: {exc}") from exc
            try:
                yield conn
                if invalidates:
                    # Above the shared counter too, not only the stored number: a sidecar left
                    # from a deleted or restored database file holds a higher number, and a bump
                    # below it would never be published (the counter only rises) while verdicts
                    # cached under it stayed valid. Read under the writer lock, the counter
                    # holds no number another process has yet to publish.
                    conn.execute(
                        "UPDATE meta SET value = max(value, ?) + 1 WHERE key = 'generation'",
                        (self._cell.value,),
                    )
                    published = conn.execute(
                        "SELECT value FROM meta WHERE key = 'generation'"
                    ).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise MTLSError(Reason.INTERNAL_ERROR, f"database {self.path}: {exc}") from exc
                raise
        if published:
            self._gen.publish(published)

    # -- the pipeline -----------------------------------------------------------------------
    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        with self._db.lock:
            row = self._db.main.execute(
                "SELECT u.user_id, u.org, u.active, COALESCE(o.cert_auth, 1), u.permissions"
                " FROM certificates AS c JOIN users AS u ON u.user_id = c.user_id"
                " LEFT JOIN orgs AS o ON o.org = u.org WHERE c.fingerprint = ?",
                (fingerprint.lower(),),
            ).fetchone()
        return None if row is None else _principal(row)

    def resolve_user(self, user_id: str) -> Principal | None:
        with self._db.lock:
            row = self._db.main.execute(_RESOLVE + " WHERE u.user_id = ?", (user_id,)).fetchone()
        return None if row is None else _principal(row)

    # -- organisations ----------------------------------------------------------------------
    def _set_org(self, org: str, cert_auth: bool) -> OrgRecord:
        with self._write(invalidates=True) as conn:
            conn.execute(
                "INSERT INTO orgs (org, cert_auth) VALUES (?, ?)"
                " ON CONFLICT (org) DO UPDATE SET cert_auth = excluded.cert_auth",
                (org, int(bool(cert_auth))),
            )
        return OrgRecord(org, bool(cert_auth))

    def list_orgs(self) -> list[OrgRecord]:
        rows = self._read(lambda c: c.execute("SELECT org, cert_auth FROM orgs ORDER BY org").fetchall())
        return [OrgRecord(org, bool(on)) for org, on in rows]

    # -- users ------------------------------------------------------------------------------
    def _add_user(self, record: UserRecord) -> UserRecord:
        user_id, org = record.user_id, record.org
        with self._write(invalidates=True) as conn:
            conn.execute("INSERT OR IGNORE INTO orgs (org, cert_auth) VALUES (?, 1)", (org,))
            conn.execute(
                "INSERT INTO users (user_id, org, active, permissions) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET org = excluded.org, active = excluded.active,"
                " permissions = excluded.permissions",
                (user_id, org, int(record.active), _permissions_text(record.permissions)),
            )
            conn.execute(
                "UPDATE certificates SET org = ? WHERE user_id = ? AND org != ?", (org, user_id, org)
            )
        return record

    def get_user(self, user_id: str) -> UserRecord:
        row = self._read(lambda c: c.execute(_SELECT_USERS + " WHERE user_id = ?", (user_id,)).fetchone())
        if row is None:
            raise unknown_user(user_id)
        return _user(row)

    def list_users(self, *, org: str | None = None) -> list[UserRecord]:
        if org is None:
            rows = self._read(lambda c: c.execute(_SELECT_USERS + " ORDER BY user_id").fetchall())
        else:
            rows = self._read(
                lambda c: c.execute(_SELECT_USERS + " WHERE org = ? ORDER BY user_id", (org,)).fetchall()
            )
        return [_user(row) for row in rows]

    def _update_user(self, user_id: str, update: str, value: object) -> UserRecord:
        with self._write(invalidates=True) as conn:
            cursor = conn.execute(update, (value, user_id))
            if cursor.rowcount == 0:
                raise unknown_user(user_id)
            row = conn.execute(_SELECT_USERS + " WHERE user_id = ?", (user_id,)).fetchone()
        return _user(row)

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        return self._update_user(
            user_id, "UPDATE users SET active = ? WHERE user_id = ?", int(bool(active))
        )

    def _set_user_permissions(self, user_id: str, names: frozenset[str]) -> UserRecord:
        return self._update_user(
            user_id, "UPDATE users SET permissions = ? WHERE user_id = ?", _permissions_text(names)
        )

    # -- certificates -----------------------------------------------------------------------
    def _insert(
        self,
        conn: sqlite3.Connection,
        upload: Upload,
        leaf: x509.Certificate,
        uploaded_by: str | None,
    ) -> CertificateRecord:
        row = conn.execute("SELECT org FROM users WHERE user_id = ?", (upload.user_id,)).fetchone()
        if row is None:
            raise unknown_user(upload.user_id)
        record = upload_record(upload, leaf, row[0], uploaded_by)
        # No look-before-insert: the primary key decides, also between processes. The savepoint
        # keeps the transaction usable after the refusal (a batch goes on).
        try:
            with _savepoint(conn):
                conn.execute(_INSERT_CERT, _cert_row(record))
        except sqlite3.IntegrityError as exc:
            if _is_duplicate(exc):
                raise duplicate(record.fingerprint) from None
            raise
        return record

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]:
        query = SQLQuery(_SELECT_CERTS, "?").equal(user_id=user_id, org=org)
        sql = query.sql("rowid")
        rows = self._read(lambda c: c.execute(sql, query.args).fetchall())
        return [_certificate(row) for row in rows]

    def _find_fingerprints(self, prefix: str, limit: int) -> list[str]:
        # A range on the primary key: an index seek, not a scan of every certificate. Hex digits
        # sort below "g", so [prefix, prefix + "g") holds exactly the fingerprints it starts.
        rows = self._read(
            lambda c: c.execute(
                "SELECT fingerprint FROM certificates WHERE fingerprint >= ? AND fingerprint < ?"
                " ORDER BY fingerprint LIMIT ?",
                (prefix, prefix + "g", limit),
            ).fetchall()
        )
        return [str(row[0]) for row in rows]

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        row = self._read(
            lambda c: c.execute(
                _SELECT_CERTS + " WHERE fingerprint = ?", (fingerprint.lower(),)
            ).fetchone()
        )
        if row is None:
            raise not_found(f"certificate {fingerprint}")
        return _certificate(row)

    def download_certificate(self, fingerprint: str) -> bytes:
        row = self._read(
            lambda c: c.execute(
                "SELECT pem FROM certificates WHERE fingerprint = ?", (fingerprint.lower(),)
            ).fetchone()
        )
        if row is None:
            raise not_found(f"certificate {fingerprint}")
        return bytes(row[0])

    def _rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        with self._write(invalidates=False) as conn:
            cursor = conn.execute(
                "UPDATE certificates SET label = ? WHERE fingerprint = ?", (label, fingerprint.lower())
            )
            if cursor.rowcount == 0:
                raise not_found(f"certificate {fingerprint}")
            row = conn.execute(
                _SELECT_CERTS + " WHERE fingerprint = ?", (fingerprint.lower(),)
            ).fetchone()
        return _certificate(row)

    def delete_certificate(self, fingerprint: str) -> None:
        with self._write(invalidates=True) as conn:
            cursor = conn.execute("DELETE FROM certificates WHERE fingerprint = ?", (fingerprint.lower(),))
            if cursor.rowcount == 0:
                raise not_found(f"certificate {fingerprint}")

    # -- history ----------------------------------------------------------------------------
    def _login_history(self, query: HistoryFilter) -> list[LoginRecord]:
        self._writer.flush(self._db.busy_timeout)
        sql, args = history_sql(_SELECT_HISTORY, "?", query)
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        return [LoginRecord._make(row) for row in rows]

    def _prune_history(self, cutoff: float) -> int:
        self._writer.flush(self._db.busy_timeout)
        with self._write(invalidates=False) as conn:
            removed = conn.execute("DELETE FROM login_history WHERE time < ?", (cutoff,)).rowcount
        return int(removed)

    # -- audit ----------------------------------------------------------------------------
    def _record_audit(self, checked: AuditEntry) -> AuditEntry:
        with self._write(invalidates=False) as conn:
            cursor = conn.execute(
                "INSERT INTO audit_log (actor, action, target, before, after, time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    checked.actor, checked.action, checked.target, audit_json(checked.before),
                    audit_json(checked.after), _micros(checked.time),
                ),
            )
            new_id = cursor.lastrowid
        return replace(checked, id=int(new_id or 0))

    def _audit_log(self, query: AuditFilter) -> list[AuditEntry]:
        sql, args = audit_sql(_SELECT_AUDIT, "?", query, when=_micros)
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        return [
            AuditEntry(
                id=row[0], actor=row[1], action=row[2], target=row[3],
                before=None if row[4] is None else json.loads(row[4]),
                after=None if row[5] is None else json.loads(row[5]),
                time=_from_micros(row[6]),
            )
            for row in rows
        ]

    def close(self) -> None:
        """Flush the history, stop its thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._writer.seal()  # requests still in flight must not retry against a closed file
        self._db.close()
        self._cell = _Closed()
        self._gen.close()

    def _after_fork(self) -> None:
        self._db.after_fork()
        self._gen.after_fork()


def _principal(row: Sequence[Any]) -> Principal:
    return principal_from_row(row, _permissions)


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("SAVEPOINT upload")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO upload")
        conn.execute("RELEASE upload")
        raise
    conn.execute("RELEASE upload")
