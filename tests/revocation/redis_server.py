"""A throw-away redis-server for tests: its own port on 127.0.0.1, no persistence, stoppable and
restartable on the same port (to test an outage). Never the system Redis on 6379."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_service

__all__ = ["RedisServer", "SlowRelay", "silent_port"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server --port P --save "" --appendonly no`` in ``directory``; see :meth:`start`."""

    def __init__(self, directory: Path, *, executable: str | None = None) -> None:
        self.executable = executable or require_service("redis-server", "redis-server is not installed")
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again, on the same port) and wait until it answers PING."""
        log = (self.directory / "redis.log").open("ab")
        argv = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {(self.directory / 'redis.log').read_text()}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        pytest.fail("redis-server did not answer PING within 10 s", pytrace=False)

    def stop(self) -> None:
        """Kill it (an outage, not a shutdown); the port then refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def client(self) -> object:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def silent_port() -> tuple[socket.socket, str]:
    """A listening socket that accepts connections and never answers (a hung Redis), and its URL.

    Close the socket when done.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


class SlowRelay:
    """A TCP relay on 127.0.0.1 in front of a Redis, holding every reply chunk ``delay`` seconds (a
    slow or distant Redis, which a real server on loopback cannot be). Use as a context manager."""

    def __init__(self, port: int, delay: float) -> None:
        self.target = port
        self.delay = delay
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._listener.getsockname()[1]}/0"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk or self._closed.wait(delay):
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                sock.close()

    def __enter__(self) -> SlowRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self._listener.close()
        for sock in self._sockets:
            sock.close()
