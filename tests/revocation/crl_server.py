"""A loopback HTTP server that serves given bytes per path, for CRL (and other) fetch tests.

Each route can answer late (``delay``), with another HTTP status, after a gate opens, or with a
``Content-Length`` that lies; the server counts the requests per path. Binds 127.0.0.1, port 0.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["CRLServer", "Route", "closed_port_url"]


@dataclass
class Route:
    """What one path answers."""

    body: bytes = b""
    status: int = 200
    delay: float = 0.0
    content_type: str = "application/pkix-crl"
    gate: threading.Event | None = None


class CRLServer:
    """``with CRLServer() as server: server.set("/ca.crl", der); url = server.url("/ca.crl")``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with outer._lock:
                    outer.requests[path] += 1
                    route = outer.routes.get(path)
                if route is None:
                    self._answer(404, b"not found", "text/plain")
                    return
                if route.gate is not None:
                    route.gate.wait(30)
                if route.delay:
                    outer._stop.wait(route.delay)
                self._answer(route.status, route.body, route.content_type)

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="crl-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, path: str, body: bytes, **options: Any) -> str:
        """Serve ``body`` at ``path`` (options: see :class:`Route`); return its URL."""
        with self._lock:
            self.routes[path] = Route(body, **options)
        return self.url(path)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def close(self) -> None:
        self._stop.set()
        for route in self.routes.values():
            if route.gate is not None:
                route.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> CRLServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port_url(path: str = "/ca.crl") -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
