"""``manage.py mtls``: the ``mtls-admin`` commands over the project's database."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from mtls_middleware.testing import Issued, TestPKI
from tests.contrib.django.store_support import manage_py


def mtls(*args: str) -> str:
    out = io.StringIO()
    call_command("mtls", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_user_and_certificate_commands_work_on_the_project_database(
    django_store: Any, bob: Issued, tmp_path: Path
) -> None:
    pem = tmp_path / "bob.pem"
    pem.write_bytes(bob.chain_pem)
    mtls("user", "add", "bob", "--org", "beta")
    printed = mtls("cert", "upload", str(pem), "--user", "bob", "--label", "bob laptop")
    assert bob.fingerprint in printed
    record = django_store.get_certificate(bob.fingerprint)
    assert (record.user_id, record.org, record.label) == ("bob", "beta", "bob laptop")
    assert django_store.download_certificate(bob.fingerprint) == bob.chain_pem
    listed = json.loads(mtls("cert", "list", "--json"))
    assert [row["fingerprint"] for row in listed] == [bob.fingerprint]


def test_a_refusal_exits_1_with_the_reason_code(django_store: Any, pki: TestPKI, tmp_path: Path) -> None:
    django_store.add_user("bob")
    pem = tmp_path / "server.pem"
    pem.write_bytes(pki.issue_server().cert_pem)
    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("mtls", "cert", "upload", str(pem), "--user", "bob", stdout=io.StringIO(), stderr=err)
    assert info.value.returncode == 1
    assert "missing_client_auth_eku" in err.getvalue()
    assert django_store.list_certificates() == []


def test_another_store_cannot_be_named() -> None:
    with pytest.raises(CommandError) as info:
        call_command("mtls", "user", "list", "--db", "sqlite:///elsewhere.db", stderr=io.StringIO())
    assert info.value.returncode == 2
    assert not Path("elsewhere.db").exists()


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        pytest.param(["mtls", "--json", "user", "list"], 0, '"user_id": "alice"', id="json-before-the-verb"),
        pytest.param(["mtls", "cert", "delete", "ab" * 32], 1, "not_found", id="refused"),
        pytest.param(["mtls", "cert", "frobnicate"], 2, "invalid choice", id="usage-error"),
    ],
)
def test_manage_py_passes_everything_to_mtls_admin(
    args: list[str], status: int, expected: str, django_store: Any
) -> None:
    django_store.add_user("alice", org="acme")
    ran = manage_py(*args, "--settings", os.environ["DJANGO_SETTINGS_MODULE"])
    assert ran.returncode == status, ran.stderr
    assert expected in ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr


def test_mtls_admin_outside_a_django_project_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = "from mtls_middleware.admin.cli import main; raise SystemExit(main(['--db', 'django://', 'user', 'list']))"
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2
    assert "manage.py mtls" in ran.stderr
    assert "Traceback" not in ran.stderr
