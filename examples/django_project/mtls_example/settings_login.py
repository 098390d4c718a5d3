"""Settings of the example with a browser login page: ``DJANGO_SETTINGS_MODULE=mtls_example.settings_login``.

People log in once with "Log in with certificate" and then browse with an ordinary Django
session. Two TLS listeners serve the same project (``run-login.sh``), with no proxy in front:

- the site, https://localhost:8444: gunicorn with its own TLS, asking for no client certificate,
  so that the browser never shows its certificate prompt on the site's pages;
- the certificate login, https://localhost:8443: ``mtls-admin serve``, which asks for a client
  certificate without failing the handshake, so that the view ``/login/certificate/`` judges it
  (and sends a refused one back to the login page with its reason).

Both processes share the database (the sessions, the users and certificates, the login history)
and the ``SECRET_KEY``. Cookies belong to the host, not the port: the session opened on :8443 is
the site's session on :8444.

Everything of ``settings.py`` holds, except what is set here. Besides its ``MTLS_EXAMPLE_PKI`` and
``MTLS_EXAMPLE_DB``, the environment may give ``MTLS_EXAMPLE_SITE_URL`` (the site's origin, default
``https://localhost:8444``), ``MTLS_EXAMPLE_LOGIN_URL`` (the certificate login view's URL, default
``https://localhost:8443/login/certificate/``; run-login.sh derives both from its ports),
``DJANGO_SECRET_KEY``, or else ``MTLS_EXAMPLE_SECRET_KEY_FILE`` (default: ``secret_key`` next to the
database, created with a random key on first use).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .settings import *  # noqa: F403
from .settings import BASE_DIR, DATABASES


def _secret_key() -> str:
    """``DJANGO_SECRET_KEY``, else the key file's content: every process must sign with one key."""
    given = os.environ.get("DJANGO_SECRET_KEY")
    if given:
        return given
    default = Path(DATABASES["default"]["NAME"]).with_name("secret_key")
    path = Path(os.environ.get("MTLS_EXAMPLE_SECRET_KEY_FILE", default))
    if not path.exists():
        # Both servers start at once: each writes a key of its own to a private file and links
        # it into place; the link fails for all but the first, and everyone reads the winner's.
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
        try:
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink()
    return path.read_text().strip()


SECRET_KEY = _secret_key()

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # The logout form (and any form of your own) carries a CSRF token. The certificate login view
    # is exempt: the form posts to it from the site's origin, and it checks the Origin header.
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "mtls_middleware.contrib.django.middleware.MTLSMiddleware",
]

ROOT_URLCONF = "mtls_example.urls_login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "mtls_example" / "templates"],
        # The app's templates: {% load mtls %} and its button.
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                # {% certificate_login_button %} reads the request (?next=, ?mtls_error=, the session).
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

# Two servers and the management commands share the SQLite file: wait for its lock rather than
# fail, and take the write lock at BEGIN, so that no transaction fails upgrading a read lock.
DATABASES = {"default": {**DATABASES["default"], "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"}}}

# Sessions in the database (Django's default), one cookie for both ports of the host.
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
# Lax: the login form posts from the site to the other port, which is the same site.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
# Not Django's default "same-origin": under it, browsers send "Origin: null" with a form posted to
# another origin, and the certificate login view (on the other port) refuses a login whose Origin
# is not the site's (invalid_request). This policy, the browsers' own default, sends the origin.
# (`manage.py check`, and every manage.py command, report mtls_middleware.E007 when it is forgotten.)
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
LOGIN_URL = "/login"
LOGOUT_REDIRECT_URL = "/login"

# -- mTLS ---------------------------------------------------------------------------------------
# No proxy: each listener is the TLS server itself, and the certificate (on the login listener
# only) comes from its WSGI environ, which no client can forge. No certificate headers are read.
MTLS_PROXY = None
del MTLS_TRUSTED_PROXIES  # noqa: F821 (from settings.py)
# The site asks for no certificate: its requests come without one and are served, as anonymous
# or as the session's user. The certificate login view judges its certificate itself, so its path
# is exempt (system check mtls_middleware.E006): a refused certificate is sent back to the login
# page with its reason instead of getting a JSON answer.
MTLS_MODE = "optional"
MTLS_EXEMPT_PATHS = ["/health", "/login/certificate/"]
# Where the view sends people back to, and where the button posts.
MTLS_LOGIN_SITE_URL = os.environ.get("MTLS_EXAMPLE_SITE_URL", "https://localhost:8444")
MTLS_LOGIN_URL = os.environ.get("MTLS_EXAMPLE_LOGIN_URL", "https://localhost:8443/login/certificate/")
MTLS_LOGIN_PAGE = "/login"
MTLS_LOGIN_DEFAULT_NEXT = "/"
