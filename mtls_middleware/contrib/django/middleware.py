"""Django middleware: authenticate every request by client certificate, under WSGI and ASGI.

Add it to ``MIDDLEWARE`` after ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "mtls_middleware.contrib.django.middleware.MTLSMiddleware",
        ...,
    ]
    AUTHENTICATION_BACKENDS = [
        "mtls_middleware.contrib.django.backends.CertificateBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]

It is a thin adapter over the project's one :class:`~mtls_middleware.Authenticator` (built from
the ``MTLS_*`` settings, see :mod:`.conf`), which decides everything:

- An accepted request carries its :class:`~mtls_middleware.Identity` as ``request.mtls_identity``
  (and ``request.META["mtls_middleware.identity"]``); in ``optional`` mode a request without a
  certificate has ``request.mtls_identity = None``, as have exempt paths.
- A refused request is answered here with the reason's status and
  ``{"error": code, "message": sentence}``; the view never runs.
- With ``django.contrib.auth`` installed (and ``MTLS_SET_USER`` not False), an accepted
  certificate also decides ``request.user`` (and ``request.auser()``) for that request, like
  ``RemoteUserMiddleware``: ``auth.authenticate(request, mtls_identity=identity)`` asks the
  backends, of which only :class:`~.backends.CertificateBackend` takes that keyword; when no
  backend answers (no such Django user, or an inactive one) the request is anonymous, whatever a
  session said. Nothing is written to the session and no ``user_logged_in`` signal is sent: each
  request is authenticated by its own certificate, so no session (and no session middleware) is
  needed. A request without a certificate (optional mode, exempt paths) keeps the user
  ``AuthenticationMiddleware`` found, such as a password login's, with one exception:
- A user who must log in by certificate (the store's user of the same id, the Django username,
  holds the ``enforce_mtls`` permission) is never served without it. When ``request.user`` is not
  the user of the request's own accepted certificate (no certificate: optional mode, exempt
  paths; a certificate of another user with ``MTLS_SET_USER = False``) and is such a user (a
  session from a password, SSO or other login), the request is *anonymous*: ``request.user``
  and ``request.auser()`` give ``AnonymousUser``; the session is left as it is. The check is
  :func:`mtls_middleware.identity.require_certificate_login` (its ``no_certificate`` refusal is
  logged); it costs one ``Store.resolve_user`` lookup, made lazily, only when the view (or a later
  middleware) reads the user and the user is authenticated. A store fault during the check also
  makes the request anonymous (fail closed). Anonymous rather than a 401 ``no_certificate``
  refusal: exempt paths never look at a certificate, so a refusal would lock the user out of
  them (a login or logout page) even when they present one, and optional mode serves anonymous
  requests anyway. To refuse the password login itself, use
  :class:`~.backends.PasswordBackend` instead of ``ModelBackend``. Middleware placed *before*
  this one still sees the session's user.
- Browser certificate login (:mod:`.views`, :mod:`mtls_middleware.login`): a session opened by
  the certificate login view is checked on every request that carries a session cookie, exempt
  paths included (:class:`~mtls_middleware.login.SessionGuard`: a dictionary lookup while the
  store is unchanged). When its certificate was deleted or given to another user, its user
  deactivated, its organisation switched off, or the certificate has expired, the session ends
  (``django.contrib.auth.logout``), the request is anonymous, and the reason code waits in the
  new session for the next page (``{% certificate_login_message %}`` shows it once). When the
  store cannot answer, the request is refused with 503 ``store_unavailable`` and the session kept.
  A live certificate session counts as a certificate login for the ``enforce_mtls`` rule above:
  its user is served without presenting the certificate again on each request.

Under WSGI the request's environ (``request.META``) is read, under ASGI its ``request.scope``
(the TLS extension, the headers exactly as received). Under ASGI all of the work (validation,
the store, revocation I/O, the user lookup) runs in Django's ``sync_to_async`` thread, as a
sync view would, never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse

from ...authenticator import Authenticator
from ...errors import MTLSError, NoCertificateError, Reason
from ...identity import ENVIRON_KEY, Identity, require_certificate_login
from ...login import ENDED_KEY, SESSION_KEY, SessionBinding
from ...stores.base import Store
from ...wsgi import error_response
from . import conf

__all__ = ["MTLSMiddleware", "certificate_login_required", "refusal_response"]

log = logging.getLogger("mtls_middleware")

GetResponse = Callable[[HttpRequest], Any]


def refusal_response(error: MTLSError) -> HttpResponse:
    """The response a refused request gets: the reason's status, the JSON body of
    :func:`mtls_middleware.wsgi.error_response` and its headers (``Cache-Control: no-store``)."""
    _status, headers, body = error_response(error)
    response = HttpResponse(body, status=error.status)
    for name, value in headers:
        response[name] = value
    return response


class MTLSMiddleware:
    """Authenticates each request by client certificate before the view (see the module docs).

    Raises:
        ConfigurationError: at start-up (when Django loads its middleware), if the ``MTLS_*``
            settings cannot work.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        if get_response is None:
            raise ValueError("get_response must be provided")
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        conf.get_authenticator()  # a bad configuration fails now, not on the first request

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        refusal = self.process_request(request)
        if refusal is not None:
            return refusal
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        # Thread-sensitive, as Django runs sync views: the user lookup shares the request's
        # database connection, and nothing that may block runs on the event loop.
        refusal = await sync_to_async(self.process_request, thread_sensitive=True)(request)
        if refusal is not None:
            return refusal
        response: Awaitable[Any] = self.get_response(request)
        return await response

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        """Authenticate ``request``: None to go on to the view, or the refusal to answer with.

        May block (store, revocation I/O, the user lookup): never call it on an event loop.
        """
        request.mtls_identity = None
        try:
            auth = conf.get_authenticator()
            options = conf.get_options()
        except MTLSError:  # settings changed at run time into something that cannot work
            log.exception("mtls_middleware: the MTLS_* settings cannot make a configuration")
            return refusal_response(MTLSError(Reason.INTERNAL_ERROR))
        try:
            # Before anything reads request.user: an ended session must not serve its user.
            certificate_session = _check_certificate_session(request)
            if auth.config.exempt_paths and auth.config.is_exempt(request.path_info):
                self._strip_untrusted(auth, request)
                if not certificate_session:
                    _guard_user(auth.store, request, None)
                return None
            identity = self._authenticate(auth, request)
            if identity is not None:
                request.mtls_identity = identity
                request.META[ENVIRON_KEY] = identity
            if identity is not None and options.set_user:
                _set_user(request, identity)  # the certificate's own user: nothing to guard
            elif identity is None and certificate_session:
                pass  # the session's user logged in by a certificate that still opens it
            else:
                _guard_user(auth.store, request, identity)
        except MTLSError as exc:
            return refusal_response(exc)
        except Exception:  # fail closed: a fault here must not reach the client as a trace
            log.exception("mtls_middleware: unexpected error in the Django middleware")
            return refusal_response(MTLSError(Reason.INTERNAL_ERROR))
        return None

    @staticmethod
    def _authenticate(auth: Authenticator, request: HttpRequest) -> Identity | None:
        scope = getattr(request, "scope", None)
        if scope is None:  # WSGI: request.META is the server's environ
            return auth.hit_wsgi(request.META) or auth.authenticate_wsgi(request.META)
        # ASGI: the scope has what META lost (the TLS extension, duplicated headers).
        return auth.hit_asgi(scope) or auth.authenticate_asgi(scope)

    @staticmethod
    def _strip_untrusted(auth: Authenticator, request: HttpRequest) -> None:
        # An exempt view must still never see a certificate header an untrusted peer sent.
        auth.strip_untrusted_wsgi(request.META)
        scope = getattr(request, "scope", None)
        if scope is not None:
            request.scope = auth.strip_untrusted_asgi(scope)


def _check_certificate_session(request: HttpRequest) -> bool:
    """Whether ``request``'s session is a live browser certificate login
    (:mod:`mtls_middleware.login`): its :class:`~mtls_middleware.login.SessionBinding` belongs to
    the session's user and :class:`~mtls_middleware.login.SessionGuard` lets it go on. A session
    whose certificate no longer opens it is ended here (``auth.logout``; the reason kept under
    :data:`~mtls_middleware.login.ENDED_KEY` for the next page) and the request is anonymous; a
    stale or unreadable binding is dropped. Requests without a session cookie cost nothing.

    Raises:
        MTLSError: the store cannot answer (``store_unavailable``): the session is kept.
    """
    if not hasattr(request, "session"):  # no SessionMiddleware before this one
        return False
    from django.conf import settings

    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False
    session = request.session
    kept = session.get(SESSION_KEY)
    if kept is None:
        return False
    from django.contrib.auth import SESSION_KEY as USER_SESSION_KEY

    binding = SessionBinding.from_session(kept)
    if binding is None or binding.session_user != str(session.get(USER_SESSION_KEY)):
        # Another login in this session (or a binding of an older version): not this user's.
        del session[SESSION_KEY]
        return False
    reason = conf.get_session_guard().check(binding)
    if reason is None:
        return True
    log.info(
        "mtls_middleware: %s: certificate session of %r (Django user %r) ended",
        reason.value, binding.user_id, binding.session_user,
    )
    _end_session(request, reason)
    return False


def _end_session(request: HttpRequest, reason: Reason) -> None:
    from django.contrib import auth
    from django.contrib.auth.models import AnonymousUser

    auth.logout(request)  # flushes the session (binding included), sends user_logged_out
    request.session[ENDED_KEY] = reason.value
    user = AnonymousUser()

    async def auser() -> Any:
        return user

    request.user = user
    request.auser = auser


def _set_user(request: HttpRequest, identity: Identity) -> None:
    from django.contrib import auth
    from django.contrib.auth.models import AnonymousUser

    user = auth.authenticate(request, mtls_identity=identity)
    if user is None:
        user = AnonymousUser()

    async def auser() -> Any:
        return user

    request.user = user
    request.auser = auser


def certificate_login_required(store: Store, user: Any, identity: Identity | None) -> bool:
    """Whether ``user`` (a Django user, or AnonymousUser) must not be served on ``identity`` (the
    request's accepted certificate identity, or None): True for an authenticated user whose
    username names a store user with the ``enforce_mtls`` permission, unless ``identity`` is that
    user's own (:func:`~mtls_middleware.identity.require_certificate_login`).

    Fails closed: True when the store cannot answer (the fault is logged). Blocks on the store:
    never call it on an event loop.
    """
    if not getattr(user, "is_authenticated", False):
        return False
    username = user.get_username()
    try:
        require_certificate_login(store, username, identity)
    except NoCertificateError as exc:
        log.info(
            "mtls_middleware: %s: Django user %r must present their client certificate (enforce_mtls)",
            exc.reason.value, username,
        )
        return True
    except Exception:  # the store cannot say: not served as this user
        log.exception("mtls_middleware: cannot check whether %r must log in by certificate", username)
        return True
    return False


def _guard_user(store: Store, request: HttpRequest, identity: Identity | None) -> None:
    """Make ``request.user`` and ``request.auser()`` anonymous if they are a user who must log in
    by certificate and ``identity`` is not theirs; lazily, so that a view that never reads the user
    costs no store lookup."""
    if not hasattr(request, "user"):  # no AuthenticationMiddleware (or django.contrib.auth)
        return
    from django.contrib.auth.models import AnonymousUser
    from django.utils.functional import SimpleLazyObject

    found = request.user  # still AuthenticationMiddleware's lazy object: nothing evaluated here
    found_auser = getattr(request, "auser", None)
    decided: dict[str, Any] = {}

    def checked(user: Any) -> Any:
        if "user" not in decided:
            decided["user"] = AnonymousUser() if certificate_login_required(store, user, identity) else user
        return decided["user"]

    request.user = SimpleLazyObject(lambda: checked(found))
    if found_auser is not None:

        async def auser() -> Any:
            if "user" in decided:
                return decided["user"]
            user = await found_auser()
            if not getattr(user, "is_authenticated", False):
                return user  # nobody to check: no thread hop
            return await sync_to_async(checked, thread_sensitive=True)(user)

        request.auser = auser
