"""contrib/flask.py CertificateLogin: the browser's certificate login, with Flask-Login.

In process with Flask's test client: the certificate reaches the login view where a TLS server
puts it (``client_certificate_environ``), and the real middleware, authenticator and stores judge
it. The same flow in a real Chromium over real TLS is in tests/integration/test_browser_login.py.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask, render_template_string
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user
from werkzeug.test import TestResponse

from mtls_middleware import ConfigurationError, MemoryStore, Reason
from mtls_middleware.contrib.flask import MTLS, CertificateLogin, get_certificate_session
from mtls_middleware.history import MemoryHistory
from mtls_middleware.login import ENDED_KEY, LOGIN_MESSAGES, SESSION_ENDED_MESSAGES, SESSION_KEY
from mtls_middleware.testing import Issued, TestPKI, client_certificate_environ, crl_bytes, make_crl
from tests.stores.helpers import ObservedStore

SITE = "https://app.example"
LOGIN = "/login/certificate"


class User(UserMixin):
    def __init__(self, user_id: str, active: bool = True) -> None:
        self.id = user_id
        self.active = active

    @property
    def is_active(self) -> bool:
        return self.active


def make_app(
    pki: TestPKI,
    store: Any,
    *,
    users: dict[str, User] | None = None,
    exempt: bool = True,
    login_manager: bool = True,
    **config: Any,
) -> Flask:
    app = Flask(__name__)
    app.secret_key = "tests-only"
    history = MemoryHistory()
    app.config.update(
        {
            "MTLS_TRUST_ROOTS": pki.root_pem,
            "MTLS_STORE": store,
            "MTLS_REVOCATION": "off",
            "MTLS_MODE": "optional",
            "MTLS_HISTORY": history,
            "MTLS_EXEMPT_PATHS": [LOGIN] if exempt else [],
            "MTLS_LOGIN_SITE_URL": SITE,
            "MTLS_LOGIN_URL": f"https://app.example:8443{LOGIN}",
            "MTLS_LOGIN_DEFAULT_NEXT": "/home",
            **config,
        }
    )
    app.config["history"] = history
    app.config["hooks"] = []
    MTLS(app)
    known = users if users is not None else {"alice": User("alice")}
    if login_manager:
        manager = LoginManager(app)
        manager.user_loader(known.get)

    @app.before_request
    def earlier_hook() -> None:  # registered before CertificateLogin: must still run after it
        app.config["hooks"].append(current_user.get_id() if current_user else None)

    CertificateLogin(app, load_user=lambda identity: known.get(identity.user_id))

    @app.get("/login")
    def login_page() -> str:
        return render_template_string("<h1>Log in</h1>{{ certificate_login_button() }}")

    @app.get("/home")
    @login_required
    def home() -> dict[str, Any]:
        binding = get_certificate_session()
        return {"user": current_user.get_id(), "fingerprint": binding.fingerprint if binding else None}

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": current_user.get_id() if current_user.is_authenticated else None}

    @app.post("/password-login/<user_id>")
    def password_login(user_id: str) -> str:
        logout_user()
        login_user(known[user_id])
        return "ok"

    return app


def post_login(
    client: Any, chain: Issued | None, *, origin: str | None = SITE, next_target: str | None = None
) -> TestResponse:
    headers = {"Origin": origin} if origin is not None else {}
    data = {"next": next_target} if next_target is not None else {}
    environ = client_certificate_environ(chain) if chain is not None else {}
    return client.post(LOGIN, data=data, headers=headers, environ_base=environ)


def error_code(response: TestResponse) -> str | None:
    assert response.status_code == 303, response.data
    location = response.headers["Location"]
    assert location.startswith(f"{SITE}/login?"), location
    return parse_qs(urlsplit(location).query)["mtls_error"][0]


def shown(page: str) -> tuple[str, str] | None:
    """The (data-reason, message) of the login page's alert, or None."""
    found = re.search(r'data-reason="([^"]*)">([^<]*)</p>', page)
    return (found.group(1), found.group(2)) if found else None


@pytest.fixture
def app(pki: TestPKI, store: MemoryStore) -> Flask:
    return make_app(pki, store)


# -- the login ---------------------------------------------------------------------------------


def test_login_opens_a_flask_login_session_bound_to_the_certificate(
    app: Flask, store: MemoryStore, alice: Issued
) -> None:
    client = app.test_client()
    response = post_login(client, alice, next_target="/home?tab=2")
    assert response.status_code == 303
    assert response.headers["Location"] == f"{SITE}/home?tab=2"
    assert response.headers["Cache-Control"] == "no-store"
    page = client.get("/home")  # no certificate any more: the session carries the login
    assert page.get_json() == {"user": "alice", "fingerprint": alice.fingerprint}
    with client.session_transaction() as session:
        assert session[SESSION_KEY]["sid"] == "alice"
        assert session[SESSION_KEY]["fp"] == alice.fingerprint
    records = list(app.config["history"])
    assert [(r.outcome, r.user_id, r.fingerprint) for r in records] == [("accepted", "alice", alice.fingerprint)]


def test_login_starts_from_an_empty_session(app: Flask, alice: Issued) -> None:
    client = app.test_client()
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    post_login(client, alice)
    with client.session_transaction() as session:
        assert "planted" not in session


HOSTILE_NEXT = [
    pytest.param("//evil.example/", id="protocol-relative"),
    pytest.param("https://evil.example/", id="other-host"),
    pytest.param("/\\evil.example", id="backslash"),
    pytest.param("/\t/evil.example", id="tab"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("https://app.example@evil.example/", id="credentials"),
    pytest.param("https://app.example:8443/home", id="the-certificate-listener"),
]


@pytest.mark.parametrize("next_target", HOSTILE_NEXT)
def test_hostile_next_goes_to_the_default(app: Flask, alice: Issued, next_target: str) -> None:
    response = post_login(app.test_client(), alice, next_target=next_target)
    assert response.headers["Location"] == f"{SITE}/home"


def _expired(pki: TestPKI) -> Issued:
    now = dt.datetime.now(dt.timezone.utc)
    return pki.issue_client("old", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))


REFUSALS: list[Any] = [
    pytest.param(lambda pki, other, store, alice, bob: None, Reason.NO_CERTIFICATE, id="no-certificate"),
    pytest.param(lambda pki, other, store, alice, bob: bob, Reason.UNKNOWN_CERTIFICATE, id="unknown"),
    pytest.param(lambda pki, other, store, alice, bob: other.issue_client("alice"), Reason.UNTRUSTED_ISSUER,
                 id="untrusted-issuer"),
    pytest.param(lambda pki, other, store, alice, bob: _expired(pki), Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param(lambda pki, other, store, alice, bob: (store.set_org("acme", cert_auth=False), alice)[1],
                 Reason.CERTIFICATE_AUTH_DISABLED, id="organisation-off"),
    pytest.param(lambda pki, other, store, alice, bob: (store.set_user_active("alice", False), alice)[1],
                 Reason.USER_INACTIVE, id="user-deactivated"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSALS)
def test_refused_login_goes_back_to_the_login_page_with_a_sentence(
    app: Flask,
    pki: TestPKI,
    other_pki: TestPKI,
    store: MemoryStore,
    alice: Issued,
    bob: Issued,
    make: Callable[..., Issued | None],
    reason: Reason,
) -> None:
    client = app.test_client()
    response = post_login(client, make(pki, other_pki, store, alice, bob), next_target="/reports")
    assert error_code(response) == reason.value
    assert parse_qs(urlsplit(response.headers["Location"]).query)["next"] == ["/reports"]
    page = client.get(response.headers["Location"].removeprefix(SITE)).get_data(as_text=True)
    assert shown(page) == (reason.value, escape(LOGIN_MESSAGES[reason]))
    assert client.get("/whoami").get_json() == {"user": None}
    if reason is not Reason.NO_CERTIFICATE:
        assert [r.outcome for r in app.config["history"]] == [reason.value]


def test_revoked_certificate_is_refused(pki: TestPKI, store: MemoryStore, tmp_path: Path) -> None:
    revoked = pki.issue_client("revoked")
    store.upload_certificate(revoked.chain_pem, user_id="alice")
    (tmp_path / "root.crl").write_bytes(crl_bytes(make_crl(pki.root)))
    (tmp_path / "issuing.crl").write_bytes(crl_bytes(make_crl(pki.issuing, [revoked.cert.serial_number])))
    app = make_app(
        pki, store, MTLS_REVOCATION="require",
        MTLS_CRLS=[str(tmp_path / "root.crl"), str(tmp_path / "issuing.crl")],
    )
    assert error_code(post_login(app.test_client(), revoked)) == Reason.CERTIFICATE_REVOKED.value


def test_app_user_missing_or_inactive(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    missing = make_app(pki, store, users={})
    assert error_code(post_login(missing.test_client(), alice)) == Reason.UNKNOWN_CERTIFICATE.value
    inactive = make_app(pki, store, users={"alice": User("alice", active=False)})
    assert error_code(post_login(inactive.test_client(), alice)) == Reason.USER_INACTIVE.value


ORIGINS = [
    pytest.param(None, id="missing"),
    pytest.param("null", id="null"),
    pytest.param("https://evil.example", id="foreign"),
    pytest.param("https://app.example.evil.example", id="suffix"),
]


@pytest.mark.parametrize("origin", ORIGINS)
def test_a_form_from_elsewhere_cannot_log_the_browser_in(app: Flask, alice: Issued, origin: str | None) -> None:
    client = app.test_client()
    assert error_code(post_login(client, alice, origin=origin)) == Reason.INVALID_REQUEST.value
    assert client.get("/whoami").get_json() == {"user": None}
    assert list(app.config["history"]) == []  # refused before the certificate was looked at


def test_own_origin_is_accepted(app: Flask, alice: Issued) -> None:
    response = post_login(app.test_client(), alice, origin="http://localhost")
    assert response.headers["Location"] == f"{SITE}/home"


@pytest.mark.parametrize(
    ("query", "location"),
    [
        pytest.param("", f"{SITE}/login", id="plain"),
        pytest.param("?next=/reports", f"{SITE}/login?next=%2Freports", id="safe-next-kept"),
        pytest.param("?next=//evil.example", f"{SITE}/login", id="hostile-next-dropped"),
    ],
)
def test_get_is_not_a_login(app: Flask, alice: Issued, query: str, location: str) -> None:
    client = app.test_client()
    response = client.get(LOGIN + query, environ_base=client_certificate_environ(alice))
    assert (response.status_code, response.headers["Location"]) == (303, location)
    assert client.get("/whoami").get_json() == {"user": None}
    assert list(app.config["history"]) == []  # the certificate was not even looked at


# -- the session -------------------------------------------------------------------------------

ENDINGS = [
    pytest.param(lambda store, alice: store.delete_certificate(alice.fingerprint), Reason.UNKNOWN_CERTIFICATE,
                 id="certificate-deleted"),
    pytest.param(lambda store, alice: store.set_user_active("alice", False), Reason.USER_INACTIVE,
                 id="user-deactivated"),
    pytest.param(lambda store, alice: store.set_org("acme", cert_auth=False), Reason.CERTIFICATE_AUTH_DISABLED,
                 id="organisation-off"),
]


@pytest.mark.parametrize(("change", "reason"), ENDINGS)
def test_session_ends_on_the_next_request_after_a_change(
    app: Flask, store: MemoryStore, alice: Issued, change: Callable[..., Any], reason: Reason
) -> None:
    client = app.test_client()
    post_login(client, alice)
    assert client.get("/home").status_code == 200
    change(store, alice)
    assert client.get("/whoami").get_json() == {"user": None}
    assert app.config["hooks"][-1] is None  # no other hook saw the user of the ended session
    assert client.get("/home").status_code == 401
    page = client.get("/login").get_data(as_text=True)
    assert shown(page) == (reason.value, escape(SESSION_ENDED_MESSAGES[reason]))
    assert shown(client.get("/login").get_data(as_text=True)) is None  # said once
    with client.session_transaction() as session:
        assert SESSION_KEY not in session
        assert ENDED_KEY not in session


def test_session_ends_when_the_certificate_expires(
    app: Flask, alice: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    post_login(client, alice)
    with client.session_transaction() as session:
        binding = dict(session[SESSION_KEY])
        binding["exp"] = 1.0  # as if the clock had passed the certificate's notAfter
        session[SESSION_KEY] = binding
    assert client.get("/whoami").get_json() == {"user": None}
    page = client.get("/login").get_data(as_text=True)
    assert shown(page) == (Reason.CERTIFICATE_EXPIRED.value, escape(SESSION_ENDED_MESSAGES[Reason.CERTIFICATE_EXPIRED]))


def test_store_fault_refuses_the_request_but_keeps_the_session(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    switch = ObservedStore(store)
    app = make_app(pki, switch)
    client = app.test_client()
    post_login(client, alice)
    switch.broken = True
    store.add_user("carol", org="acme")  # a change: the guard must ask the store again
    response = client.get("/home")
    assert response.status_code == 503
    assert response.get_json()["error"] == Reason.STORE_UNAVAILABLE.value
    switch.broken = False
    assert client.get("/home").get_json()["user"] == "alice"


def test_a_password_login_after_a_certificate_login_drops_the_binding(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    app = make_app(pki, store, users={"alice": User("alice"), "bob": User("bob")})
    client = app.test_client()
    post_login(client, alice)
    client.post("/password-login/bob")
    store.delete_certificate(alice.fingerprint)  # alice's certificate: not bob's session
    assert client.get("/whoami").get_json() == {"user": "bob"}
    with client.session_transaction() as session:
        assert SESSION_KEY not in session


def test_tampered_binding_is_dropped(app: Flask, alice: Issued) -> None:
    client = app.test_client()
    post_login(client, alice)
    with client.session_transaction() as session:
        session[SESSION_KEY] = {"fp": 1}
    assert client.get("/whoami").get_json() == {"user": "alice"}
    with client.session_transaction() as session:
        assert SESSION_KEY not in session


# -- the button --------------------------------------------------------------------------------


def test_button_posts_to_the_certificate_listener_and_keeps_a_safe_next(app: Flask) -> None:
    page = app.test_client().get("/login?next=/reports").get_data(as_text=True)
    assert f'action="https://app.example:8443{LOGIN}"' in page
    assert '<input type="hidden" name="next" value="/reports">' in page
    assert 'id="mtls-certificate-login"' in page
    assert shown(page) is None


@pytest.mark.parametrize(
    "query",
    ["mtls_error=%3Cscript%3Ealert(1)%3C/script%3E&next=//evil.example", "mtls_error=duplicate_user"],
    ids=["html-and-hostile-next", "not-a-login-reason"],
)
def test_button_echoes_nothing_from_the_query(app: Flask, query: str) -> None:
    page = app.test_client().get(f"/login?{query}").get_data(as_text=True)
    assert "<script>" not in page
    assert "evil.example" not in page
    reason, message = shown(page) or ("", "")
    assert reason in ("unknown", "duplicate_user")
    assert "login failed" in message


# -- configuration -----------------------------------------------------------------------------


def test_login_path_must_be_exempt(pki: TestPKI, store: MemoryStore) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_app(pki, store, exempt=False)
    assert "MTLS_EXEMPT_PATHS" in str(caught.value.detail)


def test_needs_flask_login(pki: TestPKI, store: MemoryStore) -> None:
    with pytest.raises(ConfigurationError):
        make_app(pki, store, login_manager=False)


def test_needs_the_mtls_extension() -> None:
    app = Flask(__name__)
    LoginManager(app)
    with pytest.raises(ConfigurationError):
        CertificateLogin(app, load_user=lambda identity: None)


@pytest.mark.parametrize(
    "setting",
    [{"MTLS_LOGIN_SITE_URL": "app.example"}, {"MTLS_LOGIN_PAGE": "https://evil.example/login"}],
    ids=["site-url", "login-page"],
)
def test_bad_login_settings_fail_at_start_up(pki: TestPKI, store: MemoryStore, setting: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        make_app(pki, store, **setting)


def test_a_typo_in_a_login_setting_names_the_right_one(pki: TestPKI, store: MemoryStore) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_app(pki, store, MTLS_LOGIN_SITEURL="https://app.example")
    assert "MTLS_LOGIN_SITE_URL" in str(caught.value.detail)
