"""The contract suite's PostgreSQL store: a fresh schema per test in the database ``test`` on
127.0.0.1:5432 (user ``postgres``), dropped when the test ends."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import uuid
from pathlib import Path

import pytest

from mtls_middleware.stores import Store
from tests.conftest import REQUIRE_SERVICES

#: The server the tests use; MTLS_TEST_POSTGRES overrides it.
DSN = os.environ.get("MTLS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HOST, PORT = "127.0.0.1", 5432

_SCHEMAS: list[str] = []


def require_postgres() -> str:
    """The test server's DSN; skip (under MTLS_REQUIRE_SERVICES=1: fail) without psycopg or
    without a server answering on 127.0.0.1:5432."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        message = "psycopg 3 is not installed (pip install 'mtls_middleware[postgresql]')"
    else:
        try:
            with socket.create_connection((HOST, PORT), timeout=1):
                return DSN
        except OSError as exc:
            message = f"PostgreSQL is not running on {HOST}:{PORT} ({exc})"
    if REQUIRE_SERVICES:
        pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


def new_schema() -> str:
    """A schema name no other test uses; dropped at exit."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _SCHEMAS.append(name)
    return name


def drop_schemas(names: list[str] | None = None) -> None:
    import psycopg

    names = _SCHEMAS if names is None else names
    if not names:
        return
    with contextlib.suppress(psycopg.Error), psycopg.connect(DSN, autocommit=True, connect_timeout=2) as conn:
        for name in list(names):
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')  # our own generated names
            with contextlib.suppress(ValueError):
                _SCHEMAS.remove(name)


atexit.register(drop_schemas)


# Schemas of closed test stores, emptied: building the tables costs far more than emptying them.
_EMPTIED: list[str] = []


def open_store(directory: Path) -> Store:
    """A new, empty PostgresStore in a schema no open store uses (the ``directory`` is not needed).

    The schema is new, or one a closed test store left and emptied (every table truncated, the
    identities and the generation counter reset): the migrations themselves are tested in
    ``test_postgres.py``.
    """
    dsn = require_postgres()
    from mtls_middleware.stores.postgres import PostgresStore

    class TestStore(PostgresStore):
        def close(self) -> None:
            if self._closed:
                return
            reusable = False
            with contextlib.suppress(Exception):
                self.flush(5)
                with self._pool.connection(timeout=5) as conn, conn.transaction():
                    conn.execute(
                        "TRUNCATE orgs, users, certificates, login_history, audit_log"
                        " RESTART IDENTITY CASCADE"
                    )
                    conn.execute("UPDATE meta SET value = 0 WHERE key = 'generation'")
                reusable = True
            super().close()
            if reusable:
                _EMPTIED.append(self.schema)

    schema = _EMPTIED.pop() if _EMPTIED else new_schema()
    return TestStore(dsn, schema=schema, min_size=1, max_size=4, fallback_interval=2.0)
