"""Browser certificate login in Django: the view (``views.py``), the button (``{% load mtls %}``)
and the session check of the middleware, against the DjangoStore.

The project (``login_urls``) is the ordinary site in ``optional`` mode (its pages see no
certificate, as on a listener that asks for none) with the certificate login view included and
exempt; the certificate is given to the view as a TLS server puts it in the WSGI environ (the
test ``Client``) or the ASGI scope (Django's real ASGI handler, through httpx). Redirects go to ``MTLS_LOGIN_SITE_URL``
(``https://testserver``), the site's origin, as the view lives on another one.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("django")

import httpx
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY as USER_SESSION_KEY
from django.contrib.auth import get_user_model, user_logged_in
from django.test import Client, override_settings
from django.utils.html import escape

from mtls_middleware import Reason
from mtls_middleware.contrib.django import conf
from mtls_middleware.login import (
    ENDED_KEY,
    LOGIN_MESSAGES,
    SESSION_ENDED_MESSAGES,
    SESSION_KEY,
    SessionBinding,
)
from mtls_middleware.testing import (
    Issued,
    TestPKI,
    client_certificate_environ,
    crl_bytes,
    make_crl,
    with_client_certificate,
)
from tests.contrib.django.mtls_support import project_settings, register_users
from tests.contrib.django.setup import empty_tables, setup_django

SITE = "https://testserver"
LOGIN = "/login/certificate/"
TEMPLATE_DIR = Path(__file__).parent / "templates"


@pytest.fixture(scope="module")
def certificates(pki: TestPKI, other_pki: TestPKI) -> dict[str, Issued]:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "carol": pki.issue_client("carol"),
        "dave": pki.issue_client("dave"),
        "erin": pki.issue_client("erin"),
        "frank": pki.issue_client("frank"),
        "expired": pki.issue_client(
            "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        "foreign": other_pki.issue_client("mallory"),
    }


@pytest.fixture(scope="module")
def crl_file(pki_dir: Path, pki: TestPKI, certificates: dict[str, Issued]) -> Path:
    """A CRL of the issuing CA revoking frank's certificate."""
    path = pki_dir / "login-issuing.crl"
    path.write_bytes(crl_bytes(make_crl(pki.issuing, [certificates["frank"].cert.serial_number])))
    return path


def templates() -> list[dict[str, Any]]:
    return [{**settings.TEMPLATES[0], "DIRS": [str(TEMPLATE_DIR)]}]


@pytest.fixture
def site(pki_dir: Path, alice: Issued, certificates: dict[str, Issued]) -> Iterator[Any]:
    """The store's users: alice (acme, a Django user), carol (deactivated in the store), dave (a
    Django user who is inactive in Django), erin (no Django user), frank (revoked certificate),
    "expired" (an expired certificate); bob is registered to nobody. pat logs in by password."""
    setup_django()
    empty_tables()
    store = register_users(alice, certificates, also=("frank",))
    store.add_user("expired", org="acme")
    users = get_user_model().objects
    for username in ("alice", "carol", "frank", "expired"):  # erin has no Django user
        users.create_user(username)
    values = project_settings(
        pki_dir / "root.pem",
        ROOT_URLCONF="tests.contrib.django.login_urls",
        TEMPLATES=templates(),
        MTLS_MODE="optional",
        MTLS_EXEMPT_PATHS=[LOGIN],
        MTLS_LOGIN_SITE_URL=SITE,
    )
    with override_settings(**values):
        yield store
    conf.reset()
    store.history_writer.flush(10.0)


def post_login(
    client: Client, chain: Issued | None = None, *, next: str | None = None, origin: str | None = SITE
) -> Any:
    data = {} if next is None else {"next": next}
    headers = {} if origin is None else {"Origin": origin}
    environ = client_certificate_environ(chain) if chain is not None else {}
    return client.post(LOGIN, data, headers=headers, **environ)


def on_site(location: str) -> str:
    """The path (and query) of a redirect to the site."""
    assert location.startswith(SITE + "/"), location
    return location[len(SITE):]


def error_of(location: str) -> str | None:
    values = parse_qs(urlsplit(location).query).get("mtls_error")
    return values[0] if values else None


def who(client: Client, path: str = "/private") -> str | None:
    response = client.get(path)
    assert response.status_code == 200, response
    user: str | None = response.json()["user"]
    return user


def login(client: Client, chain: Issued) -> None:
    response = post_login(client, chain)
    assert (response.status_code, error_of(response["Location"])) == (303, None), response["Location"]


# -- success ----------------------------------------------------------------------------------------
def test_a_login_opens_the_session_with_its_binding_and_goes_next(site: Any, alice: Issued) -> None:
    client = Client()
    sent: list[Any] = []

    def receiver(sender: Any, request: Any, user: Any, **_: Any) -> None:
        sent.append(user.get_username())

    user_logged_in.connect(receiver, dispatch_uid="test-login")
    start = time.time()
    try:
        response = post_login(client, alice, next="/private?tab=2")
    finally:
        user_logged_in.disconnect(dispatch_uid="test-login")
    assert response.status_code == 303
    assert response["Location"] == f"{SITE}/private?tab=2"
    assert "no-store" in response["Cache-Control"]
    alice_user = get_user_model().objects.get(username="alice")
    session = client.session
    assert session[USER_SESSION_KEY] == str(alice_user.pk)
    binding = SessionBinding.from_session(session[SESSION_KEY])
    assert binding is not None
    assert (binding.fingerprint, binding.user_id, binding.org, binding.session_user) == (
        alice.fingerprint, "alice", "acme", str(alice_user.pk)
    )
    assert binding.not_after == alice.cert.not_valid_after_utc.timestamp()
    assert sent == ["alice"]
    records = [r for r in site.login_history(limit=20) if r.time >= start]
    assert [(r.outcome, r.fingerprint) for r in records] == [("accepted", alice.fingerprint)]
    assert who(client) == "alice"  # the session serves the site's pages, which see no certificate


def test_a_login_gives_a_new_session_key(site: Any, alice: Issued) -> None:
    """Session fixation: a key planted before the login does not become the logged-in session."""
    client = Client()
    session = client.session
    session["planted"] = True
    session.save()
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    login(client, alice)
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert client.session.get("planted") is True  # cycled, not emptied: the same visitor


def test_enforce_mtls_user_is_served_on_her_certificate_session(site: Any, alice: Issued) -> None:
    """A user who must log in by certificate did, through the view: the site's pages (no
    certificate on them) serve her, where a password session of hers would be anonymous."""
    site.add_user("alice", org="acme", permissions=["enforce_mtls"])
    client = Client()
    login(client, alice)
    assert who(client) == "alice"
    assert who(client, "/private-async") == "alice"


HOSTILE_NEXT = [
    pytest.param("//evil.example", id="protocol-relative"),
    pytest.param("https://evil.example/", id="other-host"),
    pytest.param("/\\evil.example", id="backslash"),
    pytest.param("/\t/evil", id="tab"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("https://app.example@evil.example/", id="credentials"),
    pytest.param("https://testserver:8443/", id="other-port"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_a_hostile_next_goes_to_the_default_target(target: str, site: Any, alice: Issued) -> None:
    response = post_login(Client(), alice, next=target)
    assert (response.status_code, response["Location"]) == (303, f"{SITE}/")


def test_next_may_name_an_allowed_origin(site: Any, alice: Issued) -> None:
    with override_settings(MTLS_LOGIN_ALLOWED_ORIGINS=["https://docs.testserver"]):
        response = post_login(Client(), alice, next="https://docs.testserver/guide")
    assert response["Location"] == "https://docs.testserver/guide"


# -- refusals ------------------------------------------------------------------------------------
REFUSALS = [
    pytest.param(None, Reason.NO_CERTIFICATE, id="no-certificate"),
    pytest.param("bob", Reason.UNKNOWN_CERTIFICATE, id="unregistered"),
    pytest.param("carol", Reason.USER_INACTIVE, id="deactivated-in-the-store"),
    pytest.param("dave", Reason.USER_INACTIVE, id="inactive-django-user"),
    pytest.param("erin", Reason.UNKNOWN_CERTIFICATE, id="no-django-user"),
    pytest.param("expired", Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param("foreign", Reason.UNTRUSTED_ISSUER, id="foreign-ca"),
    pytest.param("frank", Reason.CERTIFICATE_REVOKED, id="revoked"),
    pytest.param("alice-org-off", Reason.CERTIFICATE_AUTH_DISABLED, id="organisation-switched-off"),
]


@pytest.mark.parametrize(("holder", "reason"), REFUSALS)
def test_a_refused_login_goes_back_to_the_login_page_with_its_sentence(
    holder: str | None,
    reason: Reason,
    site: Any,
    alice: Issued,
    bob: Issued,
    certificates: dict[str, Issued],
    crl_file: Path,
) -> None:
    chains = {"alice-org-off": alice, "bob": bob, **certificates}
    if holder == "alice-org-off":
        site.set_org("acme", cert_auth=False)
    revocation = {
        "MTLS_REVOCATION": "require", "MTLS_OCSP": False, "MTLS_CRLS": [str(crl_file)],
        "MTLS_REVOCATION_SCOPE": "leaf",
    }
    client = Client()
    with override_settings(**revocation):
        response = post_login(client, chains[holder] if holder else None, next="/private")
    assert response.status_code == 303
    location = response["Location"]
    assert on_site(location).startswith("/login?")
    assert error_of(location) == reason.value
    assert parse_qs(urlsplit(location).query)["next"] == ["/private"]
    assert USER_SESSION_KEY not in client.session
    page = client.get(on_site(location)).content.decode()
    assert f'data-reason="{reason.value}"' in page
    assert escape(LOGIN_MESSAGES[reason]) in page
    assert '<input type="hidden" name="next" value="/private">' in page  # try again, same target


def test_an_unknown_error_code_gets_the_generic_sentence_and_is_not_echoed(site: Any) -> None:
    page = Client().get("/login", {"mtls_error": "<script>alert(1)</script>"}).content.decode()
    assert 'class="mtls-login-error" role="alert" data-reason=""' in page
    assert "Certificate login failed." in page
    assert "alert(1)" not in page


ORIGINS = [
    pytest.param(None, id="missing"),
    pytest.param("null", id="null"),
    pytest.param("https://evil.example", id="foreign"),
    pytest.param("https://testserver.evil.example", id="lookalike"),
    pytest.param("https://testserver/login", id="with-a-path"),
]


@pytest.mark.parametrize("origin", ORIGINS)
def test_a_form_from_elsewhere_is_invalid_request_and_the_certificate_is_not_looked_at(
    origin: str | None, site: Any, alice: Issued
) -> None:
    start = time.time()
    client = Client()
    response = post_login(client, alice, origin=origin)
    assert response.status_code == 303
    assert error_of(response["Location"]) == Reason.INVALID_REQUEST.value
    assert USER_SESSION_KEY not in client.session
    assert [r for r in site.login_history(limit=20) if r.time >= start] == []


def test_a_form_of_the_views_own_origin_is_accepted(site: Any, alice: Issued) -> None:
    """The button may be on a page of the certificate listener itself (here http://testserver)."""
    response = post_login(Client(), alice, origin="http://testserver")
    assert error_of(response["Location"]) is None


@pytest.mark.parametrize(
    ("query", "location"),
    [
        pytest.param("", f"{SITE}/login", id="plain"),
        pytest.param("?next=/private", f"{SITE}/login?next=%2Fprivate", id="next-kept"),
        pytest.param("?next=//evil.example", f"{SITE}/login", id="hostile-next-dropped"),
    ],
)
def test_get_logs_nobody_in_and_goes_to_the_login_page(
    query: str, location: str, site: Any, alice: Issued
) -> None:
    client = Client(**client_certificate_environ(alice))
    response = client.get(LOGIN + query)
    assert (response.status_code, response["Location"]) == (303, location)
    assert USER_SESSION_KEY not in client.session


def test_other_methods_are_not_allowed(site: Any) -> None:
    response = Client().put(LOGIN)
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_an_unexpected_fault_goes_to_the_login_page_as_internal_error(
    site: Any, alice: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    broken = ["tests.contrib.django.mtls_support.BrokenBackend"]
    with override_settings(AUTHENTICATION_BACKENDS=broken):
        response = post_login(Client(), alice)
    assert response.status_code == 303
    assert error_of(response["Location"]) == Reason.INTERNAL_ERROR.value
    assert "database is down" in caplog.text


# -- the button ------------------------------------------------------------------------------------
def test_the_button_posts_to_the_view_with_the_pages_next(site: Any) -> None:
    page = Client().get("/login", {"next": "/private"}).content.decode()
    assert f'<form method="post" action="{LOGIN}">' in page
    assert '<input type="hidden" name="next" value="/private">' in page
    assert '<button type="submit" id="mtls-certificate-login">Log in with certificate</button>' in page
    assert 'role="alert"' not in page


def test_the_button_posts_to_mtls_login_url_and_drops_a_hostile_next(site: Any) -> None:
    with override_settings(MTLS_LOGIN_URL="https://testserver:8443/login/certificate/"):
        page = Client().get("/login", {"next": "//evil.example"}).content.decode()
    assert 'action="https://testserver:8443/login/certificate/"' in page
    assert 'name="next"' not in page


def test_the_label_is_escaped_and_the_messages_may_stand_apart(site: Any) -> None:
    page = Client().get(
        "/login-custom", {"label": "<b>Card</b>", "mtls_error": Reason.CERTIFICATE_EXPIRED.value}
    ).content.decode()
    assert '<button type="submit" id="mtls-certificate-login">&lt;b&gt;Card&lt;/b&gt;</button>' in page
    header = page.split("<header>")[1].split("</header>")[0]
    assert f'data-reason="{Reason.CERTIFICATE_EXPIRED.value}"' in header
    assert page.count('role="alert"') == 1


# -- the session ends with its certificate ---------------------------------------------------------
def _delete_certificate(store: Any, chain: Issued, session: Any) -> None:
    store.delete_certificate(chain.fingerprint)


def _deactivate_user(store: Any, chain: Issued, session: Any) -> None:
    store.set_user_active("alice", False)


def _switch_org_off(store: Any, chain: Issued, session: Any) -> None:
    store.set_org("acme", cert_auth=False)


def _give_certificate_to_another_user(store: Any, chain: Issued, session: Any) -> None:
    store.delete_certificate(chain.fingerprint)
    store.upload_certificate(chain.chain_pem, user_id="erin")


def _expire(store: Any, chain: Issued, session: Any) -> None:
    # The certificate's notAfter passing, without waiting for it: the session remembers it.
    kept = dict(session[SESSION_KEY], exp=time.time() - 1)
    session[SESSION_KEY] = kept
    session.save()


ENDINGS = [
    pytest.param(_delete_certificate, Reason.UNKNOWN_CERTIFICATE, id="certificate-deleted"),
    pytest.param(_give_certificate_to_another_user, Reason.UNKNOWN_CERTIFICATE, id="certificate-now-erins"),
    pytest.param(_deactivate_user, Reason.USER_INACTIVE, id="user-deactivated"),
    pytest.param(_switch_org_off, Reason.CERTIFICATE_AUTH_DISABLED, id="organisation-switched-off"),
    pytest.param(_expire, Reason.CERTIFICATE_EXPIRED, id="certificate-expired"),
]


@pytest.mark.parametrize(("change", "reason"), ENDINGS)
def test_the_session_ends_when_its_certificate_no_longer_opens_it(
    change: Any, reason: Reason, site: Any, alice: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtls_middleware")
    client = Client()
    login(client, alice)
    assert who(client) == "alice"
    change(site, alice, client.session)
    assert who(client) is None
    assert USER_SESSION_KEY not in client.session
    assert SESSION_KEY not in client.session
    assert client.session[ENDED_KEY] == reason.value
    assert f"{reason.value}: certificate session of 'alice'" in caplog.text
    page = client.get("/login").content.decode()
    assert f'class="mtls-login-error mtls-session-ended" role="alert" data-reason="{reason.value}"' in page
    assert escape(SESSION_ENDED_MESSAGES[reason]) in page
    again = client.get("/login").content.decode()  # once
    assert 'role="alert"' not in again


def test_the_session_also_ends_on_exempt_paths(site: Any, alice: Issued) -> None:
    client = Client()
    login(client, alice)
    site.delete_certificate(alice.fingerprint)
    with override_settings(MTLS_EXEMPT_PATHS=[LOGIN, "/private"]):
        assert who(client) is None
        assert client.session[ENDED_KEY] == Reason.UNKNOWN_CERTIFICATE.value


def test_a_new_login_clears_the_ended_message(site: Any, alice: Issued) -> None:
    client = Client()
    login(client, alice)
    site.set_user_active("alice", False)
    assert who(client) is None
    site.set_user_active("alice", True)
    login(client, alice)
    assert ENDED_KEY not in client.session
    assert 'role="alert"' not in client.get("/login").content.decode()


class CountingStore:
    """The guard's store, counting the lookups it makes (instrumentation: every call goes to the
    real DjangoStore)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookups = 0

    @property
    def generation(self) -> int:
        return int(self.inner.generation)

    def resolve_certificate(self, fingerprint: str) -> Any:
        self.lookups += 1
        return self.inner.resolve_certificate(fingerprint)


def test_an_unchanged_store_is_not_asked_again(site: Any, alice: Issued) -> None:
    guard = conf.get_session_guard()
    counting = CountingStore(guard.store)
    guard.store = counting  # type: ignore[assignment]  # the store's two members the guard uses
    client = Client()
    login(client, alice)
    assert who(client) == "alice"
    first = counting.lookups
    assert first == 1  # the session's first check after the login
    for _ in range(3):
        assert who(client) == "alice"
    assert counting.lookups == first
    site.delete_certificate(alice.fingerprint)
    assert who(client) is None
    assert counting.lookups == first + 1


def test_a_request_without_the_session_asks_the_store_nothing(site: Any, alice: Issued) -> None:
    guard = conf.get_session_guard()
    counting = CountingStore(guard.store)
    guard.store = counting  # type: ignore[assignment]  # the store's two members the guard uses
    client = Client()
    login(client, alice)
    site.delete_certificate(alice.fingerprint)
    assert Client().get("/private").json() == {"user": None}
    assert counting.lookups == 0


def test_a_stale_binding_is_ignored_and_dropped(site: Any, alice: Issued) -> None:
    """A binding that is not the session user's (another login in the same session) ends nothing."""
    client = Client()
    assert client.login(username="pat", password="pat-password")
    alice_user = get_user_model().objects.get(username="alice")
    session = client.session
    session[SESSION_KEY] = SessionBinding(
        alice.fingerprint, "alice", "acme", time.time() + 3600, time.time(), str(alice_user.pk)
    ).to_session()
    session.save()
    site.delete_certificate(alice.fingerprint)
    assert who(client) == "pat"
    assert SESSION_KEY not in client.session
    assert ENDED_KEY not in client.session


def test_a_password_session_is_not_a_certificate_session(site: Any) -> None:
    client = Client()
    assert client.login(username="pat", password="pat-password")
    site.set_org("acme", cert_auth=False)
    assert who(client) == "pat"
    assert ENDED_KEY not in client.session


@pytest.fixture
def impatient_site(site: Any) -> Iterator[Any]:
    """The site with its store on the ``impatient`` alias (gives up at once on a lock) and
    sessions in signed cookies, so that only the store needs the database."""
    from django.db import connections

    from mtls_middleware.contrib.django.store import DjangoStore

    if connections["impatient"].vendor != "sqlite":
        pytest.skip("holds an SQLite file lock; a PostgreSQL outage is the PostgreSQL store's test")
    store = DjangoStore(using="impatient")
    try:
        with override_settings(
            MTLS_STORE=store, SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"
        ):
            yield store
    finally:
        conf.reset()
        store.close()
        connections["impatient"].close()


def test_a_store_that_cannot_answer_refuses_the_request_and_keeps_the_session(
    impatient_site: Any, alice: Issued
) -> None:
    client = Client()
    login(client, alice)
    assert who(client) == "alice"
    impatient_site.add_user("zed")  # any change: the next request asks the store
    holder = sqlite3.connect(settings.DATABASES["impatient"]["NAME"], isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = client.get("/private")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503
    assert response.json()["error"] == Reason.STORE_UNAVAILABLE.value
    assert who(client) == "alice"  # the database back: the same session goes on


# -- ASGI --------------------------------------------------------------------------------------------
def asgi_site(chain: Issued) -> Any:
    """Django's real ASGI handler, presenting ``chain`` (in the scope's TLS extension) on the
    certificate login view's path only: the two listeners of a deployment, in one app."""
    from django.core.handlers.asgi import ASGIHandler

    plain = ASGIHandler()
    certified = with_client_certificate(ASGIHandler(), chain)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        chosen = certified if scope.get("path") == LOGIN else plain
        await chosen(scope, receive, send)

    return app


def asgi_browse(chain: Issued, steps: Any) -> list[httpx.Response]:
    """Run ``steps(http)`` (an async function of an httpx client keeping cookies) on
    :func:`asgi_site`."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=asgi_site(chain), client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return list(await steps(http))

    return async_to_sync(run)()


def test_asgi_login_and_session_end(site: Any, alice: Issued) -> None:
    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        login = await http.post(LOGIN, data={"next": "/private-async"}, headers={"Origin": SITE})
        served = await http.get("/private-async")
        await sync_to_async(site.delete_certificate)(alice.fingerprint)
        ended = await http.get("/private-async")
        page = await http.get("/login")
        return [login, served, ended, page]

    login, served, ended, page = asgi_browse(alice, steps)
    assert (login.status_code, login.headers["location"]) == (303, f"{SITE}/private-async")
    assert (served.json()["user"], ended.json()["user"]) == ("alice", None)
    assert f'data-reason="{Reason.UNKNOWN_CERTIFICATE.value}"' in page.text
    assert escape(SESSION_ENDED_MESSAGES[Reason.UNKNOWN_CERTIFICATE]) in page.text


def test_asgi_refusal_goes_to_the_login_page(site: Any, bob: Issued) -> None:
    async def steps(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.post(LOGIN, headers={"Origin": SITE})]

    [response] = asgi_browse(bob, steps)
    assert response.status_code == 303
    assert error_of(response.headers["location"]) == Reason.UNKNOWN_CERTIFICATE.value
