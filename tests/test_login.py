"""login.py: the framework-neutral part of browser certificate login.

Redirect targets and origins are judged against tables of hostile inputs; the session guard runs
against real stores (memory and SQLite), whose ``generation`` is the invalidation it relies on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware import (
    Authenticator,
    ConfigurationError,
    MemoryStore,
    MTLSConfig,
    MTLSError,
    Reason,
    SanEmailMapper,
)
from mtls_middleware.history import MemoryHistory
from mtls_middleware.login import (
    ERROR_PARAM,
    LOGIN_MESSAGES,
    LOGIN_SETTING_NAMES,
    SESSION_ENDED_MESSAGES,
    LoginSettings,
    SessionBinding,
    SessionGuard,
    authenticate_login,
    login_message,
    login_settings_from,
    session_ended_message,
)
from mtls_middleware.stores import open_store
from mtls_middleware.stores.base import Store
from mtls_middleware.testing import Issued, TestPKI, client_certificate_environ, client_certificate_scope
from tests.stores.helpers import ObservedStore

SITE = LoginSettings(
    site_url="https://app.example",
    allowed_origins=["https://admin.app.example:8444"],
    login_page="/login",
    default_next="/home",
)


# -- redirect targets --------------------------------------------------------------------------

REDIRECTS = [
    pytest.param("/reports?x=1", "https://app.example/reports?x=1", id="local-path-made-absolute"),
    pytest.param("/", "https://app.example/", id="root"),
    pytest.param("https://app.example/a", "https://app.example/a", id="site-url"),
    pytest.param("https://APP.example:443/a", "https://APP.example:443/a", id="site-url-default-port"),
    pytest.param("https://admin.app.example:8444/x", "https://admin.app.example:8444/x", id="allowed-origin"),
    pytest.param(None, "https://app.example/home", id="none"),
    pytest.param("", "https://app.example/home", id="empty"),
    pytest.param(42, "https://app.example/home", id="not-a-string"),
    pytest.param("//evil.example/", "https://app.example/home", id="protocol-relative"),
    pytest.param("/\\evil.example", "https://app.example/home", id="backslash"),
    pytest.param("\\\\evil.example", "https://app.example/home", id="double-backslash"),
    pytest.param("/\t/evil.example", "https://app.example/home", id="tab-dropped-by-browsers"),
    pytest.param("/\n/evil.example", "https://app.example/home", id="newline"),
    pytest.param("/ /evil.example", "https://app.example/home", id="space"),
    pytest.param("/\x00x", "https://app.example/home", id="nul"),
    pytest.param("https://evil.example/", "https://app.example/home", id="other-host"),
    pytest.param("https://app.example.evil.example/", "https://app.example/home", id="suffix-host"),
    pytest.param("https://app.example@evil.example/", "https://app.example/home", id="credentials"),
    pytest.param("https://app.example:8443/", "https://app.example/home", id="other-port"),
    pytest.param("http://app.example/", "https://app.example/home", id="other-scheme"),
    pytest.param("javascript:alert(1)", "https://app.example/home", id="javascript"),
    pytest.param("data:text/html,x", "https://app.example/home", id="data"),
    pytest.param("reports", "https://app.example/home", id="relative-no-slash"),
    pytest.param("https://app.example:99999/", "https://app.example/home", id="bad-port"),
    pytest.param("https://äpp.example/", "https://app.example/home", id="non-ascii-host"),
    pytest.param("/" + "a" * 3000, "https://app.example/home", id="over-long"),
]


@pytest.mark.parametrize(("target", "expected"), REDIRECTS)
def test_redirect_target_stays_on_the_site(target: object, expected: str) -> None:
    assert SITE.redirect_target(target) == expected


def test_without_site_url_local_paths_stay_relative() -> None:
    settings = LoginSettings()
    assert settings.redirect_target("/reports") == "/reports"
    assert settings.redirect_target("https://evil.example/") == "/"
    assert settings.redirect_target("https://app.example/") == "/"


@pytest.mark.parametrize(
    ("reason", "next_target", "expected"),
    [
        pytest.param(Reason.CERTIFICATE_REVOKED, None,
                     "https://app.example/login?mtls_error=certificate_revoked", id="no-next"),
        pytest.param(Reason.NO_CERTIFICATE, "/reports?a=1",
                     "https://app.example/login?mtls_error=no_certificate&next=%2Freports%3Fa%3D1",
                     id="next-kept"),
        pytest.param(Reason.NO_CERTIFICATE, "https://evil.example/",
                     "https://app.example/login?mtls_error=no_certificate", id="hostile-next-dropped"),
    ],
)
def test_failure_url_carries_only_the_code_and_a_safe_next(
    reason: Reason, next_target: str | None, expected: str
) -> None:
    assert SITE.failure_url(reason, next_target) == expected


@pytest.mark.parametrize(
    ("next_target", "expected"),
    [
        pytest.param(None, "https://app.example/login", id="none"),
        pytest.param("/reports", "https://app.example/login?next=%2Freports", id="safe-next-kept"),
        pytest.param("/home", "https://app.example/login", id="the-default-is-not-repeated"),
        pytest.param("//evil.example", "https://app.example/login", id="hostile-next-dropped"),
    ],
)
def test_login_page_url_carries_no_code(next_target: str | None, expected: str) -> None:
    assert SITE.login_page_url(next_target) == expected


ORIGINS = [
    pytest.param("https://app.example", None, True, id="site"),
    pytest.param("https://app.example:443", None, True, id="site-default-port"),
    pytest.param("https://admin.app.example:8444", None, True, id="allowed"),
    pytest.param("https://app.example:8443", "https://app.example:8443", True, id="own-origin"),
    pytest.param(None, None, False, id="missing"),
    pytest.param("", None, False, id="empty"),
    pytest.param("null", None, False, id="null-sandboxed"),
    pytest.param("https://evil.example", None, False, id="foreign"),
    pytest.param("https://app.example/path", None, False, id="with-path"),
    pytest.param("https://app.example?x", None, False, id="with-query"),
    pytest.param("http://app.example", None, False, id="other-scheme"),
    pytest.param("https://app.example:8443", None, False, id="other-port-not-own"),
]


@pytest.mark.parametrize(("origin", "own", "allowed"), ORIGINS)
def test_origin_allowed(origin: str | None, own: str | None, allowed: bool) -> None:
    assert SITE.origin_allowed(origin, own_origin=own) is allowed


BAD_SETTINGS = [
    pytest.param({"site_url": "app.example"}, id="site-url-no-scheme"),
    pytest.param({"site_url": "https://app.example/path"}, id="site-url-with-path"),
    pytest.param({"site_url": "ftp://app.example"}, id="site-url-ftp"),
    pytest.param({"site_url": "https://u:p@app.example"}, id="site-url-credentials"),
    pytest.param({"allowed_origins": "https://a.example"}, id="origins-a-string"),
    pytest.param({"allowed_origins": ["https://a.example/x"]}, id="origin-with-path"),
    pytest.param({"login_page": "login"}, id="login-page-relative"),
    pytest.param({"login_page": "https://evil.example/login"}, id="login-page-foreign"),
    pytest.param({"default_next": "//evil.example"}, id="default-next-protocol-relative"),
    pytest.param({"login_url": "login/certificate"}, id="login-url-relative"),
]


@pytest.mark.parametrize("kwargs", BAD_SETTINGS)
def test_bad_settings_fail_at_start_up(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LoginSettings(**kwargs)


def test_login_settings_from_reads_the_mtls_login_keys() -> None:
    settings = login_settings_from(
        {
            "MTLS_LOGIN_SITE_URL": "https://App.Example:443/",
            "MTLS_LOGIN_URL": "https://app.example:8443/login/certificate",
            "MTLS_LOGIN_PAGE": "/signin",
            "MTLS_TRUST_ROOTS": "ignored here",
        },
        default_next="/start",
    )
    assert (settings.site_url, settings.login_page, settings.default_next) == (
        "https://app.example", "/signin", "/start",
    )
    assert settings.login_url == "https://app.example:8443/login/certificate"
    assert set(LOGIN_SETTING_NAMES) == {
        "MTLS_LOGIN_SITE_URL", "MTLS_LOGIN_ALLOWED_ORIGINS", "MTLS_LOGIN_PAGE",
        "MTLS_LOGIN_DEFAULT_NEXT", "MTLS_LOGIN_URL",
    }
    with pytest.raises(ConfigurationError):
        login_settings_from({}, site=" https://x.example")


# -- messages ----------------------------------------------------------------------------------

#: Every reason a certificate login can be refused with: each needs its own sentence.
LOGIN_REASONS = [
    Reason.NO_CERTIFICATE, Reason.UNTRUSTED_PROXY, Reason.PROXY_VERIFICATION_FAILED,
    Reason.MALFORMED_CERTIFICATE, Reason.CERTIFICATE_TOO_LARGE, Reason.CHAIN_TOO_LONG,
    Reason.CERTIFICATE_EXPIRED, Reason.CERTIFICATE_NOT_YET_VALID, Reason.UNTRUSTED_ISSUER,
    Reason.CHAIN_INVALID, Reason.MISSING_CLIENT_AUTH_EKU, Reason.DUAL_PURPOSE_EKU,
    Reason.CERTIFICATE_REVOKED, Reason.NO_REVOCATION_SOURCE, Reason.REVOCATION_UNAVAILABLE,
    Reason.UNKNOWN_CERTIFICATE, Reason.USER_INACTIVE, Reason.CERTIFICATE_AUTH_DISABLED,
    Reason.STORE_UNAVAILABLE, Reason.INVALID_REQUEST, Reason.INTERNAL_ERROR,
]


@pytest.mark.parametrize("reason", LOGIN_REASONS, ids=str)
def test_every_login_reason_has_its_own_sentence(reason: Reason) -> None:
    assert login_message(reason.value) == LOGIN_MESSAGES[reason] == login_message(reason)
    assert reason.value not in LOGIN_MESSAGES[reason]


def test_login_sentences_are_distinct_where_the_advice_differs() -> None:
    sentences = [LOGIN_MESSAGES[r] for r in LOGIN_REASONS if r not in (Reason.INTERNAL_ERROR,)]
    assert len(set(sentences)) == len(sentences)


@pytest.mark.parametrize(
    "code",
    ["<script>alert(1)</script>", "not_a_reason", "duplicate_user", "x" * 10_000],
    ids=["html", "unknown", "not-a-login-reason", "huge"],
)
def test_unknown_codes_get_a_generic_sentence_that_echoes_nothing(code: str) -> None:
    message = login_message(code)
    assert message is not None
    assert code not in message
    assert "<" not in message


@pytest.mark.parametrize("code", [None, ""], ids=["none", "empty"])
def test_no_code_no_message(code: str | None) -> None:
    assert login_message(code) is None
    assert session_ended_message(code) is None


@pytest.mark.parametrize("reason", list(SESSION_ENDED_MESSAGES), ids=str)
def test_session_ended_sentences(reason: Reason) -> None:
    assert session_ended_message(reason.value) == SESSION_ENDED_MESSAGES[reason]
    assert "logged out" in SESSION_ENDED_MESSAGES[reason]


def test_session_ended_unknown_code_is_generic() -> None:
    assert session_ended_message("<b>") == session_ended_message("nope")
    assert "<b>" not in (session_ended_message("<b>") or "")


# -- bindings ----------------------------------------------------------------------------------


def _identity(pki: TestPKI, store: Store, chain: Issued) -> Any:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off"))
    return authenticate_login(auth, environ=client_certificate_environ(chain))


def test_binding_round_trips_through_the_session(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    identity = _identity(pki, store, alice)
    binding = SessionBinding.for_identity(identity, 7, now=1000.0)
    assert binding.session_user == "7"
    assert binding.fingerprint == alice.fingerprint
    assert binding.not_after == identity.not_after.timestamp()
    assert SessionBinding.from_session(binding.to_session()) == binding


MALFORMED_BINDINGS = [
    pytest.param(None, id="none"),
    pytest.param("fp", id="string"),
    pytest.param([], id="list"),
    pytest.param({}, id="empty"),
    pytest.param({"fp": "a", "user": "u", "org": "o", "exp": 1.0, "at": 1.0}, id="no-sid"),
    pytest.param({"fp": "a", "user": "u", "org": "o", "exp": "1", "at": 1.0, "sid": "1"}, id="exp-string"),
    pytest.param({"fp": "a", "user": "u", "org": "o", "exp": True, "at": 1.0, "sid": "1"}, id="exp-bool"),
    pytest.param({"fp": "", "user": "u", "org": "o", "exp": 1.0, "at": 1.0, "sid": "1"}, id="empty-fp"),
    pytest.param({"fp": 1, "user": "u", "org": "o", "exp": 1.0, "at": 1.0, "sid": "1"}, id="fp-int"),
]


@pytest.mark.parametrize("value", MALFORMED_BINDINGS)
def test_malformed_binding_reads_as_none(value: object) -> None:
    assert SessionBinding.from_session(value) is None


# -- the login ---------------------------------------------------------------------------------


def test_authenticate_login_records_the_attempt(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    history = MemoryHistory()
    auth = Authenticator(
        MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off", history=history)
    )
    identity = authenticate_login(auth, scope=client_certificate_scope(alice))
    assert identity.user_id == "alice"
    assert [(r.outcome, r.user_id) for r in history] == [("accepted", "alice")]


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_authenticate_login_without_a_certificate_is_no_certificate(
    pki: TestPKI, store: MemoryStore, mode: str
) -> None:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off", mode=mode))
    with pytest.raises(MTLSError) as caught:
        authenticate_login(auth, environ={"REMOTE_ADDR": "127.0.0.1"})
    assert caught.value.reason is Reason.NO_CERTIFICATE


def test_authenticate_login_refusal_keeps_its_reason(pki: TestPKI, store: MemoryStore, bob: Issued) -> None:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off"))
    with pytest.raises(MTLSError) as caught:
        authenticate_login(auth, environ=client_certificate_environ(bob))
    assert caught.value.reason is Reason.UNKNOWN_CERTIFICATE


def test_authenticate_login_needs_exactly_one_of_environ_and_scope(pki: TestPKI, store: MemoryStore) -> None:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off"))
    with pytest.raises(TypeError):
        authenticate_login(auth)
    with pytest.raises(TypeError):
        authenticate_login(auth, environ={}, scope={})


# -- the session guard -------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path, alice: Issued, bob: Issued) -> Iterator[Store]:
    store = MemoryStore() if request.param == "memory" else open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.add_user("alice", org="acme")
    store.upload_certificate(alice.chain_pem, user_id="alice")
    store.add_user("bob", org="beta")
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _guard(pki: TestPKI, store: Store, **config: Any) -> tuple[SessionGuard, Any]:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off", **config))
    return SessionGuard(auth), auth


def _binding(auth: Authenticator, chain: Issued) -> SessionBinding:
    identity = authenticate_login(auth, environ=client_certificate_environ(chain))
    return SessionBinding.for_identity(identity, identity.user_id)


CHANGES = [
    pytest.param(lambda s, a: s.delete_certificate(a.fingerprint), Reason.UNKNOWN_CERTIFICATE,
                 id="certificate-deleted"),
    pytest.param(lambda s, a: s.set_user_active("alice", False), Reason.USER_INACTIVE, id="user-deactivated"),
    pytest.param(lambda s, a: s.set_org("acme", cert_auth=False), Reason.CERTIFICATE_AUTH_DISABLED,
                 id="org-switched-off"),
    pytest.param(
        lambda s, a: (s.delete_certificate(a.fingerprint), s.upload_certificate(a.chain_pem, user_id="bob")),
        Reason.UNKNOWN_CERTIFICATE, id="certificate-moved-to-another-user",
    ),
    pytest.param(lambda s, a: s.add_user("alice", org="beta"), Reason.UNKNOWN_CERTIFICATE,
                 id="user-moved-to-another-org"),
]


@pytest.mark.parametrize(("change", "reason"), CHANGES)
def test_guard_ends_the_session_after_a_change(
    pki: TestPKI, real_store: Store, alice: Issued, change: Any, reason: Reason
) -> None:
    guard, auth = _guard(pki, real_store)
    binding = _binding(auth, alice)
    assert guard.check(binding) is None
    change(real_store, alice)
    assert guard.check(binding) is reason


def test_guard_costs_no_store_lookup_while_nothing_changed(
    pki: TestPKI, real_store: Store, alice: Issued
) -> None:
    counting = ObservedStore(real_store)
    guard, auth = _guard(pki, counting)  # type: ignore[arg-type]
    binding = _binding(auth, alice)
    before = counting.lookups
    for _ in range(100):
        assert guard.check(binding) is None
    assert counting.lookups - before == 1
    real_store.rename_certificate(alice.fingerprint, "renamed")  # renames do not invalidate
    guard.check(binding)
    assert counting.lookups - before == 1
    real_store.add_user("carol", org="acme")  # any generation change: one more lookup
    guard.check(binding)
    assert counting.lookups - before == 2


def test_guard_ends_the_session_when_the_certificate_expires(
    pki: TestPKI, real_store: Store, alice: Issued
) -> None:
    guard, auth = _guard(pki, real_store)
    binding = _binding(auth, alice)
    assert guard.check(binding, now=binding.not_after - 1) is None
    assert guard.check(binding, now=binding.not_after) is Reason.CERTIFICATE_EXPIRED


def test_guard_follows_a_mapper_that_maps_by_user(pki: TestPKI, alice: Issued) -> None:
    store = MemoryStore()
    store.add_user("alice@example.org", org="acme")  # mapped by SAN e-mail: no registration
    guard, auth = _guard(pki, store, identity_mapper=SanEmailMapper())
    binding = _binding(auth, alice)
    assert guard.check(binding) is None
    store.set_user_active("alice@example.org", False)
    assert guard.check(binding) is Reason.USER_INACTIVE


def test_guard_store_fault_is_store_unavailable_not_an_ended_session(
    pki: TestPKI, real_store: Store, alice: Issued
) -> None:
    _, auth = _guard(pki, real_store)
    binding = _binding(auth, alice)
    broken = ObservedStore(real_store)
    broken.broken = True
    guard = SessionGuard(Authenticator(MTLSConfig(
        trust_roots=pki.root_pem, store=broken, revocation="off",  # type: ignore[arg-type]
    )))
    with pytest.raises(MTLSError) as caught:
        guard.check(binding)
    assert caught.value.reason is Reason.STORE_UNAVAILABLE


def test_guard_is_bounded(pki: TestPKI, real_store: Store, alice: Issued) -> None:
    auth = Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=real_store, revocation="off"))
    guard = SessionGuard(auth, maxsize=3)
    binding = _binding(auth, alice)
    for n in range(10):
        guard.check(SessionBinding(f"{n:064x}", "x", "y", binding.not_after, 0.0, "1"))
    assert len(guard._known) == 3


def test_error_param_name_is_stable() -> None:
    assert ERROR_PARAM == "mtls_error"


def test_expired_binding_checked_before_the_store(pki: TestPKI, alice: Issued) -> None:
    store = ObservedStore(MemoryStore())
    guard = SessionGuard(Authenticator(MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off")))  # type: ignore[arg-type]
    past = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    assert guard.check(SessionBinding("ab" * 32, "alice", "acme", past, 0.0, "1")) is Reason.CERTIFICATE_EXPIRED
    assert store.lookups == 0
