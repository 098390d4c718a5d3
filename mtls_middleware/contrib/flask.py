"""Flask integration: the WSGI middleware as a Flask extension, configured from ``app.config``.

Three lines protect an app::

    app.config.update(MTLS_TRUST_ROOTS="roots.pem", MTLS_STORE="sqlite:///mtls.db")
    MTLS(app)                                   # or mtls = MTLS(); mtls.init_app(app) in a factory
    # in a view: g.mtls_identity.user_id, or current_identity.user_id

The extension decides nothing itself: it wraps ``app.wsgi_app`` in
:class:`mtls_middleware.wsgi.MTLSMiddleware`, so every request is authenticated (and a refused one
answered with ``{"error": code, "message": sentence}``) before Flask routes it, exactly as without
Flask. What it adds is the Flask side: the settings (``MTLS_*`` keys, see
:data:`mtls_middleware.contrib.settings.SETTING_NAMES`), ``g.mtls_identity``, :data:`current_identity`,
the :func:`mtls_required` view decorator for ``MTLS_MODE = "optional"`` apps,
:func:`certificate_request_loader` for Flask-Login, and :class:`CertificateLogin`, the browser's
"Log in with certificate" button, view and certificate-bound session (see :mod:`mtls_middleware.login`).

WSGI middleware that rewrites ``REMOTE_ADDR`` (werkzeug's ``ProxyFix``) must sit *inside* ours: apply
it to ``app.wsgi_app`` before ``MTLS(app)``, never after, or the trusted-proxy gate judges an address
taken from a header.
"""

from __future__ import annotations

import functools
import inspect
import logging
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, redirect, request, session
from flask import Request as FlaskRequest
from markupsafe import Markup
from werkzeug.local import LocalProxy

from ..config import MTLSConfig
from ..errors import AuthorizationError, ConfigurationError, MTLSError, NoCertificateError, Reason
from ..identity import ENVIRON_KEY, Identity
from ..login import (
    ENDED_KEY,
    ERROR_PARAM,
    SESSION_KEY,
    LoginSettings,
    SessionBinding,
    SessionGuard,
    authenticate_login,
    login_message,
    login_settings_from,
    refused_origin_hint,
    session_ended_message,
)
from ..wsgi import MTLSMiddleware, error_response
from .settings import config_from_settings

__all__ = [
    "EXTENSION_KEY",
    "LOGIN_EXTENSION_KEY",
    "MTLS",
    "CertificateLogin",
    "certificate_request_loader",
    "current_identity",
    "get_certificate_session",
    "get_identity",
    "mtls_required",
]

log = logging.getLogger("mtls_middleware")

#: The key of the extension in ``app.extensions``.
EXTENSION_KEY = "mtls"
#: The key of :class:`CertificateLogin` in ``app.extensions``.
LOGIN_EXTENSION_KEY = "mtls_login"

ViewT = TypeVar("ViewT", bound=Callable[..., Any])
UserT = TypeVar("UserT")


class MTLS:
    """The Flask extension: authenticates every request of an app by client certificate.

    ``MTLS(app)`` sets the app up at once; ``MTLS()`` followed by :meth:`init_app` suits app
    factories, and one instance may serve several apps. With ``config=None`` each app's
    :class:`MTLSConfig` is built from its ``app.config`` ``MTLS_*`` keys when :meth:`init_app` runs;
    an explicit ``config`` is used for every app instead (``app.config`` is then not read)::

        mtls = MTLS()
        def create_app():
            app = Flask(__name__); app.config.from_prefixed_env(); mtls.init_app(app); return app

    Raises:
        ConfigurationError: from :meth:`init_app`, see there.
    """

    def __init__(self, app: Flask | None = None, *, config: MTLSConfig | None = None) -> None:
        if config is not None and not isinstance(config, MTLSConfig):
            raise ConfigurationError(detail=f"config must be an MTLSConfig, not {type(config).__name__}")
        self.config = config
        self._middleware: weakref.WeakKeyDictionary[Flask, MTLSMiddleware] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` in the middleware and expose the identity to views.

        Registers the extension as ``app.extensions["mtls"]`` and a ``before_request`` hook that
        sets ``g.mtls_identity`` (the request's :class:`~mtls_middleware.identity.Identity`, or None
        in optional mode and on exempt paths).

        Raises:
            ConfigurationError: the app is already set up with an MTLS extension, an ``MTLS_*`` key
                names no setting (with the closest valid names), a required setting is missing, or
                :class:`MTLSConfig` refuses a value. Raised here, at start-up, never per request.
        """
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError(
                detail=f"app {app.name!r} already has an MTLS extension: call init_app once per app"
            )
        config = self.config if self.config is not None else config_from_settings(app.config)
        middleware = MTLSMiddleware(app.wsgi_app, config)
        # The documented Flask way to add WSGI middleware; Flask declares wsgi_app as a method.
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self
        self._middleware[app] = middleware
        app.before_request(_set_identity)

    def middleware(self, app: Flask | None = None) -> MTLSMiddleware:
        """The middleware serving ``app`` (default: the current app): its ``config`` and
        ``authenticator`` (for example ``.config.resolved_store`` for management views).

        Raises:
            RuntimeError: ``app`` was not set up by this extension, or no app is given and none is
                current.
        """
        target: Flask = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._middleware[target]
        except KeyError:
            raise RuntimeError(f"MTLS.init_app was not called for app {target.name!r}") from None


def _set_identity() -> None:
    g.mtls_identity = request.environ.get(ENVIRON_KEY)


def get_identity() -> Identity | None:
    """The identity of the current request; None without one or outside a request."""
    if not has_request_context():
        return None
    identity = request.environ.get(ENVIRON_KEY)
    return identity if isinstance(identity, Identity) else None


#: The current request's :class:`~mtls_middleware.identity.Identity`, as a proxy; it is falsy when
#: the request has none (test with ``if current_identity:``, not ``is None``). Typed as Identity,
#: as Flask types ``request``; :func:`get_identity` returns ``Identity | None``.
current_identity: Identity = LocalProxy(get_identity)  # type: ignore[assignment]


def _refuse(error: MTLSError) -> Response:
    status, headers, body = error_response(error)
    return Response(body, status=status, headers=headers)


@overload
def mtls_required(view: ViewT, /) -> ViewT: ...


@overload
def mtls_required(permission: str | None = None, /) -> Callable[[ViewT], ViewT]: ...


def mtls_required(arg: Callable[..., Any] | str | None = None, /) -> Any:
    """Refuse a view to requests without a certificate identity (for ``MTLS_MODE = "optional"``).

    A request without one is answered ``401`` with ``{"error": "no_certificate", ...}``, the body the
    middleware sends in required mode. ``@mtls_required("reports")`` also requires the identity's
    user to hold that permission (``Identity.permissions``, from the store:
    ``store.set_user_permissions(user_id, [...])``); without it the answer is ``403``
    ``{"error": "permission_denied", ...}``. The view runs only when neither applies::

        @app.get("/reports")
        @mtls_required("reports")
        def reports(): return {"user": current_identity.user_id}

    Async views are decorated as async views.
    """
    if callable(arg):
        return _decorate(arg, None)
    if arg is not None and (not isinstance(arg, str) or not arg):
        raise ConfigurationError(detail=f"mtls_required: permission {arg!r} must be a non-empty string")
    permission = arg

    def decorator(view: ViewT) -> ViewT:
        return _decorate(view, permission)

    return decorator


def _refusal(permission: str | None) -> Response | None:
    identity = get_identity()
    if identity is None:
        return _refuse(NoCertificateError())
    if permission is not None and not identity.has_permission(permission):
        return _refuse(AuthorizationError(Reason.PERMISSION_DENIED, f"lacks permission {permission!r}"))
    return None


def _decorate(view: ViewT, permission: str | None) -> ViewT:
    if inspect.iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            refused = _refusal(permission)
            if refused is not None:
                return refused
            return await view(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        refused = _refusal(permission)
        if refused is not None:
            return refused
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def certificate_request_loader(
    load_user: Callable[[Identity], UserT | None],
) -> Callable[[FlaskRequest], UserT | None]:
    """A Flask-Login ``request_loader``: the user of the request's certificate identity.

    ``load_user`` turns an :class:`~mtls_middleware.identity.Identity` into your user object (or
    None); requests without an identity load no user, so Flask-Login treats them as anonymous::

        login_manager = LoginManager(app)
        login_manager.request_loader(certificate_request_loader(lambda i: User.get(i.user_id)))
        # @login_required views now see current_user for the certificate's user

    The certificate authenticates each request, so there is no need to call ``login_user`` (which
    would put the user in the session and let a later request without the certificate in). For
    users who must always present their certificate even after a password login, see
    :func:`mtls_middleware.identity.require_certificate_login`.
    """

    def loader(req: FlaskRequest) -> UserT | None:
        identity = req.environ.get(ENVIRON_KEY)
        return load_user(identity) if isinstance(identity, Identity) else None

    return loader


# -- browser certificate login -------------------------------------------------------------------

_REASON_CODES = frozenset(r.value for r in Reason)
#: Flask-Login's session key of the logged-in user's id.
_FLASK_LOGIN_USER_KEY = "_user_id"


class CertificateLogin:
    """Browser certificate login for Flask-Login apps: a "Log in with certificate" button, the
    view it posts to, and sessions that end when their certificate stops opening them.

    The flow (see :mod:`mtls_middleware.login` for the shared part):

    - The login page renders ``{{ certificate_login_button() }}``: a form whose button posts to
      the certificate login view (``url``, default ``/login/certificate``) at ``MTLS_LOGIN_URL``,
      the listener that requests a client certificate (``https://app.example:8443/...``: the
      ``mtls-admin serve`` listener, or an nginx ``server`` block with ``ssl_verify_client
      optional_no_ca``). The rest of the site, served without a certificate request, never makes
      the browser prompt. The button's template is ``mtls_middleware/certificate_login_button.html``;
      put one of that name in your app's templates to restyle it.
    - A GET of the view redirects to the login page, logging nobody in (a link or an image
      must not open a session). The view accepts only a POST whose ``Origin`` is the site's
      (``MTLS_LOGIN_SITE_URL``, ``MTLS_LOGIN_ALLOWED_ORIGINS``, or its own): a page of another
      site cannot log a browser in. Serve the login page with a ``Referrer-Policy`` that keeps
      the origin of cross-origin requests (the browsers' default,
      ``strict-origin-when-cross-origin``): under
      ``same-origin`` or ``no-referrer`` browsers send ``Origin: null`` and every login is
      refused (``invalid_request``; the log says why). It authenticates the request with the
      :class:`MTLS` extension's :class:`~mtls_middleware.Authenticator` (the attempt goes to the
      login history), asks ``load_user(identity)`` for the app's user, clears the session, calls Flask-Login's
      ``login_user`` (never "remember me": that cookie would outlive the certificate check) and
      keeps the certificate's :class:`~mtls_middleware.login.SessionBinding` in the session.
      It then redirects (303) to the form's ``next`` if that is a URL of the site, else to
      ``MTLS_LOGIN_DEFAULT_NEXT``. A refusal redirects to ``MTLS_LOGIN_PAGE`` with
      ``?mtls_error=<reason code>``, which the button's template shows as a sentence
      (:data:`~mtls_middleware.login.LOGIN_MESSAGES`).
    - Before every request of the app, a session with a binding is checked by
      :class:`~mtls_middleware.login.SessionGuard`: a dictionary lookup while the store is
      unchanged. When the certificate was deleted (or given to another user), its user
      deactivated, the organisation switched off, or the certificate has expired, the user is
      logged out there and then, and the login page says why once. If the store cannot answer,
      the request is refused with ``503 store_unavailable`` and the session kept.

    Set up after :class:`MTLS` and Flask-Login's ``LoginManager``; the view's path must be in
    ``MTLS_EXEMPT_PATHS`` (the view judges the certificate itself, so that a refused one leads
    back to the login page rather than to a JSON error)::

        app.config.update(
            MTLS_MODE="optional",                       # the site itself asks for no certificate
            MTLS_EXEMPT_PATHS=["/login/certificate"],
            MTLS_LOGIN_SITE_URL="https://app.example",
            MTLS_LOGIN_URL="https://app.example:8443/login/certificate",
        )
        MTLS(app)
        LoginManager(app)
        CertificateLogin(app, load_user=lambda identity: User.find(identity.user_id))

    Raises:
        ConfigurationError: from :meth:`init_app`: no :class:`MTLS` extension or ``LoginManager``
            on the app, the view's path not exempt, or ``MTLS_LOGIN_*`` values that cannot work.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        load_user: Callable[[Identity], Any],
        url: str = "/login/certificate",
        settings: LoginSettings | None = None,
    ) -> None:
        if not callable(load_user):
            raise ConfigurationError(detail="load_user must be a function of an Identity")
        if not isinstance(url, str) or not url.startswith("/") or url.startswith("//"):
            raise ConfigurationError(detail=f"url={url!r} must be a path such as '/login/certificate'")
        self.load_user = load_user
        self.url = url
        self._settings = settings
        self._apps: weakref.WeakKeyDictionary[Flask, tuple[LoginSettings, SessionGuard]] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the view, the per-request session check and the ``certificate_login_button``
        template function on ``app``.

        Raises:
            ConfigurationError: see the class.
        """
        extension = app.extensions.get(EXTENSION_KEY)
        if not isinstance(extension, MTLS):
            raise ConfigurationError(detail="CertificateLogin needs the MTLS extension: call MTLS(app) first")
        if getattr(app, "login_manager", None) is None:
            raise ConfigurationError(
                detail="CertificateLogin needs Flask-Login: call LoginManager(app) first"
            )
        if LOGIN_EXTENSION_KEY in app.extensions:
            raise ConfigurationError(detail=f"app {app.name!r} already has a CertificateLogin")
        middleware = extension.middleware(app)
        if not middleware.config.is_exempt(self.url):
            raise ConfigurationError(
                detail=f"add {self.url!r} to MTLS_EXEMPT_PATHS: the certificate login view judges "
                "the certificate itself, to send a refused one back to the login page"
            )
        settings = self._settings if self._settings is not None else login_settings_from(app.config)
        guard = SessionGuard(middleware.authenticator)
        self._apps[app] = (settings, guard)
        app.extensions[LOGIN_EXTENSION_KEY] = self

        blueprint = Blueprint("mtls_login", __name__, template_folder="templates")
        blueprint.add_url_rule(
            self.url, "certificate_login", functools.partial(self._login, app), methods=["GET", "POST"]
        )
        app.register_blueprint(blueprint)
        # First of the before_request hooks: no other hook may see the user of an ended session.
        app.before_request_funcs.setdefault(None, []).insert(0, functools.partial(self._check, app))
        app.jinja_env.globals["certificate_login_button"] = self.button

    def settings(self, app: Flask | None = None) -> LoginSettings:
        """The :class:`~mtls_middleware.login.LoginSettings` of ``app`` (default: the current app)."""
        return self._state(app)[0]

    def _state(self, app: Flask | None) -> tuple[LoginSettings, SessionGuard]:
        target: Flask = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._apps[target]
        except KeyError:
            raise RuntimeError(f"CertificateLogin.init_app was not called for app {target.name!r}") from None

    # -- the view ---------------------------------------------------------------------------
    def _login(self, app: Flask) -> Response:
        from flask_login import login_user

        settings, _guard = self._state(app)
        if request.method != "POST":
            # A link, an image or a reload logs nobody in: only the form's POST does. The person
            # lands on the page with the button instead of on an error.
            return _see_other(settings.login_page_url(request.args.get("next")))
        next_target = request.form.get("next")
        own_origin = f"{request.scheme}://{request.host}"
        if not settings.origin_allowed(request.headers.get("Origin"), own_origin=own_origin):
            origin = request.headers.get("Origin")
            log.info("mtls_middleware: certificate login posted from origin %r refused (%s)",
                     origin, refused_origin_hint(origin))
            return _see_other(settings.failure_url(Reason.INVALID_REQUEST, next_target))
        try:
            identity = authenticate_login(self._authenticator(app), environ=request.environ)
            user = self.load_user(identity)
            if user is None:
                raise AuthorizationError(
                    Reason.UNKNOWN_CERTIFICATE, f"load_user found no app user for {identity.user_id!r}"
                )
            if not getattr(user, "is_active", True):
                raise AuthorizationError(Reason.USER_INACTIVE, f"app user {identity.user_id!r} is inactive")
            session.clear()  # a session made before the login carries nothing into it
            if not login_user(user, remember=False, fresh=True):
                raise AuthorizationError(Reason.USER_INACTIVE, f"Flask-Login refused {identity.user_id!r}")
        except MTLSError as exc:
            return _see_other(settings.failure_url(exc.reason, next_target))
        except Exception:  # fail closed, and never a trace to the browser
            log.exception("mtls_middleware: unexpected error in the certificate login view")
            return _see_other(settings.failure_url(Reason.INTERNAL_ERROR, next_target))
        session[SESSION_KEY] = SessionBinding.for_identity(identity, user.get_id()).to_session()
        return _see_other(settings.redirect_target(next_target))

    def _authenticator(self, app: Flask) -> Any:
        extension = app.extensions[EXTENSION_KEY]
        return extension.middleware(app).authenticator

    # -- every request ----------------------------------------------------------------------
    def _check(self, app: Flask) -> Response | None:
        # Runs on every request: the session object is looked up once, not through the proxy
        # at each access.
        data = session._get_current_object()  # type: ignore[attr-defined]
        kept = data.get(SESSION_KEY)
        if kept is None:
            return None
        binding = SessionBinding.from_session(kept)
        if binding is None or binding.session_user != data.get(_FLASK_LOGIN_USER_KEY):
            data.pop(SESSION_KEY, None)  # logged out, or another login since: not ours to judge
            return None
        try:
            reason = self._apps[app][1].check(binding)
        except MTLSError as exc:
            return _refuse(exc)
        if reason is not None:
            from flask_login import logout_user

            log.info("mtls_middleware: certificate session of %r ended: %s", binding.user_id, reason.value)
            logout_user()
            data.pop(SESSION_KEY, None)
            data[ENDED_KEY] = reason.value
        return None

    # -- the template -----------------------------------------------------------------------
    def button(self) -> Markup:
        """The login form with its button and, when there is one, the message for a refused
        login (``?mtls_error=``) or a session that ended; for ``{{ certificate_login_button() }}``."""
        from flask import render_template, url_for

        settings = self.settings()
        code = request.args.get(ERROR_PARAM) or None
        ended = session.pop(ENDED_KEY, None) if ENDED_KEY in session else None
        message = login_message(code) if code else session_ended_message(ended)
        # Only a known code is put in the page (escaped in any case): the query is anyone's.
        reason = code if code in _REASON_CODES else ("unknown" if code else ended)
        # render_template escaped every value; the result is HTML, not text to escape again.
        return Markup(  # noqa: S704
            render_template(
                "mtls_middleware/certificate_login_button.html",
                action=settings.login_url or url_for("mtls_login.certificate_login"),
                next=settings.kept_next(request.args.get("next")),
                message=message,
                reason=reason,
            )
        )


def _see_other(location: str) -> Response:
    response: Response = redirect(location, 303)  # type: ignore[assignment]
    response.headers["Cache-Control"] = "no-store"
    return response


def get_certificate_session() -> SessionBinding | None:
    """The certificate binding of the current session (who logged in with which certificate, and
    when), or None: no certificate login in this session, or outside a request."""
    if not has_request_context():
        return None
    binding = SessionBinding.from_session(session.get(SESSION_KEY))
    if binding is None or binding.session_user != session.get(_FLASK_LOGIN_USER_KEY):
        return None
    return binding
