"""Fixtures of the revocation tests: a loopback CRL server and helpers to issue checkable leaves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.revocation.crl_server import CRLServer


@pytest.fixture
def server() -> Iterator[CRLServer]:
    """A fresh CRL server on 127.0.0.1 (its own port), closed after the test."""
    with CRLServer() as s:
        yield s
