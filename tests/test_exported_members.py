"""The public API: ``mtls_middleware.__all__`` is exactly its public names, and DESIGN.md holds.

In the style of httpx's ``tests/test_exported_members.py``.
"""

from __future__ import annotations
import __future__

import importlib
import re
import types
from pathlib import Path

import pytest

import mtls_middleware
from mtls_middleware import Reason

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
README = Path(__file__).resolve().parents[1] / "README.md"

#: Dunder names that are public on purpose.
INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 "isort-style" order: CONSTANTS, then Classes, then everything else."""
    if name.isupper() and len(name) > 1:
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    return group, name


def _public_members(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
        and not isinstance(value, types.ModuleType)  # subpackages are reached by their path
        and not isinstance(value, __future__._Feature)  # `from __future__ import annotations`
    }


def test_all_is_exactly_the_public_members() -> None:
    assert set(mtls_middleware.__all__) == _public_members(mtls_middleware)


def test_all_has_no_duplicates() -> None:
    assert len(mtls_middleware.__all__) == len(set(mtls_middleware.__all__))


def test_all_is_sorted() -> None:
    assert mtls_middleware.__all__ == sorted(mtls_middleware.__all__, key=_isort_key)


@pytest.mark.parametrize("name", mtls_middleware.__all__)
def test_each_name_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from mtls_middleware import {name}", namespace)  # noqa: S102 - a fixed import line
    assert namespace[name] is getattr(mtls_middleware, name)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("mtls_middleware", "MTLSConfig"),
        ("mtls_middleware", "Identity"),
        ("mtls_middleware", "Reason"),
        ("mtls_middleware", "MTLSError"),
        ("mtls_middleware.wsgi", "MTLSMiddleware"),
        ("mtls_middleware.asgi", "MTLSMiddleware"),
        ("mtls_middleware.stores", "open_store"),
        ("mtls_middleware.testing", "TestPKI"),
        ("mtls_middleware.admin.cli", "main"),
    ],
    ids=lambda v: v,
)
def test_design_names_exist(module: str, name: str) -> None:
    # DESIGN.md's "Public names that issues and users rely on".
    assert hasattr(importlib.import_module(module), name)


@pytest.mark.parametrize(
    "module",
    [
        "mtls_middleware.errors",
        "mtls_middleware.config",
        "mtls_middleware.certs",
        "mtls_middleware.history",
        "mtls_middleware.identity",
        "mtls_middleware.authenticator",
        "mtls_middleware.wsgi",
        "mtls_middleware.asgi",
        "mtls_middleware.sources",
        "mtls_middleware.sources.proxies",
        "mtls_middleware.sources.tls",
        "mtls_middleware.sources.trust",
        "mtls_middleware.stores",
        "mtls_middleware.stores.base",
        "mtls_middleware.stores.memory",
        "mtls_middleware.stores.sqlite",
        "mtls_middleware.revocation",
        "mtls_middleware.revocation.base",
        "mtls_middleware.revocation.checker",
        "mtls_middleware.revocation.crl",
        "mtls_middleware.revocation.fetch",
        "mtls_middleware.revocation.ocsp",
        "mtls_middleware.metrics",
        "mtls_middleware.testing",
        "mtls_middleware.admin.cli",
        "mtls_middleware.admin.csvio",
        "mtls_middleware.admin.demo",
        "mtls_middleware.admin.openapi",
        "mtls_middleware.admin.rest",
        "mtls_middleware.contrib.settings",
        "mtls_middleware.contrib.flask",
        "mtls_middleware.contrib.starlette",
        "mtls_middleware.contrib.fastapi",
        "mtls_middleware.stores.postgres",
        "mtls_middleware.revocation.shared",
    ],
)
def test_every_module_all_names_exist_and_are_sorted(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    assert [n for n in names if not hasattr(mod, n)] == []
    assert names == sorted(names, key=_isort_key)


# -- DESIGN.md's reason table -----------------------------------------------------------------


def _design_reason_table() -> list[tuple[str, int]]:
    """The rows of the "Reason codes" table: (code, status)."""
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*(\d{3})\s*\|", section, flags=re.MULTILINE)
    return [(code, int(status)) for code, status in rows]


def _design_management_codes() -> list[str]:
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    paragraph = section.split("Upload and management errors", 1)[1]
    return re.findall(r"`([a-z_]+)`", paragraph)


@pytest.fixture(scope="module")
def design() -> Path:
    if not DESIGN.is_file():
        pytest.skip(f"{DESIGN} is not present (it lives in the shared directory beside the repo)")
    return DESIGN


def test_design_table_parsed(design: Path) -> None:
    table = _design_reason_table()
    assert len(table) >= 18  # the parser found the table, not a fragment of it
    assert ("no_certificate", 401) in table


def test_every_design_reason_exists_with_its_status(design: Path) -> None:
    table = _design_reason_table()
    mismatched = []
    for code, status in table:
        try:
            reason = Reason(code)
        except ValueError:
            mismatched.append((code, "missing"))
            continue
        if reason.status != status:
            mismatched.append((code, f"status {reason.status}, DESIGN.md says {status}"))
    assert mismatched == []


def test_every_design_management_code_exists(design: Path) -> None:
    codes = _design_management_codes()
    assert {"duplicate_certificate", "unknown_user", "not_found"} <= set(codes)
    assert [c for c in codes if c not in {r.value for r in Reason}] == []


def _readme_reason_table() -> list[tuple[str, int]]:
    """The rows of README.md's "Reason codes" table: (code, status)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Reason codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*(\d{3})\s*\|", section, flags=re.MULTILINE)
    return [(code, int(status)) for code, status in rows]


def test_every_request_reason_is_documented(design: Path) -> None:
    # A code a client can be answered with must be documented for clients: in DESIGN.md's table
    # (the stable contract) or, for codes added since (DESIGN.md lives outside this repository),
    # in README's table, with the status the code really has.
    documented = {code for code, _ in _design_reason_table()} | set(_design_management_codes())
    readme = _readme_reason_table()
    internal = {Reason.CONFIGURATION_ERROR.value}
    missing = [r.value for r in Reason if r.value not in documented | {c for c, _ in readme} | internal]
    assert missing == []
    assert [(code, status) for code, status in readme if Reason(code).status != status] == []
    assert len(readme) == len({code for code, _ in readme}), "a code listed twice in README's table"
