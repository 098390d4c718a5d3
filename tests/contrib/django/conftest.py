"""Every test here runs in the Django project of ``settings.py`` (set up once per process, no
pytest-django), with the app's tables and the auth users emptied before it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.contrib.django.setup import empty_tables, setup_django

if TYPE_CHECKING:
    from mtls_middleware.contrib.django.store import DjangoStore


@pytest.fixture(autouse=True)
def django_db() -> None:
    """Django set up, the mtls tables and the auth users empty."""
    setup_django()
    empty_tables()


@pytest.fixture
def django_store() -> Iterator[DjangoStore]:
    """A new :class:`DjangoStore` of the default database, closed after the test."""
    from mtls_middleware.contrib.django.store import DjangoStore

    store = DjangoStore()
    yield store
    store.close()
