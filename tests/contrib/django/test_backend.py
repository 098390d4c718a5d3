"""contrib/django/backends.py: CertificateBackend maps a certificate identity to the Django user,
and only ever answers its own keyword (password logins never reach it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.contrib import auth
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory, override_settings

from mtls_middleware import Identity
from mtls_middleware.testing import Issued
from tests.contrib.django.mtls_support import (  # sets Django up, which the backend's import needs
    BACKEND,
    MODEL_BACKEND,
    CertificateBackend,
)
from tests.contrib.django.setup import empty_tables, setup_django

SPY = "tests.contrib.django.mtls_support.SpyCertificateBackend"
CREATING = "tests.contrib.django.mtls_support.CreatingCertificateBackend"


@pytest.fixture
def users() -> Any:
    setup_django()
    empty_tables()
    manager = get_user_model().objects
    manager.create_user("alice", password="alice-password")
    manager.create_user("dave", password="dave-password", is_active=False)
    from tests.contrib.django import mtls_support

    mtls_support.SPY_CALLS.clear()
    return manager


def identity_of(issued: Issued, user_id: str) -> Identity:
    cert = issued.cert
    return Identity(
        user_id=user_id,
        org="acme",
        fingerprint=issued.fingerprint,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        certificate=cert,
        chain=issued.chain,
        source="tls:environ",
    )


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        pytest.param("alice", "alice", id="active-user"),
        pytest.param("dave", None, id="inactive-user-refused"),
        pytest.param("nobody", None, id="no-such-user"),
        pytest.param("", None, id="empty-user-id"),
    ],
)
def test_identity_maps_to_the_django_user_by_username(
    user_id: str, expected: str | None, users: Any, alice: Issued
) -> None:
    user = CertificateBackend().authenticate(None, mtls_identity=identity_of(alice, user_id))
    assert (user.get_username() if user else None) == expected


@pytest.mark.parametrize(
    "value",
    [pytest.param(None, id="none"), pytest.param("alice", id="a-string"), pytest.param({"user_id": "alice"}, id="a-dict")],
)
def test_anything_but_an_identity_authenticates_nobody(value: Any, users: Any) -> None:
    assert CertificateBackend().authenticate(None, mtls_identity=value) is None


def test_through_django_authenticate_with_its_keyword(users: Any, alice: Issued) -> None:
    request = RequestFactory().get("/")
    with override_settings(AUTHENTICATION_BACKENDS=[MODEL_BACKEND, BACKEND]):
        user = auth.authenticate(request, mtls_identity=identity_of(alice, "alice"))
    assert user is not None
    assert user.get_username() == "alice"
    assert user.backend == BACKEND
    assert CertificateBackend().get_user(user.pk) == user


def test_password_login_never_reaches_the_certificate_backend(users: Any) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[SPY, MODEL_BACKEND]):
        user = auth.authenticate(RequestFactory().get("/"), username="alice", password="alice-password")
        assert user is not None
        assert user.backend == MODEL_BACKEND
        assert Client().login(username="alice", password="alice-password")
        assert auth.authenticate(None, username="alice", password="wrong") is None
    from tests.contrib.django import mtls_support

    assert mtls_support.SPY_CALLS == []


def test_the_certificate_backend_alone_accepts_no_password(users: Any) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[BACKEND]):
        assert auth.authenticate(None, username="alice", password="alice-password") is None
        assert not Client().login(username="alice", password="alice-password")


def test_without_the_backend_an_identity_authenticates_nobody(users: Any, alice: Issued) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[MODEL_BACKEND]):
        assert auth.authenticate(None, mtls_identity=identity_of(alice, "alice")) is None


def test_unknown_users_are_not_created_by_default(users: Any, alice: Issued) -> None:
    assert CertificateBackend().authenticate(None, mtls_identity=identity_of(alice, "newcomer")) is None
    assert not users.filter(username="newcomer").exists()


def test_create_unknown_user_creates_one_without_a_usable_password(users: Any, alice: Issued) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[CREATING]):
        user = auth.authenticate(None, mtls_identity=identity_of(alice, "newcomer"))
        again = auth.authenticate(None, mtls_identity=identity_of(alice, "newcomer"))
    assert user is not None
    assert again == user
    stored = users.get(username="newcomer")
    assert not stored.has_usable_password()
    assert stored.first_name == "acme"  # configure_user was called with the identity
    assert users.filter(username="newcomer").count() == 1


def test_create_unknown_user_still_refuses_an_inactive_one(users: Any, alice: Issued) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[CREATING]):
        assert auth.authenticate(None, mtls_identity=identity_of(alice, "dave")) is None


def test_username_for_maps_another_way(users: Any, alice: Issued) -> None:
    class ByOrg(CertificateBackend):
        def username_for(self, identity: Identity) -> str:
            return identity.user_id.split("@")[0]

    user = ByOrg().authenticate(None, mtls_identity=identity_of(alice, "alice@example.org"))
    assert user is not None
    assert user.get_username() == "alice"



# -- PasswordBackend: ModelBackend refusing users who must log in by certificate ------------------
PASSWORD = "mtls_middleware.contrib.django.backends.PasswordBackend"


@pytest.fixture
def enforcing(users: Any, pki_dir: Path) -> Iterator[Any]:
    """The project's store: alice (acme) must log in by certificate, bob (acme) need not."""
    from mtls_middleware.contrib.django import conf
    from mtls_middleware.contrib.django.store import shared_store

    users.create_user("bob", password="bob-password")
    store = shared_store()
    store.add_user("alice", org="acme", permissions=["enforce_mtls"])
    store.add_user("bob", org="acme")
    with override_settings(MTLS_TRUST_ROOTS=str(pki_dir / "root.pem"), MTLS_REVOCATION="off"):
        yield store
    conf.reset()


@pytest.mark.parametrize(
    ("username", "password", "logged_in"),
    [
        pytest.param("alice", "alice-password", False, id="enforce_mtls-refused"),
        pytest.param("bob", "bob-password", True, id="store-user-without-enforce_mtls"),
        pytest.param("carl", "carl-password", True, id="unknown-to-the-store"),
        pytest.param("bob", "wrong", False, id="wrong-password"),
    ],
)
def test_password_backend_refuses_only_users_who_must_use_a_certificate(
    username: str, password: str, logged_in: bool, enforcing: Any, users: Any
) -> None:
    users.create_user("carl", password="carl-password")
    with override_settings(AUTHENTICATION_BACKENDS=[BACKEND, PASSWORD]):
        assert Client().login(username=username, password=password) is logged_in


def test_password_backend_stops_later_backends_and_reports_the_failure(enforcing: Any) -> None:
    """PermissionDenied: a ModelBackend listed after it does not let the same password in, and
    Django sends user_login_failed."""
    failed: list[Any] = []

    def on_failed(sender: Any, credentials: Any, **kwargs: Any) -> None:
        failed.append(credentials["username"])

    auth.signals.user_login_failed.connect(on_failed)
    try:
        with override_settings(AUTHENTICATION_BACKENDS=[BACKEND, PASSWORD, MODEL_BACKEND]):
            request = RequestFactory().post("/login")
            assert auth.authenticate(request, username="alice", password="alice-password") is None
    finally:
        auth.signals.user_login_failed.disconnect(on_failed)
    assert failed == ["alice"]


@pytest.mark.parametrize(
    ("identity_user", "logged_in"),
    [pytest.param("alice", True, id="her-own-certificate"), pytest.param("bob", False, id="another-users-certificate")],
)
def test_password_backend_lets_in_a_login_that_carries_her_certificate(
    identity_user: str, logged_in: bool, enforcing: Any, alice: Issued
) -> None:
    request = RequestFactory().post("/login")
    request.mtls_identity = identity_of(alice, identity_user)
    with override_settings(AUTHENTICATION_BACKENDS=[BACKEND, PASSWORD]):
        user = auth.authenticate(request, username="alice", password="alice-password")
    assert (user.get_username() if user else None) == ("alice" if logged_in else None)


def test_certificate_backend_still_logs_in_an_enforced_user(enforcing: Any, alice: Issued) -> None:
    with override_settings(AUTHENTICATION_BACKENDS=[BACKEND, PASSWORD]):
        user = auth.authenticate(RequestFactory().get("/"), mtls_identity=identity_of(alice, "alice"))
    assert user is not None
    assert user.get_username() == "alice"
