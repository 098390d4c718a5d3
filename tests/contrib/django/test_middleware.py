"""contrib/django/middleware.py: the Django middleware under WSGI and ASGI, against the DjangoStore.

Requests go through Django's own handlers: the WSGI one (the test ``Client``, the certificate in
the environ as a TLS server puts it) and the real ASGI one driven by httpx (the certificate in the
scope's TLS extension, or nginx headers from a peer). The store is the app's DjangoStore in the
test database; the views (``mtls_urls``) echo the identity and ``request.user``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("django")

from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from mtls_middleware import ConfigurationError, Reason
from mtls_middleware.contrib.django import conf
from mtls_middleware.testing import Issued, TestPKI
from tests.contrib.django import mtls_urls
from tests.contrib.django.mtls_support import (
    AUTHENTICATION,
    COMMON,
    MIDDLEWARE,
    PROXY_PEER,
    SESSION,
    STRANGER,
    SYNC_ONLY_CALLS,
    LoopProbeMapper,
    get,
    project_settings,
    register_users,
    wsgi_get,
)
from tests.contrib.django.setup import empty_tables, setup_django

KINDS = [pytest.param("wsgi", id="wsgi"), pytest.param("asgi", id="asgi")]


@pytest.fixture(scope="module")
def certificates(pki: TestPKI, other_pki: TestPKI) -> dict[str, Issued]:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "carol": pki.issue_client("carol"),
        "dave": pki.issue_client("dave"),
        "erin": pki.issue_client("erin"),
        "expired": pki.issue_client(
            "expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        "foreign": other_pki.issue_client("mallory"),
    }


@pytest.fixture
def project(
    pki_dir: Path, alice: Issued, bob: Issued, certificates: dict[str, Issued]
) -> Iterator[Any]:
    """A migrated, emptied database and the store's users:

    alice (acme, a Django user), carol (deactivated in the store), dave (a Django user who is
    inactive in Django), erin (no Django user); bob is registered to nobody.
    """
    setup_django()
    empty_tables()
    store = register_users(alice, certificates)
    get_user_model().objects.create_user("alice", password="alice-password")
    mtls_urls.SEEN.clear()
    with override_settings(**project_settings(pki_dir / "root.pem")):
        yield store
    conf.reset()
    # Written now, not into the tables of a later test (they are emptied before each test).
    store.history_writer.flush(10.0)


def escaped(issued: Issued) -> str:
    """The leaf as nginx's ``$ssl_client_escaped_cert`` forwards it."""
    return quote(issued.cert_pem.decode(), safe="")


# -- accepted -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_registered_certificate_reaches_the_view_with_identity_and_user(
    kind: str, project: Any, alice: Issued
) -> None:
    answer = get(kind, "/whoami", chain=alice)
    assert answer.status == 200, answer
    assert answer.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": "tls:environ" if kind == "wsgi" else "tls:asgi",
        "meta_identity": True,
        "user": "alice",
        "cert_header": False,
    }
    assert mtls_urls.SEEN == ["/whoami"]


@pytest.mark.parametrize("kind", KINDS)
def test_async_view_reads_the_certificate_user_from_auser(kind: str, project: Any, alice: Issued) -> None:
    answer = get(kind, "/whoami-async", chain=alice)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == ("alice", "alice")


@pytest.mark.parametrize("kind", KINDS)
def test_every_attempt_is_in_the_django_stores_history(
    kind: str, project: Any, alice: Issued, bob: Issued
) -> None:
    start = time.time()
    assert get(kind, "/whoami", chain=alice).status == 200
    assert get(kind, "/whoami", chain=bob).status == 403
    # The writer thread may still flush an earlier test's records: only this test's count.
    records = [r for r in project.login_history(limit=50) if r.time >= start]
    assert sorted((r.outcome, r.fingerprint) for r in records) == [
        ("accepted", alice.fingerprint), ("unknown_certificate", bob.fingerprint)
    ]


def test_asgi_under_a_sync_only_inner_middleware_still_reads_the_scope(
    project: Any, alice: Issued
) -> None:
    """A sync-only middleware after ours makes Django call ours synchronously under ASGI: the
    request is still an ASGI request, and its certificate is in the scope, not in META."""
    middleware = [SESSION, COMMON, AUTHENTICATION, MIDDLEWARE, "tests.contrib.django.mtls_support.sync_only"]
    with override_settings(MIDDLEWARE=middleware):
        answer = get("asgi", "/whoami", chain=alice)
    assert answer.status == 200, answer
    assert answer.json()["source"] == "tls:asgi"
    assert SYNC_ONLY_CALLS == ["/whoami"]  # Django did adapt: ours ran in sync mode


def test_asgi_does_the_blocking_work_off_the_event_loop(project: Any, alice: Issued) -> None:
    """The pipeline (here its map stage, which queries the store) and the user lookup run in
    Django's sync thread; on the loop the ORM would raise SynchronousOnlyOperation anyway."""
    probe = LoopProbeMapper()
    with override_settings(MTLS_IDENTITY_MAPPER=probe):
        answer = get("asgi", "/whoami-async", chain=alice)
    assert answer.status == 200, answer
    assert answer.json()["user"] == "alice"
    assert probe.on_loop == [False]


@pytest.mark.parametrize("kind", KINDS)
def test_another_store_named_in_the_settings(kind: str, project: Any, alice: Issued) -> None:
    """MTLS_STORE may name any store instead of the project's database."""
    from mtls_middleware import MemoryStore

    store = MemoryStore()
    store.add_user("alice", org="elsewhere")
    store.upload_certificate(alice.chain_pem, user_id="alice")
    with override_settings(MTLS_STORE=store):
        answer = get(kind, "/whoami", chain=alice)
    assert answer.status == 200, answer
    assert (answer.json()["org"], answer.json()["user"]) == ("elsewhere", "alice")


# -- refused ------------------------------------------------------------------------------------
REFUSALS = [
    pytest.param(None, 401, Reason.NO_CERTIFICATE, id="no-certificate"),
    pytest.param("bob", 403, Reason.UNKNOWN_CERTIFICATE, id="unregistered"),
    pytest.param("carol", 403, Reason.USER_INACTIVE, id="deactivated-in-the-store"),
    pytest.param("expired", 403, Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param("foreign", 403, Reason.UNTRUSTED_ISSUER, id="foreign-ca"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("client", "status", "reason"), REFUSALS)
def test_refused_request_gets_its_reason_and_never_reaches_the_view(
    kind: str,
    client: str | None,
    status: int,
    reason: Reason,
    project: Any,
    bob: Issued,
    certificates: dict[str, Issued],
) -> None:
    chain = {"bob": bob, **certificates}[client] if client else None
    answer = get(kind, "/whoami", chain=chain)
    assert (answer.status, answer.error) == (status, reason.value)
    assert answer.json()["message"] == reason.message
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert mtls_urls.SEEN == []


# -- behind a proxy: nginx headers ---------------------------------------------------------------
@pytest.fixture
def behind_nginx(project: Any, pki_dir: Path) -> Iterator[Any]:
    with override_settings(
        MTLS_PROXY="nginx",
        MTLS_TRUSTED_PROXIES=[PROXY_PEER],
        MTLS_INTERMEDIATES=str(pki_dir / "intermediates.pem"),
    ):
        yield project


@pytest.fixture(scope="module", autouse=True)
def _intermediates(pki_dir: Path, pki: TestPKI) -> None:
    (pki_dir / "intermediates.pem").write_bytes(pki.issuing.cert_pem)


PROXY_CASES = [
    pytest.param(PROXY_PEER, {"X-SSL-Client-Cert": "alice", "X-SSL-Client-Verify": "SUCCESS"}, 200, None, id="trusted-proxy"),
    pytest.param(STRANGER, {"X-SSL-Client-Cert": "alice", "X-SSL-Client-Verify": "SUCCESS"}, 401, Reason.UNTRUSTED_PROXY, id="untrusted-peer"),
    pytest.param(PROXY_PEER, {"X-SSL-Client-Cert": "%%not-a-certificate", "X-SSL-Client-Verify": "SUCCESS"}, 400, Reason.MALFORMED_CERTIFICATE, id="garbage-header"),
    pytest.param(PROXY_PEER, {"X-SSL-Client-Cert": "alice", "X-SSL-Client-Verify": "FAILED:certificate revoked"}, 403, Reason.PROXY_VERIFICATION_FAILED, id="proxy-says-failed"),
    pytest.param(PROXY_PEER, {"X-SSL-Client-Verify": "NONE"}, 401, Reason.NO_CERTIFICATE, id="proxy-says-none"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("peer", "headers", "status", "reason"), PROXY_CASES)
def test_nginx_headers(
    kind: str,
    peer: str,
    headers: dict[str, str],
    status: int,
    reason: Reason | None,
    behind_nginx: Any,
    alice: Issued,
) -> None:
    sent = {name: escaped(alice) if value == "alice" else value for name, value in headers.items()}
    answer = get(kind, "/whoami", headers=sent, peer=peer)
    if reason is None:
        assert answer.status == 200, answer
        assert answer.json()["source"] == "proxy:nginx"
        assert answer.json()["user"] == "alice"
    else:
        assert (answer.status, answer.error) == (status, reason.value)


def test_asgi_duplicated_certificate_header_is_refused(behind_nginx: Any, alice: Issued, bob: Issued) -> None:
    """Django joins repeated headers in META; the ASGI scope keeps both, and the middleware reads
    the scope, so a second certificate header cannot hide behind the first."""
    headers = [("X-SSL-Client-Cert", escaped(alice)), ("X-SSL-Client-Cert", escaped(bob))]
    answer = get("asgi", "/whoami", headers=headers, peer=PROXY_PEER)
    assert answer.status == 400, answer
    assert answer.error == Reason.MALFORMED_CERTIFICATE.value
    assert mtls_urls.SEEN == []


# -- exempt paths -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        pytest.param("/health", True, id="exempt"),
        pytest.param("/health/deep", True, id="below-exempt"),
        pytest.param("/whoami", False, id="not-exempt"),
    ],
)
def test_exempt_paths_skip_authentication(kind: str, path: str, exempt: bool, project: Any) -> None:
    with override_settings(MTLS_EXEMPT_PATHS=["/health"]):
        answer = get(kind, path)
    if exempt:
        assert answer.status == 200, answer
        assert answer.json()["user_id"] is None
    else:
        assert (answer.status, answer.error) == (401, Reason.NO_CERTIFICATE.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("peer", "kept"),
    [pytest.param(STRANGER, False, id="untrusted-peer-header-stripped"), pytest.param(PROXY_PEER, True, id="trusted-proxy-header-kept")],
)
def test_exempt_view_never_sees_a_strangers_certificate_header(
    kind: str, peer: str, kept: bool, behind_nginx: Any, alice: Issued
) -> None:
    with override_settings(MTLS_EXEMPT_PATHS=["/health"]):
        answer = get(kind, "/health", headers={"X-SSL-Client-Cert": escaped(alice)}, peer=peer)
    assert answer.status == 200, answer
    assert answer.json()["cert_header"] is kept


# -- request.user ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("client", "user"),
    [
        pytest.param("alice", "alice", id="django-user"),
        pytest.param("erin", None, id="no-django-user-anonymous"),
        pytest.param("dave", None, id="inactive-django-user-anonymous"),
    ],
)
def test_request_user_is_the_certificates_user(
    kind: str, client: str, user: str | None, project: Any, alice: Issued, certificates: dict[str, Issued]
) -> None:
    chain = {"alice": alice, **certificates}[client]
    answer = get(kind, "/whoami", chain=chain)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == (client, user)


@pytest.mark.parametrize("kind", KINDS)
def test_the_certificate_decides_the_user_over_a_password_session(
    kind: str, project: Any, certificates: dict[str, Issued]
) -> None:
    """pat logged in with a password; a request carrying erin's certificate (no Django user) is
    erin's, so anonymous, not pat's."""
    client = Client()
    assert client.login(username="pat", password="pat-password")
    if kind == "wsgi":
        answer = wsgi_get("/whoami", chain=certificates["erin"], client=client)
    else:
        from tests.contrib.django.mtls_support import asgi_get

        cookies = {name: morsel.value for name, morsel in client.cookies.items()}
        answer = asgi_get("/whoami", chain=certificates["erin"], cookies=cookies)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == ("erin", None)


@pytest.mark.parametrize("kind", KINDS)
def test_optional_mode_without_certificate_keeps_the_password_session(kind: str, project: Any) -> None:
    client = Client()
    assert client.login(username="pat", password="pat-password")
    with override_settings(MTLS_MODE="optional"):
        if kind == "wsgi":
            answer = wsgi_get("/whoami", client=client)
        else:
            from tests.contrib.django.mtls_support import asgi_get

            cookies = {name: morsel.value for name, morsel in client.cookies.items()}
            answer = asgi_get("/whoami", cookies=cookies)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == (None, "pat")


@pytest.mark.parametrize("kind", KINDS)
def test_set_user_off_leaves_request_user_alone(kind: str, project: Any, alice: Issued) -> None:
    with override_settings(MTLS_SET_USER=False):
        answer = get(kind, "/whoami", chain=alice)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == ("alice", None)


# -- enforce_mtls: a user who must log in by certificate is never served on a session alone ---------
def session_of(username: str, password: str) -> dict[str, str]:
    """The cookies of a password login (ModelBackend, as a project that keeps it)."""
    client = Client()
    assert client.login(username=username, password=password)
    return {name: morsel.value for name, morsel in client.cookies.items()}


def get_with_session(kind: str, path: str, cookies: dict[str, str], **options: Any) -> Any:
    if kind == "wsgi":
        client = Client()
        for name, value in cookies.items():
            client.cookies[name] = value
        return wsgi_get(path, client=client, **options)
    from tests.contrib.django.mtls_support import asgi_get

    return asgi_get(path, cookies=cookies, **options)


@pytest.fixture
def enforced(project: Any) -> Any:
    """alice now holds enforce_mtls in the store (she still has a Django password)."""
    project.add_user("alice", org="acme", permissions=["enforce_mtls"])
    return project


VIEWS = [pytest.param("/whoami", id="sync-view-request.user"), pytest.param("/whoami-async", id="async-view-auser")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("view", VIEWS)
def test_enforced_users_password_session_is_anonymous_without_certificate(
    kind: str, view: str, enforced: Any
) -> None:
    """t5: optional mode, a password session of alice, no certificate: not alice."""
    cookies = session_of("alice", "alice-password")
    with override_settings(MTLS_MODE="optional"):
        answer = get_with_session(kind, view, cookies)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == (None, None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("permissions", "user"),
    [
        pytest.param([], "alice", id="without-enforce_mtls-session-kept"),
        pytest.param(["api_only"], "alice", id="other-permission-session-kept"),
        pytest.param(["enforce_mtls"], None, id="enforce_mtls-anonymous"),
    ],
)
def test_only_enforce_mtls_takes_the_session_user_away(
    kind: str, permissions: list[str], user: str | None, project: Any
) -> None:
    project.add_user("alice", org="acme", permissions=permissions)
    cookies = session_of("alice", "alice-password")
    with override_settings(MTLS_MODE="optional"):
        answer = get_with_session(kind, "/whoami", cookies)
    assert answer.status == 200, answer
    assert answer.json()["user"] == user


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("view", VIEWS)
def test_enforced_users_password_session_is_anonymous_on_exempt_paths(
    kind: str, view: str, enforced: Any
) -> None:
    cookies = session_of("alice", "alice-password")
    with override_settings(MTLS_EXEMPT_PATHS=[view]):
        answer = get_with_session(kind, view, cookies)
    assert answer.status == 200, answer
    assert answer.json()["user"] is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("client", "user"),
    [
        pytest.param("alice", "alice", id="her-own-certificate-session-kept"),
        pytest.param("erin", None, id="another-users-certificate-anonymous"),
    ],
)
def test_enforced_users_session_with_set_user_off_needs_her_own_certificate(
    kind: str, client: str, user: str | None, enforced: Any, alice: Issued, certificates: dict[str, Issued]
) -> None:
    """MTLS_SET_USER = False leaves request.user to the session: it stays alice's only on a
    request carrying alice's certificate."""
    cookies = session_of("alice", "alice-password")
    chain = {"alice": alice, **certificates}[client]
    with override_settings(MTLS_SET_USER=False):
        answer = get_with_session(kind, "/whoami", cookies, chain=chain)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == (client, user)


@pytest.mark.parametrize("kind", KINDS)
def test_enforced_user_with_her_certificate_is_herself(kind: str, enforced: Any, alice: Issued) -> None:
    cookies = session_of("alice", "alice-password")
    with override_settings(MTLS_MODE="optional"):
        answer = get_with_session(kind, "/whoami", cookies, chain=alice)
    assert answer.status == 200, answer
    assert (answer.json()["user_id"], answer.json()["user"]) == ("alice", "alice")


class CountingStore:
    """A MemoryStore counting its user lookups."""

    def __init__(self) -> None:
        from mtls_middleware import MemoryStore

        self.inner = MemoryStore()
        self.lookups: list[str] = []

    def resolve_user(self, user_id: str) -> Any:
        self.lookups.append(user_id)
        return self.inner.resolve_user(user_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("kind", KINDS)
def test_the_check_looks_the_store_up_only_for_an_authenticated_session(kind: str, project: Any) -> None:
    store = CountingStore()
    cookies = session_of("pat", "pat-password")
    with override_settings(MTLS_MODE="optional", MTLS_STORE=store):
        assert get_with_session(kind, "/whoami", {}).json()["user"] is None
        assert store.lookups == []
        assert get_with_session(kind, "/whoami", cookies).json()["user"] == "pat"
    assert store.lookups == ["pat"]


class UnavailableStore:
    """A store whose user lookup fails as an unreachable database does (the fault a real
    DjangoStore gives only with its database down)."""

    def __init__(self) -> None:
        from mtls_middleware import MemoryStore

        self.inner = MemoryStore()

    def resolve_user(self, user_id: str) -> Any:
        from mtls_middleware.errors import MTLSError

        raise MTLSError(Reason.STORE_UNAVAILABLE, "database is down")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("kind", KINDS)
def test_a_store_fault_during_the_check_makes_the_session_anonymous(
    kind: str, project: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cookies = session_of("pat", "pat-password")
    with override_settings(MTLS_MODE="optional", MTLS_STORE=UnavailableStore()):
        answer = get_with_session(kind, "/whoami", cookies)
    assert answer.status == 200, answer
    assert answer.json()["user"] is None
    assert "store_unavailable" in caplog.text


# -- faults and configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_after_authentication_fails_closed_without_a_trace(
    kind: str, project: Any, alice: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=["tests.contrib.django.mtls_support.BrokenBackend"]):
        answer = get(kind, "/whoami", chain=alice)
    assert (answer.status, answer.error) == (500, Reason.INTERNAL_ERROR.value)
    assert b"database is down" not in answer.body
    assert "database is down" in caplog.text
    assert mtls_urls.SEEN == []


def test_bad_settings_fail_when_django_loads_the_middleware(project: Any) -> None:
    from mtls_middleware.contrib.django.middleware import MTLSMiddleware

    with override_settings(MTLS_MODE="sometimes"), pytest.raises(ConfigurationError, match="mode"):
        MTLSMiddleware(lambda request: None)


@pytest.mark.parametrize("kind", KINDS)
def test_changed_settings_take_effect_on_the_next_request(kind: str, project: Any) -> None:
    """override_settings sends setting_changed, which drops the cached configuration."""
    assert get(kind, "/whoami").status == 401
    with override_settings(MTLS_MODE="optional"):
        assert get(kind, "/whoami").status == 200
    assert get(kind, "/whoami").status == 401


@pytest.mark.parametrize("kind", KINDS)
def test_a_deleted_certificate_is_refused_on_the_next_request(kind: str, project: Any, alice: Issued) -> None:
    assert get(kind, "/whoami", chain=alice).status == 200  # now in the verdict cache
    project.delete_certificate(alice.fingerprint)
    answer = get(kind, "/whoami", chain=alice)
    assert (answer.status, answer.error) == (403, Reason.UNKNOWN_CERTIFICATE.value)
