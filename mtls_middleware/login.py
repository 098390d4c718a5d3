"""Browser certificate login: the part every framework shares.

People log in once with their certificate and then browse with the framework's ordinary session
(Flask-Login, ``django.contrib.auth``); the adapters in :mod:`mtls_middleware.contrib` are thin
layers over what is here:

- The login page (on the ordinary site, where the TLS layer asks for no certificate, so the
  browser never shows its certificate prompt there) has a "Log in with certificate" button. It
  posts to the certificate login view, served on a listener that does request a client
  certificate (the 8443 listener of ``mtls-admin serve``, or an nginx ``server`` block with
  ``ssl_verify_client optional_no_ca``). The view authenticates the request through the same
  :class:`~mtls_middleware.Authenticator` as every other request (so the attempt is in the login
  history), opens the framework's session and redirects back, only ever to the site's own URLs
  (:meth:`LoginSettings.redirect_target`).
- The session remembers the certificate (a :class:`SessionBinding`). On every later request
  :class:`SessionGuard` checks it: a dictionary lookup while the store's ``generation`` (the
  counter that invalidates the verdict cache, shared by every worker through the store) is
  unchanged, one store lookup after a change. The session ends when the certificate was deleted
  or given to another user, its user deactivated, its organisation switched off, or when the
  certificate itself expires.
- A refused login goes back to the login page with the reason code in the query string
  (``?mtls_error=certificate_revoked``); :func:`login_message` turns that code into a sentence for
  a person. Only codes are ever passed around; unknown codes get a generic sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from .errors import ConfigurationError, MTLSError, NoCertificateError, Reason
from .identity import FingerprintMapper, Identity, authorize

if TYPE_CHECKING:
    from .authenticator import Authenticator
    from .stores.base import Principal

__all__ = [
    "ENDED_KEY",
    "ERROR_PARAM",
    "LOGIN_MESSAGES",
    "LOGIN_SETTING_NAMES",
    "SESSION_ENDED_MESSAGES",
    "SESSION_KEY",
    "LoginSettings",
    "SessionBinding",
    "SessionGuard",
    "authenticate_login",
    "login_message",
    "login_settings_from",
    "origin_of",
    "refused_origin_hint",
    "session_ended_message",
]

log = logging.getLogger("mtls_middleware")

#: The query parameter that carries a refused login's reason code to the login page.
ERROR_PARAM = "mtls_error"
#: The session key of the :class:`SessionBinding` of a certificate login.
SESSION_KEY = "_mtls_certificate"
#: The session key that keeps, for the next page, why a certificate session ended.
ENDED_KEY = "_mtls_session_ended"

#: The framework settings (Flask ``app.config``, Django ``settings``) that make a
#: :class:`LoginSettings`, by keyword.
LOGIN_SETTING_NAMES: Mapping[str, str] = {
    "MTLS_LOGIN_SITE_URL": "site_url",
    "MTLS_LOGIN_ALLOWED_ORIGINS": "allowed_origins",
    "MTLS_LOGIN_PAGE": "login_page",
    "MTLS_LOGIN_DEFAULT_NEXT": "default_next",
    "MTLS_LOGIN_URL": "login_url",
}

# Longer targets are not redirected to: no page of ours needs them, and they bloat logs.
_MAX_TARGET = 2048

#: What the login page says for each reason a certificate login is refused.
LOGIN_MESSAGES: Mapping[Reason, str] = {
    Reason.NO_CERTIFICATE: (
        "Your browser did not send a certificate. Insert your smart card or install your "
        "certificate, choose it when the browser asks, and try again."
    ),
    Reason.UNTRUSTED_PROXY: "Certificate login is not set up correctly on this site. Please contact support.",
    Reason.PROXY_VERIFICATION_FAILED: "Your certificate could not be verified. Try another certificate.",
    Reason.MALFORMED_CERTIFICATE: "Your certificate could not be read. Try another certificate.",
    Reason.CERTIFICATE_TOO_LARGE: (
        "Your certificate is larger than this site accepts. Try another certificate."
    ),
    Reason.CHAIN_TOO_LONG: (
        "Your certificate chain is longer than this site accepts. Try another certificate."
    ),
    Reason.CERTIFICATE_EXPIRED: "Your certificate has expired. Ask your administrator for a new one.",
    Reason.CERTIFICATE_NOT_YET_VALID: (
        "Your certificate is not valid yet. Check your computer's clock, or try again later."
    ),
    Reason.UNTRUSTED_ISSUER: "Your certificate was not issued by an authority this site trusts.",
    Reason.CHAIN_INVALID: "Your certificate does not meet this site's requirements. Try another certificate.",
    Reason.MISSING_CLIENT_AUTH_EKU: "This certificate is not meant for logging in. Try another certificate.",
    Reason.DUAL_PURPOSE_EKU: (
        "This certificate is meant for servers as well as people, which this site does not accept. "
        "Try another certificate."
    ),
    Reason.CERTIFICATE_REVOKED: (
        "Your certificate has been revoked. Ask your administrator for a new one."
    ),
    Reason.NO_REVOCATION_SOURCE: (
        "This site cannot check whether your certificate has been revoked, so it cannot accept it."
    ),
    Reason.REVOCATION_UNAVAILABLE: (
        "This site cannot check your certificate right now. Please try again in a few minutes."
    ),
    Reason.UNKNOWN_CERTIFICATE: (
        "This certificate is not registered to any account. Ask your administrator to register it, "
        "or choose another certificate."
    ),
    Reason.USER_INACTIVE: "Your account has been deactivated. Please contact your administrator.",
    Reason.CERTIFICATE_AUTH_DISABLED: (
        "Certificate login is switched off for your organisation. Please contact your administrator."
    ),
    Reason.STORE_UNAVAILABLE: "Login is unavailable right now. Please try again in a few minutes.",
    Reason.INVALID_REQUEST: "The login request did not come from this site. Start again from the login page.",
    Reason.INTERNAL_ERROR: "Something went wrong on our side. Please try again later.",
    Reason.CONFIGURATION_ERROR: "Something went wrong on our side. Please try again later.",
}

#: What the login page says after a certificate session ended, for each reason it can end.
SESSION_ENDED_MESSAGES: Mapping[Reason, str] = {
    Reason.UNKNOWN_CERTIFICATE: (
        "You have been logged out: the certificate you logged in with is no longer registered."
    ),
    Reason.USER_INACTIVE: "You have been logged out: your account has been deactivated.",
    Reason.CERTIFICATE_AUTH_DISABLED: (
        "You have been logged out: certificate login has been switched off for your organisation."
    ),
    Reason.CERTIFICATE_EXPIRED: "You have been logged out: the certificate you logged in with has expired.",
}

_GENERIC = "Certificate login failed. Please try again, or contact your administrator."
_GENERIC_ENDED = "You have been logged out. Please log in again."


def _reason(code: object) -> Reason | None:
    if isinstance(code, Reason):
        return code
    if not isinstance(code, str):
        return None
    try:
        return Reason(code)
    except ValueError:
        return None


def login_message(code: object) -> str | None:
    """The sentence a login page shows for a refused login's reason ``code`` (a :class:`Reason`
    or its value, as read from the ``mtls_error`` query parameter): None for no code (None or
    empty), a generic sentence for a code that is not a certificate login reason. Never echoes
    the code or any other input."""
    if code is None or code == "":
        return None
    reason = _reason(code)
    return LOGIN_MESSAGES.get(reason, _GENERIC) if reason is not None else _GENERIC


def session_ended_message(code: object) -> str | None:
    """The sentence a page shows once after :class:`SessionGuard` ended a session for ``code``;
    None for no code, a generic sentence for any other value."""
    if code is None or code == "":
        return None
    reason = _reason(code)
    return SESSION_ENDED_MESSAGES.get(reason, _GENERIC_ENDED) if reason is not None else _GENERIC_ENDED


# -- redirects and origins -------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased, default port dropped;
    None for anything else (no host, credentials, a bad port, non-ASCII)."""
    if not url.isascii() or _unsafe(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of(url: str) -> str | None:
    """The origin of an absolute http(s) URL as :class:`LoginSettings` compares them
    (``scheme://host[:port]``, lower-cased, default port dropped); None for anything else."""
    return _origin(url)


def _exact_origin(value: str) -> str | None:
    """The normalised origin when ``value`` is an origin and nothing more (no path, query,
    fragment), else None."""
    origin = _origin(value)
    if origin is None or "?" in value or "#" in value or urlsplit(value).path not in ("", "/"):
        return None
    return origin


def _unsafe(target: str) -> bool:
    # Browsers drop tabs and newlines inside URLs and read "\" as "/": "/\t/evil.example" and
    # "/\\evil.example" both become "//evil.example", another site. Any control character,
    # backslash or space makes a target unusable.
    return any(ch <= " " or ch in "\\\x7f" for ch in target)


def _local_path(target: str) -> bool:
    return target.startswith("/") and not target.startswith("//") and not _unsafe(target)


@dataclass(frozen=True, kw_only=True)
class LoginSettings:
    """Where a certificate login comes from and may send the browser back to.

    ``site_url`` is the origin of the ordinary site (``https://app.example``): the login page's
    and every relative target's origin, since the login view itself is served on another origin
    (another port or host). None when the login view shares its origin with the pages it sends
    people back to. ``allowed_origins`` are further origins the view may redirect to and accept
    a login form from. ``login_page`` is where a refused login is sent (with ``?mtls_error=``),
    and ``default_next`` where an accepted one goes without a usable ``next``; both a path on the
    site or an absolute URL of an allowed origin. ``login_url`` is where the login button posts:
    the absolute URL of the certificate login view on the listener that requests a certificate
    (``https://app.example:8443/login/certificate``); None means the view's own path, for a
    site whose every page is served there.

    Raises:
        ConfigurationError: a URL that is not an http(s) origin (no path, query or credentials),
            or a ``login_page`` / ``default_next`` that is neither a local path nor a URL of an
            allowed origin.
    """

    site_url: str | None = None
    allowed_origins: Sequence[str] = ()
    login_page: str = "/login"
    default_next: str = "/"
    login_url: str | None = None
    _origins: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origins: list[str] = []
        if self.site_url is not None:
            origins.append(self._check_origin("site_url", self.site_url))
            object.__setattr__(self, "site_url", origins[0])
        if isinstance(self.allowed_origins, str):
            raise ConfigurationError(
                detail=f"allowed_origins must be a list of origins: write [{self.allowed_origins!r}]"
            )
        for value in self.allowed_origins:
            origins.append(self._check_origin("allowed_origins entry", value))
        object.__setattr__(self, "allowed_origins", tuple(origins[1 if self.site_url else 0 :]))
        object.__setattr__(self, "_origins", frozenset(origins))
        for name in ("login_page", "default_next"):
            value = getattr(self, name)
            if not isinstance(value, str) or not (_local_path(value) or self._allowed_url(value)):
                raise ConfigurationError(
                    detail=f"{name}={value!r}: give a path on the site such as '/login', or an "
                    "absolute URL of site_url or allowed_origins"
                )
        if self.login_url is not None and not (
            isinstance(self.login_url, str)
            and (_local_path(self.login_url) or _origin(self.login_url) is not None)
        ):
            raise ConfigurationError(
                detail=f"login_url={self.login_url!r}: give the certificate login view's URL, such "
                "as 'https://app.example:8443/login/certificate'"
            )

    @staticmethod
    def _check_origin(name: str, value: object) -> str:
        origin = _exact_origin(value) if isinstance(value, str) else None
        if origin is None:
            raise ConfigurationError(
                detail=f"{name} {value!r}: give an origin such as 'https://app.example' or "
                "'https://app.example:8443' (scheme, host and port; no path)"
            )
        return origin

    def _allowed_url(self, target: str) -> bool:
        origin = _origin(target)
        return origin is not None and origin in self._origins

    def _absolute(self, path: str) -> str:
        return f"{self.site_url}{path}" if self.site_url is not None else path

    def redirect_target(self, target: object) -> str:
        """Where to send the browser after a login: ``target`` (a ``next`` parameter, untrusted)
        when it is a path on the site or a URL of an allowed origin, else ``default_next``.
        A path is made absolute with ``site_url``. Protocol-relative, ``javascript:``, other
        hosts, credentials, backslashes, control characters and over-long targets all fall back
        to the default."""
        if isinstance(target, str) and 0 < len(target) <= _MAX_TARGET:
            if _local_path(target):
                return self._absolute(target)
            if self._allowed_url(target):
                return target
        return self.default_target

    @property
    def default_target(self) -> str:
        """Where an accepted login goes without a usable ``next``: ``default_next``, absolute."""
        return self._absolute(self.default_next) if _local_path(self.default_next) else self.default_next

    def kept_next(self, next_target: object) -> str | None:
        """``next_target`` when a login page should carry it on (as its form's ``next``, or in
        its URL): a target :meth:`redirect_target` accepts that is not the default; else None."""
        wanted = isinstance(next_target, str) and bool(next_target)
        if wanted and self.redirect_target(next_target) != self.default_target:
            return str(next_target)
        return None

    def login_page_url(self, next_target: object = None, *, reason: Reason | None = None) -> str:
        """The login page, with ``reason``'s code (``?mtls_error=``) when given, and
        :meth:`kept_next` of ``next_target`` as ``?next=``."""
        page = self._absolute(self.login_page) if _local_path(self.login_page) else self.login_page
        query: dict[str, str] = {ERROR_PARAM: reason.value} if reason is not None else {}
        kept = self.kept_next(next_target)
        if kept is not None:
            query["next"] = kept
        return f"{page}{'&' if '?' in page else '?'}{urlencode(query)}" if query else page

    def failure_url(self, reason: Reason, next_target: object = None) -> str:
        """The login page a refused login is sent to: :meth:`login_page_url` with ``reason``."""
        return self.login_page_url(next_target, reason=reason)

    def origin_allowed(self, origin: object, own_origin: str | None = None) -> bool:
        """Whether a login form posted with this ``Origin`` header came from the site: an allowed
        origin, or ``own_origin`` (the login view's own, from the request). A missing or
        ``null`` Origin is refused: browsers send one with every form POST."""
        if not isinstance(origin, str) or not origin or origin == "null":
            return False
        normalized = _exact_origin(origin)
        if normalized is None:
            return False
        if normalized in self._origins:
            return True
        return own_origin is not None and normalized == _exact_origin(own_origin)


def refused_origin_hint(origin: object) -> str:
    """Why a login form's ``Origin`` may have been refused, for the log line: ``Origin: null``
    from a real browser most often means the login page's ``Referrer-Policy`` (``same-origin``,
    ``no-referrer``), under which browsers hide the origin of a form posted to another origin."""
    if origin == "null":
        return (
            "a browser sends 'Origin: null' when the login page's Referrer-Policy is same-origin "
            "or no-referrer: serve the login page with strict-origin-when-cross-origin"
        )
    if not origin:
        return "no Origin header: not a browser's form POST"
    return "not MTLS_LOGIN_SITE_URL, MTLS_LOGIN_ALLOWED_ORIGINS or the view's own origin"


def login_settings_from(values: Mapping[str, Any], **overrides: Any) -> LoginSettings:
    """The :class:`LoginSettings` of the ``MTLS_LOGIN_*`` keys of ``values`` (Flask's
    ``app.config``, Django's settings as a mapping; see :data:`LOGIN_SETTING_NAMES`), with
    ``overrides`` (keywords) winning.

    Raises:
        ConfigurationError: as :class:`LoginSettings`, or an override that names no setting.
    """
    kwargs: dict[str, Any] = {}
    for key, name in LOGIN_SETTING_NAMES.items():
        if key in values:
            kwargs[name] = values[key]
    for name in overrides:
        if name not in LOGIN_SETTING_NAMES.values():
            raise ConfigurationError(
                detail=f"unknown login setting {name!r}: "
                f"valid names are {', '.join(LOGIN_SETTING_NAMES.values())}"
            )
    kwargs.update(overrides)
    return LoginSettings(**kwargs)


# -- the login itself --------------------------------------------------------------------------


def authenticate_login(
    auth: Authenticator,
    *,
    environ: dict[str, Any] | None = None,
    scope: Mapping[str, Any] | None = None,
) -> Identity:
    """Authenticate a certificate login request (WSGI ``environ`` or ASGI ``scope``) through
    ``auth``, exactly as the middleware would; the attempt is recorded in the login history.

    Raises:
        MTLSError: the refusal, with its reason; ``no_certificate`` when the browser sent none,
            whatever the configured mode.
    """
    if environ is not None and scope is None:
        identity = auth.hit_wsgi(environ) or auth.authenticate_wsgi(environ)
    elif scope is not None and environ is None:
        identity = auth.hit_asgi(scope) or auth.authenticate_asgi(scope)
    else:
        raise TypeError("give exactly one of environ= or scope=")
    if identity is None:
        raise NoCertificateError()
    return identity


_NUMBERS = (int, float)  # exactly: a bool is no timestamp


@dataclass(frozen=True)
class SessionBinding:
    """The certificate a session was opened with, as kept in the session.

    ``session_user`` is the framework's id of the logged-in user (Flask-Login's ``get_id()``,
    Django's primary key): a binding whose ``session_user`` no longer matches the session's user
    (a logout, or another login in the same session) is stale and ignored. ``not_after`` and
    ``login_time`` are POSIX timestamps.
    """

    fingerprint: str
    user_id: str
    org: str
    not_after: float
    login_time: float
    session_user: str

    @classmethod
    def for_identity(
        cls, identity: Identity, session_user: object, *, now: float | None = None
    ) -> SessionBinding:
        """The binding of a login by ``identity`` as the framework's user ``session_user``."""
        return cls(
            fingerprint=identity.fingerprint,
            user_id=identity.user_id,
            org=identity.org,
            not_after=identity.not_after.timestamp(),
            login_time=time.time() if now is None else now,
            session_user=str(session_user),
        )

    def to_session(self) -> dict[str, Any]:
        """A JSON-serialisable dict for the session."""
        return {
            "fp": self.fingerprint,
            "user": self.user_id,
            "org": self.org,
            "exp": self.not_after,
            "at": self.login_time,
            "sid": self.session_user,
        }

    @classmethod
    def from_session(cls, value: object) -> SessionBinding | None:
        """The binding kept by :meth:`to_session`; None for anything else (absent, truncated,
        wrong types), which callers treat as a session with no certificate binding."""
        # Plain tests, no generators: this runs on every page of every logged-in user.
        if not isinstance(value, dict):
            return None
        get = value.get
        fp, user, org, sid, exp, at = get("fp"), get("user"), get("org"), get("sid"), get("exp"), get("at")
        if not (
            type(fp) is str and fp and type(user) is str and user
            and type(org) is str and org and type(sid) is str and sid
            and type(exp) in _NUMBERS and type(at) in _NUMBERS
        ):  # fmt: skip
            return None
        return cls(fp, user, org, float(exp), float(at), sid)  # type: ignore[arg-type]  # tested above


class SessionGuard:
    """The per-request check of a certificate session: does its certificate still open it?

    ``check`` costs a dictionary lookup and two comparisons while the store's ``generation`` is
    unchanged since the binding's last check, and one store lookup (``resolve_certificate``, or
    ``resolve_user`` with a mapper other than the fingerprint one) after any change, in any
    worker, that could end a session: the same invalidation that empties the verdict cache.
    Thread-safe; remembers at most ``maxsize`` certificates.
    """

    def __init__(self, auth: Authenticator, *, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ConfigurationError(detail=f"maxsize={maxsize!r}: give at least 1")
        self.store = auth.store
        self._by_fingerprint = isinstance(auth.config.identity_mapper, FingerprintMapper)
        # Read without a lock, as the verdict cache is (a dict read is atomic): this runs on
        # every page of every logged-in user. Writes take the lock and evict the oldest entry.
        self._known: dict[tuple[str, str, str], tuple[int, Reason | None]] = {}
        self._maxsize = maxsize
        self._lock = threading.Lock()

    def check(self, binding: SessionBinding, *, now: float | None = None) -> Reason | None:
        """None while the session may go on; else the reason it ends: ``certificate_expired``,
        ``unknown_certificate`` (deleted, or now another user's), ``user_inactive`` or
        ``certificate_auth_disabled``.

        Raises:
            MTLSError: the store cannot answer (``store_unavailable``): the session's state is
                unknown, so the request must not be served as its user, but the session is not
                ended for a fault of ours.
        """
        if (time.time() if now is None else now) >= binding.not_after:
            return Reason.CERTIFICATE_EXPIRED
        key = (binding.fingerprint, binding.user_id, binding.org)
        generation = self.store.generation  # read first: a change during the lookup invalidates
        known = self._known.get(key)
        if known is not None and known[0] == generation:
            return known[1]
        verdict = self._judge(binding)
        with self._lock:
            self._known.pop(key, None)
            while len(self._known) >= self._maxsize:
                del self._known[next(iter(self._known))]
            self._known[key] = (generation, verdict)
        return verdict

    def _judge(self, binding: SessionBinding) -> Reason | None:
        principal: Principal | None
        try:
            if self._by_fingerprint:
                principal = self.store.resolve_certificate(binding.fingerprint)
            else:
                principal = self.store.resolve_user(binding.user_id)
        except MTLSError:
            raise
        except Exception as exc:  # a store fault is not the user's: fail closed, keep the session
            log.exception("mtls_middleware: cannot check the certificate session of %r", binding.user_id)
            raise MTLSError(Reason.STORE_UNAVAILABLE, f"{type(exc).__name__}: {exc}") from exc
        if principal is None or (principal.user_id, principal.org) != (binding.user_id, binding.org):
            return Reason.UNKNOWN_CERTIFICATE
        try:
            authorize(principal)
        except MTLSError as exc:
            return exc.reason
        return None
