"""The store's generation in a Django database, and the signals that raise it.

Every invalidating change raises the one row of ``mtls_generation``: through
:class:`~mtls_middleware.contrib.django.store.DjangoStore` as the last statement of the store's
own transaction, and through the ORM or the admin (``post_save`` / ``post_delete`` of
organisations, certificate users and certificates, cascades included) right after the
transaction that made the change commits (once per transaction). A save of a certificate with
``update_fields=["label"]`` (a rename) changes nothing a verdict rests on and raises nothing.

Each process keeps its own counter (:attr:`Watch.value`, what ``DjangoStore.generation`` returns:
an attribute read). It rises

- when a change is made in this process, and again when its transaction ends, committed or
  rolled back: the first makes the change count at once for the thread that made it (also inside
  a transaction that never commits, as in Django's ``TestCase``), the second drops what was cached
  meanwhile from a state that has now become visible to all, or never will be; and
- within :data:`POLL_INTERVAL` (0.5 s) plus one query's time of a change committed by any other
  process: a thread per process and database reads the row and raises the counter whenever the
  row differs from what it last saw. A failed read raises it too (a change that could not be seen
  must not keep verdicts alive).

The poll has a deadline of its own: when the last successful read is older than
:data:`STALE_AFTER` (two intervals and a margin), the counter is a new number at every read, so
no cached verdict is served, until a read succeeds again. A database that stops answering
without closing the connection (a network partition: the read would wait for the kernel's TCP
timeout, about 15 minutes) or a poll thread that died is noticed within that bound; the thread
is restarted when it is found dead.

A process sees a new number only once the change is committed, so when it then reads the
database it sees the change. Limit: changes made through the ORM or the admin raise the row
only *after* their commit, in a statement of its own; a process killed between the two, or a
database that fails just then (logged, and this process drops its cache), leaves the other
processes unaware of that change, serving verdicts they cached before it, until the next change
of the store (or their cache entries expire). Changes made through :class:`DjangoStore` itself
raise the row inside their own transaction and have no such gap.

``QuerySet.update()``, ``bulk_create`` and raw SQL send no signals: call :func:`invalidate`
after them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from django.db import connections, transaction
from django.db.models import F
from django.db.models.signals import post_delete, post_save

__all__ = [
    "POLL_INTERVAL", "STALE_AFTER", "Watch", "bump", "bump_in_transaction", "connect", "invalidate", "watch",
]

log = logging.getLogger("mtls_middleware")

#: How often (seconds) each process reads the generation row for other processes' changes.
POLL_INTERVAL = 0.5

#: How old (seconds) the last successful read of the row may be before cached verdicts are no
#: longer served: two intervals, and a margin for a slow query or a busy process.
STALE_AFTER = 2 * POLL_INTERVAL + 1.0

_monotonic = time.monotonic  # bound once: the generation is read on every request

_ROW = 1

# Aliases whose store is inside one of its own write transactions on this thread: it bumps once
# itself, and the signals of its saves would only add queries.
_suppressed = threading.local()


class Watch:
    """This process's view of one database's generation row.

    ``value`` only ever rises; the polling thread runs while at least one store holds the watch.
    :meth:`current` is what a store's ``generation`` returns.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self.value = 0
        # Until this monotonic time, the last successful read of the row is recent enough.
        self.fresh_until = 0.0
        self._seen: object = None
        self._thread: threading.Thread | None = None
        self._stale_logged = False
        # Reentrant: a dropped _Settle counts from __del__, wherever the interpreter frees it.
        self._lock = threading.RLock()
        self._holders = 0
        self._stop: threading.Event | None = None
        self._failing = False

    # -- the counter ----------------------------------------------------------------------------
    def changing(self) -> None:
        """A change is being made in this process (not yet committed)."""
        with self._lock:
            self.value += 1

    def committed(self, row: object) -> None:
        """A change of this process committed with the row at ``row``."""
        with self._lock:
            self._seen = row
            self.value += 1

    def observed(self, row: object) -> None:
        """The polling thread read ``row``: a different number means someone else changed."""
        with self._lock:
            if row != self._seen:
                self._seen = row
                self.value += 1

    def unknown(self) -> None:
        """The row could not be read: assume a change."""
        with self._lock:
            self._seen = _UNREAD
            self.value += 1

    def current(self) -> int:
        """The counter; a new number at each call while the row has not been read for over
        :data:`STALE_AFTER` seconds (no cached verdict is served while changes could go unseen)."""
        if _monotonic() < self.fresh_until:
            return self.value
        return self.stale()

    def stale(self) -> int:
        """The slow half of :meth:`current`: count, log once, restart a polling thread that died."""
        with self._lock:
            self.value += 1
            value = self.value
            dead = self._holders > 0 and self._thread is not None and not self._thread.is_alive()
            if dead:
                self._start()
            if dead or not self._stale_logged:
                self._stale_logged = True
                log.error(
                    "mtls_middleware: the store generation of database %r has not been read for over "
                    "%.1f s%s; cached verdicts are not served until it is", self.using, STALE_AFTER,
                    " (its polling thread had died and is restarted)" if dead else "",
                )
        return value

    def _fresh(self) -> None:
        self.fresh_until = _monotonic() + STALE_AFTER
        if self._stale_logged:
            self._stale_logged = False
            log.warning("mtls_middleware: the store generation of database %r is read again", self.using)

    # -- the polling thread ---------------------------------------------------------------------
    def acquire(self) -> None:
        """A store starts using the watch: read the row now, and poll while it is held.

        Raises:
            django.db.DatabaseError: the row cannot be read (no such table: not migrated).
        """
        with self._lock:
            self._holders += 1
            first = self._holders == 1
        if first:
            try:
                seen = read_row(self.using)
            except BaseException:
                with self._lock:
                    self._holders -= 1
                raise
            with self._lock:
                self._seen = seen
                self._fresh()
                self._start()

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            stop = self._stop if self._holders == 0 else None
            if stop is not None:
                self._stop = None
        if stop is not None:
            stop.set()

    def _start(self) -> None:
        """Start a polling thread (hold ``_lock``); a previous one, if any, is told to stop."""
        if self._stop is not None:
            self._stop.set()
        stop = threading.Event()
        self._stop = stop
        thread = threading.Thread(
            target=self._poll, args=(stop,), name=f"mtls-generation {self.using}", daemon=True
        )
        self._thread = thread
        thread.start()

    def _poll(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(POLL_INTERVAL):
                try:
                    row = read_row(self.using)
                except Exception:
                    if not self._failing:
                        log.warning(
                            "mtls_middleware: cannot read the store generation of database %r; "
                            "cached verdicts are dropped until it can be read again", self.using,
                            exc_info=True,
                        )
                    self._failing = True
                    self.unknown()
                    _close(self.using)  # the next read reconnects
                    continue
                if stop.is_set():
                    break  # replaced meanwhile (it hung): the new thread reports
                self._failing = False
                self.observed(row)
                self._fresh()
        except BaseException:  # the thread must not end quietly: the next stale read restarts it
            log.exception("mtls_middleware: the generation poll of database %r failed", self.using)
        finally:
            _close(self.using)

    def _after_fork(self) -> None:
        # The parent's thread does not exist here; its lock may have been held.
        self._lock = threading.RLock()
        self._stop = None
        self.fresh_until = 0.0  # until the child's own thread has read the row
        if self._holders > 0:
            self._start()


def _close(using: str) -> None:
    """Close this thread's connection to ``using``; whatever that raises (a connection already
    broken), the polling thread goes on."""
    with contextlib.suppress(Exception):
        connections[using].close()


_UNREAD = object()
_WATCHES: dict[str, Watch] = {}
_WATCHES_LOCK = threading.Lock()


def watch(using: str) -> Watch:
    """The process's :class:`Watch` of database ``using``."""
    found = _WATCHES.get(using)
    if found is None:
        with _WATCHES_LOCK:
            found = _WATCHES.setdefault(using, Watch(using))
    return found


def read_row(using: str) -> int | None:
    """The generation row's number, or None when there is no row (a flushed database)."""
    from .models import StoreGeneration

    value: int | None = (
        StoreGeneration.objects.using(using).filter(pk=_ROW).values_list("value", flat=True).first()
    )
    return value


def _raise_row(using: str) -> int | None:
    """Add one to the generation row (making it when missing); its new number."""
    from .models import StoreGeneration

    rows = StoreGeneration.objects.using(using).filter(pk=_ROW)
    if not rows.update(value=F("value") + 1):
        # A flushed or hand-made database: make the row (a racing process's insert is ignored).
        StoreGeneration.objects.using(using).bulk_create(
            [StoreGeneration(pk=_ROW, value=0)], ignore_conflicts=True
        )
        rows.update(value=F("value") + 1)
    value: int | None = rows.values_list("value", flat=True).first()
    return value


def bump(using: str) -> None:
    """Raise the generation for a change being made on ``using``.

    Outside any transaction and inside one the caller owns, the row is raised right after the
    commit (taking the row's lock in the middle of a transaction of unknown shape could deadlock
    with another); inside the store's own short transactions (:func:`bump_in_transaction`) as
    their last statement. This process's counter rises now and again when the transaction ends.
    """
    connection = connections[using]
    found = watch(using)
    found.changing()
    if getattr(connection, _PENDING, False):
        return  # one raise after the commit covers every change of the transaction
    setattr(connection, _PENDING, True)
    transaction.on_commit(_Settle(found, using=using), using=using)


def bump_in_transaction(using: str) -> None:
    """Raise the row inside the current transaction (its last statement, so the row's lock is the
    last one taken): other processes see the number no earlier than the change."""
    row = _raise_row(using)
    found = watch(using)
    found.changing()
    transaction.on_commit(_Settle(found, row=row), using=using)


# On a connection: a raise of the row after the commit is already scheduled.
_PENDING = "_mtls_generation_pending"


class _Settle:
    """The ``on_commit`` callback of one bump: counts again when its transaction ends. Committed,
    Django calls it; rolled back (also to a savepoint), Django drops it uncalled, and CPython
    frees it at once: both count. With ``using``, it raises the row first (after the commit)."""

    __slots__ = ("called", "row", "using", "watch")

    def __init__(self, watch: Watch, *, row: object = None, using: str | None = None) -> None:
        self.watch = watch
        self.row = row
        self.using = using
        self.called = False

    def __call__(self) -> None:
        self.called = True
        if self.using is None:
            self.watch.committed(self.row)
            return
        connection = connections[self.using]
        setattr(connection, _PENDING, False)
        try:
            with transaction.atomic(using=self.using):
                row = _raise_row(self.using)
        except Exception:
            # Committed, but the other processes cannot be told: say so loudly; this process
            # at least drops its cached verdicts.
            log.error(
                "mtls_middleware: a change was committed to database %r but its generation could "
                "not be raised; other processes may serve cached verdicts until the next change",
                self.using, exc_info=True,
            )
            self.watch.unknown()
            return
        self.watch.committed(row)

    def __del__(self) -> None:
        if not self.called:
            if self.using is not None:
                setattr(connections[self.using], _PENDING, False)
            self.watch.changing()


def invalidate(using: str = "default") -> None:
    """Tell every process that the store's data changed (after ``QuerySet.update()`` or raw SQL on
    its tables): cached verdicts are dropped (inside a transaction: once it commits)."""
    bump(using)


class suppressed:
    """Within this block on this thread, saves to ``using`` send no bumps (the store bumps once)."""

    def __init__(self, using: str) -> None:
        self.using = using

    def __enter__(self) -> None:
        aliases: set[str] = getattr(_suppressed, "aliases", set())
        _suppressed.aliases = aliases | {self.using}

    def __exit__(self, *exc_info: object) -> None:
        aliases: set[str] = getattr(_suppressed, "aliases", set())
        _suppressed.aliases = aliases - {self.using}


def _changed(using: str) -> None:
    if using in getattr(_suppressed, "aliases", ()):
        return
    bump(using)


def _saved(sender: Any, instance: Any, using: str, update_fields: Any = None, **kwargs: Any) -> None:
    from .models import Certificate

    if sender is Certificate and update_fields is not None and set(update_fields) <= {"label"}:
        return  # a rename
    _changed(using)


def _deleted(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    _changed(using)


def connect() -> None:
    """Connect the signal handlers (``MTLSAppConfig.ready``); idempotent."""
    from .models import Certificate, CertificateUser, Organisation

    for model in (Organisation, CertificateUser, Certificate):
        post_save.connect(_saved, sender=model, dispatch_uid=f"mtls-generation-save-{model.__name__}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"mtls-generation-delete-{model.__name__}")


def _after_fork_in_child() -> None:
    for found in list(_WATCHES.values()):
        found._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
