"""The mTLS configuration of a Django project, built once from its ``MTLS_*`` settings.

Every ``MTLS_<FIELD>`` setting is the :class:`~mtls_middleware.MTLSConfig` keyword ``<field>``
(see :mod:`mtls_middleware.contrib.settings`), with one Django default and two Django-only settings:

``MTLS_STORE``
    a store URL, a :class:`~mtls_middleware.stores.Store`, or ``"django://"`` (the default): the
    :class:`~mtls_middleware.contrib.django.store.DjangoStore` of this app, in the project's own
    database (``mtls_middleware.contrib.django`` must then be in ``INSTALLED_APPS``).
``MTLS_SET_USER``
    ``True`` (the default): when ``django.contrib.auth`` is installed, the middleware sets
    ``request.user`` of each accepted request from its certificate, through the authentication
    backends (:class:`~mtls_middleware.contrib.django.backends.CertificateBackend`). ``False``:
    it only attaches ``request.mtls_identity``.
The browser certificate login (:mod:`mtls_middleware.login`) reads the ``MTLS_LOGIN_SITE_URL``,
``MTLS_LOGIN_URL``, ``MTLS_LOGIN_ALLOWED_ORIGINS``, ``MTLS_LOGIN_PAGE`` and
``MTLS_LOGIN_DEFAULT_NEXT`` settings (:data:`~mtls_middleware.login.LOGIN_SETTING_NAMES`, the
same as Flask's): :func:`get_login_settings`. ``MTLS_LOGIN_URL`` is where the
``{% certificate_login_button %}`` form posts, the absolute URL of the certificate login view on
the listener that asks for a client certificate (``"https://app.example:8443/login/certificate/"``);
unset, the view's own path (``reverse("mtls:certificate_login")``).

The configuration and its :class:`~mtls_middleware.Authenticator` are built on first use (the
middleware asks at start-up, the system checks when they run) and kept for the process, as are
the login settings and the :class:`~mtls_middleware.login.SessionGuard`; Django's
``setting_changed`` signal (``override_settings`` in tests) drops them all, so that the next
request builds them from the new settings.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed

from ...authenticator import Authenticator
from ...config import MTLSConfig
from ...errors import ConfigurationError
from ...login import LOGIN_SETTING_NAMES, LoginSettings, SessionGuard, login_settings_from
from ...stores import MemoryStore
from ..settings import config_from_settings, setting_names

__all__ = [
    "APP_LABEL_PATH",
    "DJANGO_SETTINGS",
    "DJANGO_STORE_URL",
    "PREFIX",
    "DjangoOptions",
    "cached_authenticator",
    "get_authenticator",
    "get_config",
    "get_login_settings",
    "get_options",
    "get_session_guard",
    "known_setting_names",
    "mtls_settings",
    "reset",
    "validate",
]

#: The prefix of every setting of this app.
PREFIX = "MTLS_"
#: ``MTLS_STORE`` naming the store in the project's database (the default).
DJANGO_STORE_URL = "django://"
#: The dotted path of this Django app, as listed in ``INSTALLED_APPS``.
APP_LABEL_PATH = "mtls_middleware.contrib.django"
#: Settings of the Django integration that are no :class:`MTLSConfig` field, with their defaults.
DJANGO_SETTINGS: Mapping[str, Any] = {"MTLS_SET_USER": True}


@dataclass(frozen=True, kw_only=True)
class DjangoOptions:
    """What the Django-only settings ask of the middleware.

    ``set_user``: set ``request.user`` from the certificate (``MTLS_SET_USER`` and
    ``django.contrib.auth`` installed).
    """

    set_user: bool


_lock = threading.Lock()
_config: MTLSConfig | None = None
_authenticator: Authenticator | None = None
_options: DjangoOptions | None = None
_login: LoginSettings | None = None
_guard: tuple[Authenticator, SessionGuard] | None = None
#: Stores this module opened from a URL: closed again when the settings change.
_opened: list[Any] = []


def known_setting_names() -> tuple[str, ...]:
    """Every ``MTLS_*`` setting this app reads: the MTLSConfig fields, :data:`DJANGO_SETTINGS` and
    the login settings (:data:`~mtls_middleware.login.LOGIN_SETTING_NAMES`)."""
    return (*setting_names(PREFIX), *DJANGO_SETTINGS, *LOGIN_SETTING_NAMES)


def mtls_settings() -> dict[str, Any]:
    """Every ``MTLS_*`` setting the project defines, by name."""
    return {name: getattr(settings, name) for name in dir(settings) if name.startswith(PREFIX)}


def _options_from(values: Mapping[str, Any]) -> DjangoOptions:
    set_user = values.get("MTLS_SET_USER", DJANGO_SETTINGS["MTLS_SET_USER"])
    if not isinstance(set_user, bool):
        raise ConfigurationError(detail=f"MTLS_SET_USER={set_user!r} must be True or False")
    return DjangoOptions(set_user=set_user and apps.is_installed("django.contrib.auth"))


def _store_setting(values: Mapping[str, Any]) -> Any:
    """``MTLS_STORE`` as given, or None for the ``django://`` store (checking the app is installed).

    Raises:
        ConfigurationError: ``django://`` without this app in ``INSTALLED_APPS``.
    """
    store = values.get(PREFIX + "STORE", DJANGO_STORE_URL)
    if isinstance(store, str) and store.strip().lower() == DJANGO_STORE_URL:
        if not apps.is_installed(APP_LABEL_PATH):
            raise ConfigurationError(
                detail=f"MTLS_STORE is {DJANGO_STORE_URL!r} (the default), but {APP_LABEL_PATH!r} "
                "is not in INSTALLED_APPS: add it, or set MTLS_STORE to a store URL"
            )
        return None
    return store


def _config_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in DJANGO_SETTINGS and k != PREFIX + "STORE"}


def _build(values: Mapping[str, Any]) -> MTLSConfig:
    store = _store_setting(values)
    if store is None:
        from .store import shared_store

        store = shared_store()  # the process's one DjangoStore, shared with the admin
    config = config_from_settings(_config_values(values), prefix=PREFIX, store=store)
    if isinstance(store, str):
        _opened.append(config.resolved_store)
    return config


def validate() -> MTLSConfig:
    """Build a configuration from the settings as start-up would, without keeping it and without
    touching the project's database (the ``django://`` store is stood in for by an empty memory
    store, so that this works before ``migrate``); for the system checks. Another store URL is
    opened, as start-up would, and closed again: the configuration returned answers questions
    about the settings (``is_exempt``), not requests.

    Raises:
        ConfigurationError: as :func:`get_config`, or login settings that
            :class:`~mtls_middleware.login.LoginSettings` refuses.
    """
    values = mtls_settings()
    _options_from(values)
    login_settings_from(values)
    store = _store_setting(values)
    config = config_from_settings(
        _config_values(values), prefix=PREFIX, store=MemoryStore() if store is None else store
    )
    if isinstance(store, str):
        close = getattr(config.resolved_store, "close", None)
        if callable(close):
            close()
    return config


def _ensure() -> tuple[MTLSConfig, Authenticator, DjangoOptions]:
    global _config, _authenticator, _options
    config, authenticator, options = _config, _authenticator, _options
    if config is not None and authenticator is not None and options is not None:
        return config, authenticator, options
    with _lock:
        if _config is None or _authenticator is None or _options is None:
            values = mtls_settings()
            options = _options_from(values)
            config = _build(values)
            _authenticator = Authenticator(config)
            _config, _options = config, options
        return _config, _authenticator, _options


def get_config() -> MTLSConfig:
    """The project's :class:`MTLSConfig`, built from its settings on first use.

    Raises:
        ConfigurationError: a setting that names no field (with the closest valid names), a
            required one missing (``MTLS_TRUST_ROOTS``), any value MTLSConfig refuses, or the
            default ``django://`` store without this app in ``INSTALLED_APPS``.
    """
    return _ensure()[0]


def get_authenticator() -> Authenticator:
    """The one :class:`~mtls_middleware.Authenticator` of the process (see :func:`get_config`).

    Raises:
        ConfigurationError: as :func:`get_config`.
    """
    return _ensure()[1]


def get_options() -> DjangoOptions:
    """What the Django-only settings say (see :class:`DjangoOptions`).

    Raises:
        ConfigurationError: as :func:`get_config`.
    """
    return _ensure()[2]


def get_login_settings() -> LoginSettings:
    """The browser certificate login's :class:`~mtls_middleware.login.LoginSettings`, from the
    ``MTLS_LOGIN_*`` settings, built on first use.

    Raises:
        ConfigurationError: a value :class:`~mtls_middleware.login.LoginSettings` refuses.
    """
    global _login
    found = _login
    if found is not None:
        return found
    with _lock:
        if _login is None:
            _login = login_settings_from(mtls_settings())
        return _login


def get_session_guard() -> SessionGuard:
    """The :class:`~mtls_middleware.login.SessionGuard` of :func:`get_authenticator`'s store: one
    per authenticator, replaced with it.

    Raises:
        ConfigurationError: as :func:`get_config`.
    """
    global _guard
    authenticator = get_authenticator()
    found = _guard
    if found is not None and found[0] is authenticator:
        return found[1]
    with _lock:
        if _guard is None or _guard[0] is not authenticator:
            _guard = (authenticator, SessionGuard(authenticator))
        return _guard[1]


def cached_authenticator() -> Authenticator | None:
    """The authenticator if it is built already, else None; builds nothing (diagnostics, tests)."""
    return _authenticator if _options is not None else None


def reset(**_: Any) -> None:
    """Forget the configuration: the next request builds it again from the settings.

    The old authenticator's background work stops and stores opened from a URL are closed;
    a request still running on them may fail, which only happens when settings change at run
    time (``override_settings`` in tests).
    """
    global _config, _authenticator, _options, _login, _guard
    with _lock:
        old, opened = _authenticator, list(_opened)
        _config = _authenticator = _options = None
        _login = None
        _guard = None
        _opened.clear()
    if old is not None:
        old.close()
    for store in opened:
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting.startswith(PREFIX) or setting == "INSTALLED_APPS":
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="mtls_middleware.contrib.django.conf")
