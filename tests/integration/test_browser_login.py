"""Browser certificate login in a real headless Chromium, through real TLS.

The Flask example (examples/flask_app/login_app.py) runs as its README says: nginx with two
server blocks (nginx-login.conf: the site, which asks for no certificate, and the certificate login
listener, with ``ssl_verify_client optional_no_ca``) in front of gunicorn. Chromium has alice's
certificate and key in its NSS database and picks them by the ``AutoSelectCertificateForUrls``
policy, for the login listener only (tests/integration/browser.py). The test clicks "Log in with
certificate", lands logged in (screenshot kept in test-artifacts/browser/), deletes the
certificate with ``mtls-admin cert delete`` and finds the next page load logged out, with the
sentence that says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls_middleware.errors import Reason
from mtls_middleware.login import LOGIN_MESSAGES, SESSION_ENDED_MESSAGES
from mtls_middleware.stores import open_store
from tests.conftest import require_service

from .browser import chromium, require_browser
from .conftest import LOOPBACK, PROXY_ADDRESS, free_port, require_module
from .examples import copy_with_demo, example_env, gunicorn_options, run_script
from .login_sites import LoginSite, requests_a_certificate

pytestmark = pytest.mark.services

FLASK_FILES = ("app.py", "login_app.py", "make_demo.py", "nginx-login.conf", "run.sh")


def render_login_conf(conf: str, *, site_port: int, login_port: int, app_port: int) -> str:
    """examples/flask_app/nginx-login.conf on the test's ports, nginx connecting upstream from
    PROXY_ADDRESS (the app's only trusted proxy). Each replaced text must be there exactly once."""
    for old, new in (
        ("listen 127.0.0.1:8444 ssl;", f"listen {LOOPBACK}:{site_port} ssl;"),
        ("listen 127.0.0.1:8443 ssl;", f"listen {LOOPBACK}:{login_port} ssl;"),
        ("server 127.0.0.1:8000;", f"server {LOOPBACK}:{app_port};"),
        ("return 303 https://localhost:8444$request_uri;", f"return 303 https://localhost:{site_port}$request_uri;"),
    ):
        assert conf.count(old) == 1, f"examples/flask_app/nginx-login.conf no longer holds {old!r}"
        conf = conf.replace(old, new)
    conf = conf.replace("proxy_pass http://app;", f"proxy_pass http://app; proxy_bind {PROXY_ADDRESS};")
    return ("user root;\n" if os.geteuid() == 0 else "") + conf


@pytest.fixture(scope="module")
def flask_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoginSite]:
    require_browser()
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    require_module("gunicorn")
    require_module("flask_login")
    directory = tmp_path_factory.mktemp("flask-login-example")
    env = example_env()
    copy_with_demo("flask_app", FLASK_FILES, directory, env)
    site_port, login_port, app_port = free_port(), free_port(), free_port()
    conf = directory / "nginx-login.test.conf"
    conf.write_text(
        render_login_conf(
            (directory / "nginx-login.conf").read_text(),
            site_port=site_port, login_port=login_port, app_port=app_port,
        )
    )  # fmt: skip
    env.update(
        APP="login_app:create_app()",
        BIND=f"{LOOPBACK}:{app_port}",
        NGINX_CONF=conf.name,
        PYTHON=sys.executable,
        GUNICORN_CMD_ARGS=" ".join(gunicorn_options()),
        FLASK_MTLS_TRUSTED_PROXIES=f'["{PROXY_ADDRESS}"]',
        FLASK_MTLS_LOGIN_SITE_URL=f"https://localhost:{site_port}",
        FLASK_MTLS_LOGIN_URL=f"https://localhost:{login_port}/login/certificate",
    )
    with run_script(directory / "run.sh", "gunicorn", port=site_port, app_port=app_port, env=env):
        yield LoginSite(site_port, login_port, directory / "demo")


def mtls_admin(demo: Path, *args: str) -> str:
    """The real CLI on the example's store, as an administrator would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "mtls_middleware.admin.cli", "--db", f"sqlite:///{demo / 'mtls.db'}", *args],
        capture_output=True, text=True, timeout=60, env=example_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def history(demo: Path) -> list[tuple[str, str | None]]:
    store = open_store(f"sqlite:///{demo / 'mtls.db'}")
    try:
        return [(r.outcome, r.user_id) for r in reversed(store.login_history(limit=20))]
    finally:
        store.close()


def test_flask_certificate_login_then_deletion_logs_out(flask_site: LoginSite, tmp_path: Path) -> None:
    alice = flask_site.client("alice")
    with chromium(
        trust_roots=[flask_site.root()],
        client=alice,
        auto_select_origins=[flask_site.login_origin],
        tmp_path=tmp_path,
    ) as browser:
        # The site itself asks for no certificate: its pages load with no prompt and no policy.
        browser.get(f"{flask_site.site}/")
        assert browser.current_url.startswith(f"{flask_site.site}/login")
        assert "Log in with certificate" in browser.text

        browser.click("#mtls-certificate-login")
        assert browser.current_url == f"{flask_site.site}/", browser.text
        assert "Signed in as alice of acme" in browser.text
        shot = browser.screenshot("flask-logged-in")
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        session_cookie = next(c for c in browser.cookies() if c["name"] == "session")
        assert session_cookie["secure"]
        assert session_cookie["httpOnly"]
        assert ("accepted", "alice") in history(flask_site.demo)

        browser.get(f"{flask_site.site}/")  # still logged in on the next load
        assert "Signed in as alice" in browser.text

        mtls_admin(flask_site.demo, "cert", "delete", alice.fingerprint)
        browser.get(f"{flask_site.site}/")
        assert browser.current_url.startswith(f"{flask_site.site}/login")
        assert "Signed in" not in browser.text
        assert SESSION_ENDED_MESSAGES[Reason.UNKNOWN_CERTIFICATE] in browser.text
        browser.screenshot("flask-logged-out-after-deletion")

        # The same certificate, now registered to nobody: the login page says so.
        browser.click("#mtls-certificate-login")
        assert browser.current_url.startswith(f"{flask_site.site}/login?mtls_error=unknown_certificate")
        assert LOGIN_MESSAGES[Reason.UNKNOWN_CERTIFICATE] in browser.text
        browser.screenshot("flask-unknown-certificate")
    assert history(flask_site.demo)[-1] == ("unknown_certificate", None)


def test_only_the_login_listener_asks_for_a_certificate(flask_site: LoginSite) -> None:
    require_service("openssl")
    assert requests_a_certificate(flask_site.login_port)
    assert not requests_a_certificate(flask_site.site_port)


def test_flask_revoked_certificate_gets_its_sentence(flask_site: LoginSite, tmp_path: Path) -> None:
    eve = flask_site.client("eve")  # registered, but revoked in the issuing CA's CRL
    with chromium(
        trust_roots=[flask_site.root()], client=eve, auto_select_origins=[flask_site.login_origin], tmp_path=tmp_path
    ) as browser:
        browser.get(f"{flask_site.site}/login?next=/")
        browser.click("#mtls-certificate-login")
        assert browser.current_url.startswith(f"{flask_site.site}/login?mtls_error=certificate_revoked")
        assert LOGIN_MESSAGES[Reason.CERTIFICATE_REVOKED] in browser.text
        browser.get(f"{flask_site.site}/")
        assert browser.current_url.startswith(f"{flask_site.site}/login")  # not logged in
