"""The test settings on PostgreSQL (127.0.0.1:5432, database ``test``), in a schema of this
process's own that is dropped at exit.

Runs the store contract over a DjangoStore on PostgreSQL::

    DJANGO_SETTINGS_MODULE=tests.contrib.django.settings_postgresql \\
        .venv/bin/python -m pytest tests/stores tests/contrib/django/test_store.py -k django
"""

from __future__ import annotations

import atexit
import os

import psycopg

from tests.contrib.django.settings import *  # noqa: F403

_SCHEMA = f"mtls_django_{os.getpid()}"
_DSN = os.environ.get("MTLS_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")

if "MTLS_TEST_DJANGO_SCHEMA" in os.environ:  # a child process of a test: its parent's schema
    _SCHEMA = os.environ["MTLS_TEST_DJANGO_SCHEMA"]
else:
    os.environ["MTLS_TEST_DJANGO_SCHEMA"] = _SCHEMA
    with psycopg.connect(_DSN, autocommit=True) as _conn:
        _conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{_SCHEMA}"')

    def _drop() -> None:
        with psycopg.connect(_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{_SCHEMA}" CASCADE')

    atexit.register(_drop)

_DATABASE = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1",
    "PORT": 5432,
    "USER": "postgres",
    "NAME": "test",
    "OPTIONS": {"options": f"-c search_path={_SCHEMA}"},
}
DATABASES = {"default": _DATABASE, "impatient": dict(_DATABASE)}
