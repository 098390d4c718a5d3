"""What the SQLite and PostgreSQL store tests share: scripts run in other processes (the race of two
uploaders among them), history records, and the middleware in front of a store."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.test import Client

from mtls_middleware import MTLSConfig
from mtls_middleware.history import LoginRecord
from mtls_middleware.stores.base import Store
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware
from tests.integration.conftest import free_port

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

REPO = Path(__file__).resolve().parents[2]


def run_python(script: str, *args: str) -> subprocess.Popen[str]:
    """``python -c script args`` in the repository, its standard streams piped (text)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    """The output of ``proc`` once it has exited; its standard error when it failed."""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def history_record(index: int, user: str = "alice") -> LoginRecord:
    return LoginRecord("accepted", "tls:environ", user_id=user, time=1000.0 + index, peer="192.0.2.1")



def use_in_a_forked_child(store: Store, pem: bytes) -> int:
    """Fork; the child records five login attempts of user ``child``, uploads ``pem`` for user
    ``alice`` and closes ``store``, all through the connections it inherited. The child's exit
    code (0: every step worked)."""
    pid = os.fork()
    if pid == 0:  # the child must not touch the parent's connections or threads
        code = 1
        try:
            for index in range(1, 6):
                store.record(history_record(index, "child"))
            store.upload_certificate(pem, user_id="alice")
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

# Each round: the certificate read, then a busy wait for the round's go-file, which the parent
# creates once for both racers, so that their uploads start as close together as can be.
RACER = """
    import os, sys, time
    from mtls_middleware.errors import MTLSError
    from mtls_middleware.stores import open_store
    url, directory, rounds, user = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = open_store(url)
    print("ready", flush=True)
    for index in range(rounds):
        pem = open(os.path.join(directory, f"cert-{index}.pem"), "rb").read()
        go = os.path.join(directory, f"go-{index}")
        while not os.path.exists(go):
            time.sleep(0.0002)
        try:
            store.upload_certificate(pem, user_id=user)
            print(index, "ok", flush=True)
        except MTLSError as exc:
            print(index, exc.reason.value, flush=True)
    store.close()
"""


def race_to_upload(url: str, directory: Path, pki: TestPKI, rounds: int) -> list[list[str]]:
    """Two processes, for users ``p0`` and ``p1`` (of two organisations, which the caller made),
    upload the same new certificate at once, ``rounds`` times: each round's two outcomes, sorted
    (``ok`` or a reason code)."""
    for index in range(rounds):
        (directory / f"cert-{index}.pem").write_bytes(pki.issue_client(f"raced{index}").chain_pem)
    racers = [run_python(RACER, url, str(directory), str(rounds), f"p{n}") for n in range(2)]
    outcomes: list[list[str]] = []
    try:
        for proc in racers:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for index in range(rounds):
            (directory / f"go-{index}").touch()
            lines = [proc.stdout.readline().split() for proc in racers if proc.stdout is not None]
            assert [line[0] for line in lines] == [str(index)] * 2
            outcomes.append(sorted(line[1] for line in lines))
    finally:
        for proc in racers:
            finish(proc)
    return outcomes


# -- the middleware in front of a store ----------------------------------------------------------


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def tls_environ(leaf: Issued, pki: TestPKI) -> dict[str, str]:
    """The WSGI environ of a TLS server that verified ``leaf`` (with its issuing CA)."""
    return {
        "SSL_CLIENT_CERT": leaf.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "SSL_CLIENT_CERT_CHAIN_0": pki.issuing.cert.public_bytes(serialization.Encoding.PEM).decode(),
        "REMOTE_ADDR": "127.0.0.1",
    }


def wsgi_client(store: Store, pki: TestPKI) -> Client:
    """A test client of :func:`ok_app` behind the middleware: ``store``, revocation off."""
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    return Client(MTLSMiddleware(ok_app, config))


def changes_refusing_alice(*, delete: str, deactivate: str, org_off: str) -> list[ParameterSet]:
    """(change, reason): the store changes made elsewhere that must refuse alice's next request
    (her certificate deleted, she deactivated, her organisation's certificate login switched
    off), each given as the test spells it, with the reason code it must bring."""
    return [
        pytest.param(delete, "unknown_certificate", id="certificate-deleted"),
        pytest.param(deactivate, "user_inactive", id="user-deactivated"),
        pytest.param(org_off, "certificate_auth_disabled", id="org-switched-off"),
    ]


# -- a TCP relay to a server, to cut or freeze -----------------------------------------------------


class Relay:
    """A TCP relay from a local port to the PostgreSQL server; ``cut`` closes it (listener and
    every relayed connection), ``restore`` listens again on the same port; while ``frozen`` it
    keeps every connection open and swallows what it reads (a server that hangs: TCP itself
    stays healthy, so only a deadline of the client's own can tell)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.frozen = False
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(32)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sockets, self._sockets = self._sockets, []
        for sock in [server, *sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._server is not server:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen:
                    sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ObservedStore:
    """A real store with its pipeline lookups counted and, while ``broken``, failing as a database
    that went away: instrumentation, and the one fault a MemoryStore cannot produce. Everything
    else goes to the store itself."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.lookups = 0
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def generation(self) -> int:
        return self.inner.generation

    def _lookup(self) -> None:
        if self.broken:
            raise OSError("the database is gone")
        self.lookups += 1

    def resolve_certificate(self, fingerprint: str) -> Any:
        self._lookup()
        return self.inner.resolve_certificate(fingerprint)

    def resolve_user(self, user_id: str) -> Any:
        self._lookup()
        return self.inner.resolve_user(user_id)
