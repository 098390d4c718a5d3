"""HTTP for revocation data: timeouts, size caps, a deadline, and one fetch per key in flight.

OCSP responders and CRL distribution points are plain HTTP by convention (the data is signed);
``https`` is accepted too. Every fetch is bounded three ways: a connect/read timeout, a cap on
the body size, and the caller's deadline, which also bounds a server that drips bytes slowly.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from .base import SourceFailure

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["FetchError", "FetchKind", "Fetcher", "SingleFlight"]

T = TypeVar("T")

_USER_AGENT = "mtls_middleware-revocation/1"
_CHUNK = 64 * 1024


FetchKind = Literal["unreachable", "timeout", "http", "too-large"]


class FetchError(SourceFailure):
    """An HTTP fetch failed: refused, timed out, not 200, too large, or past the deadline.

    ``kind`` says which, for callers that classify failures: ``"unreachable"`` (bad URL, refused,
    reset), ``"timeout"`` (the timeout or the deadline), ``"http"`` (a status other than 200),
    ``"too-large"`` (over the size cap).
    """

    def __init__(self, source: str, detail: str, *, kind: FetchKind = "unreachable") -> None:
        super().__init__(source, detail)
        self.kind: FetchKind = kind


class Fetcher:
    """Blocking HTTP GET and POST with a per-operation timeout and an overall deadline.

    Thread-safe (one connection per fetch). Never call it on an asyncio event-loop thread.

    Args:
        timeout: seconds allowed for connecting, and for each read.
    """

    def __init__(self, *, timeout: float = 3.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout

    def get(self, url: str, *, max_bytes: int, deadline: float, accept: str | None = None) -> bytes:
        """The body of ``GET url``.

        Raises:
            FetchError: see the class.
        """
        headers = {"Accept": accept} if accept else {}
        return self._fetch("GET", url, None, headers, max_bytes, deadline)

    def post(
        self, url: str, body: bytes, *, content_type: str, max_bytes: int, deadline: float
    ) -> bytes:
        """The body of ``POST url`` with ``body``.

        Raises:
            FetchError: see the class.
        """
        headers = {"Content-Type": content_type}
        return self._fetch("POST", url, body, headers, max_bytes, deadline)

    def _fetch(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        max_bytes: int,
        deadline: float,
    ) -> bytes:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(url, "only http:// and https:// URLs can be fetched")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(
                url, "the time allowed for revocation checking ran out before the fetch", kind="timeout"
            )
        timeout = min(self.timeout, remaining)
        conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            port = parts.port
        except ValueError:
            raise FetchError(url, "the URL has an invalid port") from None
        conn = conn_type(parts.hostname, port, timeout=timeout)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        response: http.client.HTTPResponse | None = None
        try:
            conn.request(
                method,
                target,
                body=body,
                headers={"User-Agent": _USER_AGENT, "Connection": "close", **headers},
            )
            # http.client reads the status line and headers itself, one short read at a time:
            # only a socket that checks the deadline on every read stops a server dripping them.
            conn.sock = _DeadlineSocket(conn.sock, deadline, self.timeout, url)
            response = conn.getresponse()
            if response.status != 200:
                raise FetchError(url, f"HTTP {response.status} {response.reason}", kind="http")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(
                    url, f"response of {length} bytes; the limit is {max_bytes}", kind="too-large"
                )
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(url, f"response over the limit of {max_bytes} bytes", kind="too-large")
                chunks.append(chunk)
            return b"".join(chunks)
        except FetchError:
            raise
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise FetchError(
                    url, "the response did not arrive within the time allowed", kind="timeout"
                ) from None
            raise FetchError(url, f"timed out after {timeout:.1f} s", kind="timeout") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from None
        finally:
            if response is not None:
                response.close()
            conn.close()


class _DeadlineSocket:
    """A connected socket whose reads each wait at most ``timeout`` and never past ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float, url: str) -> None:
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout
        self._url = url

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        # The socket's own raw file underneath keeps the descriptor open until the response is
        # closed, as http.client expects when it closes the connection after the headers.
        return io.BufferedReader(_DeadlineReader(self, self._sock.makefile("rb", buffering=0)))

    def before_read(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(self._url, "the response did not arrive within the time allowed", kind="timeout")
        self._sock.settimeout(min(self._timeout, remaining))

    def __getattr__(self, name: str) -> object:  # sendall, close, ... as the socket has them
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket, raw: io.RawIOBase) -> None:
        super().__init__()
        self._sock = sock
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.before_read()
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Call(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """At most one call per key in flight; concurrent callers for the same key share its outcome.

    Fifty requests that need the same OCSP response at once cause one fetch: the first runs
    ``fn``, the others wait for it and get the same result or the same exception.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[T]] = {}

    def do(self, key: Hashable, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """``fn()``, or the outcome of the call for ``key`` already in flight.

        Raises:
            Exception: whatever ``fn`` raised (to every caller that waited on it); a
                BaseException that is not an Exception reaches the leader only.
            FetchError: a waiter gave up after ``timeout`` seconds, or the leader was interrupted.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if leader:
            try:
                call.result = fn()
            except BaseException as exc:
                call.error = exc
                raise
            finally:
                with self._lock:
                    self._calls.pop(key, None)
                call.done.set()
            return call.result
        if not call.done.wait(timeout):
            raise FetchError(str(key), "gave up waiting for a fetch already in flight", kind="timeout")
        if isinstance(call.error, Exception):
            raise call.error
        if call.error is not None:
            # KeyboardInterrupt, SystemExit ... belong to the leader's thread; in a waiter (another
            # request) it is only a fetch that did not finish.
            raise FetchError(str(key), f"the fetch in flight was interrupted ({type(call.error).__name__})")
        return call.result  # type: ignore[return-value]  # set when error is None

    def in_flight(self) -> int:
        """How many keys have a call running (for tests and metrics)."""
        with self._lock:
            return len(self._calls)
