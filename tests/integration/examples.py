"""What the tests of examples/ (test_example_*.py) share: each example run as its README says.

An example is copied to a temporary directory (or run in place), its ``make_demo.py`` run, its
``nginx.conf`` given free ports (and, as root, ``user root;``: see conftest.start_nginx), and its
run script started; the tests then send real ``curl --cert`` requests through nginx's TLS. A run
script that is stopped must take nginx and the app server down with it: nothing may be left
listening.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .clients import Response, curl
from .conftest import LOOPBACK, REPO_ROOT, START_TIMEOUT, Server, answers_http, start_server

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

EXAMPLES = REPO_ROOT / "examples"
#: What an exempt health path answers without a certificate.
HEALTHY = (200, {"status": "ok"})


def example_env(**extra: str) -> dict[str, str]:
    """The environment of an example's processes: this checkout importable, output unbuffered."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def copy_with_demo(example: str, files: Sequence[str], directory: Path, env: Mapping[str, str]) -> None:
    """Copy ``files`` of examples/``example`` to ``directory`` and run its make_demo.py there."""
    for name in files:
        shutil.copy2(EXAMPLES / example / name, directory / name)
    subprocess.run([sys.executable, "make_demo.py"], cwd=directory, env=dict(env), check=True,
                   capture_output=True, timeout=60)  # fmt: skip


def render_nginx_conf(example: str, conf: str, *, port: int, app_port: int, upstream_extra: str = "") -> str:
    """examples/``example``/nginx.conf (the text ``conf``) listening on ``port`` and proxying to
    ``app_port``, ``upstream_extra`` (directives) after its ``proxy_pass``. The text must hold
    each replaced directive exactly once."""
    proxy_pass = f"proxy_pass http://{LOOPBACK}:{app_port};"
    for old, new in (
        ("listen 127.0.0.1:8443 ssl;", f"listen {LOOPBACK}:{port} ssl;"),
        ("proxy_pass http://127.0.0.1:8000;", proxy_pass + upstream_extra),
    ):
        assert conf.count(old) == 1, f"examples/{example}/nginx.conf no longer holds {old!r}"
        conf = conf.replace(old, new)
    # As root the workers would run as "nobody", who cannot enter pytest's 0700 tmp dirs.
    return ("user root;\n" if os.geteuid() == 0 else "") + conf


def gunicorn_options() -> list[str]:
    """Options every gunicorn of an example test needs."""
    from gunicorn.config import KNOWN_SETTINGS

    # gunicorn 24+ otherwise opens ~/.gunicorn/gunicorn.ctl, shared by every instance.
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def closed(port: int) -> bool:
    """Whether nothing listens on ``port`` any more (waiting up to 10 s for it to close)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


@contextmanager
def run_script(
    script: Path, app_server: str, *, port: int, app_port: int, env: Mapping[str, str]
) -> Iterator[Server]:
    """``sh script`` (nginx on ``port`` in front of ``app_server`` on ``app_port``), once both
    answer; stopped at the end, when neither port may answer any more."""
    process = start_server(
        f"{script.name} (nginx + {app_server})", ["sh", str(script)],
        port=port, log=script.parent / "run.log", env=env, tls=True,
    )  # fmt: skip
    try:
        # nginx answers (502) before the app server has imported the app.
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_http(app_port, tls=False):
            if time.monotonic() > deadline or process.process.poll() is not None:
                pytest.fail(f"{app_server} did not answer on {app_port}\n{process.log_text()}", pytrace=False)
            time.sleep(0.05)
        yield process
    finally:
        process.stop()
    # The run script stops both servers when it is stopped: nothing may be left listening.
    assert closed(app_port), f"{app_server} still answers after {script.name} stopped\n{process.log_text()}"
    assert closed(port), f"nginx still answers after {script.name} stopped\n{process.log_text()}"


@dataclass(frozen=True)
class Site:
    """An example served at ``https://localhost:PORT``; ``clients`` maps the name of each client
    the tests present to its certificate (with intermediates) and key files."""

    port: int
    cacert: Path
    clients: Mapping[str, tuple[Path, Path]]

    def get(self, path: str, client: str | None = None) -> Response:
        """GET ``path`` with curl, with ``client``'s certificate (None: none)."""
        cert, key = self.clients[client] if client is not None else (None, None)
        return curl(f"https://localhost:{self.port}{path}", cacert=self.cacert, cert=cert, key=key,
                    resolve=f"localhost:{self.port}:{LOOPBACK}")  # fmt: skip

    def json(self, path: str, client: str | None = None) -> tuple[int, Any]:
        """The status and the JSON body of the answer to GET ``path``."""
        answer = self.get(path, client)
        return answer.status, answer.json()

    def refusal(self, path: str, client: str | None) -> tuple[int, str]:
        """The status and the reason code of the refusal of GET ``path``."""
        answer = self.get(path, client)
        return answer.status, answer.error


def demo_clients(demo: Path) -> dict[str, tuple[Path, Path]]:
    """What make_demo.py wrote to ``demo``, by name: each ``NAME.pem`` with its ``NAME.key``."""
    return {key.stem: (key.with_suffix(".pem"), key) for key in demo.glob("*.key")}


def refusals(*, unregistered: str, revoked: str, other_ca: str, inactive: str | None = None) -> list[ParameterSet]:
    """(client, status, reason) of the refused clients every example is tried with, by the name
    of the client that plays each part."""
    cases = [pytest.param(unregistered, 403, "unknown_certificate", id="unregistered")]
    if inactive is not None:
        cases.append(pytest.param(inactive, 403, "user_inactive", id="user-deactivated"))
    return [
        *cases,
        pytest.param(revoked, 403, "certificate_revoked", id="revoked-in-crl"),
        pytest.param(other_ca, 403, "untrusted_issuer", id="other-ca"),
        pytest.param(None, 401, "no_certificate", id="no-certificate"),
    ]
