"""examples/flask_app, run as its README says: make_demo.py, then run.sh (nginx + gunicorn).

A copy of the example goes to a temporary directory; only the ports of its nginx.conf are changed
(and ``user root;`` added when the tests run as root, see conftest.start_nginx). Real ``curl
--cert`` requests then go through nginx's TLS to the Flask app, whose store is the SQLite database
make_demo.py wrote and whose revocation check reads the demo CRLs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_service

from .clients import Response, curl
from .conftest import (
    LOOPBACK,
    REPO_ROOT,
    START_TIMEOUT,
    answers_http,
    free_port,
    require_module,
    start_server,
)

pytestmark = pytest.mark.services

EXAMPLE = REPO_ROOT / "examples" / "flask_app"
FILES = ("app.py", "make_demo.py", "nginx.conf", "run.sh")


@dataclass(frozen=True)
class Site:
    directory: Path
    port: int

    @property
    def demo(self) -> Path:
        return self.directory / "demo"

    def get(self, path: str = "/", client: str | None = None) -> Response:
        cert = self.demo / f"{client}.pem" if client else None
        key = self.demo / f"{client}.key" if client else None
        return curl(f"https://localhost:{self.port}{path}", cacert=self.demo / "root.pem",
                    cert=cert, key=key, resolve=f"localhost:{self.port}:{LOOPBACK}")  # fmt: skip


def render(conf: str, *, port: int, app_port: int) -> str:
    """The example's nginx.conf with other ports: the text must hold each value exactly once."""
    for old, new in (
        ("listen 127.0.0.1:8443 ssl;", f"listen {LOOPBACK}:{port} ssl;"),
        ("proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://{LOOPBACK}:{app_port};"),
    ):
        assert conf.count(old) == 1, f"examples/flask_app/nginx.conf no longer holds {old!r}"
        conf = conf.replace(old, new)
    # As root the workers would run as "nobody", who cannot enter pytest's 0700 tmp dirs.
    return ("user root;\n" if os.geteuid() == 0 else "") + conf


def _gunicorn_options() -> str:
    from gunicorn.config import KNOWN_SETTINGS

    # gunicorn 24+ otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return "--no-control-socket"
    return ""


def _wait_closed(port: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not answers_http(port, tls=False):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_service("curl")
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    require_module("gunicorn")
    require_module("flask")
    directory = tmp_path_factory.mktemp("flask-example")
    for name in FILES:
        shutil.copy2(EXAMPLE / name, directory / name)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    subprocess.run([sys.executable, "make_demo.py"], cwd=directory, env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip

    port, app_port = free_port(), free_port()
    conf = directory / "nginx.test.conf"
    conf.write_text(render((directory / "nginx.conf").read_text(), port=port, app_port=app_port))
    env.update(
        BIND=f"{LOOPBACK}:{app_port}",
        NGINX_CONF=conf.name,
        PYTHON=sys.executable,
        GUNICORN_CMD_ARGS=_gunicorn_options(),
    )
    server = start_server(
        "run.sh (nginx + gunicorn)", ["sh", str(directory / "run.sh")],
        port=port, log=directory / "run.log", env=env, tls=True,
    )  # fmt: skip
    try:
        # nginx answers (502) before gunicorn's worker has imported the app.
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_http(app_port, tls=False):
            if time.monotonic() > deadline or server.process.poll() is not None:
                pytest.fail(f"gunicorn did not answer on {app_port}\n{server.log_text()}", pytrace=False)
            time.sleep(0.05)
        yield Site(directory, port)
    finally:
        server.stop()
    # run.sh stops both servers when it is stopped: nothing may be left listening.
    assert _wait_closed(app_port), f"gunicorn still answers after run.sh stopped\n{server.log_text()}"
    assert _wait_closed(port), f"nginx still answers after run.sh stopped\n{server.log_text()}"


def test_registered_certificate_gets_through_with_its_identity(site: Site) -> None:
    answer = site.get("/", "alice")
    assert answer.status == 200, answer
    body = answer.json()
    assert body["hello"] == "alice"
    assert body["org"] == "acme"
    assert len(body["fingerprint"]) == 64
    # revocation="require" with the demo CRLs: the leaf and the issuing CA were both checked.
    assert body["revocation"] == "crl:good,crl:good"


REFUSED = [
    pytest.param("bob", 403, "unknown_certificate", id="unregistered"),
    pytest.param("eve", 403, "certificate_revoked", id="revoked-in-crl"),
    pytest.param("mallory", 403, "untrusted_issuer", id="other-ca"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
]


@pytest.mark.parametrize(("client", "status", "reason"), REFUSED)
def test_bad_certificate_gets_its_reason_code(
    site: Site, client: str | None, status: int, reason: str
) -> None:
    answer = site.get("/", client)
    assert (answer.status, answer.error) == (status, reason)


def test_exempt_health_path_needs_no_certificate(site: Site) -> None:
    answer = site.get("/health")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})
