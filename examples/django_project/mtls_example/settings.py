"""Settings of the example project: nginx terminates TLS and forwards the client certificate.

Paths come from the environment so that the same project runs from a checkout or a test's
temporary directory: ``MTLS_EXAMPLE_PKI`` (a directory with ``root.pem``, ``intermediates.pem`` and
any ``*.crl`` files of your CAs; default ``./pki``) and ``MTLS_EXAMPLE_DB`` (the SQLite database;
default ``./db.sqlite3``).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PKI = Path(os.environ.get("MTLS_EXAMPLE_PKI", BASE_DIR / "pki"))

# Set DJANGO_SECRET_KEY in production; this one only signs what the example never sends.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "mtls_middleware.contrib.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After AuthenticationMiddleware: it sets request.user from the certificate.
    "mtls_middleware.contrib.django.middleware.MTLSMiddleware",
]

# The certificate backend takes only the certificate's identity: password logins never reach it.
AUTHENTICATION_BACKENDS = [
    "mtls_middleware.contrib.django.backends.CertificateBackend",
    # Password logins, refused for users whose certificate is the only way in (enforce_mtls).
    "mtls_middleware.contrib.django.backends.PasswordBackend",
]

ROOT_URLCONF = "mtls_example.urls"
WSGI_APPLICATION = "mtls_example.wsgi.application"
ASGI_APPLICATION = "mtls_example.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("MTLS_EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# -- mTLS: the keywords of mtls_middleware.MTLSConfig, as MTLS_<FIELD> ----------------------------
# Certificates and their users live in this project's database (MTLS_STORE = "django://", the
# default): `python manage.py mtls user add ...`, `python manage.py mtls cert upload ...`.
MTLS_TRUST_ROOTS = str(PKI / "root.pem")
# nginx forwards only the leaf: the app must know the issuing CAs.
MTLS_INTERMEDIATES = str(PKI / "intermediates.pem")
MTLS_PROXY = "nginx"
# Only nginx, on this machine, may send the certificate headers (see nginx.conf).
MTLS_TRUSTED_PROXIES = ["127.0.0.1"]
# Fail closed: a certificate whose status cannot be established is refused. The CAs' CRLs are
# read from files here; without them, each certificate's own OCSP responder and CRL URLs are used.
MTLS_REVOCATION = "require"
MTLS_CRLS = sorted(str(path) for path in PKI.glob("*.crl"))
MTLS_EXEMPT_PATHS = ["/health"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"mtls_middleware": {"handlers": ["console"], "level": "INFO"}},
}
