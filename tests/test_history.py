"""history.py: login records, the bounded in-memory history and the background HistoryWriter."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from mtls_middleware import ACCEPTED, HistorySink, LoginRecord, MemoryHistory
from mtls_middleware import history as history_module
from mtls_middleware.history import HistoryWriter, history_cutoff


def record(outcome: str = ACCEPTED, user: str | None = "alice", at: float = 0.0) -> LoginRecord:
    return LoginRecord(outcome, "tls:environ", user_id=user, time=at, peer="192.0.2.1")


def test_field_order_keeps_time_and_peer_last() -> None:
    # The verdict cache keeps the other fields of an accepted record and appends these two.
    assert LoginRecord._fields == (
        "outcome",
        "source",
        "fingerprint",
        "subject",
        "issuer",
        "serial",
        "user_id",
        "org",
        "detail",
        "revocation",
        "time",
        "peer",
    )


def test_defaults() -> None:
    rec = LoginRecord("no_certificate", "tls")
    assert rec.fingerprint is None
    assert rec.user_id is None
    assert rec.detail == ""
    assert rec.time == 0.0
    assert rec.peer is None


@pytest.mark.parametrize(
    ("outcome", "accepted"),
    [(ACCEPTED, True), ("unknown_certificate", False), ("no_certificate", False), ("", False)],
    ids=repr,
)
def test_accepted(outcome: str, accepted: bool) -> None:
    assert record(outcome).accepted is accepted
    assert ACCEPTED == "accepted"


def test_when_is_the_utc_datetime_of_time() -> None:
    assert record(at=1_700_000_000.5).when == dt.datetime(
        2023, 11, 14, 22, 13, 20, 500000, tzinfo=dt.timezone.utc
    )


def test_memory_history_is_a_sink() -> None:
    assert isinstance(MemoryHistory(), HistorySink)
    assert not isinstance(object(), HistorySink)


def test_query_newest_first_with_filters() -> None:
    history = MemoryHistory()
    history.record(record(ACCEPTED, "alice", 1))
    history.record(record("user_inactive", "alice", 2))
    history.record(record("unknown_certificate", None, 3))
    history.record(record(ACCEPTED, "bob", 4))
    assert [r.time for r in history.query()] == [4, 3, 2, 1]
    assert [r.time for r in history.query(user_id="alice")] == [2, 1]
    assert [r.time for r in history.query(failed_only=True)] == [3, 2]
    assert [r.time for r in history.query(limit=1)] == [4]
    assert [r.time for r in history.query(user_id="bob", failed_only=True)] == []


def test_iteration_is_oldest_first_and_a_snapshot() -> None:
    history = MemoryHistory()
    for index in range(3):
        history.record(record(at=index))
    iterator = iter(history)
    history.record(record(at=99))
    assert [r.time for r in iterator] == [0, 1, 2]
    assert len(history) == 4


def test_bounded() -> None:
    history = MemoryHistory(maxlen=3)
    for index in range(10):
        history.record(record(at=index))
    assert len(history) == 3
    assert [r.time for r in history] == [7, 8, 9]


def test_clear() -> None:
    history = MemoryHistory()
    history.record(record())
    history.clear()
    assert len(history) == 0
    assert history.query() == []


def test_concurrent_records_are_all_kept() -> None:
    history = MemoryHistory()

    def worker(n: int) -> None:
        for index in range(500):
            history.record(record(at=n * 1000 + index))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(history) == 4000
    assert len({r.time for r in history}) == 4000


def test_memory_history_query_filters_by_outcome_and_time() -> None:
    history = MemoryHistory()
    for outcome, at in [(ACCEPTED, 10), ("user_inactive", 20), (ACCEPTED, 30), ("user_inactive", 40)]:
        history.record(record(outcome, at=at))
    since, until = dt.datetime.fromtimestamp(20, dt.timezone.utc), dt.datetime.fromtimestamp(40, dt.timezone.utc)
    assert [r.time for r in history.query(outcome="user_inactive")] == [40, 20]
    assert [r.time for r in history.query(since=since, until=until)] == [30, 20]
    assert [r.time for r in history.query(limit=None)] == [40, 30, 20, 10]


def test_memory_history_orders_by_time_not_arrival() -> None:
    history = MemoryHistory()
    for at in (5, 1, 9, 1):
        history.record(record(at=at))
    assert [r.time for r in history.query()] == [9, 5, 1, 1]


def test_memory_history_prune_keeps_newer_records_in_order() -> None:
    history = MemoryHistory()
    for at in (5, 1, 9, 2, 7):
        history.record(record(at=at))
    assert history.prune(before=5) == 2
    assert [r.time for r in history] == [5, 9, 7]  # arrival order kept
    history.record(record(at=99))  # still appends to the same deque
    assert len(history) == 4


@pytest.mark.parametrize(
    ("older_than", "cutoff"),
    [(dt.timedelta(0), 1000.0), (dt.timedelta(seconds=10), 990.0), (dt.timedelta(days=1), 1000.0 - 86400)],
    ids=str,
)
def test_history_cutoff(older_than: dt.timedelta, cutoff: float) -> None:
    assert history_cutoff(older_than, now=1000.0) == cutoff


def test_history_cutoff_refuses_negative_ages() -> None:
    with pytest.raises(ValueError, match="negative"):
        history_cutoff(dt.timedelta(seconds=-1))


# -- HistoryWriter ----------------------------------------------------------------------------


class Sink:
    """A write_batch callback that keeps what it got; can be held shut or made to fail."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[LoginRecord]] = []
        self.failures = failures
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: Sequence[LoginRecord]) -> None:
        self.calls += 1
        self.gate.wait(30)
        if self.failures:
            self.failures -= 1
            raise OSError("disk on fire")
        self.batches.append(list(batch))

    @property
    def times(self) -> list[float]:
        return [r.time for batch in self.batches for r in batch]


@pytest.fixture
def writers() -> Iterator[list[HistoryWriter]]:
    made: list[HistoryWriter] = []
    yield made
    for writer in made:
        writer.close(timeout=30)


def make_writer(writers: list[HistoryWriter], sink: Sink, **options: Any) -> HistoryWriter:
    options.setdefault("retry_delay", 0.001)
    writer = HistoryWriter(sink, **options)
    writers.append(writer)
    return writer


def _wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_writer_is_a_sink(writers: list[HistoryWriter]) -> None:
    assert isinstance(make_writer(writers, Sink()), HistorySink)


def test_writer_delivers_everything_in_order_in_batches(writers: list[HistoryWriter]) -> None:
    sink = Sink()
    writer = make_writer(writers, sink, batch_size=7)
    for index in range(100):
        writer.record(record(at=index))
    assert writer.flush(timeout=30) is True
    assert sink.times == list(range(100))
    assert max(len(batch) for batch in sink.batches) <= 7
    assert (writer.written, writer.lost, writer.pending) == (100, 0, 0)


def test_flush_times_out_while_the_writer_is_stuck(writers: list[HistoryWriter]) -> None:
    sink = Sink()
    sink.gate.clear()
    writer = make_writer(writers, sink)
    writer.record(record(at=1))
    assert writer.flush(timeout=0.05) is False
    sink.gate.set()
    assert writer.flush(timeout=30) is True
    assert sink.times == [1]


def test_a_full_buffer_makes_record_wait_and_nothing_is_dropped(writers: list[HistoryWriter]) -> None:
    sink = Sink()
    sink.gate.clear()
    writer = make_writer(writers, sink, maxsize=3, batch_size=1)
    recorder = threading.Thread(target=lambda: [writer.record(record(at=i)) for i in range(20)])
    recorder.start()
    assert _wait_for(lambda: writer.waits >= 1)
    assert recorder.is_alive()  # held in record(), with the buffer at its bound
    assert writer.pending <= 3
    sink.gate.set()
    recorder.join(30)
    assert writer.flush(timeout=30) is True
    assert sink.times == list(range(20))


def test_a_failing_write_is_retried(writers: list[HistoryWriter], caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(failures=2)
    writer = make_writer(writers, sink, retries=3)
    with caplog.at_level(logging.WARNING, logger="mtls_middleware"):
        writer.record(record(at=1))
        assert writer.flush(timeout=30) is True
    assert sink.times == [1]
    assert (sink.calls, writer.lost) == (3, 0)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]


def test_a_batch_that_keeps_failing_is_logged_as_lost(
    writers: list[HistoryWriter], caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink(failures=3)
    sink.gate.clear()  # so that all three records land in one batch
    writer = make_writer(writers, sink, retries=2, batch_size=10)
    with caplog.at_level(logging.WARNING, logger="mtls_middleware"):
        writer.record(record(at=0))
        assert _wait_for(lambda: sink.calls == 1)
        writer.record(record(at=1))
        writer.record(record(at=2))
        sink.gate.set()
        assert writer.flush(timeout=30) is True
    assert sink.times == [1, 2]  # the first batch (record 0) failed 3 times: lost
    assert writer.lost == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("mtls_middleware: 1 login records lost after 3 failed attempts")
    writer.record(record(at=3))  # the writer goes on
    assert writer.flush(timeout=30) is True
    assert sink.times == [1, 2, 3]


def test_close_flushes_stops_the_thread_then_writes_synchronously(writers: list[HistoryWriter]) -> None:
    sink = Sink()
    writer = make_writer(writers, sink)
    for index in range(50):
        writer.record(record(at=index))
    thread = writer._channel.thread
    assert writer.close(timeout=30) is True
    assert not thread.is_alive()
    assert sink.times == list(range(50))
    writer.record(record(at=50))
    assert sink.times[-1] == 50
    assert writer.flush() is True
    assert writer.close() is True  # idempotent


def test_close_answers_a_flush_that_arrived_after_the_threads_last_look(
    writers: list[HistoryWriter],
) -> None:
    # The race, frozen: flush() saw the thread alive, the thread then drained and stopped, and
    # only then did the marker (and a record) land in the buffer.
    sink = Sink()
    writer = make_writer(writers, sink)
    channel = writer._channel
    channel.stopping = True
    channel.wake.set()
    channel.thread.join(30)
    marker = history_module._Flush()
    channel.buf.extend([record(at=1), marker])
    assert writer.close(timeout=30) is True
    assert marker.done.is_set()
    assert sink.times == [1]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death
def test_record_does_not_wait_forever_on_a_dead_writer_thread(writers: list[HistoryWriter]) -> None:
    class DiesOnce(Sink):
        def __call__(self, batch: Sequence[LoginRecord]) -> None:
            if self.calls == 0:
                self.calls += 1
                raise SystemExit  # not an Exception: it ends the thread, as nothing else can
            super().__call__(batch)

    sink = DiesOnce()
    writer = make_writer(writers, sink, maxsize=1, retries=0)
    writer.record(record(at=0))
    writer._channel.thread.join(30)
    assert not writer._channel.thread.is_alive()
    recorder = threading.Thread(target=lambda: [writer.record(record(at=i)) for i in (1, 2)])
    recorder.start()
    recorder.join(30)
    assert not recorder.is_alive()
    assert sink.times == [2]  # 1 sits in the buffer (the dead thread's); 2 was written at once


def test_an_abandoned_writer_drains_and_stops() -> None:
    sink = Sink()
    writer = HistoryWriter(sink)
    thread = writer._channel.thread
    for index in range(10):
        writer.record(record(at=index))
    del writer
    gc.collect()
    thread.join(30)
    assert not thread.is_alive()
    assert sink.times == list(range(10))


@pytest.mark.parametrize(
    "options",
    [{"maxsize": 0}, {"batch_size": 0}, {"retries": -1}],
    ids=lambda o: next(iter(o)),
)
def test_writer_options_are_checked(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        HistoryWriter(Sink(), **options)
