"""``mtls-admin check --crl FILE --revocation ...``: the chain judged with local CRLs, offline."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mtls_middleware.admin.cli import main
from mtls_middleware.testing import TestPKI, crl_bytes, make_crl

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def world(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A client certificate, a revoked one, and the CRLs of the issuing CA and of the root."""
    directory = tmp_path_factory.mktemp("cli-crl")
    good = pki.issue_client("cli crl good")
    revoked = pki.issue_client("cli crl revoked")
    files = {
        "root": pki.root_pem,
        "good": good.chain_pem,
        "revoked": revoked.chain_pem,
        "issuing-crl": crl_bytes(make_crl(pki.issuing, [revoked.cert.serial_number])),
        "issuing-crl-pem": crl_bytes(make_crl(pki.issuing, [revoked.cert.serial_number]), pem=True),
        "root-crl": crl_bytes(make_crl(pki.root)),
        "stale-crl": crl_bytes(
            make_crl(pki.issuing, this_update=NOW - 9 * DAY, next_update=NOW - 2 * DAY)
        ),
    }
    out = {}
    for name, data in files.items():
        out[name] = directory / f"{name}.pem"
        out[name].write_bytes(data)
    return out


def _check(
    capsys: pytest.CaptureFixture[str], world: dict[str, Path], chain: str, *crls: str, mode: str = "require"
) -> tuple[int, dict[str, object]]:
    argv = ["check", str(world[chain]), "--trust", str(world["root"]), "--revocation", mode, "--json"]
    for crl in crls:
        argv += ["--crl", str(world[crl])]
    status = main(argv)
    return status, json.loads(capsys.readouterr().out)


CASES = [
    pytest.param("good", ("issuing-crl", "root-crl"), "require", 0, None, id="good-both-crls"),
    pytest.param("good", ("issuing-crl-pem", "root-crl"), "require", 0, None, id="good-pem-crl"),
    pytest.param("revoked", ("issuing-crl", "root-crl"), "require", 1, "certificate_revoked", id="revoked"),
    pytest.param("revoked", ("issuing-crl", "root-crl"), "soft-fail", 1, "certificate_revoked", id="revoked-soft-fail"),
    pytest.param("good", ("root-crl",), "require", 1, "no_revocation_source", id="leaf-crl-missing"),
    pytest.param("good", ("root-crl",), "soft-fail", 0, None, id="leaf-crl-missing-soft-fail"),
    pytest.param("good", ("stale-crl", "root-crl"), "require", 1, "revocation_unavailable", id="stale-crl"),
    pytest.param("good", ("stale-crl", "root-crl"), "soft-fail", 0, None, id="stale-crl-soft-fail"),
]


@pytest.mark.parametrize(("chain", "crls", "mode", "status", "reason"), CASES)
def test_check_with_local_crls(
    capsys: pytest.CaptureFixture[str], world: dict[str, Path], chain: str, crls: tuple[str, ...], mode: str, status: int, reason: str | None
) -> None:
    code, result = _check(capsys, world, chain, *crls, mode=mode)
    assert code == status, result
    if reason is None:
        assert result["outcome"] == "accepted"
        assert result["revocation_checks"]
    else:
        assert result["reason"] == reason


def test_accepted_check_says_how_status_was_established(
    capsys: pytest.CaptureFixture[str], world: dict[str, Path]
) -> None:
    code, result = _check(capsys, world, "good", "issuing-crl", "root-crl")
    assert code == 0
    assert str(result["revocation"]).startswith("crl:good")
    checks = result["revocation_checks"]
    assert isinstance(checks, list)
    assert {c["method"] for c in checks} == {"crl"}
    assert all(c["status"] == "good" for c in checks)
    assert len(checks) == 2  # the leaf and the issuing CA: the trust anchor is not checked


def test_check_at_a_time_before_the_crl_is_refused(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # --at judges at that instant: a CRL issued after it does not yet exist then.
    argv = ["check", str(world["good"]), "--trust", str(world["root"]), "--at",
            (NOW + 30 * DAY).strftime("%Y-%m-%dT%H:%M:%SZ"), "--crl", str(world["issuing-crl"]),
            "--crl", str(world["root-crl"]), "--json"]
    status = main(argv)
    result = json.loads(capsys.readouterr().out)
    assert status == 1
    assert result["reason"] == "revocation_unavailable"  # the CRLs' nextUpdate is past by then
