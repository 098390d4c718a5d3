"""Record stage: one login-history record per authentication attempt.

A sink must never block a request beyond an append or a queue put; persistent sinks (SQLite,
PostgreSQL) buffer and write from a thread of their own.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["ACCEPTED", "HistorySink", "LoginRecord", "MemoryHistory"]

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
        self, *, user_id: str | None = None, failed_only: bool = False, limit: int = 100
    ) -> list[LoginRecord]:
        """The newest records first, filtered by user and outcome."""
        with self._lock:
            snapshot = list(self._records)
        out: list[LoginRecord] = []
        for rec in reversed(snapshot):
            if user_id is not None and rec.user_id != user_id:
                continue
            if failed_only and rec.accepted:
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
