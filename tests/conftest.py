"""Shared fixtures: one test PKI for the whole run, and the service gate.

Tests that need a server (nginx, gunicorn, uvicorn, curl) call :func:`require_service`: on a
machine without it they skip with a visible reason, and under ``MTLS_REQUIRE_SERVICES=1`` (CI)
such a skip fails the run instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mtls_middleware import MemoryStore
from mtls_middleware.testing import Issued, TestPKI

REQUIRE_SERVICES = os.environ.get("MTLS_REQUIRE_SERVICES") == "1"

#: Where Debian puts daemons that are not on a normal user's PATH.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_executable(name: str) -> str | None:
    """The path of ``name`` on PATH or in the sbin directories, or None."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_service(name: str, reason: str | None = None) -> str:
    """The executable ``name``; skip (or, under MTLS_REQUIRE_SERVICES=1, fail) without it."""
    path = find_executable(name)
    if path is None:
        message = reason or f"{name} is not installed (apt-get install {name})"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """The run's test PKI: a root and an issuing CA, generated now."""
    return TestPKI()


@pytest.fixture(scope="session")
def other_pki() -> TestPKI:
    """An unrelated PKI: its certificates chain to no configured root."""
    return TestPKI(org="Other PKI")


@pytest.fixture(scope="session")
def alice(pki: TestPKI) -> Issued:
    """A good client certificate (registered in ``store``)."""
    return pki.issue_client("alice", san_emails=("alice@example.org",))


@pytest.fixture(scope="session")
def bob(pki: TestPKI) -> Issued:
    """A good client certificate that ``store`` does not know."""
    return pki.issue_client("bob", san_emails=("bob@example.org",))


@pytest.fixture
def store(alice: Issued) -> MemoryStore:
    """A fresh store with user ``alice`` (org ``acme``) owning the ``alice`` certificate."""
    s = MemoryStore()
    s.add_user("alice", org="acme")
    s.upload_certificate(alice.chain_pem, user_id="alice", label="alice laptop")
    return s


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Path:
    """The PKI on disk: root.pem, and for files written by tests, a place to put them."""
    directory = tmp_path_factory.mktemp("pki")
    pki.write(directory)
    return directory
