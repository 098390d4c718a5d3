"""examples/django_project, as its README runs it: a fresh SQLite database migrated, a user and
her certificate registered with ``manage.py mtls``, the app started by its own run script under
gunicorn (WSGI) and uvicorn (ASGI), behind real nginx started with the example's own
``nginx.conf`` (only its two ports changed), and real ``curl --cert`` requests through it.

Revocation is on (``require``): the CAs' CRLs lie in the example's ``pki/`` directory.
"""

from __future__ import annotations

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
from .examples import HEALTHY, Site, example_env, gunicorn_options, refusals, render_nginx_conf

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


def prepare_project(
    materials: Materials, pki: TestPKI, directory: Path, **env_extra: str
) -> tuple[Path, dict[str, str], Issued]:
    """The example set up in ``directory`` as its README says: ``pki/`` (root, intermediates,
    the server's certificate and key, the CAs' CRLs revoking a "revoked-laptop" certificate), a
    migrated database, alice in the store with her certificate and as a Django user. Returns
    ``pki/``, the environment of the example's processes (``env_extra`` added; without a
    ``DJANGO_SETTINGS_MODULE`` there, the project's own) and the revoked certificate."""
    pki_dir = directory / "pki"
    pki_dir.mkdir()
    shutil.copy(materials.root, pki_dir / "root.pem")
    shutil.copy(materials.intermediates, pki_dir / "intermediates.pem")
    shutil.copy(materials.server_cert, pki_dir / "server.pem")
    shutil.copy(materials.server_key, pki_dir / "server.key")
    revoked: Issued = pki.issue_client("revoked-laptop")
    (pki_dir / "root.crl").write_bytes(crl_bytes(make_crl(pki.root)))
    (pki_dir / "issuing.crl").write_bytes(crl_bytes(make_crl(pki.issuing, [revoked.cert.serial_number])))

    env = example_env(
        PYTHON=sys.executable,
        MTLS_EXAMPLE_PKI=str(pki_dir),
        MTLS_EXAMPLE_DB=str(directory / "db.sqlite3"),
        **env_extra,
    )
    if "DJANGO_SETTINGS_MODULE" not in env_extra:
        env.pop("DJANGO_SETTINGS_MODULE", None)
    # migrate runs the system checks first, the app's included, on a database without its tables.
    manage(env, "migrate", "--no-input")
    manage(env, "mtls", "user", "add", "alice", "--org", "acme")
    manage(env, "mtls", "cert", "upload", str(materials.clients["alice"].cert), "--user", "alice")
    manage(
        env, "shell", "-c",
        "from django.contrib.auth import get_user_model; get_user_model().objects.create_user('alice')",
    )  # fmt: skip
    return pki_dir, env, revoked


@pytest.fixture(scope="module")
def project(
    materials: Materials, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
) -> Project:
    """The example set up from scratch: pki/ (root, intermediates, CRLs, nginx's server
    certificate), a migrated database, alice registered in the store and as a Django user."""
    require_module("django")
    directory = tmp_path_factory.mktemp("django-example")
    pki_dir, env, revoked = prepare_project(materials, pki, directory, WORKERS="1")
    revoked_cert, revoked_key = revoked.write(directory, "revoked")
    return Project(directory, pki_dir, env, revoked_cert, revoked_key)


def _run_script(kind: str) -> list[str]:
    if kind == "gunicorn":
        require_module("gunicorn")
        return ["bash", str(EXAMPLE / "run-gunicorn.sh"), *gunicorn_options()]
    require_module("uvicorn")
    return ["bash", str(EXAMPLE / "run-uvicorn.sh")]


def _start_nginx(prefix: Path, pki_dir: Path, *, port: int, app_port: int) -> Server:
    """nginx with the example's nginx.conf: only the listen and upstream ports replaced."""
    nginx = require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    conf = (EXAMPLE / "nginx.conf").read_text()
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(exist_ok=True)
    shutil.copytree(pki_dir, prefix / "pki", dirs_exist_ok=True)
    (prefix / "nginx.conf").write_text(render_nginx_conf("django_project", conf, port=port, app_port=app_port))
    argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "logs/error.log"),
            "-g", "daemon off;"]  # fmt: skip
    return start_server("nginx (example)", argv, port=port, log=prefix / "nginx.out", tls=True)


@dataclass(frozen=True)
class Running:
    kind: str
    site: Site
    app_port: int


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def running(request: pytest.FixtureRequest, project: Project, materials: Materials) -> Iterator[Running]:
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
            # The clients by name: those of conftest.materials, and the one revoked in pki/issuing.crl.
            clients = {name: (c.cert, c.key) for name, c in materials.clients.items()}
            clients["revoked"] = (project.revoked, project.revoked_key)
            yield Running(kind, Site(nginx_port, materials.root, clients), app_port)
        finally:
            nginx.stop()
    finally:
        app.stop()


@pytest.mark.parametrize("path", ["/whoami", "/whoami-async"])
def test_registered_certificate_gets_its_identity_and_user(
    running: Running, materials: Materials, path: str
) -> None:
    assert running.site.json(path, "alice") == (
        200,
        {
            "user_id": "alice",
            "org": "acme",
            "fingerprint": materials.clients["alice"].fingerprint,
            "source": "proxy:nginx",
            "revocation": "crl:good,crl:good",  # the leaf and the issuing CA, each by its CRL
            "user": "alice",
        },
    )


# the clients: stems of materials.clients, and "revoked" (see running)
@pytest.mark.parametrize(
    ("client", "status", "reason"), refusals(unregistered="bob", revoked="revoked", other_ca="foreign")
)
def test_bad_certificate_gets_its_reason_code(running: Running, client: str | None, status: int, reason: str) -> None:
    assert running.site.refusal("/whoami", client) == (status, reason)


def test_health_is_exempt(running: Running) -> None:
    assert running.site.json("/health") == HEALTHY


def test_forged_header_past_nginx_is_refused(running: Running, materials: Materials) -> None:
    """Straight to the app port from another loopback address than nginx's (127.0.0.1)."""
    headers = {
        "X-SSL-Client-Cert": quote(materials.clients["alice"].issued.cert_pem.decode(), safe=""),
        "X-SSL-Client-Verify": "SUCCESS",
        "X-Forwarded-For": LOOPBACK,
    }
    answer = curl(f"http://{LOOPBACK}:{running.app_port}/whoami", headers=headers, interface="127.0.0.2")
    assert (answer.status, answer.error) == (401, "untrusted_proxy")
