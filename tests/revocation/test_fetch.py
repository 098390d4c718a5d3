"""revocation/fetch.py: the deadline over a whole fetch, and SingleFlight's sharing of outcomes."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from mtls_middleware.revocation.fetch import Fetcher, FetchError, SingleFlight

#: How long the dripping server keeps going before it completes a valid answer: far past the deadline.
DRIP_SECONDS = 4.0
DEADLINE = 0.6


@dataclass
class Drip:
    url: str
    hung_up: threading.Event  # set when the client closed before the whole response was sent


@pytest.fixture(params=["status-line", "headers", "body"])
def drip(request: pytest.FixtureRequest) -> Iterator[Drip]:
    """A server that drips the part of the response named by the parameter over DRIP_SECONDS,
    one byte at a time (each read well within the timeout), then completes a valid 200 response."""
    body = b"x" * 64
    status = b"HTTP/1.1 200 OK\r\n"
    head = status + b"Content-Length: %d\r\nX-Pad: " % len(body)
    # (sent at once, dripped, sent at once when the drip is over)
    prefix, dripped, rest = {
        "status-line": (b"", status, head[len(status) :] + b"a\r\n\r\n" + body),
        "headers": (head, b"a" * 80, b"\r\n\r\n" + body),
        "body": (head + b"a\r\n\r\n", body, b""),
    }[request.param]
    listener = socket.create_server(("127.0.0.1", 0))
    stop, hung_up = threading.Event(), threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(prefix)
            started = time.monotonic()
            for i in range(len(dripped)):
                if stop.is_set():
                    return
                try:
                    conn.sendall(dripped[i : i + 1])
                except OSError:
                    hung_up.set()  # the client gave up, as it should
                    return
                # Spread the drip over DRIP_SECONDS whatever the length.
                stop.wait(max(0.0, started + DRIP_SECONDS * (i + 1) / len(dripped) - time.monotonic()))
            with contextlib.suppress(OSError):
                conn.sendall(rest)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Drip(f"http://127.0.0.1:{listener.getsockname()[1]}/ca.crl", hung_up)
    finally:
        stop.set()
        listener.close()
        thread.join(DRIP_SECONDS + 1)


def test_the_deadline_bounds_a_response_dripped_byte_by_byte(drip: Drip) -> None:
    with pytest.raises(FetchError, match="time allowed"):
        Fetcher(timeout=1.0).get(drip.url, max_bytes=1 << 20, deadline=time.monotonic() + DEADLINE)
    # The fetch ended at its deadline, not when the server finished dripping.
    assert drip.hung_up.wait(DRIP_SECONDS + 1)


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt/SystemExit arriving in the leader's thread."""


@pytest.mark.parametrize(
    ("raised", "waiter_gets"),
    [
        pytest.param(FetchError("http://ca.example/ca.crl", "HTTP 500"), "the same", id="exception-shared"),
        pytest.param(Interrupted(), "FetchError", id="base-exception-not-shared"),
    ],
)
def test_single_flight_gives_waiters_the_leaders_failure(raised: BaseException, waiter_gets: str) -> None:
    flight: SingleFlight[int] = SingleFlight()
    entered, release = threading.Event(), threading.Event()
    outcomes: dict[str, BaseException] = {}

    def leader_fn() -> int:
        entered.set()
        release.wait(5)
        raise raised

    def waiter_fn() -> int:
        raise AssertionError("the waiter ran the call itself: it arrived after the leader finished")

    def run(role: str, fn: Callable[[], int]) -> None:
        try:
            flight.do("key", fn, timeout=5)
        except BaseException as exc:  # the test inspects what each caller got
            outcomes[role] = exc

    leader = threading.Thread(target=run, args=("leader", leader_fn))
    leader.start()
    assert entered.wait(5)
    waiter = threading.Thread(target=run, args=("waiter", waiter_fn))
    waiter.start()
    waiter.join(0.3)  # let it reach the wait; if it were late, waiter_fn says so
    release.set()
    leader.join(5)
    waiter.join(5)
    assert outcomes["leader"] is raised
    if waiter_gets == "the same":
        assert outcomes["waiter"] is raised
    else:
        assert type(outcomes["waiter"]) is FetchError
    assert flight.in_flight() == 0
