"""history.py: login records and the bounded in-memory history."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from mtls_middleware import ACCEPTED, HistorySink, LoginRecord, MemoryHistory


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
