"""The browser certificate login view (:mod:`mtls_middleware.login` for the whole design).

``certificate_login`` is served on the listener that asks for a client certificate (include
:mod:`.urls`; its path must be in ``MTLS_EXEMPT_PATHS``, system check ``mtls_middleware.E006``,
so that :class:`~.middleware.MTLSMiddleware` lets a refused certificate reach the view, which
sends the person back to the login page instead of answering with JSON). It answers:

- ``POST`` from the site (the ``Origin`` header is the view's own origin, ``MTLS_LOGIN_SITE_URL``
  or one of ``MTLS_LOGIN_ALLOWED_ORIGINS``): the request's certificate is authenticated by the
  project's :class:`~mtls_middleware.Authenticator` (the attempt is in the login history); its
  Django user is found through the authentication backends
  (:class:`~.backends.CertificateBackend`), and ``django.contrib.auth.login`` opens the session
  (a new session key: no fixation; ``user_logged_in`` is sent) with a
  :class:`~mtls_middleware.login.SessionBinding` in it. 303 to ``next`` when it is one of the
  site's URLs, else to ``MTLS_LOGIN_DEFAULT_NEXT``.
- A refusal: 303 to ``MTLS_LOGIN_PAGE?mtls_error=<reason code>`` (``next`` kept when safe). A
  certificate the authenticator accepts but no backend turns into an active Django user is
  ``user_inactive`` when a Django user of that username exists but is inactive, else
  ``unknown_certificate`` (no such Django user). A missing, ``null`` or foreign ``Origin`` is
  ``invalid_request``. Settings that cannot work are ``configuration_error`` (to ``/login``
  when the login settings themselves cannot be read), any other unexpected fault
  ``internal_error``; both are logged with their trace: never a 500 page.
- ``GET`` / ``HEAD``: 303 to the login page (``next`` kept when safe), logging nobody in. A login
  must be a deliberate form POST that passed the Origin check: a link or an image on any page
  must not open a session; a person who bookmarked or reloaded the view's URL lands on the page
  with the button rather than on an error page. Other methods: 405.

The form posts from another origin (the site on 443 to the view on 8443), which Django's CSRF
middleware would refuse for lack of a token it cannot share across origins: the view is
``csrf_exempt`` and checks the ``Origin`` header instead, which browsers send with every
cross-origin form POST and scripts cannot forge. Browsers send ``Origin: null`` instead when the
login page's ``Referrer-Policy`` is ``same-origin`` (Django's ``SECURE_REFERRER_POLICY``
default) or ``no-referrer``: system check ``mtls_middleware.E007`` says so.

The view is synchronous: under ASGI Django runs it in its thread, as every blocking step (the
store, revocation I/O, the ORM) requires.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import auth as django_auth
from django.contrib.auth import get_user_model
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from ...authenticator import Authenticator
from ...errors import MTLSError, Reason
from ...identity import Identity
from ...login import (
    ENDED_KEY,
    SESSION_KEY,
    LoginSettings,
    SessionBinding,
    authenticate_login,
    refused_origin_hint,
)
from . import conf
from .backends import CertificateBackend

__all__ = ["certificate_login"]

log = logging.getLogger("mtls_middleware")


class _SeeOther(HttpResponseRedirect):
    # 303: the browser follows a POST's redirect with a GET, never re-posting the form.
    status_code = 303


def _redirect(url: str) -> HttpResponse:
    response = _SeeOther(url)
    add_never_cache_headers(response)
    return response


def _own_origin(request: HttpRequest) -> str | None:
    try:
        return f"{request.scheme}://{request.get_host()}"
    except DisallowedHost:  # CommonMiddleware refuses such a request before; no origin of ours
        return None


def _authenticate(auth: Authenticator, request: HttpRequest) -> Identity:
    scope = getattr(request, "scope", None)
    if scope is None:  # WSGI: request.META is the server's environ
        return authenticate_login(auth, environ=request.META)
    return authenticate_login(auth, scope=scope)  # ASGI: the TLS extension, headers as received


def _refused_user_reason(request: HttpRequest, identity: Identity) -> Reason:
    """Why no backend gave an active Django user for ``identity``: ``user_inactive`` when the
    Django user exists but is inactive, else ``unknown_certificate``."""
    backend = next(
        (b for b in django_auth.get_backends() if isinstance(b, CertificateBackend)), None
    )
    username = backend.username_for(identity) if backend is not None else identity.user_id
    model = get_user_model()
    try:
        user = model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        return Reason.UNKNOWN_CERTIFICATE
    return Reason.USER_INACTIVE if not getattr(user, "is_active", True) else Reason.UNKNOWN_CERTIFICATE


@csrf_exempt
def certificate_login(request: HttpRequest) -> HttpResponse:
    """Log the browser in by its client certificate (see the module docs): always a 303 redirect
    for GET, HEAD and POST, 405 for other methods; never raises."""
    if request.method not in ("GET", "HEAD", "POST"):
        return HttpResponseNotAllowed(["POST"])
    next_target: Any = request.GET.get("next") if request.method != "POST" else None
    settings = LoginSettings()  # only if the configured ones cannot be read: to "/login"
    try:
        settings = conf.get_login_settings()
        if request.method != "POST":
            return _redirect(settings.login_page_url(next_target))
        next_target = request.POST.get("next")
        origin = request.headers.get("Origin")
        if not settings.origin_allowed(origin, own_origin=_own_origin(request)):
            log.info(
                "mtls_middleware: certificate login refused: Origin %r is not the site's (%s)",
                origin, refused_origin_hint(origin),
            )
            return _redirect(settings.failure_url(Reason.INVALID_REQUEST, next_target))
        authenticator = conf.get_authenticator()
        try:
            identity = _authenticate(authenticator, request)
        except MTLSError as exc:  # the authenticator logged and recorded the refusal
            return _redirect(settings.failure_url(exc.reason, next_target))
        request.mtls_identity = identity
        user = django_auth.authenticate(request, mtls_identity=identity)
        if user is None:
            reason = _refused_user_reason(request, identity)
            log.info(
                "mtls_middleware: certificate login of %r refused: %s (no active Django user)",
                identity.user_id, reason.value,
            )
            return _redirect(settings.failure_url(reason, next_target))
        django_auth.login(request, user)  # a new session key; user.backend set by authenticate()
        request.session[SESSION_KEY] = SessionBinding.for_identity(identity, user.pk).to_session()
        request.session.pop(ENDED_KEY, None)  # an earlier session's end is old news now
        log.info(
            "mtls_middleware: certificate login of %r (Django user %r)", identity.user_id, user.pk
        )
        return _redirect(settings.redirect_target(next_target))
    except Exception as exc:  # fail closed, and to a page a person can read
        log.exception("mtls_middleware: certificate login failed unexpectedly")
        reason = exc.reason if isinstance(exc, MTLSError) else Reason.INTERNAL_ERROR
        return _redirect(settings.failure_url(reason, next_target))
