"""System checks of the Django integration (``manage.py check``; run before every command).

Registered when this module is imported (the app's ``ready()`` does it). The ids are stable:

============================  =======================================================================
id                            fires when
============================  =======================================================================
``mtls_middleware.E001``      ``MTLSMiddleware`` is in ``MIDDLEWARE`` but the ``MTLS_*`` settings do
                              not make a configuration: a required one is missing, a value is
                              refused, the ``django://`` store without this app installed ... (the
                              message is the :class:`ConfigurationError`'s; checked without touching
                              the database, so ``migrate`` still runs)
``mtls_middleware.E002``      an ``MTLS_*`` setting that this app does not know (a typo: its default
                              would silently apply); the hint names the closest valid names
``mtls_middleware.E003``      ``MTLSMiddleware`` comes before ``AuthenticationMiddleware``, which
                              would then overwrite the ``request.user`` set from the certificate
``mtls_middleware.E004``      ``MTLSMiddleware`` sets ``request.user`` (``django.contrib.auth``
                              installed, ``MTLS_SET_USER`` not False) but no ``CertificateBackend``
                              is in ``AUTHENTICATION_BACKENDS``: every certificate user would be
                              anonymous
``mtls_middleware.E005``      ``MTLS_PROXY`` names a header profile but ``MTLS_TRUSTED_PROXIES`` is
                              empty (anyone could forge the certificate header)
``mtls_middleware.E006``      the certificate login view (URL name ``mtls:certificate_login``) is in
                              the URLconf but its path is not in ``MTLS_EXEMPT_PATHS``: the
                              middleware would answer a refused certificate with JSON before the
                              view could send the person back to the login page
``mtls_middleware.E007``      the login button posts to another origin (``MTLS_LOGIN_URL`` is not on
                              ``MTLS_LOGIN_SITE_URL``) while ``SecurityMiddleware`` sends
                              ``Referrer-Policy: same-origin`` or ``no-referrer`` (Django's default
                              is ``same-origin``): under those policies browsers send ``Origin:
                              null`` with the form, which the login view must refuse, so every
                              certificate login would fail with ``invalid_request``
``mtls_middleware.W001``      ``MTLS_REVOCATION = "off"`` while ``DEBUG`` is False: revoked
                              certificates are accepted
``mtls_middleware.W002``      this app is installed but ``MTLSMiddleware`` is not in ``MIDDLEWARE``:
                              no request is authenticated by certificate
``mtls_middleware.W003``      ``MTLS_TRUSTED_PROXIES`` holds a network of every address
                              (``0.0.0.0/0``, ``::/0``): every peer may send certificate headers
============================  =======================================================================

E001 is reported only when E002 and E005 are not (they explain the same failure better); E006
and E007 only when the settings make a configuration (no E001) and the middleware is in
``MIDDLEWARE``.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.urls import NoReverseMatch, reverse
from django.utils.module_loading import import_string

from ...config import MTLSConfig
from ...errors import ConfigurationError
from ...login import origin_of
from . import conf

__all__ = [
    "AUTHENTICATION_MIDDLEWARE",
    "BACKEND",
    "LOGIN_URL_NAME",
    "MIDDLEWARE",
    "check_backend",
    "check_middleware",
    "check_settings",
]

#: The dotted paths these checks look for.
MIDDLEWARE = "mtls_middleware.contrib.django.middleware.MTLSMiddleware"
AUTHENTICATION_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
BACKEND = "mtls_middleware.contrib.django.backends.CertificateBackend"
#: The URL name of the certificate login view (:mod:`.urls`).
LOGIN_URL_NAME = "mtls:certificate_login"

_ID = "mtls_middleware."


def _is(path: object, wanted: str) -> bool:
    """True when the dotted ``path`` names the class ``wanted`` or a subclass of it."""
    if not isinstance(path, str):
        return False
    if path == wanted:
        return True
    try:
        found, base = import_string(path), import_string(wanted)
    except ImportError:  # Django's own checks report what cannot be imported
        return False
    return isinstance(found, type) and isinstance(base, type) and issubclass(found, base)


def _position(entries: Sequence[Any], wanted: str) -> int | None:
    for index, entry in enumerate(entries):
        if _is(entry, wanted):
            return index
    return None


def _middleware() -> list[Any]:
    return list(getattr(settings, "MIDDLEWARE", None) or ())


def _set_user(values: dict[str, Any]) -> bool:
    return values.get("MTLS_SET_USER", True) is not False and apps.is_installed("django.contrib.auth")


@register(Tags.security)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001, E002, E005, E006, E007, W001, W003: the ``MTLS_*`` settings themselves."""
    values = conf.mtls_settings()
    messages: list[CheckMessage] = []
    known = conf.known_setting_names()
    for name in sorted(values):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            messages.append(
                Error(
                    f"Unknown setting {name}: mtls_middleware would ignore it.",
                    hint=f"Did you mean {' or '.join(close)}?" if close
                    else f"Valid names: {', '.join(known)}.",
                    id=_ID + "E002",
                )
            )
    proxy = values.get("MTLS_PROXY")
    trusted = values.get("MTLS_TRUSTED_PROXIES") or ()
    if proxy is not None and not trusted:
        messages.append(
            Error(
                f"MTLS_PROXY = {proxy!r} reads client certificates from request headers, but "
                "MTLS_TRUSTED_PROXIES is empty.",
                hint="List the proxy's addresses, e.g. MTLS_TRUSTED_PROXIES = ['127.0.0.1']; "
                "the headers of any other peer are refused.",
                id=_ID + "E005",
            )
        )
    # A project may install the app without the middleware (the admin, manage.py mtls on a
    # management host): then no configuration is built, and none is required.
    if not messages and _position(_middleware(), MIDDLEWARE) is not None:
        try:
            config = conf.validate()
        except ConfigurationError as exc:
            messages.append(
                Error(
                    f"The MTLS_* settings cannot work: {exc.detail}",
                    hint="Fix the setting named; see mtls_middleware.MTLSConfig for every field.",
                    id=_ID + "E001",
                )
            )
        else:
            messages.extend(_check_login_path(config))
            messages.extend(_check_referrer_policy())
    if values.get("MTLS_REVOCATION") == "off" and not settings.DEBUG:
        messages.append(
            CheckWarning(
                "MTLS_REVOCATION = 'off': revoked client certificates are accepted.",
                hint="Use 'require' (the default) or 'soft-fail' in production.",
                id=_ID + "W001",
            )
        )
    if not isinstance(trusted, str):
        for entry in trusted:
            try:
                network = ipaddress.ip_network(str(entry), strict=False)
            except ValueError:
                continue  # not a network ("unix", or a mistake E001 reports)
            if network.prefixlen == 0:
                messages.append(
                    CheckWarning(
                        f"MTLS_TRUSTED_PROXIES contains {entry!r}: every peer may send certificate "
                        "headers.",
                        hint="List only the addresses your proxy connects from.",
                        id=_ID + "W003",
                    )
                )
    return messages


def _check_login_path(config: MTLSConfig) -> list[CheckMessage]:
    """E006: the certificate login view's path, when it is in the URLconf, is exempt."""
    try:
        path = reverse(LOGIN_URL_NAME)
    except NoReverseMatch:  # not served by this project (or not under this name)
        return []
    except Exception:  # a URLconf that cannot load: Django's own URL checks report it
        return []
    if config.is_exempt(path):
        return []
    exempt = list(config.exempt_paths)
    return [
        Error(
            f"The certificate login view ({LOGIN_URL_NAME}) is at {path!r}, which is not in "
            "MTLS_EXEMPT_PATHS: MTLSMiddleware would answer a refused or missing certificate there "
            "with JSON instead of letting the view send the person back to the login page.",
            hint=f"Set MTLS_EXEMPT_PATHS = {[*exempt, path]!r}.",
            id=_ID + "E006",
        )
    ]


#: Referrer policies under which a browser sends ``Origin: null`` with a cross-origin form POST.
_NULL_ORIGIN_POLICIES = frozenset({"same-origin", "no-referrer"})
SECURITY_MIDDLEWARE = "django.middleware.security.SecurityMiddleware"


def _check_referrer_policy() -> list[CheckMessage]:
    """E007: the login form, posted to another origin, would carry ``Origin: null``."""
    login = conf.get_login_settings()
    if login.site_url is None or login.login_url is None or login.login_url.startswith("/"):
        return []  # the form posts to its own origin: every policy keeps the Origin
    if origin_of(login.login_url) == login.site_url:
        return []  # the view is on the site's own origin
    if _position(_middleware(), SECURITY_MIDDLEWARE) is None:
        return []
    policy = getattr(settings, "SECURE_REFERRER_POLICY", None)
    if isinstance(policy, str):
        policies = [p.strip() for p in policy.split(",")]
    elif isinstance(policy, (list, tuple)):
        policies = [str(p).strip() for p in policy]
    else:
        return []
    # Browsers apply the last policy they understand.
    if not policies or policies[-1] not in _NULL_ORIGIN_POLICIES:
        return []
    return [
        Error(
            f"SECURE_REFERRER_POLICY is {policy!r} and the certificate login form posts from "
            f"{login.site_url} to another origin ({login.login_url}): browsers then send "
            "'Origin: null', which the login view refuses (invalid_request), so no certificate "
            "login could succeed.",
            hint="Set SECURE_REFERRER_POLICY = 'strict-origin-when-cross-origin' (it still sends "
            "no path to other sites), or serve the login view on the site's own origin.",
            id=_ID + "E007",
        )
    ]


@register(Tags.security)
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E003, W002: ``MTLSMiddleware`` present, and after ``AuthenticationMiddleware``."""
    middleware = _middleware()
    ours = _position(middleware, MIDDLEWARE)
    if ours is None:
        return [
            CheckWarning(
                "mtls_middleware.contrib.django is installed but MTLSMiddleware is not in MIDDLEWARE: "
                "no request is authenticated by client certificate.",
                hint=f"Add {MIDDLEWARE!r} after {AUTHENTICATION_MIDDLEWARE!r}.",
                id=_ID + "W002",
            )
        ]
    authentication = _position(middleware, AUTHENTICATION_MIDDLEWARE)
    if _set_user(conf.mtls_settings()) and authentication is not None and authentication > ours:
        return [
            Error(
                "MTLSMiddleware comes before AuthenticationMiddleware in MIDDLEWARE, which would "
                "replace the request.user set from the client certificate.",
                hint=f"Move {MIDDLEWARE!r} after {AUTHENTICATION_MIDDLEWARE!r}.",
                id=_ID + "E003",
            )
        ]
    return []


@register(Tags.security)
def check_backend(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E004: a ``CertificateBackend`` when the middleware sets ``request.user``."""
    middleware = _middleware()
    if _position(middleware, MIDDLEWARE) is None or not _set_user(conf.mtls_settings()):
        return []
    backends = list(getattr(settings, "AUTHENTICATION_BACKENDS", None) or ())
    if _position(backends, BACKEND) is None:
        return [
            Error(
                "MTLSMiddleware sets request.user from the client certificate, but no "
                "CertificateBackend is in AUTHENTICATION_BACKENDS: every such request would be "
                "anonymous.",
                hint=f"Add {BACKEND!r} to AUTHENTICATION_BACKENDS, or set MTLS_SET_USER = False.",
                id=_ID + "E004",
            )
        ]
    return []
