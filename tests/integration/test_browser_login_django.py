"""Browser certificate login of the Django example in a real headless Chromium, without a proxy.

examples/django_project runs as its README's "Browser login" section says: a fresh SQLite
database migrated, alice registered with ``manage.py mtls``, and ``run-login.sh`` serving
``mtls_example.settings_login`` on two TLS listeners of its own, sharing the database: the site
(gunicorn with ``--certfile``, asking for no certificate) and the certificate login
(``mtls-admin serve``, the pyOpenSSL listener that asks for one without failing the handshake).
Chromium presents alice's certificate to the login listener only (``AutoSelectCertificateForUrls``;
had the site asked for one, the dialog would hang the page load). The test logs in with the
button, out with the logout form, in again, then deletes the certificate with ``manage.py mtls
cert delete`` in another process and finds the next page load logged out, with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtls_middleware.contrib.django.signals import POLL_INTERVAL
from mtls_middleware.errors import Reason
from mtls_middleware.login import LOGIN_MESSAGES, SESSION_ENDED_MESSAGES
from mtls_middleware.testing import TestPKI
from tests.conftest import require_service

from .browser import Browser, chromium, require_browser
from .conftest import (
    START_TIMEOUT,
    Materials,
    answers_http,
    free_port,
    require_module,
    start_server,
)
from .examples import closed, example_env, gunicorn_options
from .login_sites import LoginSite, requests_a_certificate
from .test_example_django import EXAMPLE, manage, prepare_project

pytestmark = pytest.mark.services

SETTINGS = "mtls_example.settings_login"
#: Django's session cookie (SESSION_COOKIE_NAME).
SESSION_COOKIE = "sessionid"
# Every server process sees a change that another process committed to the store within
# POLL_INTERVAL plus one query's time (mtls_middleware/contrib/django/signals.py); the second
# interval is the margin for that query and for a busy process.
SEEN_WITHIN = 2 * POLL_INTERVAL


@pytest.fixture(scope="module")
def django_site(
    materials: Materials, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoginSite]:
    """The example set up from scratch (pki/ with the CRLs, a migrated database, alice in the store
    with her certificate and a revoked one, and as a Django user) and started by run-login.sh on
    free ports. The clients' certificates and keys lie in pki/ too (``LoginSite.client``)."""
    require_browser()
    require_module("gunicorn")
    require_module("django")
    directory = tmp_path_factory.mktemp("django-login-example")
    site_port, login_port = free_port(), free_port()
    # migrate runs the system checks of settings_login first (E006: the login view is exempt).
    pki_dir, env, revoked = prepare_project(
        materials, pki, directory,
        DJANGO_SETTINGS_MODULE=SETTINGS,
        PORT=str(site_port),
        LOGIN_PORT=str(login_port),
        GUNICORN_CMD_ARGS=" ".join(gunicorn_options()),
    )  # fmt: skip
    materials.clients["alice"].issued.write(pki_dir, "alice")
    revoked_pem, _ = revoked.write(pki_dir, "revoked")
    manage(env, "mtls", "cert", "upload", str(revoked_pem), "--user", "alice")  # revoked in issuing.crl

    script = start_server(
        "run-login.sh (gunicorn + mtls-admin serve)", ["bash", str(EXAMPLE / "run-login.sh")],
        port=site_port, log=directory / "run-login.log", env=env, tls=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_http(login_port, tls=True):
            if time.monotonic() > deadline or script.process.poll() is not None:
                pytest.fail(
                    f"the login listener did not answer on {login_port}\n{script.log_text()}", pytrace=False
                )
            time.sleep(0.05)
        yield LoginSite(site_port, login_port, pki_dir)
    finally:
        script.stop()
    # run-login.sh stops both servers when it is stopped: nothing may be left listening.
    assert closed(site_port), f"gunicorn still listens after run-login.sh stopped\n{script.log_text()}"
    assert closed(login_port), (
        f"mtls-admin serve still listens after run-login.sh stopped\n{script.log_text()}"
    )


def _project_env(site: LoginSite) -> dict[str, str]:
    directory = site.demo.parent
    return example_env(
        DJANGO_SETTINGS_MODULE=SETTINGS,
        MTLS_EXAMPLE_PKI=str(site.demo),
        MTLS_EXAMPLE_DB=str(directory / "db.sqlite3"),
    )


def history(site: LoginSite) -> list[tuple[str, str | None]]:
    """(outcome, user) of the login history, oldest first, as ``manage.py mtls history`` shows it."""
    records = json.loads(manage(_project_env(site), "mtls", "history", "--json", "--limit", "20"))
    return [(r["outcome"], r["user_id"]) for r in reversed(records)]


def _reason_shown(browser: Browser, selector: str) -> str | None:
    """The reason code of the login page's message matching ``selector``."""
    from selenium.webdriver.common.by import By  # installed when require_browser() passed

    return browser.driver.find_element(By.CSS_SELECTOR, selector).get_attribute("data-reason")


def test_django_certificate_login_logout_then_deletion_logs_out(
    django_site: LoginSite, tmp_path: Path
) -> None:
    site = django_site.site
    alice = django_site.client("alice")
    with chromium(
        trust_roots=[django_site.root()],
        client=alice,
        auto_select_origins=[django_site.login_origin],
        tmp_path=tmp_path,
    ) as browser:
        # The site asks for no certificate: its pages load with no prompt and no policy.
        browser.get(f"{site}/")
        assert browser.current_url.startswith(f"{site}/login?next=")
        browser.click("#mtls-certificate-login")
        assert browser.current_url == f"{site}/", browser.text
        assert "Signed in as alice of acme" in browser.text
        shot = browser.screenshot("django-logged-in")
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        session_cookie = next(c for c in browser.cookies() if c["name"] == SESSION_COOKIE)
        assert session_cookie["secure"]
        assert session_cookie["httpOnly"]
        assert ("accepted", "alice") in history(django_site)

        # Django's LogoutView (POST with the form's CSRF token) ends the session.
        browser.click("#logout")
        assert browser.current_url == f"{site}/login"
        browser.get(f"{site}/")
        assert browser.current_url.startswith(f"{site}/login?next=")

        # In again, by way of ?next=: back to that page of the site, as alice.
        browser.get(f"{site}/login?next=/whoami")
        browser.click("#mtls-certificate-login")
        assert browser.current_url == f"{site}/whoami"
        assert json.loads(browser.text)["user"] == "alice"
        browser.get(f"{site}/")
        assert "Signed in as alice of acme" in browser.text

        manage(_project_env(django_site), "mtls", "cert", "delete", alice.fingerprint)
        time.sleep(SEEN_WITHIN)  # until both servers' processes have seen the deletion
        browser.get(f"{site}/")
        assert browser.current_url.startswith(f"{site}/login?next=")
        assert "Signed in" not in browser.text
        assert _reason_shown(browser, ".mtls-session-ended") == Reason.UNKNOWN_CERTIFICATE.value
        assert SESSION_ENDED_MESSAGES[Reason.UNKNOWN_CERTIFICATE] in browser.text
        browser.screenshot("django-logged-out-after-deletion")

        # The same certificate, now registered to nobody: the login page says so.
        browser.click("#mtls-certificate-login")
        assert browser.current_url.startswith(f"{site}/login?mtls_error={Reason.UNKNOWN_CERTIFICATE.value}")
        assert _reason_shown(browser, ".mtls-login-error") == Reason.UNKNOWN_CERTIFICATE.value
        assert LOGIN_MESSAGES[Reason.UNKNOWN_CERTIFICATE] in browser.text
    assert history(django_site)[-1] == (Reason.UNKNOWN_CERTIFICATE.value, None)


def test_django_revoked_certificate_gets_its_reason(django_site: LoginSite, tmp_path: Path) -> None:
    revoked = django_site.client("revoked")  # registered to alice, revoked in pki/issuing.crl
    with chromium(
        trust_roots=[django_site.root()], client=revoked, auto_select_origins=[django_site.login_origin],
        tmp_path=tmp_path,
    ) as browser:  # fmt: skip
        browser.get(f"{django_site.site}/login")
        browser.click("#mtls-certificate-login")
        assert browser.current_url.startswith(
            f"{django_site.site}/login?mtls_error={Reason.CERTIFICATE_REVOKED.value}"
        )
        assert _reason_shown(browser, ".mtls-login-error") == Reason.CERTIFICATE_REVOKED.value
        browser.get(f"{django_site.site}/")
        assert browser.current_url.startswith(f"{django_site.site}/login?next=")  # not logged in


def test_only_the_login_listener_asks_for_a_certificate(django_site: LoginSite) -> None:
    require_service("openssl")
    assert requests_a_certificate(django_site.login_port)
    assert not requests_a_certificate(django_site.site_port)
