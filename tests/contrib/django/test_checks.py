"""contrib/django/checks.py: each system check id fires on its misconfiguration, and none on a good
project. The checks run as Django runs them (``run_checks``, ``manage.py check``): registered by
the app's ``ready()``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from mtls_middleware.contrib.django import conf
from tests.contrib.django.mtls_support import (  # sets Django up
    AUTHENTICATION,
    COMMON,
    MIDDLEWARE,
    MODEL_BACKEND,
    SESSION,
    project_settings,
)

#: Every setting of the Django test settings this app reads, removed for a clean start.
_UNSET = object()


def our_ids(**overrides: Any) -> list[str]:
    """The ids of this app's check messages for the project with ``overrides``."""
    unset = [name for name, value in overrides.items() if value is _UNSET]
    values = {name: value for name, value in overrides.items() if value is not _UNSET}
    with override_settings(**values):
        from django.conf import settings

        for name in unset:
            delattr(settings, name)
        messages = checks.run_checks()
    conf.reset()
    return sorted(m.id for m in messages if m.id and m.id.startswith("mtls_middleware."))


@pytest.fixture
def good(pki_dir: Path) -> Iterator[dict[str, Any]]:
    """A good production project: everything in place, revocation on."""
    values = project_settings(pki_dir / "root.pem", MTLS_REVOCATION="soft-fail")
    yield values
    conf.reset()


def test_a_good_project_has_no_messages(good: dict[str, Any]) -> None:
    assert our_ids(**good) == []


def test_a_good_project_behind_nginx_has_no_messages(good: dict[str, Any]) -> None:
    assert our_ids(**good, MTLS_PROXY="nginx", MTLS_TRUSTED_PROXIES=["127.0.0.1"]) == []


CASES = [
    pytest.param({"MTLS_TRUST_ROOTS": _UNSET}, ["mtls_middleware.E001"], id="E001-trust-roots-missing"),
    pytest.param({"MTLS_MODE": "sometimes"}, ["mtls_middleware.E001"], id="E001-bad-mode"),
    pytest.param({"MTLS_TRUST_ROOTS": "/nonexistent/roots.pem"}, ["mtls_middleware.E001"], id="E001-unreadable-roots"),
    pytest.param({"MTLS_SET_USER": "yes"}, ["mtls_middleware.E001"], id="E001-set-user-not-a-bool"),
    pytest.param({"MTLS_TRUST_ROOT": "x"}, ["mtls_middleware.E002"], id="E002-typo"),
    pytest.param(
        {"MIDDLEWARE": [SESSION, COMMON, MIDDLEWARE, AUTHENTICATION]}, ["mtls_middleware.E003"],
        id="E003-before-authentication-middleware",
    ),
    pytest.param({"AUTHENTICATION_BACKENDS": [MODEL_BACKEND]}, ["mtls_middleware.E004"], id="E004-backend-missing"),
    pytest.param({"MTLS_PROXY": "nginx"}, ["mtls_middleware.E005"], id="E005-proxy-without-trusted-proxies"),
    pytest.param({"MTLS_REVOCATION": "off"}, ["mtls_middleware.W001"], id="W001-revocation-off-in-production"),
    pytest.param({"MIDDLEWARE": [SESSION, COMMON, AUTHENTICATION]}, ["mtls_middleware.W002"], id="W002-middleware-missing"),
    pytest.param(
        {"MTLS_PROXY": "nginx", "MTLS_TRUSTED_PROXIES": ["0.0.0.0/0"]}, ["mtls_middleware.W003"],
        id="W003-every-address-trusted",
    ),
    pytest.param(
        {"MTLS_PROXY": "nginx", "MTLS_TRUSTED_PROXIES": ["10.0.0.1", "::/0"]}, ["mtls_middleware.W003"],
        id="W003-every-ipv6-address-trusted",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), CASES)
def test_each_misconfiguration_fires_its_id(
    overrides: dict[str, Any], expected: list[str], good: dict[str, Any]
) -> None:
    assert our_ids(**{**good, **overrides}) == expected


# overrides, the id that must stay quiet (other ids may fire)
NOT_FIRING = [
    pytest.param({"MTLS_REVOCATION": "off", "DEBUG": True}, "mtls_middleware.W001", id="W001-not-in-debug"),
    pytest.param(
        {"MIDDLEWARE": [SESSION, COMMON, MIDDLEWARE, AUTHENTICATION], "MTLS_SET_USER": False},
        "mtls_middleware.E003", id="E003-not-when-the-user-is-not-set",
    ),
    pytest.param(
        {"AUTHENTICATION_BACKENDS": [MODEL_BACKEND], "MTLS_SET_USER": False}, "mtls_middleware.E004",
        id="E004-not-when-the-user-is-not-set",
    ),
    pytest.param(
        {"AUTHENTICATION_BACKENDS": [MODEL_BACKEND, "tests.contrib.django.mtls_support.SpyCertificateBackend"]},
        "mtls_middleware.E004", id="E004-a-subclass-of-the-backend-counts",
    ),
    pytest.param(
        {"MIDDLEWARE": [SESSION, COMMON, AUTHENTICATION], "MTLS_TRUST_ROOTS": _UNSET}, "mtls_middleware.E001",
        id="E001-not-without-the-middleware",
    ),
    pytest.param({"MTLS_TRUST_ROOT": "x"}, "mtls_middleware.E001", id="E001-not-on-top-of-E002"),
    pytest.param({"MTLS_PROXY": "nginx"}, "mtls_middleware.E001", id="E001-not-on-top-of-E005"),
]


@pytest.mark.parametrize(("overrides", "quiet"), NOT_FIRING)
def test_a_check_is_quiet_where_its_case_does_not_apply(
    overrides: dict[str, Any], quiet: str, good: dict[str, Any]
) -> None:
    assert quiet not in our_ids(**{**good, **overrides})


def test_e001_says_what_to_fix(good: dict[str, Any]) -> None:
    with override_settings(**{**good, "MTLS_MODE": "sometimes"}):
        messages = [m for m in checks.run_checks() if m.id == "mtls_middleware.E001"]
    conf.reset()
    assert len(messages) == 1
    assert "mode='sometimes' is not one of 'required', 'optional'" in messages[0].msg


def test_e002_hint_names_the_setting_meant(good: dict[str, Any]) -> None:
    with override_settings(**{**good, "MTLS_TRUSTED_PROXY": ["127.0.0.1"]}):
        messages = [m for m in checks.run_checks() if m.id == "mtls_middleware.E002"]
    conf.reset()
    assert len(messages) == 1
    assert "MTLS_TRUSTED_PROXY" in messages[0].msg
    assert "MTLS_TRUSTED_PROXIES" in messages[0].hint


def test_manage_py_check_refuses_to_go_on(good: dict[str, Any]) -> None:
    with override_settings(**{**good, "AUTHENTICATION_BACKENDS": [MODEL_BACKEND]}), pytest.raises(
        SystemCheckError, match=r"mtls_middleware\.E004"
    ):
        call_command("check")
    conf.reset()


def test_checks_keep_no_configuration(good: dict[str, Any]) -> None:
    """The checks validate the settings on a stand-in store and keep nothing: the middleware
    builds the one it uses. (That they run before ``migrate`` on a database without the app's
    tables, the example project's integration test shows: its ``migrate`` runs them.)"""
    conf.reset()
    assert our_ids(**good) == []
    assert conf.cached_authenticator() is None


# -- the browser certificate login ---------------------------------------------------------------
LOGIN_URLS = "tests.contrib.django.login_urls"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({"ROOT_URLCONF": LOGIN_URLS}, ["mtls_middleware.E006"], id="E006-login-path-not-exempt"),
        pytest.param(
            {"ROOT_URLCONF": LOGIN_URLS, "MTLS_EXEMPT_PATHS": ["/health"]}, ["mtls_middleware.E006"],
            id="E006-other-paths-exempt",
        ),
        pytest.param(
            {"ROOT_URLCONF": LOGIN_URLS, "MTLS_EXEMPT_PATHS": ["/login/certificate/"]}, [],
            id="E006-quiet-when-exempt",
        ),
        pytest.param(
            {"ROOT_URLCONF": LOGIN_URLS, "MTLS_EXEMPT_PATHS": ["/login"]}, [], id="E006-quiet-below-an-exempt-path"
        ),
        pytest.param({}, [], id="E006-quiet-without-the-view"),
        pytest.param(
            {"ROOT_URLCONF": LOGIN_URLS, "MIDDLEWARE": [SESSION, COMMON, AUTHENTICATION]}, ["mtls_middleware.W002"],
            id="E006-quiet-without-the-middleware",
        ),
        pytest.param(
            {
                "MTLS_LOGIN_SITE_URL": "https://app.example",
                "MTLS_LOGIN_ALLOWED_ORIGINS": ["https://docs.app.example"],
                "MTLS_LOGIN_PAGE": "/accounts/login/",
                "MTLS_LOGIN_DEFAULT_NEXT": "/home",
                "MTLS_LOGIN_URL": "https://app.example:8443/login/certificate/",
            },
            [], id="login-settings-are-known",
        ),
        pytest.param({"MTLS_LOGIN_SITE_URL": "https://app.example/path"}, ["mtls_middleware.E001"], id="E001-site-url-with-a-path"),
        pytest.param({"MTLS_LOGIN_PAGE": "//evil.example"}, ["mtls_middleware.E001"], id="E001-login-page-elsewhere"),
        pytest.param({"MTLS_LOGIN_URL": 8443}, ["mtls_middleware.E001"], id="E001-login-url-not-a-string"),
        pytest.param({"MTLS_LOGIN_SITEURL": "https://app.example"}, ["mtls_middleware.E002"], id="E002-login-typo"),
    ],
)
def test_login_checks(overrides: dict[str, Any], expected: list[str], good: dict[str, Any]) -> None:
    assert our_ids(**{**good, **overrides}) == expected


def test_e006_says_exactly_what_to_add(good: dict[str, Any]) -> None:
    with override_settings(**{**good, "ROOT_URLCONF": LOGIN_URLS, "MTLS_EXEMPT_PATHS": ["/health"]}):
        messages = [m for m in checks.run_checks() if m.id == "mtls_middleware.E006"]
    conf.reset()
    assert len(messages) == 1
    assert "'/login/certificate/'" in messages[0].msg
    assert messages[0].hint == "Set MTLS_EXEMPT_PATHS = ['/health', '/login/certificate/']."


def test_e002_hint_names_the_login_setting_meant(good: dict[str, Any]) -> None:
    with override_settings(**{**good, "MTLS_LOGIN_SITEURL": "https://app.example"}):
        messages = [m for m in checks.run_checks() if m.id == "mtls_middleware.E002"]
    conf.reset()
    assert "MTLS_LOGIN_SITE_URL" in messages[0].hint


SECURITY = "django.middleware.security.SecurityMiddleware"
CROSS_ORIGIN_LOGIN = {
    "MTLS_LOGIN_SITE_URL": "https://app.example",
    "MTLS_LOGIN_URL": "https://app.example:8443/login/certificate/",
    "MIDDLEWARE": [SECURITY, SESSION, COMMON, AUTHENTICATION, MIDDLEWARE],
}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param({}, ["mtls_middleware.E007"], id="E007-django-default-same-origin"),
        pytest.param({"SECURE_REFERRER_POLICY": "no-referrer"}, ["mtls_middleware.E007"], id="E007-no-referrer"),
        pytest.param(
            {"SECURE_REFERRER_POLICY": ["strict-origin", "same-origin"]}, ["mtls_middleware.E007"],
            id="E007-last-of-a-list-decides",
        ),
        pytest.param({"SECURE_REFERRER_POLICY": "strict-origin-when-cross-origin"}, [], id="E007-quiet-origin-kept"),
        pytest.param({"SECURE_REFERRER_POLICY": "same-origin, strict-origin"}, [], id="E007-quiet-fallback-list"),
        pytest.param({"SECURE_REFERRER_POLICY": None}, [], id="E007-quiet-no-header"),
        pytest.param(
            {"MIDDLEWARE": [SESSION, COMMON, AUTHENTICATION, MIDDLEWARE]}, [], id="E007-quiet-without-security-middleware"
        ),
        pytest.param(
            {"MTLS_LOGIN_URL": "https://app.example/login/certificate/"}, [], id="E007-quiet-same-origin-login"
        ),
        pytest.param({"MTLS_LOGIN_URL": None}, [], id="E007-quiet-login-on-its-own-path"),
    ],
)
def test_referrer_policy_that_nulls_the_origin(
    overrides: dict[str, Any], expected: list[str], good: dict[str, Any]
) -> None:
    values = {**good, **CROSS_ORIGIN_LOGIN, **overrides}
    if values.get("MTLS_LOGIN_URL") is None:
        values.pop("MTLS_LOGIN_URL")
    assert our_ids(**values) == expected
