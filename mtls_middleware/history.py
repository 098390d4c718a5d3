"""Record stage: one login-history record per authentication attempt.

A sink must never block a request beyond an append or a queue put; persistent sinks (SQLite,
PostgreSQL) buffer and write from a thread of their own (:class:`HistoryWriter`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "ACCEPTED",
    "HistorySink",
    "HistoryWriter",
    "LoginRecord",
    "MemoryHistory",
    "history_cutoff",
    "matches",
]

log = logging.getLogger("mtls_middleware")

#: The outcome of an accepted attempt; a refused one carries its reason code instead.
ACCEPTED = "accepted"


class LoginRecord(NamedTuple):
    """One authentication attempt (an immutable tuple: cheap to make on every request).

    ``outcome`` is ``"accepted"`` or a reason code; ``detail`` says what exactly failed (which
    certificate, which rule, which responder). ``time`` is a POSIX timestamp; ``peer`` the address
    of the immediate peer (the proxy, when there is one). They come last so that the verdict cache
    can keep the rest of an accepted record and add only these two per request.
    """

    outcome: str
    source: str
    fingerprint: str | None = None
    subject: str | None = None
    issuer: str | None = None
    serial: str | None = None
    user_id: str | None = None
    org: str | None = None
    detail: str = ""
    revocation: str | None = None
    time: float = 0.0
    peer: str | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time, dt.timezone.utc)


@runtime_checkable
class HistorySink(Protocol):
    """Where login records go. ``record`` must not block (an append or a queue put)."""

    def record(self, record: LoginRecord) -> None: ...


def timestamp(when: dt.datetime) -> float:
    """``when`` as a POSIX timestamp; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def history_cutoff(older_than: dt.timedelta, *, now: float | None = None) -> float:
    """The POSIX time before which records are "older than" ``older_than``.

    Raises:
        ValueError: a negative ``older_than`` (it would remove records from the future).
    """
    if older_than < dt.timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    return (time.time() if now is None else now) - older_than.total_seconds()


def matches(
    *,
    user_id: str | None = None,
    failed_only: bool = False,
    outcome: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Callable[[LoginRecord], bool]:
    """A predicate for the ``login_history`` filters: ``since <= time < until``, all ANDed."""
    low = timestamp(since) if since is not None else None
    high = timestamp(until) if until is not None else None
    wanted = str(outcome) if outcome is not None else None

    def keep(rec: LoginRecord) -> bool:
        return (
            (user_id is None or rec.user_id == user_id)
            and (not failed_only or rec.outcome != ACCEPTED)
            and (wanted is None or rec.outcome == wanted)
            and (low is None or rec.time >= low)
            and (high is None or rec.time < high)
        )

    return keep


class MemoryHistory:
    """A bounded in-memory history: the newest ``maxlen`` records; thread-safe."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._records: deque[LoginRecord] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        # deque.append is atomic under the GIL and cannot fail: bound directly, it costs one C
        # call per request. The lock only guards readers' snapshots.
        self.record = self._records.append  # type: ignore[method-assign,assignment]

    def record(self, record: LoginRecord) -> None:  # replaced per instance in __init__
        self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[LoginRecord]:
        with self._lock:
            return iter(list(self._records))

    def query(
        self,
        *,
        user_id: str | None = None,
        failed_only: bool = False,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = 100,
    ) -> list[LoginRecord]:
        """The matching records, newest ``time`` first (the later recorded first among equals).

        ``since <= time < until``; ``limit=None`` returns every match.
        """
        with self._lock:
            snapshot = list(self._records)
        keep = matches(
            user_id=user_id, failed_only=failed_only, outcome=outcome, since=since, until=until
        )
        # reversed() puts the later recorded first; the stable sort keeps that among equal times.
        found = sorted(filter(keep, reversed(snapshot)), key=_time, reverse=True)
        return found if limit is None else found[: max(0, limit)]

    def prune(self, *, before: float) -> int:
        """Remove the records with ``time < before``; return how many were removed."""
        with self._lock:
            # In place: ``record`` is bound to this deque's append. Records appended meanwhile go
            # to the right and are untouched; only the ``count`` oldest are taken out and sifted.
            count = len(self._records)
            taken = [self._records.popleft() for _ in range(count)]
            kept = [rec for rec in taken if rec.time >= before]
            self._records.extendleft(reversed(kept))
        return count - len(kept)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


def _time(rec: LoginRecord) -> float:
    return rec.time


# -- the background writer of persistent stores -------------------------------------------------


class _Flush:
    """A marker in the buffer: set once everything ahead of it has been handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Channel:
    """What the writer thread shares with the recording threads (never the writer itself).

    The thread holds only this, so an abandoned :class:`HistoryWriter` can be collected, and its
    finaliser drains and stops the thread.
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[LoginRecord]], None],
        *,
        maxsize: int,
        batch_size: int,
        retries: int,
        retry_delay: float,
        interval: float,
        name: str,
    ) -> None:
        self.buf: deque[LoginRecord | _Flush] = deque()
        self.write_batch = write_batch
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.retries = retries
        self.retry_delay = retry_delay
        self.interval = interval
        self.wake = threading.Event()
        self.room = threading.Condition(threading.Lock())
        # One write at a time: the thread's batches and, once stopping, synchronous writes.
        self.write_lock = threading.Lock()
        self.stopping = False
        self.closed = False
        self.sealed = False  # the sink is gone (its owner closed it): nothing can be written
        self.written = 0
        self.lost = 0
        self.waits = 0
        self.thread = threading.Thread(target=_run, args=(self,), name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def write(self, batch: Sequence[LoginRecord]) -> None:
        """``write_batch`` with bounded retries; a batch that still fails is logged as lost."""
        with self.write_lock:
            self._write(batch)

    def _write(self, batch: Sequence[LoginRecord]) -> None:
        if self.sealed:
            # A request still in flight after its store was closed: retrying (and sleeping on
            # that request's thread) cannot help; count it, and say so now and then.
            self.lost += len(batch)
            if self.lost == len(batch) or self.lost % 1000 < len(batch):
                log.warning(
                    "mtls_middleware: %d login records arrived after the history was closed and "
                    "were not written", self.lost,
                )
            return
        for attempt in range(self.retries + 1):
            try:
                self.write_batch(batch)
            except Exception:
                if attempt < self.retries:
                    log.warning(
                        "mtls_middleware: writing %d login records failed (attempt %d of %d); "
                        "retrying", len(batch), attempt + 1, self.retries + 1, exc_info=True,
                    )
                    time.sleep(self.retry_delay * (2**attempt))
                    continue
                self.lost += len(batch)
                log.error(
                    "mtls_middleware: %d login records lost after %d failed attempts (%d lost so "
                    "far)", len(batch), self.retries + 1, self.lost, exc_info=True,
                )
                return
            self.written += len(batch)
            return

    def close(self, timeout: float | None) -> bool:
        """Drain, stop the thread and switch ``record`` to synchronous writes; True if drained."""
        self.stopping = True
        self.wake.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        drained = not self.thread.is_alive()
        self.closed = True
        if drained:
            # A record or a flush marker may have landed after the thread's last look at the
            # buffer (it passed its check just before the switch): write the one, answer the other.
            leftover = _take_all(self.buf)
            records = [item for item in leftover if not isinstance(item, _Flush)]
            if records:
                self.write(records)
            for item in leftover:
                if isinstance(item, _Flush):
                    item.done.set()
        with self.room:
            self.room.notify_all()
        return drained


def _run(channel: _Channel) -> None:
    buf, wake = channel.buf, channel.wake
    while True:
        if not buf:
            if channel.stopping:
                return
            wake.wait(channel.interval)
            wake.clear()
            continue
        batch: list[LoginRecord] = []
        markers: list[_Flush] = []
        while buf and len(batch) < channel.batch_size:
            item = buf.popleft()
            if isinstance(item, _Flush):
                markers.append(item)
                break  # what is ahead of the marker is in this batch: write it, then tell
            batch.append(item)
        if batch:
            channel.write(batch)
        for marker in markers:
            marker.done.set()
        with channel.room:
            channel.room.notify_all()
        if not markers and len(batch) < channel.batch_size and not channel.stopping:
            # The buffer was drained: let the next batch gather for an interval instead of writing
            # at once the few records that arrived during this write. Each write has a fixed cost
            # (a transaction, a round trip) and takes the GIL from the request threads; against a
            # remote database, writing whatever arrived meanwhile made batches of 2-3 records.
            # A flush, a full buffer or close() sets ``wake`` and ends the wait early.
            wake.wait(channel.interval)
            wake.clear()


def _take_all(buf: deque[LoginRecord | _Flush]) -> list[LoginRecord | _Flush]:
    items: list[LoginRecord | _Flush] = []
    while True:
        try:
            items.append(buf.popleft())
        except IndexError:
            return items


def _finalize(channel: _Channel) -> None:
    channel.close(None)


class HistoryWriter:
    """Buffers login records and writes them in batches from one daemon thread.

    ``record`` is the request path: a length check and a ``deque.append`` (about 0.1 µs; a
    ``queue.Queue.put`` costs about 1 µs, a third of the per-request budget). The buffer is bounded
    by ``maxsize`` (give or take one record per concurrently recording thread): when it is full,
    ``record`` *blocks* until the writer has made room, and counts that in :attr:`waits`. Nothing
    is dropped silently.

    The thread takes up to ``batch_size`` records at a time and hands them to ``write_batch``; after
    a batch that emptied the buffer it waits ``interval`` seconds (less if flushed, closed or full)
    before the next, so a sink gets one batch per interval, not one per few records. A
    failing ``write_batch`` is logged (logger ``"mtls_middleware"``) and retried ``retries`` times
    with a doubling delay; a batch that still fails is logged as lost and counted in :attr:`lost`.

    :meth:`flush` waits until everything recorded before it was handled; :meth:`close` flushes and
    stops the thread, after which ``record`` writes synchronously. A finaliser closes the writer when
    it is collected and at interpreter exit (it holds the writer only weakly), so a clean exit loses
    nothing. In a child process after ``fork()`` the writer starts afresh with an empty buffer and
    its own thread (records buffered in the parent are the parent's to write).
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[LoginRecord]], None],
        *,
        maxsize: int = 10_000,
        batch_size: int = 500,
        retries: int = 3,
        retry_delay: float = 0.05,
        interval: float = 0.05,
        name: str = "mtls-history-writer",
    ) -> None:
        if maxsize < 1 or batch_size < 1 or retries < 0:
            raise ValueError("maxsize and batch_size must be positive, retries not negative")
        self._options = {
            "maxsize": maxsize,
            "batch_size": batch_size,
            "retries": retries,
            "retry_delay": retry_delay,
            "interval": interval,
            "name": name,
        }
        self._write_batch = write_batch
        self._start()
        _WRITERS.add(self)

    def _start(self) -> None:
        channel = _Channel(self._write_batch, **self._options)  # type: ignore[arg-type]
        self._channel = channel
        self._buf = channel.buf
        self._limit = channel.maxsize
        self._finalizer = weakref.finalize(self, _finalize, channel)
        channel.start()

    def record(self, record: LoginRecord) -> None:
        """Buffer ``record``; blocks only while the buffer is full (back-pressure)."""
        if len(self._buf) >= self._limit:
            self._record_slowly(record)
            return
        self._buf.append(record)

    def _record_slowly(self, record: LoginRecord) -> None:
        channel = self._channel
        if channel.stopping:
            channel.write([record])
            return
        with channel.room:
            channel.waits += 1
            # A dead thread would never make room: write this one ourselves rather than wait
            # forever.
            while len(channel.buf) >= channel.maxsize and not channel.closed and channel.thread.is_alive():
                channel.wake.set()
                channel.room.wait(0.1)
        if channel.stopping or not channel.thread.is_alive():
            channel.write([record])
            return
        channel.buf.append(record)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record buffered before this call has been handled (written, or logged
        as lost after the retries). False if ``timeout`` seconds passed first."""
        channel = self._channel
        if channel.closed or not channel.thread.is_alive():
            return not channel.buf
        marker = _Flush()
        channel.buf.append(marker)
        channel.wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush and stop the thread; later records are written synchronously. True if drained."""
        self._limit = 0  # every later record takes the slow path, which writes synchronously
        drained = self._channel.close(timeout)
        self._finalizer.detach()
        return drained

    def seal(self) -> None:
        """Declare the sink gone (after :meth:`close`, when its owner closes the database): later
        records are counted in :attr:`lost` and logged, never retried."""
        self._limit = 0
        self._channel.sealed = True

    @property
    def pending(self) -> int:
        """How many records wait in the buffer."""
        return sum(1 for item in list(self._channel.buf) if not isinstance(item, _Flush))

    @property
    def written(self) -> int:
        """Records written so far (by this process's writer)."""
        return self._channel.written

    @property
    def lost(self) -> int:
        """Records given up after ``write_batch`` kept failing."""
        return self._channel.lost

    @property
    def waits(self) -> int:
        """How often ``record`` had to wait for room (back-pressure)."""
        return self._channel.waits

    def _after_fork(self) -> None:
        # The parent's thread does not exist here and its locks may be held: start afresh.
        self._finalizer.detach()
        self._start()


_WRITERS: weakref.WeakSet[HistoryWriter] = weakref.WeakSet()


def _after_fork_in_child(writers: Iterable[HistoryWriter] = _WRITERS) -> None:
    for writer in list(writers):
        if not writer._channel.closed:
            writer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child))
