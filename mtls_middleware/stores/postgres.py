"""The shared store: one PostgreSQL database, for several app nodes with several workers each.

``open_store("postgresql://user@db.example/app")`` (or ``postgres://``, or any libpq connection
string given to :class:`PostgresStore`). Needs the ``postgresql`` extra (psycopg 3 and
psycopg_pool): ``pip install 'mtls_middleware[postgresql]'``.

The schema
    Everything lives in one PostgreSQL schema of its own (``mtls_middleware`` unless ``schema=``, or
    ``?schema=`` in the URL, names another), so the tables cannot clash with the application's. It is
    versioned by :data:`MIGRATIONS`, a list of steps applied in order, all in one transaction
    together with the new version number (``meta.schema_version``) and under a transaction-scoped
    advisory lock, so concurrent openers on several nodes migrate exactly once. A schema written by
    a newer version of the library is refused (``ConfigurationError``), and so is a schema holding
    tables of some other application. Text keys use the ``"C"`` collation: sorting and prefix
    search behave as in the SQLite store, whatever the database's locale.

Connections and races
    Management calls and lookups borrow connections from a :class:`psycopg_pool.ConnectionPool`
    (``min_size``/``max_size``, per process). A connection idle for over a second is pinged
    before it is handed out; a read that meets a connection broken by a server restart anyway is
    retried once on another. Each process also holds one connection for its listener (below):
    count ``max_size + 1`` connections per worker against ``max_connections``. The listener needs
    a session of its own: behind pgbouncer, use session pooling (or connect it directly).
    Uniqueness is decided by the database: two workers (on any nodes) that upload the same
    certificate at once both try the ``INSERT``; the primary key lets exactly one in and the
    other gets ``duplicate_certificate``.

The generation, across nodes
    Every invalidating write (a certificate uploaded or deleted, a user added, changed or
    deactivated, an organisation switched) increments ``meta.generation`` inside its transaction
    and sends ``NOTIFY`` with the new number on the schema's channel (PostgreSQL delivers it at the
    commit, and only if the commit happens). Each process runs one listener thread on a connection
    of its own (``LISTEN``); a number other than the last one seen raises the process's
    ``generation``, which the verdict cache reads on every request (an attribute read and one
    clock comparison). Any number: any role may ``NOTIFY`` on the channel, and a forged high
    number must not make the process deaf to the real ones. The writing process raises its own
    at once, after the commit, whatever it has seen. A deletion in one worker is refused by
    every other worker of every node within tens of milliseconds (the tests measure it).

    The bound when a message is missed: the listener also re-reads the counter every
    ``fallback_interval`` seconds (default 5; any difference counts, a lower number too: a
    database restored from a backup). Once the listener knows its connection is lost, every
    read of ``generation`` is a new number (no cached verdict is served) until it is back and
    has re-read the counter; it retries after ``reconnect_delay`` (default 0.5 s), doubling
    while attempts keep failing, up to ``fallback_interval``. Each of the listener's queries
    must be answered within ``fallback_interval`` (a server or proxy that keeps the connection
    but stops answering is noticed too), and its socket has TCP keepalives and a
    ``tcp_user_timeout`` (a connection that dies silently). The listener also keeps a heartbeat:
    should its thread die or hang, ``generation`` changes on every read from ``2 *
    fallback_interval`` after its last report (logged once). A thread that died (at once when
    an exception ended it, else once stale) is replaced: the next read of ``generation`` while
    it is stale (one look a second), or the next batch of login records, starts a new one. So a
    change committed in the database is seen by every live process within ``2 *
    fallback_interval`` (10 s by default) whatever happens to the notifications, and within
    well under a second when they flow.

When PostgreSQL is unreachable
    Lookups and management calls raise ``MTLSError(store_unavailable)`` (HTTP 503) after at most
    ``timeout`` seconds (default 2) instead of a 500. Cached verdicts are not served once the
    listener has noticed the outage (fail closed, like ``revocation="require"``): at once when
    the connection is refused or reset, within ``2 * fallback_interval`` (10 s by default) when
    the network drops packets silently or the server stops answering. Until then, cached
    verdicts may still be served, as they may be for a change whose notification was lost.
    ``store_unavailable`` refusals are never cached. A lookup that fails on a broken connection
    raises the generation too; one that found every pooled connection busy (``PoolTimeout``:
    load, not a lost change) does not, so that a busy pool does not also lose the cache.
    Recovery needs no restart: the pool and the listener reconnect by themselves. Limit: libpq
    has no client-side deadline for a query, so a server that accepts a lookup and then hangs
    (not down, not unreachable) holds that request until it answers; the listener, which has its
    own deadline, still drops the cache.

The login history
    ``record`` appends to a :class:`~mtls_middleware.history.HistoryWriter` whose thread inserts in
    batches. A batch that cannot be written because the database is unreachable is kept in an
    outage buffer of at most ``history_backlog`` records (default 100 000) and written, oldest
    first, as soon as the database answers again (the listener's reconnection triggers it). Past
    that bound the oldest records are dropped, logged and counted in :attr:`history_dropped`: the
    loss is bounded and counted, never silent. A commit whose answer is lost with the connection
    may be written twice (at least once, never lost). The writer's ``written`` counts records
    handed to the store, backlog included; :attr:`history_backlog` is what waits.
    ``login_history`` and ``prune_history`` flush first, so a process reads its own writes.

Several processes
    Every process has its own pool and listener. After ``fork()`` the child abandons (never uses,
    never closes) the connections inherited from its parent and opens its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import re
import select
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from cryptography import x509

from ..errors import ConfigurationError, ManagementError, MTLSError, Reason
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
    clamp64,
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

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        detail="the PostgreSQL store needs psycopg 3: pip install 'mtls_middleware[postgresql]' "
        f"({exc})"
    ) from None

__all__ = ["DEFAULT_SCHEMA", "MIGRATIONS", "SCHEMA_VERSION", "URL_OPTIONS", "PostgresStore"]

log = logging.getLogger("mtls_middleware")

_monotonic = time.monotonic  # bound once: the generation is read on every request

#: The schema the tables live in unless another is named.
DEFAULT_SCHEMA = "mtls_middleware"

#: The schema, one step per version: step ``n`` takes a schema from version ``n`` to ``n + 1``.
#: Append new steps; never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('generation', 0)",
        'CREATE TABLE orgs (org TEXT COLLATE "C" PRIMARY KEY, cert_auth BOOLEAN NOT NULL DEFAULT TRUE)',
        "CREATE TABLE users ("
        ' user_id TEXT COLLATE "C" PRIMARY KEY,'
        ' org TEXT COLLATE "C" NOT NULL REFERENCES orgs (org),'
        " active BOOLEAN NOT NULL DEFAULT TRUE,"
        " permissions TEXT[] NOT NULL DEFAULT '{}')",
        "CREATE INDEX users_org ON users (org)",
        "CREATE TABLE certificates ("
        ' fingerprint TEXT COLLATE "C" PRIMARY KEY,'
        " seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
        ' user_id TEXT COLLATE "C" NOT NULL REFERENCES users (user_id),'
        ' org TEXT COLLATE "C" NOT NULL,'
        " label TEXT NOT NULL,"
        " pem BYTEA NOT NULL,"
        " subject TEXT NOT NULL,"
        " issuer TEXT NOT NULL,"
        " serial TEXT NOT NULL,"
        " not_before TIMESTAMPTZ NOT NULL,"
        " not_after TIMESTAMPTZ NOT NULL,"
        " uploaded_at TIMESTAMPTZ NOT NULL,"
        " uploaded_by TEXT)",
        "CREATE INDEX certificates_user ON certificates (user_id)",
        "CREATE INDEX certificates_org ON certificates (org)",
        "CREATE TABLE login_history ("
        " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " outcome TEXT NOT NULL,"
        " source TEXT NOT NULL,"
        " fingerprint TEXT,"
        " subject TEXT,"
        " issuer TEXT,"
        " serial TEXT,"
        ' user_id TEXT COLLATE "C",'
        " org TEXT,"
        " detail TEXT NOT NULL DEFAULT '',"
        " revocation TEXT,"
        " time DOUBLE PRECISION NOT NULL,"
        " peer TEXT)",
        "CREATE INDEX login_history_time ON login_history (time)",
        "CREATE INDEX login_history_user ON login_history (user_id, time)",
        "CREATE INDEX login_history_outcome ON login_history (outcome, time)",
        "CREATE TABLE audit_log ("
        " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        ' actor TEXT COLLATE "C" NOT NULL,'
        ' action TEXT COLLATE "C" NOT NULL,'
        ' target TEXT COLLATE "C" NOT NULL,'
        " before JSONB,"
        " after JSONB,"
        " time TIMESTAMPTZ NOT NULL)",
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
    " not_before, not_after, uploaded_at, uploaded_by)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_HISTORY = select_from(HISTORY_COLUMNS, "login_history")
# COPY: several times the rows per second of a batched INSERT.
_COPY_HISTORY = f"COPY login_history ({HISTORY_COLUMNS}) FROM STDIN"
_SELECT_AUDIT = select_from(AUDIT_COLUMNS, "audit_log")
_SELECT_USERS = select_from(USER_COLUMNS, "users")
_RESOLVE = (
    "SELECT u.user_id, u.org, u.active, COALESCE(o.cert_auth, TRUE), u.permissions"
    " FROM users AS u LEFT JOIN orgs AS o ON o.org = u.org"
)
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value"
_READ_GENERATION = "SELECT value FROM meta WHERE key = 'generation'"

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")

# Connections inherited through fork(): never used nor closed in the child (closing would end the
# parent's session on the shared socket), only kept from being collected.
_ABANDONED: list[object] = []


# How often a stale read of the generation may look whether the listener thread is still alive:
# the look is cheap, but the stale branch runs on every request.
_REVIVE_CHECK = 1.0


# A pooled connection is pinged before it is handed out only when it has been idle this long: a
# lookup then costs one round trip, not two. One broken meanwhile (a server restart) fails its
# read, which is retried once on another connection; a write fails with store_unavailable.
_IDLE_CHECK = 1.0


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    if time.monotonic() - getattr(conn, "_mtls_returned", 0.0) > _IDLE_CHECK:
        ConnectionPool.check_connection(conn)


def _returned(conn: psycopg.Connection[Any]) -> None:
    conn._mtls_returned = time.monotonic()  # type: ignore[attr-defined]


def _retryable(exc: MTLSError) -> bool:
    """A read that failed on a broken pooled connection (not for want of one) may be retried."""
    return exc.reason is Reason.STORE_UNAVAILABLE and not isinstance(exc.__cause__, PoolTimeout)


def _unavailable(exc: BaseException, where: str) -> MTLSError:
    return MTLSError(Reason.STORE_UNAVAILABLE, f"PostgreSQL store {where} is unreachable: {exc}")


#: Query parameters of a URL that are ours, not libpq's (``open_store`` has no other way to pass
#: them), and their types.
URL_OPTIONS: dict[str, type] = {
    "schema": str,
    "min_size": int,
    "max_size": int,
    "timeout": float,
    "fallback_interval": float,
}


def _split_url(url_or_dsn: str) -> tuple[str, dict[str, Any]]:
    """The connection string without our query parameters (:data:`URL_OPTIONS`), and those.

    Raises:
        ConfigurationError: one of ours with a value of the wrong type.
    """
    if "://" not in url_or_dsn:
        return url_or_dsn, {}
    parts = urllib.parse.urlsplit(url_or_dsn)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours: dict[str, Any] = {}
    for key, value in query:
        if key in URL_OPTIONS:
            try:
                ours[key] = URL_OPTIONS[key](value)
            except ValueError:
                raise ConfigurationError(
                    detail=f"PostgreSQL store URL: {key}={value!r} is not a {URL_OPTIONS[key].__name__}"
                ) from None
    rest = urllib.parse.urlencode([(key, value) for key, value in query if key not in URL_OPTIONS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), ours


def _clean(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a login record (hostile subject, detail) must still be kept.
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\\x00")
    return value


def _history_row(rec: LoginRecord) -> tuple[Any, ...]:
    # The record itself (a tuple) unless a value holds a NUL: a new tuple per row would cost the
    # writer thread about three times as much, for a case only a hostile certificate produces.
    for value in rec:
        if isinstance(value, str) and "\x00" in value:
            return tuple(_clean(v) if isinstance(v, str) else v for v in rec)
    return rec


def _has_nul(*values: str | None) -> bool:
    return any(v is not None and "\x00" in v for v in values)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def _principal(row: Sequence[Any]) -> Principal:
    return principal_from_row(row, _permissions)


@functools.lru_cache(maxsize=1024)
def _cached_permissions(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(names)


def _permissions(names: Sequence[str]) -> frozenset[str]:
    return _cached_permissions(tuple(names))


def _user(row: Sequence[Any]) -> UserRecord:
    return user_from_row(row, _permissions)


def _certificate(row: Sequence[Any]) -> CertificateRecord:
    return certificate_from_row(row, _utc)


def _poll(fds: Sequence[tuple[int, int]], seconds: float) -> set[int]:
    """The descriptors of ``fds`` (descriptor, poll events) that are ready within ``seconds``.

    poll(), not select(): select() fails on a descriptor above 1023, which a busy process has."""
    poller = select.poll()
    for fd, events in fds:
        poller.register(fd, events)
    return {fd for fd, _ in poller.poll(max(0.0, seconds) * 1000)}


class _Listener:
    """The thread that keeps one process's ``generation`` in step with the database.

    It holds the store only weakly (an abandoned store is collected and the thread ends).
    """

    def __init__(
        self,
        store: PostgresStore,
        *,
        conninfo: str,
        kwargs: dict[str, Any],
        channel: str,
        interval: float,
        reconnect_delay: float,
        resumed: bool = False,
    ) -> None:
        self._store = weakref.ref(store)
        # Replacing a thread that died: its first connection is a reconnection (invalidate, drain).
        self._resumed = resumed
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._channel = channel
        self._interval = interval
        self._reconnect_delay = reconnect_delay
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Held here, not only in the thread's frame: see _ABANDONED.
        self.conn: psycopg.Connection[Any] | None = None
        self.connected = threading.Event()
        self.reconnections = 0
        self.failures = 0  # in a row: the reconnection delay doubles with each (capped)
        self.thread = threading.Thread(target=self._run, name=f"mtls-pg-listener {channel}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def release(self, timeout: float) -> None:
        """Stop and wait for the thread; then close the wake-up pipe (not before: a write to a
        closed descriptor could land in a file opened meanwhile under the same number)."""
        self.stop()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        if not self.thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def abandon(self) -> None:
        """In a fork child: the thread does not exist here; keep its objects, use none."""
        self._stop = True
        _ABANDONED.append(self.conn)
        self.conn = None

    def _call(self, name: str, *args: Any) -> bool:
        store = self._store()
        if store is None or store._closed:
            self._stop = True
            return False
        getattr(store, name)(*args)
        return True

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the thread ends either way: say so, and fail closed
            # Only what the loop cannot survive gets here (SystemExit, a fault in its own error
            # handling). Stale at once rather than when the heartbeat runs out; the store starts a
            # new thread at its next stale read or history batch.
            if not self._stop:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    self._call("_died", exc)

    def _loop(self) -> None:
        lost = self._resumed
        fault_logged = False
        while not self._stop:
            try:
                self._session(lost)
            except Exception as exc:  # whatever it was, the thread must live on
                if self._stop:
                    break
                if self.failures == 0:  # connected until now, or the first attempt
                    fault_logged = False
                # Each kind once per outage, not once per attempt.
                if isinstance(exc, (psycopg.Error, OSError)):
                    if self.failures == 0:
                        log.warning(
                            "mtls_middleware: PostgreSQL listener on %s lost its connection (%s); "
                            "cached verdicts are not served until it is back", self._channel, exc,
                        )
                elif not fault_logged:
                    fault_logged = True
                    log.exception(
                        "mtls_middleware: PostgreSQL listener on %s failed; cached verdicts are "
                        "not served until it is back", self._channel,
                    )
                lost = True
                self.failures += 1
                self.connected.clear()
                if not self._call("_lost"):
                    break
            finally:
                conn, self.conn = self.conn, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            if not self._stop:
                # Doubling: a fault that recurs at once (not an unreachable server, which takes
                # connect_timeout to fail) must not spin. Capped, so that recovery stays prompt.
                cap = max(self._reconnect_delay, self._interval)
                self._sleep(min(cap, self._reconnect_delay * 2 ** min(self.failures - 1, 16)))

    def _sleep(self, seconds: float) -> None:
        try:
            if _poll([(self._wake_r, select.POLLIN)], seconds):
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
        except (OSError, ValueError):
            time.sleep(seconds)  # never return early: the caller's loop would spin

    def _session(self, reconnected: bool) -> None:
        conn = psycopg.connect(self._conninfo, autocommit=True, **self._kwargs)
        self.conn = conn
        pgconn = conn.pgconn
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)).as_bytes(conn)
        self._query(pgconn, listen)
        # Read after LISTEN: a change committed before it is in this number, one after it is sent.
        self._check(pgconn)
        if reconnected:
            self.reconnections += 1
            log.warning("mtls_middleware: PostgreSQL listener on %s is back", self._channel)
            if not self._call("_reconnected"):
                return
        self.failures = 0
        if not self._call("_heartbeat"):  # before `connected`: a reader must not see it stale
            return
        self.connected.set()
        sock = pgconn.socket
        next_check = time.monotonic() + self._interval
        while not self._stop:
            # The heartbeat: each turn of this loop takes at most two intervals (the wait below,
            # then the re-read's deadline); a thread that died or hangs stops it.
            if not self._call("_heartbeat"):
                return
            wait = max(0.0, next_check - time.monotonic())
            ready = _poll([(sock, select.POLLIN), (self._wake_r, select.POLLIN)], wait)
            if self._stop:
                return
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
            if sock in ready:
                pgconn.consume_input()
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listener connection was closed")
                self._dispatch(pgconn)
            if time.monotonic() >= next_check:
                self._check(pgconn)
                if not self._call("_drain_soon"):
                    return
                next_check = time.monotonic() + self._interval

    def _check(self, pgconn: psycopg.pq.abc.PGconn) -> None:
        value = self._query(pgconn, _READ_GENERATION.encode())
        if value is not None:
            self._call("_sync", int(value))

    def _query(self, pgconn: psycopg.pq.abc.PGconn, query: bytes) -> bytes | None:
        """Run ``query`` on the listener's connection; the first value it returns, if any.

        By hand on libpq rather than through ``Connection.execute``, for a deadline of its own:
        a server (or a proxy) that accepts the query and never answers would otherwise hold the
        listener, and with it the invalidation bound, forever. TCP timeouts cannot see that case.

        Raises:
            psycopg.OperationalError: no answer within ``fallback_interval``, or an error.
        """
        deadline = time.monotonic() + self._interval
        pgconn.send_query(query)
        while pgconn.flush():
            self._wait(pgconn, deadline, write=True)
        value: bytes | None = None
        while True:
            while pgconn.is_busy():
                self._wait(pgconn, deadline)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == psycopg.pq.ExecStatus.TUPLES_OK and result.ntuples:
                value = result.get_value(0, 0)
            elif result.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
                message = (result.error_message or b"").decode("utf-8", "replace").strip()
                raise psycopg.OperationalError(f"listener query failed: {message}")
        self._dispatch(pgconn)
        return value

    def _wait(self, pgconn: psycopg.pq.abc.PGconn, deadline: float, *, write: bool = False) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._stop:
            raise psycopg.OperationalError(
                f"PostgreSQL did not answer the listener within {self._interval} s"
            )
        _poll([(pgconn.socket, select.POLLOUT if write else select.POLLIN)], remaining)

    def _dispatch(self, pgconn: psycopg.pq.abc.PGconn) -> None:
        while (notify := pgconn.notifies()) is not None:
            self._payload(notify.extra.decode("ascii", "replace"))

    def _payload(self, payload: str) -> None:
        try:
            value = int(payload)
        except ValueError:
            return  # not ours (someone else's NOTIFY on the channel): nothing to learn
        self._call("_advance", value)


class PostgresStore(WrittenHistory, SQLStoreFront):
    """A :class:`~mtls_middleware.stores.base.Store` in PostgreSQL (see the module docs).

    ``url_or_dsn``: a ``postgresql://`` or ``postgres://`` URL or a libpq keyword string. A URL
    may carry ``schema``, ``min_size``, ``max_size``, ``timeout`` and ``fallback_interval`` as
    query parameters (``?schema=mtls&max_size=20``); keyword arguments given here win.
    ``schema``: the PostgreSQL schema of the tables (created when missing; default
    ``mtls_middleware``). ``min_size``/``max_size``: the connection pool per process (default 1
    and 10). ``timeout``: how long a call waits for a connection before it fails with
    ``store_unavailable`` (default 2 s).
    ``fallback_interval``: how often the counter is re-read whatever the notifications say (the
    invalidation bound is twice this); ``reconnect_delay``: between listener reconnection
    attempts. ``history_queue``/``history_batch``: the login-history buffer and batch size;
    ``history_backlog``: how many records are kept while the database is unreachable.

    Raises:
        ConfigurationError: a bad schema name or option, the database unreachable at start-up,
            a newer schema, or a schema holding another application's tables.
    """

    def __init__(
        self,
        url_or_dsn: str,
        *,
        schema: str | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
        connect_timeout: int = 2,
        fallback_interval: float | None = None,
        reconnect_delay: float = 0.5,
        history_queue: int = 10_000,
        history_batch: int = 500,
        history_backlog: int = 100_000,
    ) -> None:
        conninfo, url_options = _split_url(url_or_dsn)
        # Explicit arguments win over the URL's; the URL's over the defaults.
        min_size = int(min_size if min_size is not None else url_options.get("min_size", 1))
        max_size = int(max_size if max_size is not None else url_options.get("max_size", 10))
        timeout = float(timeout if timeout is not None else url_options.get("timeout", 2.0))
        fallback_interval = float(
            fallback_interval if fallback_interval is not None
            else url_options.get("fallback_interval", 5.0)
        )
        schema = schema if schema is not None else url_options.get("schema") or DEFAULT_SCHEMA
        if not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                detail=f"PostgreSQL schema name {schema!r}: use lowercase letters, digits and _ "
                "(at most 40 characters, not starting with a digit)"
            )
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigurationError(detail="the pool needs 0 <= min_size <= max_size and max_size >= 1")
        if timeout <= 0 or fallback_interval <= 0 or reconnect_delay <= 0 or connect_timeout < 1:
            raise ConfigurationError(
                detail="timeout, fallback_interval and reconnect_delay must be positive, "
                "connect_timeout at least 1 second"
            )
        if history_backlog < 0 or history_queue < 1 or history_batch < 1:
            raise ConfigurationError(
                detail="history_queue and history_batch must be positive, history_backlog not negative"
            )
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            raise ConfigurationError(detail=f"bad PostgreSQL connection string: {exc}") from None
        self.schema = schema
        self.channel = f"mtls_{schema}"
        self._where = f"{params.get('host', 'localhost')}/{params.get('dbname', '')} schema {schema}"
        options = f"{params.get('options', '')} -c search_path={schema} -c timezone=UTC".strip()
        self._kwargs: dict[str, Any] = {
            "options": options,
            "connect_timeout": int(params.get("connect_timeout") or connect_timeout),
            "application_name": params.get("application_name") or f"mtls {schema}",
            # A connection that died silently (a cut cable, a failed-over host) errors within
            # about fallback_interval instead of the kernel's 15 minutes.
            "keepalives": 1,
            "keepalives_idle": max(1, int(fallback_interval)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": int(fallback_interval * 1000),
        }
        self._conninfo = conninfo
        self._pool_options: dict[str, Any] = {
            "min_size": min_size, "max_size": max_size, "timeout": timeout,
        }
        self._fallback_interval = fallback_interval
        self._reconnect_delay = reconnect_delay
        self._closed = True  # until fully open: close() and the listener must not run on a half store
        self._generation = 0
        # Until this monotonic time the listener is known alive and connected; after it (and
        # from the start until it first connects) every read of the generation is a new number.
        self._fresh_until = 0.0
        self._stale_logged = False
        self._seen = 0
        self._gen_lock = threading.Lock()
        # Replacing a dead listener thread: one at a time, and never on (or after) close().
        self._revive_lock = threading.Lock()
        self._revive_check_at = 0.0
        self._revive_logged = False  # until a listener reports again: one line per outage
        try:
            self.schema_version_found, self._seen = self._migrate()
        except psycopg.Error as exc:
            raise ConfigurationError(
                detail=f"cannot open the PostgreSQL store {self._where}: {exc} (is the server "
                "running and the connection string right?)"
            ) from None
        self._backlog: deque[LoginRecord] = deque()
        self._backlog_limit = history_backlog
        self._backlog_lock = threading.Lock()
        self._history_batch = history_batch
        self.history_dropped = 0
        self._outage_logged = False
        self._draining = False
        self._drain_failed_at = -1e9
        self._open_connections()
        self._closed = False
        self._listener.start()
        # Nothing is cached yet, so a slow first connection loses nothing: wait only briefly.
        self._listener.connected.wait(connect_timeout + 1.0)
        self._writer = HistoryWriter(
            self._write_history, maxsize=history_queue, batch_size=history_batch,
            name=f"mtls-history-writer pg:{schema}",
        )
        # Bound directly: recording runs on every request.
        self.record = self._writer.record  # type: ignore[method-assign]
        reopen_after_fork(self)

    def _open_connections(self) -> None:
        self._pool: ConnectionPool[Any] = ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True, **self._kwargs},
            check=_check_if_idle,
            reset=_returned,
            # Give up on a failing reconnection soon, so that the next request starts a fresh
            # attempt rather than waiting for an exponential backoff grown during a long outage.
            reconnect_timeout=max(2.0, self._pool_options["timeout"]),
            name=f"mtls-pg:{self.schema}",
            open=False,
            **self._pool_options,
        )
        self._pool.open(wait=False)
        self._listener = self._new_listener()

    def _new_listener(self, *, resumed: bool = False) -> _Listener:
        return _Listener(
            self,
            conninfo=self._conninfo,
            # Its own name: an operator (or a test) can tell it from the pool's connections.
            kwargs={**self._kwargs, "application_name": f"mtls listener {self.schema}"},
            channel=self.channel,
            interval=self._fallback_interval,
            reconnect_delay=self._reconnect_delay,
            resumed=resumed,
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    @property
    def history_backlog(self) -> int:
        """Login records kept in memory because the database was unreachable."""
        return len(self._backlog)

    @property
    def listener_connected(self) -> bool:
        """Whether the invalidation listener is connected (notifications flow)."""
        return self._listener.connected.is_set()

    # -- the generation ---------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """This process's generation: a new number whenever a change may have been made.

        While the listener is known alive (it reported within ``2 * fallback_interval``), one
        comparison and an attribute read. Otherwise (disconnected, hung, its thread dead) every
        read is a new number: no cached verdict is served while changes could go unheard. Such a
        read also starts a new listener thread if the last one died (one look a second).
        """
        if _monotonic() < self._fresh_until:
            return self._generation
        return self._stale()

    def _stale(self) -> int:
        if not self._stale_logged and self._listener.connected.is_set() and not self._closed:
            self._stale_logged = True
            log.error(
                "mtls_middleware: the PostgreSQL listener on %s has not reported for over %.1f s "
                "(thread alive: %s); cached verdicts are not served until it does",
                self.channel, 2 * self._fallback_interval, self._listener.thread.is_alive(),
            )
        now = _monotonic()
        if now >= self._revive_check_at:
            self._revive_check_at = now + _REVIVE_CHECK
            self._revive_listener()
        with self._gen_lock:
            self._generation += 1
            return self._generation

    def _revive_listener(self) -> None:
        """Start a new listener thread if the last one died (an exception it could not survive):
        else nothing would ever restore invalidation, the cache or the history backlog's writes.
        One new thread however many callers."""
        if self._listener.thread.is_alive() or self._closed:
            return
        with self._revive_lock:
            dead = self._listener
            # close() sets _closed before it takes this lock to stop the listener: checked here,
            # under the lock, no thread is started that close() would not stop.
            if dead.thread.is_alive() or self._closed:
                return
            # Decided before the start: a new thread that dies at once must find the flag set.
            quiet, self._revive_logged = self._revive_logged, True
            self._listener = self._new_listener(resumed=True)
            self._fresh_until = 0.0  # stale until the new one has connected and re-read the counter
            self._listener.start()
            dead.release(0.0)  # its thread is gone: closes its wake-up pipe
            if not quiet:
                log.warning(
                    "mtls_middleware: the PostgreSQL listener thread on %s was not running; started "
                    "a new one", self.channel,
                )

    def _died(self, exc: BaseException) -> None:
        """The listener thread is ending on ``exc``: stale at once, and say why (once per outage)."""
        self._fresh_until = 0.0
        self._invalidate()
        if not self._revive_logged:
            log.error(
                "mtls_middleware: the PostgreSQL listener thread on %s died; cached verdicts are "
                "not served until a new one has connected", self.channel,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _heartbeat(self) -> None:
        """The listener is alive and connected: cached verdicts may be served for a while."""
        self._fresh_until = _monotonic() + 2 * self._fallback_interval
        self._stale_logged = False
        self._revive_logged = False

    def _lost(self) -> None:
        """The listener lost its connection (or failed): stale until it is back."""
        self._fresh_until = 0.0
        self._invalidate()

    def _advance(self, value: int) -> None:
        """A notification: the database counter is ``value``. Any number other than the last
        one seen invalidates, a lower one too: a notification can be sent by any role, so a
        forged high number must not make this process deaf to the real ones that follow."""
        with self._gen_lock:
            if value != self._seen:
                self._seen = value
                self._generation += 1

    def _committed(self, value: int) -> None:
        """This process committed a change that left the counter at ``value``: invalidate,
        whatever was seen before (the listener may have delivered the number already)."""
        with self._gen_lock:
            self._seen = value
            self._generation += 1

    def _sync(self, value: int) -> None:
        """The database counter *is* ``value`` (read, not notified): any difference invalidates,
        a lower number too (a database restored from a backup counts again from below)."""
        with self._gen_lock:
            if value != self._seen:
                self._seen = value
                self._generation += 1

    def _invalidate(self) -> None:
        with self._gen_lock:
            self._generation += 1

    def _reconnected(self) -> None:
        self._invalidate()
        self._drain_soon()

    def _drain_soon(self) -> None:
        """Write the outage backlog from a thread of its own (the listener must stay responsive)."""
        if self._backlog and not self._draining:
            self._draining = True
            threading.Thread(target=self._drain_quietly, name="mtls-pg-history-drain", daemon=True).start()

    # -- plumbing ---------------------------------------------------------------------------
    def _migrate(self) -> tuple[int, int]:
        """Bring the schema to :data:`SCHEMA_VERSION`; return the version found and the counter."""
        with psycopg.connect(self._conninfo, **self._kwargs) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mtls_middleware:{self.schema}",))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    (self.schema,),
                )
            }
            found = 0
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    raise ConfigurationError(
                        detail=f"PostgreSQL schema {self.schema} holds another application's tables; "
                        "give mtls_middleware a schema of its own (schema=...)"
                    )
                found = int(row[0])
            elif tables:
                raise ConfigurationError(
                    detail=f"PostgreSQL schema {self.schema} holds another application's tables "
                    f"({', '.join(sorted(tables)[:5])}); give mtls_middleware a schema of its own"
                )
            if found > SCHEMA_VERSION:
                raise ConfigurationError(
                    detail=f"PostgreSQL schema {self.schema} has schema version {found}, newer than "
                    f"this mtls_middleware understands ({SCHEMA_VERSION}); upgrade mtls_middleware"
                )
            for version in range(found, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
            if found < SCHEMA_VERSION:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (SCHEMA_VERSION,),
                )
            row = conn.execute(_READ_GENERATION).fetchone()
        if found < SCHEMA_VERSION:
            log.info(
                "mtls_middleware: PostgreSQL schema %s migrated from version %d to %d",
                self.schema, found, SCHEMA_VERSION,
            )
        return found, int(row[0]) if row else 0

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; unreachable -> store_unavailable, other driver errors ->
        internal_error. Either raises the generation (the failure is never served from cache)."""
        if self._closed:
            raise MTLSError(Reason.INTERNAL_ERROR, f"the store {self._where} is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            # Every pooled connection busy (load), or none could be made: this request fails,
            # but nothing says a change was missed. Dropping the whole cache here would send
            # every following request to the database too, and make the pool busier still. A
            # lost connection is the listener's to notice (it raises the generation).
            raise _unavailable(exc, self._where) from exc
        except psycopg.OperationalError as exc:
            self._invalidate()
            raise _unavailable(exc, self._where) from exc
        except psycopg.DataError as exc:
            raise ConfigurationError(detail=f"PostgreSQL cannot store this value: {exc}") from None
        except psycopg.Error as exc:
            self._invalidate()
            raise MTLSError(Reason.INTERNAL_ERROR, f"PostgreSQL store {self._where}: {exc}") from exc

    def _read(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                with self._connection() as conn:
                    return conn.execute(query, args).fetchall()
            except MTLSError as exc:
                if attempt or not _retryable(exc):
                    raise
        raise AssertionError("unreachable")

    def _read_one(self, query: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        for attempt in range(2):
            try:
                with self._connection() as conn:
                    return conn.execute(query, args).fetchone()
            except MTLSError as exc:
                if attempt or not _retryable(exc):
                    raise
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _write(self, *, invalidates: bool) -> Iterator[psycopg.Connection[Any]]:
        """One transaction; ``invalidates`` bumps the counter and notifies in it and, after the
        commit, raises this process's generation."""
        published = 0
        with self._connection() as conn, conn.transaction():
            yield conn
            if invalidates:
                row = conn.execute(_BUMP).fetchone()
                published = int(row[0]) if row else 0
                conn.execute("SELECT pg_notify(%s, %s)", (self.channel, str(published)))
        if invalidates:
            self._committed(published)

    # -- the pipeline -----------------------------------------------------------------------
    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        if _has_nul(fingerprint):
            return None
        row = self._read_one(
            "SELECT u.user_id, u.org, u.active, COALESCE(o.cert_auth, TRUE), u.permissions"
            " FROM certificates AS c JOIN users AS u ON u.user_id = c.user_id"
            " LEFT JOIN orgs AS o ON o.org = u.org WHERE c.fingerprint = %s",
            (fingerprint.lower(),),
        )
        return None if row is None else _principal(row)

    def resolve_user(self, user_id: str) -> Principal | None:
        if _has_nul(user_id):
            return None  # never stored (PostgreSQL text cannot hold NUL): a hostile SAN maps to nobody
        row = self._read_one(_RESOLVE + " WHERE u.user_id = %s", (user_id,))
        return None if row is None else _principal(row)

    # -- organisations ----------------------------------------------------------------------
    def _set_org(self, org: str, cert_auth: bool) -> OrgRecord:
        with self._write(invalidates=True) as conn:
            conn.execute(
                "INSERT INTO orgs (org, cert_auth) VALUES (%s, %s)"
                " ON CONFLICT (org) DO UPDATE SET cert_auth = excluded.cert_auth",
                (org, bool(cert_auth)),
            )
        return OrgRecord(org, bool(cert_auth))

    def list_orgs(self) -> list[OrgRecord]:
        rows = self._read("SELECT org, cert_auth FROM orgs ORDER BY org")
        return [OrgRecord(org, bool(on)) for org, on in rows]

    # -- users ------------------------------------------------------------------------------
    def _refuse_user_id(self, user_id: str) -> None:
        if _has_nul(user_id):
            raise ManagementError(Reason.UNKNOWN_USER, "a user id cannot contain a NUL character")

    def _add_user(self, record: UserRecord) -> UserRecord:
        user_id, org = record.user_id, record.org
        with self._write(invalidates=True) as conn:
            conn.execute("INSERT INTO orgs (org) VALUES (%s) ON CONFLICT (org) DO NOTHING", (org,))
            conn.execute(
                "INSERT INTO users (user_id, org, active, permissions) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (user_id) DO UPDATE SET org = excluded.org, active = excluded.active,"
                " permissions = excluded.permissions",
                (user_id, org, record.active, sorted(record.permissions)),
            )
            conn.execute(
                "UPDATE certificates SET org = %s WHERE user_id = %s AND org <> %s", (org, user_id, org)
            )
        return record

    def get_user(self, user_id: str) -> UserRecord:
        row = None if _has_nul(user_id) else self._read_one(_SELECT_USERS + " WHERE user_id = %s", (user_id,))
        if row is None:
            raise unknown_user(user_id)
        return _user(row)

    def list_users(self, *, org: str | None = None) -> list[UserRecord]:
        if org is None:
            rows = self._read(_SELECT_USERS + " ORDER BY user_id")
        elif _has_nul(org):
            rows = []
        else:
            rows = self._read(_SELECT_USERS + " WHERE org = %s ORDER BY user_id", (org,))
        return [_user(row) for row in rows]

    def _update_user(self, user_id: str, column: str, value: object) -> UserRecord:
        if _has_nul(user_id):
            raise unknown_user(user_id)
        update = sql.SQL("UPDATE users SET {} = %s WHERE user_id = %s RETURNING " + USER_COLUMNS)  # noqa: S608
        with self._write(invalidates=True) as conn:
            row = conn.execute(update.format(sql.Identifier(column)), (value, user_id)).fetchone()
            if row is None:
                raise unknown_user(user_id)  # rolls back: nothing changed, nothing to invalidate
        return _user(row)

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        return self._update_user(user_id, "active", bool(active))

    def _set_user_permissions(self, user_id: str, names: frozenset[str]) -> UserRecord:
        return self._update_user(user_id, "permissions", sorted(names))

    # -- certificates -----------------------------------------------------------------------
    def _insert(
        self,
        conn: psycopg.Connection[Any],
        upload: Upload,
        leaf: x509.Certificate,
        uploaded_by: str | None,
    ) -> CertificateRecord:
        if _has_nul(upload.user_id):
            raise unknown_user(upload.user_id)
        if _has_nul(upload.label, uploaded_by):
            raise ConfigurationError(detail="a label or uploader cannot contain a NUL character")
        row = conn.execute("SELECT org FROM users WHERE user_id = %s", (upload.user_id,)).fetchone()
        if row is None:
            raise unknown_user(upload.user_id)
        record = upload_record(upload, leaf, row[0], uploaded_by)
        # No look-before-insert: the primary key decides, also between processes and nodes. The
        # savepoint keeps the transaction usable after the refusal (a batch goes on).
        try:
            with conn.transaction():
                conn.execute(
                    _INSERT_CERT,
                    (
                        record.fingerprint, record.user_id, record.org, record.label, record.pem,
                        record.subject, record.issuer, record.serial, record.not_before,
                        record.not_after, record.uploaded_at, record.uploaded_by,
                    ),
                )
        except psycopg.errors.UniqueViolation:
            raise duplicate(record.fingerprint) from None
        return record

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]:
        if _has_nul(user_id, org):
            return []
        query = SQLQuery(_SELECT_CERTS, "%s").equal(user_id=user_id, org=org)
        rows = self._read(query.sql("seq"), query.args)
        return [_certificate(row) for row in rows]

    def _find_fingerprints(self, prefix: str, limit: int) -> list[str]:
        # A range on the primary key ("C" collation): hex digits sort below "g".
        rows = self._read(
            "SELECT fingerprint FROM certificates WHERE fingerprint >= %s AND fingerprint < %s"
            " ORDER BY fingerprint LIMIT %s",
            (prefix, prefix + "g", max(0, clamp64(limit))),
        )
        return [str(row[0]) for row in rows]

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        row = None if _has_nul(fingerprint) else self._read_one(
            _SELECT_CERTS + " WHERE fingerprint = %s", (fingerprint.lower(),)
        )
        if row is None:
            raise not_found(f"certificate {fingerprint}")
        return _certificate(row)

    def download_certificate(self, fingerprint: str) -> bytes:
        row = None if _has_nul(fingerprint) else self._read_one(
            "SELECT pem FROM certificates WHERE fingerprint = %s", (fingerprint.lower(),)
        )
        if row is None:
            raise not_found(f"certificate {fingerprint}")
        return bytes(row[0])

    def _rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        if _has_nul(label):
            raise ConfigurationError(detail="a certificate label cannot contain a NUL character")
        if _has_nul(fingerprint):
            raise not_found(f"certificate {fingerprint}")
        with self._write(invalidates=False) as conn:
            row = conn.execute(
                f"UPDATE certificates SET label = %s WHERE fingerprint = %s RETURNING {CERT_COLUMNS}",  # noqa: S608
                (label, fingerprint.lower()),
            ).fetchone()
            if row is None:
                raise not_found(f"certificate {fingerprint}")
        return _certificate(row)

    def delete_certificate(self, fingerprint: str) -> None:
        if _has_nul(fingerprint):
            raise not_found(f"certificate {fingerprint}")
        with self._write(invalidates=True) as conn:
            cursor = conn.execute("DELETE FROM certificates WHERE fingerprint = %s", (fingerprint.lower(),))
            if cursor.rowcount == 0:
                raise not_found(f"certificate {fingerprint}")

    # -- history ----------------------------------------------------------------------------
    def _write_history(self, batch: Sequence[LoginRecord]) -> None:
        """The HistoryWriter's callback: queue ``batch`` behind the outage backlog, write what can
        be written. Unreachable: keep (bounded), do not raise (the writer would count a loss)."""
        with self._backlog_lock:
            self._backlog.extend(batch)
            excess = len(self._backlog) - self._backlog_limit
            if excess > 0:
                for _ in range(excess):
                    self._backlog.popleft()
                self.history_dropped += excess
                log.error(
                    "mtls_middleware: PostgreSQL unreachable and the history backlog full; %d oldest "
                    "login records dropped (%d so far)", excess, self.history_dropped,
                )
            self._drain_locked()
        # Only a listener's reconnection writes the backlog: a dead one would let it fill. Every
        # batch looks (a batch is no request: no throttle), after the batch is in the backlog, so
        # that the new listener's first drain finds it.
        self._revive_listener()

    def _drain_locked(self, *, force: bool = False) -> bool:
        """Write the backlog, oldest first; True when it is empty. Hold ``_backlog_lock``.

        Unless ``force``d, it does not even try while the listener is disconnected or soon after
        a failure: each try could wait ``timeout`` for a connection, and the writer thread must
        keep emptying the buffer that requests append to (else they would wait for room)."""
        if not self._backlog:
            return True
        if not force and (
            not self._listener.connected.is_set()
            or time.monotonic() - self._drain_failed_at < self._reconnect_delay * 2
        ):
            return False
        while self._backlog:
            chunk = [self._backlog[i] for i in range(min(self._history_batch, len(self._backlog)))]
            try:
                with (
                    self._pool.connection() as conn,
                    conn.transaction(),
                    conn.cursor() as cur,
                    cur.copy(_COPY_HISTORY) as copy,
                ):
                    for rec in chunk:
                        copy.write_row(_history_row(rec))
            except psycopg.OperationalError as exc:
                self._drain_failed_at = time.monotonic()
                if not self._outage_logged:
                    self._outage_logged = True
                    log.error(
                        "mtls_middleware: PostgreSQL unreachable; keeping up to %d login records "
                        "until it is back (%s)", self._backlog_limit, exc,
                    )
                return False
            except psycopg.Error:
                # Not an outage: this chunk cannot be written at all; retrying would block the rest.
                for _ in chunk:
                    self._backlog.popleft()
                self.history_dropped += len(chunk)
                log.exception("mtls_middleware: %d login records could not be written", len(chunk))
                continue
            for _ in chunk:
                self._backlog.popleft()
            if self._outage_logged:
                self._outage_logged = False
                log.warning("mtls_middleware: PostgreSQL is back; the login history backlog is written")
        return True

    def _drain_quietly(self) -> None:
        try:
            with self._backlog_lock:
                self._drain_locked(force=True)
        finally:
            self._draining = False

    def _login_history(self, query: HistoryFilter) -> list[LoginRecord]:
        self.flush(self._pool_options["timeout"] * 2)
        text, args = history_sql(_SELECT_HISTORY, "%s", query, text=_clean, integer=clamp64)
        return [LoginRecord._make(row) for row in self._read(text, args)]

    def _prune_history(self, cutoff: float) -> int:
        self.flush(self._pool_options["timeout"] * 2)
        with self._write(invalidates=False) as conn:
            removed = conn.execute("DELETE FROM login_history WHERE time < %s", (cutoff,)).rowcount
        return int(removed)

    # -- audit ------------------------------------------------------------------------------
    def _record_audit(self, checked: AuditEntry) -> AuditEntry:
        with self._write(invalidates=False) as conn:
            row = conn.execute(
                "INSERT INTO audit_log (actor, action, target, before, after, time)"
                " VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s) RETURNING id",
                (
                    checked.actor, checked.action, checked.target, audit_json(checked.before),
                    audit_json(checked.after), checked.time,
                ),
            ).fetchone()
        return replace(checked, id=int(row[0]) if row else 0)

    def _audit_log(self, query: AuditFilter) -> list[AuditEntry]:
        if _has_nul(query.actor, query.target, query.action):
            return []
        text, args = audit_sql(_SELECT_AUDIT, "%s", query, when=_utc)
        return [
            AuditEntry(
                id=int(row[0]), actor=row[1], action=row[2], target=row[3], before=row[4],
                after=row[5], time=_utc(row[6]),
            )
            for row in self._read(text, args)
        ]

    # -- life cycle -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record recorded so far is stored, the outage backlog included
        (retrying while the database is unreachable); False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._writer.flush(timeout):
            return False
        while self._backlog and not self._closed:
            wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._backlog_lock.acquire(timeout=wait):
                return False
            try:
                if self._drain_locked(force=True):
                    return True
            finally:
                self._backlog_lock.release()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause = self._reconnect_delay
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
        return not self._backlog

    def close(self) -> None:
        """Flush the history, stop the listener and close the pool. Idempotent."""
        if self._closed:
            return
        self._writer.close()
        with self._backlog_lock:
            if not self._drain_locked(force=True):
                self.history_dropped += len(self._backlog)
                log.error(
                    "mtls_middleware: closing the PostgreSQL store with the database unreachable: "
                    "%d login records lost", len(self._backlog),
                )
                self._backlog.clear()
        self._closed = True
        self._writer.seal()  # requests still in flight must not retry against a closed pool
        with self._revive_lock:  # a revival under way has started its thread: stop that one
            listener = self._listener
        listener.stop()
        self._pool.close(timeout=1.0)
        listener.release(1.0)

    def _after_fork(self) -> None:
        # The parent's pool, listener thread and their connections belong to the parent.
        _ABANDONED.append(self._pool)
        self._listener.abandon()
        _ABANDONED.append(self._listener)
        self._gen_lock = threading.Lock()
        self._revive_lock = threading.Lock()
        self._revive_check_at = 0.0
        self._backlog_lock = threading.Lock()
        self._backlog = deque()  # the parent's to write
        self._draining = False
        self._fresh_until = 0.0  # stale until the child's own listener connects
        self._invalidate()
        self._open_connections()
        self._listener.start()
