"""examples/django_project, as its README runs it: a fresh SQLite database migrated, a user and
her certificate registered with ``manage.py mtls``, the app started by its own run script under
gunicorn (WSGI) and uvicorn (ASGI), behind real nginx started with the example's own
``nginx.conf`` (only its two ports changed), and real ``curl --cert`` requests through it.

Revocation is on (``require``): the CAs' CRLs lie in the example's ``pki/`` directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from mtls_middleware.testing import Issued, TestPKI, crl_bytes, make_crl
from tests.conftest import require_service

from .clients import curl
from .conftest import LOOPBACK, REPO_ROOT, Materials, Server, free_port, require_module, start_server

pytestmark = pytest.mark.services

EXAMPLE = REPO_ROOT / "examples" / "django_project"
#: A manage.py command that takes longer than this has hung.
MANAGE_TIMEOUT = 60


@dataclass(frozen=True)
class Project:
    """The example's PKI directory and database, and the environment its processes run with."""

    directory: Path
    pki: Path
    env: dict[str, str]
    revoked: Path
    revoked_key: Path


def manage(project_env: dict[str, str], *args: str) -> str:
    """Run ``python manage.py ARGS`` in the example directory; its output, or the test fails."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=project_env,
        capture_output=True,
        text=True,
        timeout=MANAGE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"manage.py {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return done.stdout


@pytest.fixture(scope="module")
def project(
    materials: Materials, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
) -> Project:
    """The example set up from scratch: pki/ (root, intermediates, CRLs, nginx's server
    certificate), a migrated database, alice registered in the store and as a Django user."""
    require_module("django")
    directory = tmp_path_factory.mktemp("django-example")
    pki_dir = directory / "pki"
    pki_dir.mkdir()
    shutil.copy(materials.root, pki_dir / "root.pem")
    shutil.copy(materials.intermediates, pki_dir / "intermediates.pem")
    shutil.copy(materials.server_cert, pki_dir / "server.pem")
    shutil.copy(materials.server_key, pki_dir / "server.key")
    revoked: Issued = pki.issue_client("revoked-laptop")
    revoked_cert, revoked_key = revoked.write(directory, "revoked")
    (pki_dir / "root.crl").write_bytes(crl_bytes(make_crl(pki.root)))
    (pki_dir / "issuing.crl").write_bytes(crl_bytes(make_crl(pki.issuing, [revoked.cert.serial_number])))

    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        PYTHON=sys.executable,
        MTLS_EXAMPLE_PKI=str(pki_dir),
        MTLS_EXAMPLE_DB=str(directory / "db.sqlite3"),
        WORKERS="1",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    # migrate runs the system checks first, the app's included, on a database without its tables.
    manage(env, "migrate", "--no-input")
    manage(env, "mtls", "user", "add", "alice", "--org", "acme")
    manage(env, "mtls", "cert", "upload", str(materials.clients["alice"].cert), "--user", "alice")
    manage(
        env, "shell", "-c",
        "from django.contrib.auth import get_user_model; get_user_model().objects.create_user('alice')",
    )  # fmt: skip
    return Project(directory, pki_dir, env, revoked_cert, revoked_key)


def _run_script(kind: str) -> list[str]:
    if kind == "gunicorn":
        require_module("gunicorn")
        from gunicorn.config import KNOWN_SETTINGS

        argv = ["bash", str(EXAMPLE / "run-gunicorn.sh")]
        if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
            argv.append("--no-control-socket")  # gunicorn 24+: not ~/.gunicorn/, shared by all
        return argv
    require_module("uvicorn")
    return ["bash", str(EXAMPLE / "run-uvicorn.sh")]


def _start_nginx(prefix: Path, pki_dir: Path, *, port: int, app_port: int) -> Server:
    """nginx with the example's nginx.conf: only the listen and upstream ports replaced."""
    nginx = require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    conf = (EXAMPLE / "nginx.conf").read_text()
    for old, new in (
        ("listen 127.0.0.1:8443 ssl;", f"listen {LOOPBACK}:{port} ssl;"),
        ("proxy_pass http://127.0.0.1:8000;", f"proxy_pass http://{LOOPBACK}:{app_port};"),
    ):
        assert conf.count(old) == 1, f"examples/django_project/nginx.conf no longer has {old!r}"
        conf = conf.replace(old, new)
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(exist_ok=True)
    shutil.copytree(pki_dir, prefix / "pki", dirs_exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    # As root the workers would run as "nobody", who cannot enter pytest's 0700 tmp dirs.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "logs/error.log"),
            "-g", directives]  # fmt: skip
    return start_server("nginx (example)", argv, port=port, log=prefix / "nginx.out", tls=True)


@dataclass(frozen=True)
class Running:
    kind: str
    nginx_port: int
    app_port: int

    def url(self, path: str) -> str:
        return f"https://{LOOPBACK}:{self.nginx_port}{path}"


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def running(request: pytest.FixtureRequest, project: Project) -> Iterator[Running]:
    """The example under its run script, nginx in front."""
    kind: str = request.param
    require_service("curl")
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    app_port, nginx_port = free_port(), free_port()
    env = {**project.env, "PORT": str(app_port)}
    prefix = project.directory / f"nginx-{kind}"
    prefix.mkdir()
    app = start_server(f"{kind} (example)", _run_script(kind), port=app_port, log=prefix / f"{kind}.log", env=env)
    try:
        nginx = _start_nginx(prefix, project.pki, port=nginx_port, app_port=app_port)
        try:
            yield Running(kind, nginx_port, app_port)
        finally:
            nginx.stop()
    finally:
        app.stop()


@pytest.mark.parametrize("path", ["/whoami", "/whoami-async"])
def test_registered_certificate_gets_its_identity_and_user(
    running: Running, materials: Materials, path: str
) -> None:
    alice = materials.clients["alice"]
    answer = curl(running.url(path), cacert=materials.root, cert=alice.cert, key=alice.key)
    assert answer.status == 200, answer
    assert answer.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": "proxy:nginx",
        "revocation": "crl:good,crl:good",  # the leaf and the issuing CA, each by its CRL
        "user": "alice",
    }


# client (a stem of materials.clients, "revoked", or None), status, reason code
REFUSED = [
    pytest.param("bob", 403, "unknown_certificate", id="unregistered"),
    pytest.param("revoked", 403, "certificate_revoked", id="revoked-by-crl"),
    pytest.param("foreign", 403, "untrusted_issuer", id="foreign-ca"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
]


@pytest.mark.parametrize(("client", "status", "reason"), REFUSED)
def test_bad_certificate_gets_its_reason_code(
    running: Running, project: Project, materials: Materials, client: str | None, status: int, reason: str
) -> None:
    if client == "revoked":
        cert, key = project.revoked, project.revoked_key
    elif client is not None:
        cert, key = materials.clients[client].cert, materials.clients[client].key
    else:
        cert = key = None
    answer = curl(running.url("/whoami"), cacert=materials.root, cert=cert, key=key)
    assert (answer.status, answer.error) == (status, reason)


def test_health_is_exempt(running: Running, materials: Materials) -> None:
    answer = curl(running.url("/health"), cacert=materials.root)
    assert answer.status == 200, answer
    assert answer.json() == {"status": "ok"}


def test_forged_header_past_nginx_is_refused(running: Running, materials: Materials) -> None:
    """Straight to the app port from another loopback address than nginx's (127.0.0.1)."""
    headers = {
        "X-SSL-Client-Cert": quote(materials.clients["alice"].issued.cert_pem.decode(), safe=""),
        "X-SSL-Client-Verify": "SUCCESS",
        "X-Forwarded-For": LOOPBACK,
    }
    answer = curl(f"http://{LOOPBACK}:{running.app_port}/whoami", headers=headers, interface="127.0.0.2")
    assert (answer.status, answer.error) == (401, "untrusted_proxy")
