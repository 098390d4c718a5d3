"""A real ``openssl ocsp`` responder for tests, reachable on 127.0.0.1 only.

OpenSSL 3.0's responder binds ``-port N`` on every interface (``[::]:N``) and accepts no host
part, so it runs inside a network namespace of its own (``unshare --net``; without root,
``unshare --user --map-root-user --net``) whose only interface is its loopback. The test process
cannot reach into that namespace, so the socket the tests connect to is made here, on
127.0.0.1 port 0 in *our* namespace, and handed (as an inherited file descriptor) to a small
relay that runs next to openssl inside the namespace: the relay accepts on it and pipes each
connection to openssl's port on the namespace's loopback. Nothing ever listens on an outside
interface, and nothing needs root where unprivileged user namespaces are allowed.

The relay is this file run as a script (``python openssl_ocsp.py relay ...``); it records the
request line of every connection it forwards (so tests can see GET vs POST), and exits, stopping
openssl, when its stdin closes (the test process went away) or on SIGTERM.

Usage::

    entries = [IndexEntry.for_certificate(good.cert), IndexEntry.for_certificate(bad.cert,
               revoked_at=when, reason="keyCompromise")]
    with OpenSSLOCSPResponder(ca=pki.issuing, signer=delegate, entries=entries,
                              directory=tmp_path) as responder:
        responder.url  # http://127.0.0.1:PORT/
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the relay runs this file as a script: no imports beyond the stdlib at run time
    from cryptography import x509

    from mtls_middleware.testing import Issued

__all__ = [
    "IndexEntry",
    "NamespaceUnavailable",
    "OpenSSLOCSPResponder",
    "namespace_command",
    "write_index",
]

#: openssl's port inside its private namespace: nothing else lives there, so a fixed one is safe.
_INNER_PORT = 8080
_READY = "READY"


class NamespaceUnavailable(RuntimeError):
    """No network namespace can be made here (no ``unshare``, or namespaces are not permitted)."""


@dataclass(frozen=True)
class IndexEntry:
    """One line of openssl's ``index.txt``: a certificate the CA issued, perhaps revoked."""

    serial: int
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    #: A CRL reason name as openssl spells it in index.txt, e.g. ``keyCompromise``.
    reason: str | None = None

    @classmethod
    def for_certificate(
        cls, cert: x509.Certificate, *, revoked_at: dt.datetime | None = None, reason: str | None = None
    ) -> IndexEntry:
        """The entry of an ``x509.Certificate`` (valid, or revoked at ``revoked_at``)."""
        return cls(
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc,
            revoked_at=revoked_at,
            reason=reason,
        )

    def line(self) -> str:
        # openssl looks serials up as BN_bn2hex prints them: upper case, whole bytes.
        serial = f"{self.serial:X}"
        if len(serial) % 2:
            serial = "0" + serial
        revocation = ""
        if self.revoked_at is not None:
            revocation = _utctime(self.revoked_at) + (f",{self.reason}" if self.reason else "")
        state = "R" if self.revoked_at is not None else "V"
        # Subjects of valid rows must be unique (openssl's default unique_subject).
        return "\t".join(
            (state, _utctime(self.not_after), revocation, serial, "unknown", f"/CN=serial {serial}")
        )


def _utctime(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%y%m%d%H%M%SZ")


def write_index(path: Path, entries: Iterable[IndexEntry]) -> None:
    """Write an openssl CA database (``index.txt``) with ``entries``."""
    path.write_text("".join(entry.line() + "\n" for entry in entries))


def namespace_command(unshare: str = "unshare") -> list[str]:
    """The ``unshare`` prefix that gives a new network namespace here, probed once.

    Root (or CAP_SYS_ADMIN) can use ``--net`` alone; anyone else needs a user namespace too.

    Raises:
        NamespaceUnavailable: neither works on this machine.
    """
    candidates = [[unshare, "--user", "--map-root-user", "--net"]]
    if os.geteuid() == 0:
        candidates.insert(0, [unshare, "--net"])
    errors = []
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        except OSError as exc:
            raise NamespaceUnavailable(f"cannot run {unshare}: {exc}") from None
        if probe.returncode == 0:
            return prefix
        errors.append(f"{' '.join(prefix)}: {probe.stderr.decode(errors='replace').strip()}")
    raise NamespaceUnavailable("no network namespace can be created: " + "; ".join(errors))


class OpenSSLOCSPResponder:
    """``openssl ocsp -index ... -CA ... -rsigner ... -rkey ... -port N -nmin M`` on 127.0.0.1.

    ``signer`` is the responder certificate and key (``-rsigner``/``-rkey``); None signs with
    the CA itself. ``entries`` fill index.txt: serials absent from it are answered ``unknown``.
    Files (index, certificates, keys, logs) go to ``directory``.

    Raises (from :meth:`start`):
        NamespaceUnavailable: no network namespace can be made here.
        RuntimeError: openssl did not come up and answer within ``start_timeout`` seconds.
    """

    def __init__(
        self,
        *,
        ca: Issued,
        signer: Issued | None = None,
        entries: Iterable[IndexEntry] = (),
        directory: Path,
        nmin: int = 5,
        openssl: str = "openssl",
        unshare: str = "unshare",
        start_timeout: float = 15.0,
    ) -> None:
        self.ca = ca
        self.signer = signer if signer is not None else ca
        self.entries = tuple(entries)
        self.directory = directory
        self.nmin = nmin
        self.openssl = openssl
        self.unshare = unshare
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self.port = 0
        #: openssl's process id (in our PID namespace), known once started.
        self.openssl_pid = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.directory / "requests.log"

    def request_lines(self) -> list[str]:
        """The HTTP request line of every connection forwarded since start, oldest first."""
        try:
            return [line for line in self.log_path.read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def start(self) -> OpenSSLOCSPResponder:
        prefix = namespace_command(self.unshare)
        self.directory.mkdir(parents=True, exist_ok=True)
        index = self.directory / "index.txt"
        write_index(index, self.entries)
        ca_pem = self.directory / "ca.pem"
        ca_pem.write_bytes(self.ca.cert_pem)
        signer_pem = self.directory / "rsigner.pem"
        signer_pem.write_bytes(self.signer.cert_pem)
        signer_key = self.directory / "rsigner.key"
        signer_key.write_bytes(self.signer.key_pem)
        signer_key.chmod(0o600)
        # index.txt.attr absent means unique_subject=yes; say so to keep openssl quiet.
        (self.directory / "index.txt.attr").write_text("unique_subject = no\n")

        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        fd = self._listener.fileno()
        openssl_args = [
            self.openssl,
            "ocsp",
            "-index",
            str(index),
            "-CA",
            str(ca_pem),
            "-rsigner",
            str(signer_pem),
            "-rkey",
            str(signer_key),
            "-port",
            str(_INNER_PORT),
            "-nmin",
            str(self.nmin),
            # Without it one malformed request ends the responder (and an empty connection wedges it).
            "-ignore_err",
        ]
        command = [
            *prefix,
            sys.executable,
            str(Path(__file__).resolve()),
            "relay",
            "--listen-fd",
            str(fd),
            "--log",
            str(self.log_path),
            "--openssl-log",
            str(self.directory / "openssl.log"),
            "--",
            *openssl_args,
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.directory / "relay.log", "wb"),  # noqa: SIM115  # the child owns it
            pass_fds=(fd,),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        ready, _, _ = select.select([self._process.stdout], [], [], self.start_timeout)
        line = self._process.stdout.readline().decode().split() if ready else []
        if len(line) != 2 or line[0] != _READY:
            raise RuntimeError(f"openssl ocsp did not start: {self._diagnostics()}")
        self.openssl_pid = int(line[1])
        # Ready means listening; wait until it also *answers* an OCSP request through the relay.
        while True:
            if self._probe():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"openssl ocsp does not answer: {self._diagnostics()}")
            time.sleep(0.05)
        self.log_path.write_text("")

    def _probe(self) -> bool:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509 import ocsp

        # Any well-formed request will do: the CA's own certificate, answered "unknown".
        cert = self.ca.cert
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, cert, hashes.SHA256()).build()
        body = request.public_bytes(serialization.Encoding.DER)

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/ocsp-request"})
            response = conn.getresponse()
            data = response.read()
            return response.status == 200 and len(data) > 0
        except OSError:
            return False
        finally:
            conn.close()

    def _diagnostics(self) -> str:
        parts = []
        for log in ("relay.log", "openssl.log"):
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"{log}: {(self.directory / log).read_text(errors='replace').strip()[-2000:]}")
        return "; ".join(parts) or "no output"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()  # the relay's cue to stop openssl and exit
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> OpenSSLOCSPResponder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- the relay, run inside the namespace -------------------------------------------------------


def _loopback_up() -> None:
    """Bring ``lo`` up: a fresh network namespace starts with it down."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _forward(client: socket.socket, log: Path, lock: threading.Lock) -> None:
    with client:
        try:
            upstream = socket.create_connection(("127.0.0.1", _INNER_PORT), timeout=10)
        except OSError:
            return
        with upstream:
            first = b""
            client.settimeout(10)
            try:
                # Read the request line (for the log) before piping the rest.
                while b"\r\n" not in first and len(first) < 8192:
                    chunk = client.recv(4096)
                    if not chunk:
                        break
                    first += chunk
            except OSError:
                return
            line = first.split(b"\r\n", 1)[0].decode("latin-1")
            with lock, log.open("a") as handle:
                handle.write(line + "\n")
            upstream.sendall(first)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(timeout=15)


def _relay(argv: Sequence[str]) -> int:
    args = list(argv)
    split = args.index("--")
    options = dict(zip(args[:split:2], args[1:split:2], strict=True))
    openssl_args = args[split + 1 :]
    listen_fd = int(options["--listen-fd"])
    log = Path(options["--log"])

    _loopback_up()
    with open(options["--openssl-log"], "wb") as openssl_log:
        openssl = subprocess.Popen(
            openssl_args, stdin=subprocess.DEVNULL, stdout=openssl_log, stderr=openssl_log
        )

    def stop(*_: object) -> None:
        openssl.terminate()
        try:
            openssl.wait(timeout=5)
        except subprocess.TimeoutExpired:
            openssl.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    # The test process closes our stdin when it is done with us (or dies).
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop()), daemon=True).start()

    # openssl prints "ACCEPT [::]:PORT" once it listens. (Probing the port instead would not do:
    # a connection closed without a request makes openssl 3.0's responder exit.)
    openssl_log_path = Path(options["--openssl-log"])
    deadline = time.monotonic() + 10
    while "ACCEPT" not in openssl_log_path.read_text(errors="replace"):
        if openssl.poll() is not None:
            sys.stderr.write(f"openssl exited with status {openssl.returncode}\n")
            return 1
        if time.monotonic() > deadline:
            sys.stderr.write("openssl does not listen\n")
            stop()
        time.sleep(0.02)
    sys.stdout.write(f"{_READY} {openssl.pid}\n")
    sys.stdout.flush()

    listener = socket.socket(fileno=listen_fd)
    lock = threading.Lock()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_forward, args=(client, log, lock), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "relay":
        sys.exit(_relay(sys.argv[2:]))
    sys.exit("usage: openssl_ocsp.py relay --listen-fd FD --log FILE --openssl-log FILE -- openssl ocsp ...")
