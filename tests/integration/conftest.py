"""Real servers for the integration tests: certificates on disk, free ports, started processes.

Every server here is started by a fixture that waits (at most :data:`START_TIMEOUT` seconds) until
its port answers, fails with the server's own log if it does not, and is always stopped again
(terminate, then kill): nothing is left running. Everything listens on loopback only.

Gates: :func:`conftest.require_service` for executables (nginx, curl) and :func:`require_module`
for Python servers (gunicorn, uvicorn): both skip with a reason, or fail the run under
``MTLS_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from mtls_middleware.testing import SERVER_AUTH, Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware
from tests.conftest import REQUIRE_SERVICES, require_service

from . import apps

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The most a server may take to answer on its port.
START_TIMEOUT = 15.0
LOOPBACK = "127.0.0.1"
#: The address nginx connects upstream from (proxy_bind): the only trusted proxy of the apps
#: behind nginx, so that a request from the tests' own address (127.0.0.1) is an untrusted peer.
PROXY_ADDRESS = "127.0.0.2"


def require_module(name: str) -> None:
    """Skip (or, under MTLS_REQUIRE_SERVICES=1, fail) when the module ``name`` is not importable."""
    if importlib.util.find_spec(name) is None:
        message = f"the Python module {name} is not installed (pip install -e '.[dev]')"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def answers_http(port: int, *, tls: bool) -> bool:
    """True once the port answers an HTTP request (over TLS, without a client certificate).

    A bound port is not enough: gunicorn's master listens before its worker has imported the app.
    """
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as raw:
            sock: socket.socket = raw
            if tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # a readiness probe: the tests verify properly
                sock = ctx.wrap_socket(raw, server_hostname=LOOPBACK)
            sock.sendall(b"GET /.ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:  # ssl.SSLError and socket.timeout included
        return False


# -- certificates on disk --------------------------------------------------------------------
@dataclass(frozen=True)
class ClientCert:
    """A client certificate written to disk: ``cert`` holds the leaf and its intermediates."""

    issued: Issued
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return self.issued.fingerprint


@dataclass(frozen=True)
class Materials:
    """The test PKI on disk, the clients the tests present, and the users the apps know."""

    directory: Path
    root: Path
    intermediates: Path
    server_cert: Path
    server_key: Path
    users: Path
    clients: Mapping[str, ClientCert]

    def app_env(self, *, proxy: str = "", trusted: Sequence[str] = ()) -> dict[str, str]:
        """The environment of an app process started from :mod:`tests.integration.apps`."""
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            MTLS_IT_ROOTS=str(self.root),
            MTLS_IT_INTERMEDIATES=str(self.intermediates),
            MTLS_IT_USERS=str(self.users),
            MTLS_IT_PROXY=proxy,
            MTLS_IT_TRUSTED=",".join(trusted),
            MTLS_IT_MODE="required",
        )
        return env


@pytest.fixture(scope="session")
def materials(
    tmp_path_factory: pytest.TempPathFactory,
    pki: TestPKI,
    other_pki: TestPKI,
    alice: Issued,
    bob: Issued,
) -> Materials:
    """Root, intermediates, a server certificate and the client certificates, written to disk.

    ``alice``: registered to active user alice. ``bob``: valid, registered to nobody.
    ``carol``: registered to the deactivated user carol. ``expired``: from our CA, past notAfter.
    ``foreign``: from an unrelated CA. ``wrong_eku``: from our CA, registered to nobody, with
    only the Server Authentication EKU. ``alice_leaf``: alice's certificate without its
    intermediate (what a client that sends only its leaf presents).
    """
    directory = tmp_path_factory.mktemp("integration-pki")
    root = pki.write(directory)
    intermediates = directory / "intermediates.pem"
    intermediates.write_bytes(pki.issuing.cert_pem)
    server_cert, server_key = pki.issue_server("localhost").write(directory, "server")

    now = dt.datetime.now(dt.timezone.utc)
    carol = pki.issue_client("carol")
    expired = pki.issue_client(
        "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    foreign = other_pki.issue_client("mallory")
    wrong_eku = pki.issue_client("server-only", eku=(SERVER_AUTH,))
    issued = {
        "alice": alice, "bob": bob, "carol": carol, "expired": expired, "foreign": foreign,
        "wrong_eku": wrong_eku,
    }  # fmt: skip
    clients = {stem: ClientCert(cert, *cert.write(directory, stem)) for stem, cert in issued.items()}
    leaf_path = directory / "alice_leaf.pem"
    leaf_path.write_bytes(alice.cert_pem)
    clients["alice_leaf"] = ClientCert(alice, leaf_path, clients["alice"].key)

    users = directory / "users.json"
    users.write_text(
        json.dumps(
            [
                {"user_id": "alice", "org": "acme", "certificates": [alice.chain_pem.decode()]},
                {
                    "user_id": "carol",
                    "org": "acme",
                    "active": False,
                    "certificates": [carol.chain_pem.decode()],
                },
            ]
        )
    )
    return Materials(directory, root, intermediates, server_cert, server_key, users, clients)


# -- processes -------------------------------------------------------------------------------
class Server:
    """A server process started in the background, its output in ``log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        tls: bool = False,
    ) -> None:
        self.name = name
        self.tls = tls
        self.argv = list(argv)
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the server answers; fail with its log when it does not in ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(
                    f"{self.name} exited with status {self.process.returncode} before listening "
                    f"on {LOOPBACK}:{self.port}\n$ {' '.join(self.argv)}\n{self.log_text()}",
                    pytrace=False,
                )
            if answers_http(self.port, tls=self.tls) and self.process.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"{self.name} did not answer on {LOOPBACK}:{self.port} within {timeout:.0f} s\n"
            f"$ {' '.join(self.argv)}\n{self.log_text()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """Terminate, then kill after 5 s; always closes the log."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=5)
        finally:
            self._log_file.close()


def start_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    tls: bool = False,
) -> Server:
    """Start ``argv`` and wait until it answers HTTP (HTTPS with ``tls``) on ``port``."""
    server = Server(name, argv, port=port, log=log, env=env, tls=tls)
    try:
        server.wait_until_listening()
    except BaseException:  # a failed wait, or an interrupt: never leave it running
        server.stop()
        raise
    return server


@dataclass(frozen=True)
class Endpoint:
    """Where a started server answers, and how its requests reach the app."""

    name: str
    port: int
    #: The ``source`` an accepted identity carries.
    source: str
    server: Server | None = None

    def url(self, path: str = "/", scheme: str = "https") -> str:
        return f"{scheme}://{LOOPBACK}:{self.port}{path}"


def gunicorn_argv(port: int, *options: str) -> list[str]:
    """gunicorn serving the WSGI factory of :mod:`.apps` on 127.0.0.1:``port``."""
    require_module("gunicorn")
    from gunicorn.config import KNOWN_SETTINGS

    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{LOOPBACK}:{port}",
        "--workers", "1",
        "--graceful-timeout", "2",
        *options,
    ]  # fmt: skip
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        # gunicorn 24+ otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
        argv.append("--no-control-socket")
    # The factory syntax: gunicorn calls wsgi_app() and serves what it returns.
    argv.append("tests.integration.apps:wsgi_app()")
    return argv


# -- servers with their own TLS: werkzeug's dev server and gunicorn -------------------------
def _server_tls_context(materials: Materials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(materials.server_cert, materials.server_key)
    # CERT_OPTIONAL: a certificate is asked for, not required; one that is presented is verified
    # by the stdlib (OpenSSL) against the loaded root during the handshake.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=materials.root)
    return ctx


@pytest.fixture(scope="module")
def werkzeug_tls(materials: Materials) -> Iterator[Endpoint]:
    """werkzeug's dev server with TLS (it sets ``SSL_CLIENT_CERT``), middleware with proxy=None."""
    app = MTLSMiddleware(apps.echo_wsgi, apps.config_from_env(materials.app_env()))
    server = make_server(LOOPBACK, 0, app, threaded=True, ssl_context=_server_tls_context(materials))
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-tls", daemon=True)
    thread.start()
    try:
        yield Endpoint("werkzeug", server.server_address[1], "tls:environ")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def gunicorn_tls(materials: Materials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """gunicorn with its own TLS; the middleware reads the peer certificate of gunicorn.socket."""
    port = free_port()
    argv = gunicorn_argv(
        port,
        "--certfile", str(materials.server_cert),
        "--keyfile", str(materials.server_key),
        "--ca-certs", str(materials.root),
        "--cert-reqs", str(int(ssl.CERT_OPTIONAL)),
    )  # fmt: skip
    log = tmp_path_factory.mktemp("gunicorn-tls") / "gunicorn.log"
    server = start_server("gunicorn (TLS)", argv, port=port, log=log, env=materials.app_env(), tls=True)
    try:
        yield Endpoint("gunicorn", port, "tls:socket", server)
    finally:
        server.stop()


# -- nginx in front of a plain-HTTP app ------------------------------------------------------
NGINX_CONF = """\
worker_processes 1;
{user}
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    server {{
        listen {listen}:{port} ssl;
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        # optional_no_ca: the handshake succeeds whatever the certificate's issuer, and
        # $ssl_client_verify tells the app what nginx made of it; the middleware decides.
        ssl_verify_client optional_no_ca;
        ssl_client_certificate {root};

        location / {{
            proxy_pass http://{upstream}:{upstream_port};
            # Connect upstream from another loopback address: the apps trust only that one.
            proxy_bind {proxy_address};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
            proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
            # For the tests: what nginx made of the client certificate, on every answer.
            add_header X-Test-Nginx-Client-Verify $ssl_client_verify always;
        }}
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
}}
"""


@dataclass(frozen=True)
class NginxFront:
    """nginx (TLS, client certificates) in front of an app server on plain HTTP."""

    nginx: Endpoint
    app: Endpoint
    error_log: Path

    def error_log_text(self) -> str:
        return self.error_log.read_text(errors="replace")


def start_nginx(materials: Materials, *, upstream_port: int, prefix: Path) -> tuple[Server, Path]:
    nginx = require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # As root the workers would run as "nobody", who cannot enter pytest's 0700 tmp dirs.
            user="user root;" if os.geteuid() == 0 else "",
            prefix=prefix,
            listen=LOOPBACK,
            port=port,
            server_cert=materials.server_cert,
            server_key=materials.server_key,
            root=materials.root,
            upstream=LOOPBACK,
            upstream_port=upstream_port,
            proxy_address=PROXY_ADDRESS,
        )
    )
    argv = [
        nginx,
        "-p", str(prefix),
        "-c", str(conf),
        "-e", str(prefix / "error.log"),
        "-g", f"daemon off; pid {prefix / 'nginx.pid'};",
    ]  # fmt: skip
    server = start_server("nginx", argv, port=port, log=prefix / "nginx.out", tls=True)
    return server, prefix / "error.log"


def _app_argv(kind: str, port: int) -> tuple[list[str], str]:
    if kind == "gunicorn":
        return gunicorn_argv(port), "gunicorn (WSGI)"
    require_module("uvicorn")
    argv = [
        sys.executable, "-m", "uvicorn", "tests.integration.apps:asgi_app", "--factory",
        "--host", LOOPBACK,
        "--port", str(port),
        # uvicorn would otherwise take X-Forwarded-For from 127.0.0.1 (the tests' own address)
        # as the client address, and the trusted-proxy gate would judge a forged address.
        "--no-proxy-headers",
        "--log-level", "info",
    ]  # fmt: skip
    return argv, "uvicorn (ASGI)"


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def nginx_front(
    request: pytest.FixtureRequest,
    materials: Materials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NginxFront]:
    """nginx on loopback in front of the middleware under gunicorn (WSGI) or uvicorn (ASGI).

    The app trusts only :data:`PROXY_ADDRESS`, the address nginx connects from.
    """
    kind: str = request.param
    require_service("curl")
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    prefix = tmp_path_factory.mktemp(f"nginx-{kind}")
    app_port = free_port()
    argv, name = _app_argv(kind, app_port)
    env = materials.app_env(proxy="nginx", trusted=[PROXY_ADDRESS])
    app = start_server(name, argv, port=app_port, log=prefix / f"{kind}.log", env=env)
    try:
        nginx, error_log = start_nginx(materials, upstream_port=app_port, prefix=prefix)
        try:
            yield NginxFront(
                Endpoint("nginx", nginx.port, "proxy:nginx", nginx),
                Endpoint(kind, app_port, "proxy:nginx", app),
                error_log,
            )
        finally:
            nginx.stop()
    finally:
        app.stop()
