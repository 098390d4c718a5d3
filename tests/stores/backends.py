"""Which stores the contract suite runs over, and how each is opened for one test.

``memory`` and ``sqlite`` need nothing; every other kind lives in ``tests/stores/backend_<kind>.py``
with ``open_store(directory: Path) -> Store`` (a new, empty store; the test closes it), which calls
``require_service`` when its server is absent.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mtls_middleware.stores import MemoryStore, SQLiteStore, Store

KINDS = ("memory", "sqlite", "postgresql", "django")


def open_kind(kind: str, directory: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(directory / "store.db")
    module = importlib.import_module(f"tests.stores.backend_{kind}")
    store: Store = module.open_store(directory)
    return store
