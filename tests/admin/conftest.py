"""Fixtures of the ``mtls-admin`` tests: a SQLite store per test, certificates, and two ways to run
the CLI: in-process (``cli``, fast, for the big tables) and as the installed console script
(``program``, for the end-to-end cases)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware.admin.cli import main
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI

#: The console script pip installed next to this interpreter (the package is installed editable).
MTLS_ADMIN = Path(sys.executable).parent / "mtls-admin"


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class CLI:
    """``main([...])`` in-process against one store, with its output captured."""

    def __init__(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = db
        self._capsys = capsys

    def __call__(self, *argv: str) -> Ran:
        self._capsys.readouterr()
        status = main(["--db", self.db, *argv])
        captured = self._capsys.readouterr()
        assert "Traceback" not in captured.err
        return Ran(status, captured.out, captured.err)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a fresh SQLite store file (created by the first command)."""
    return f"sqlite:///{tmp_path / 'mtls.db'}"


@pytest.fixture
def cli(db: str, capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(db, capsys)


def run_program(
    *argv: str,
    db: str | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``mtls-admin``; bytes in and out (downloads must be exact)."""
    assert MTLS_ADMIN.exists(), f"{MTLS_ADMIN} is missing: pip install -e . into this venv"
    environment = {k: v for k, v in os.environ.items() if k != "MTLS_DB"}
    environment.update(env or {})
    result = subprocess.run(
        [str(MTLS_ADMIN), *(["--db", db] if db else []), *argv],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=environment,
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result


@pytest.fixture(scope="session")
def pems(pki: TestPKI, other_pki: TestPKI) -> dict[str, bytes]:
    """Uploads by name: good ones and one for every upload refusal."""
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    ca = pki.issuing
    for level in range(9):
        ca = pki.issue_ca(f"cli store CA {level}", parent=ca)
    eleven = pki.issue_client("eleven", issuer=ca)
    carol: Issued = pki.issue_client("carol")
    return {
        "carol": carol.chain_pem,
        "dave": pki.issue_client("dave").chain_pem,
        "erin": pki.issue_client("erin").cert_pem,
        "foreign": other_pki.issue_client("mallory").chain_pem,  # uploads do not judge the issuer
        # Exactly as a user might send it: CRLF line ends and a note before the block.
        "crlf": b"Note: carol's second laptop\r\n"
        + pki.issue_client("carol 2").chain_pem.replace(b"\n", b"\r\n"),
        "expired": pki.issue_client("old", not_before=now - 9 * day, not_after=now - day).chain_pem,
        "not-yet-valid": pki.issue_client("later", not_before=now + day).chain_pem,
        "server-only": pki.issue_client("srv", eku=(SERVER_AUTH,)).chain_pem,
        "no-eku": pki.issue_client("no eku", eku=None).chain_pem,
        "dual": pki.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH)).chain_pem,
        "eleven": eleven.chain_pem,
        "garbage": b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        "der": carol.cert_der,
        "empty": b"",
        "with-key": carol.chain_pem + carol.key_pem,
        "too-large": carol.chain_pem + b"#" * 1_000_001,
    }


@pytest.fixture(scope="session")
def pem_files(pems: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """:func:`pems` written to files once (read-only for the tests)."""
    directory = tmp_path_factory.mktemp("pems")
    out = {}
    for name, data in pems.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        out[name] = path
    return out
