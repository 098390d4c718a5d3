"""Django settings for the tests of the Django app (and the store contract's ``django`` kind).

Configured once per test process by :func:`tests.contrib.django.setup.setup_django`: a SQLite file
of the process's own in a temporary directory, migrated once. Tests that need other middleware or
backends override them with ``django.test.override_settings``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
ROOT_URLCONF = "tests.contrib.django.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "mtls_middleware.contrib.django",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# A file (not :memory:): the store's history and generation threads use connections of their own.
# A child process of a test (``manage.py mtls`` in a subprocess) is pointed at its parent's file
# through MTLS_TEST_DJANGO_DB.
if os.environ.get("MTLS_TEST_DJANGO_DB"):
    DATABASE_FILE = os.environ["MTLS_TEST_DJANGO_DB"]
else:
    _directory = tempfile.mkdtemp(prefix=f"mtls-django-{os.getpid()}-")
    atexit.register(shutil.rmtree, _directory, ignore_errors=True)
    DATABASE_FILE = os.path.join(_directory, "db.sqlite3")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATABASE_FILE,
        # Three threads use it (the test, the history writer, the generation poller): take the
        # write lock at BEGIN so that no transaction fails upgrading a read lock.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    },
    # The same file, giving up at once on a lock: for the store_unavailable tests.
    "impatient": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATABASE_FILE,
        "OPTIONS": {"timeout": 0.05, "transaction_mode": "IMMEDIATE"},
    },
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
