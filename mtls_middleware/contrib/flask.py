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
the :func:`mtls_required` view decorator for ``MTLS_MODE = "optional"`` apps, and
:func:`certificate_request_loader` for Flask-Login.

WSGI middleware that rewrites ``REMOTE_ADDR`` (werkzeug's ``ProxyFix``) must sit *inside* ours: apply
it to ``app.wsgi_app`` before ``MTLS(app)``, never after, or the trusted-proxy gate judges an address
taken from a header.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from flask import Flask, Response, current_app, g, has_request_context, request
from flask import Request as FlaskRequest
from werkzeug.local import LocalProxy

from ..config import MTLSConfig
from ..errors import AuthorizationError, ConfigurationError, MTLSError, NoCertificateError, Reason
from ..identity import ENVIRON_KEY, Identity
from ..wsgi import MTLSMiddleware, error_response
from .settings import config_from_settings

__all__ = [
    "EXTENSION_KEY",
    "MTLS",
    "certificate_request_loader",
    "current_identity",
    "get_identity",
    "mtls_required",
]

#: The key of the extension in ``app.extensions``.
EXTENSION_KEY = "mtls"

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
