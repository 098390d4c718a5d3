"""The two real clients of the integration tests: curl (a subprocess) and Python's ssl/http.client."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import require_service

#: A request that takes longer than this has hung: fail, do not wait for pytest's own limits.
TIMEOUT = 10


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"not JSON (status {self.status}): {self.body[:300]!r}") from None

    @property
    def error(self) -> str:
        """The reason code of a refusal (the JSON ``error`` field)."""
        body = self.json()
        assert isinstance(body, dict), body
        assert set(body) == {"error", "message"}, body
        return str(body["error"])


class HandshakeRefused(Exception):
    """The server's TLS layer ended the connection before any HTTP answer."""


def curl(
    url: str,
    *,
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    headers: Mapping[str, str] | None = None,
    interface: str | None = None,
    resolve: str | None = None,
    unix_socket: Path | None = None,
) -> Response:
    """GET ``url`` with curl; raises :class:`HandshakeRefused` when no HTTP answer came.

    ``resolve`` (``HOST:PORT:ADDRESS``) makes curl connect to ADDRESS for a URL naming HOST, so
    that it sends HOST as SNI; ``unix_socket`` sends the request over that socket instead of TCP.
    """
    argv = [
        require_service("curl"),
        "--silent", "--show-error", "--include",
        "--max-time", str(TIMEOUT),
        "--noproxy", "*",
    ]  # fmt: skip
    if cacert is not None:
        argv += ["--cacert", str(cacert)]
    if cert is not None:
        argv += ["--cert", str(cert)]
    if key is not None:
        argv += ["--key", str(key)]
    if interface is not None:
        argv += ["--interface", interface]
    if resolve is not None:
        argv += ["--resolve", resolve]
    if unix_socket is not None:
        argv += ["--unix-socket", str(unix_socket)]
    for name, value in (headers or {}).items():
        argv += ["--header", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT + 5, check=False)
    if done.returncode != 0:
        raise HandshakeRefused(f"curl exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    return _parse_http(done.stdout)


def _parse_http(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


def python_https(
    host: str,
    port: int,
    path: str = "/",
    *,
    cacert: Path,
    cert: Path | None = None,
    key: Path | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    """GET over TLS with http.client and a client SSLContext.

    Raises :class:`HandshakeRefused` when the server's TLS layer refused the certificate (with
    TLS 1.3 the client learns of it only when it reads the answer).
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cacert))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        body = answer.read()
    except (ssl.SSLError, ConnectionError) as exc:  # RemoteDisconnected is a ConnectionError
        raise HandshakeRefused(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, body)
