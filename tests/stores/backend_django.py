"""The contract suite's ``django`` kind: a :class:`DjangoStore` over a migrated SQLite file."""

from __future__ import annotations

from pathlib import Path

from mtls_middleware.stores import Store
from tests.contrib.django.setup import empty_tables, setup_django


def open_store(directory: Path) -> Store:
    """A new, empty DjangoStore (Django configured and migrated once per process)."""
    setup_django()
    from mtls_middleware.contrib.django.store import DjangoStore

    empty_tables()
    return DjangoStore()
