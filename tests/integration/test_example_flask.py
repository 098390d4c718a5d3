"""examples/flask_app, run as its README says: make_demo.py, then run.sh (nginx + gunicorn).

A copy of the example goes to a temporary directory; only the ports of its nginx.conf are changed
(and ``user root;`` added when the tests run as root, see conftest.start_nginx). Real ``curl
--cert`` requests then go through nginx's TLS to the Flask app, whose store is the SQLite database
make_demo.py wrote and whose revocation check reads the demo CRLs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.conftest import require_service

from .conftest import LOOPBACK, free_port, require_module
from .examples import (
    HEALTHY,
    Site,
    copy_with_demo,
    demo_clients,
    example_env,
    gunicorn_options,
    refusals,
    render_nginx_conf,
    run_script,
)

pytestmark = pytest.mark.services

FILES = ("app.py", "make_demo.py", "nginx.conf", "run.sh")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_service("curl")
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    require_module("gunicorn")
    require_module("flask")
    directory = tmp_path_factory.mktemp("flask-example")
    env = example_env()
    copy_with_demo("flask_app", FILES, directory, env)
    port, app_port = free_port(), free_port()
    conf = directory / "nginx.test.conf"
    conf.write_text(
        render_nginx_conf("flask_app", (directory / "nginx.conf").read_text(), port=port, app_port=app_port)
    )
    env.update(
        BIND=f"{LOOPBACK}:{app_port}",
        NGINX_CONF=conf.name,
        PYTHON=sys.executable,
        GUNICORN_CMD_ARGS=" ".join(gunicorn_options()),
    )
    with run_script(directory / "run.sh", "gunicorn", port=port, app_port=app_port, env=env):
        yield Site(port, directory / "demo" / "root.pem", demo_clients(directory / "demo"))


def test_registered_certificate_gets_through_with_its_identity(site: Site) -> None:
    answer = site.get("/", "alice")
    assert answer.status == 200, answer
    body = answer.json()
    assert body["hello"] == "alice"
    assert body["org"] == "acme"
    assert len(body["fingerprint"]) == 64
    # revocation="require" with the demo CRLs: the leaf and the issuing CA were both checked.
    assert body["revocation"] == "crl:good,crl:good"


@pytest.mark.parametrize(
    ("client", "status", "reason"), refusals(unregistered="bob", revoked="eve", other_ca="mallory")
)
def test_bad_certificate_gets_its_reason_code(
    site: Site, client: str | None, status: int, reason: str
) -> None:
    assert site.refusal("/", client) == (status, reason)


def test_exempt_health_path_needs_no_certificate(site: Site) -> None:
    assert site.json("/health") == HEALTHY
