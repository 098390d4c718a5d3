"""admin/cli.py: ``mtls-admin check``: exit 0 accepted, 1 refused (with the code), 2 usage error.

The store commands are tested in test_cli_store.py and test_cli_csv.py."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mtls_middleware import Reason
from mtls_middleware.admin.cli import main
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI

REPO = Path(__file__).resolve().parents[2]
OFF = ["--revocation", "off"]


@pytest.fixture(scope="module")
def files(
    pki: TestPKI, other_pki: TestPKI, alice: Issued, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every input file the CLI is given, written once."""
    directory = tmp_path_factory.mktemp("cli")
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    ca = pki.issuing
    for level in range(9):
        ca = pki.issue_ca(f"cli CA {level}", parent=ca)
    eleven = pki.issue_client("cli eleven", issuer=ca)
    assert len(eleven.chain) == 11
    chains: dict[str, bytes] = {
        "good": alice.chain_pem,
        "leaf-only": alice.cert_pem,
        "expired": pki.issue_client("old", not_before=now - 9 * day, not_after=now - day).chain_pem,
        "not-yet-valid": pki.issue_client("later", not_before=now + day).chain_pem,
        "foreign": other_pki.issue_client("mallory").chain_pem,
        "weak-key": pki.issue_client("weak", key_type="rsa1024").chain_pem,
        "server-only": pki.issue_client("srv", eku=(SERVER_AUTH,)).chain_pem,
        "no-eku": pki.issue_client("no eku", eku=None).chain_pem,
        "dual": pki.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH)).chain_pem,
        "eleven": eleven.chain_pem,
        "garbage": b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        "empty": b"",
        "private-key": alice.key_pem,
        "root": pki.root_pem,
        "intermediates": pki.issuing.cert_pem,
    }
    out = {}
    for name, data in chains.items():
        path = directory / f"{name}.pem"
        path.write_bytes(data)
        out[name] = path
    return out


def check(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], chain: str, *extra: str
) -> tuple[int, str, str]:
    status = main(["check", str(files[chain]), "--trust", str(files["root"]), *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- accepted ---------------------------------------------------------------------------------


def test_good_chain_exits_0(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], alice: Issued
) -> None:
    status, out, _ = check(capsys, files, "good", *OFF)
    assert status == 0
    assert alice.fingerprint in out


def test_good_chain_json(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], alice: Issued, pki: TestPKI
) -> None:
    status, out, _ = check(capsys, files, "good", *OFF, "--json")
    assert status == 0
    result = json.loads(out)
    assert result["outcome"] == "accepted"
    assert result["revocation"] == "off"
    assert result["leaf"]["fingerprint"] == alice.fingerprint
    assert result["leaf"]["subject"] == alice.cert.subject.rfc4514_string()
    assert result["path"] == [
        alice.cert.subject.rfc4514_string(),
        pki.issuing.cert.subject.rfc4514_string(),
        pki.root.cert.subject.rfc4514_string(),
    ]


@pytest.mark.parametrize(
    ("chain", "options"),
    [
        pytest.param("dual", ["--allow-dual-purpose-eku"], id="dual-purpose-when-allowed"),
        pytest.param("no-eku", ["--eku", "if-present"], id="no-eku-when-if-present"),
        pytest.param("leaf-only", ["--intermediates", "INTERMEDIATES"], id="leaf-plus-intermediates"),
    ],
)
def test_options_that_accept(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], chain: str, options: list[str]
) -> None:
    options = [str(files["intermediates"]) if o == "INTERMEDIATES" else o for o in options]
    status, out, _ = check(capsys, files, chain, *OFF, *options, "--json")
    assert status == 0
    assert json.loads(out)["outcome"] == "accepted"


# -- refused ----------------------------------------------------------------------------------


REFUSALS = [
    ("garbage", Reason.MALFORMED_CERTIFICATE),
    ("empty", Reason.MALFORMED_CERTIFICATE),
    ("private-key", Reason.MALFORMED_CERTIFICATE),
    ("eleven", Reason.CHAIN_TOO_LONG),
    ("expired", Reason.CERTIFICATE_EXPIRED),
    ("not-yet-valid", Reason.CERTIFICATE_NOT_YET_VALID),
    ("foreign", Reason.UNTRUSTED_ISSUER),
    ("leaf-only", Reason.UNTRUSTED_ISSUER),
    ("weak-key", Reason.CHAIN_INVALID),
    ("server-only", Reason.MISSING_CLIENT_AUTH_EKU),
    ("no-eku", Reason.MISSING_CLIENT_AUTH_EKU),
    ("dual", Reason.DUAL_PURPOSE_EKU),
]


@pytest.mark.parametrize(("chain", "reason"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refusal_exits_1_with_the_code(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], chain: str, reason: Reason
) -> None:
    status, out, _ = check(capsys, files, chain, *OFF)
    assert status == 1
    assert reason.value in out.split()


@pytest.mark.parametrize(("chain", "reason"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refusal_json(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], chain: str, reason: Reason
) -> None:
    status, out, _ = check(capsys, files, chain, *OFF, "--json")
    assert status == 1
    result = json.loads(out)
    assert result["outcome"] == "refused"
    assert result["reason"] == reason.value
    assert result["status"] == reason.status


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        pytest.param(
            lambda a: dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
            Reason.CERTIFICATE_NOT_YET_VALID,
            id="long-before",
        ),
        pytest.param(
            lambda a: a.cert.not_valid_before_utc - dt.timedelta(seconds=1),
            Reason.CERTIFICATE_NOT_YET_VALID,
            id="a-second-before-notBefore",
        ),
        pytest.param(
            lambda a: a.cert.not_valid_before_utc + dt.timedelta(minutes=1), None, id="just-after-notBefore"
        ),
        pytest.param(
            lambda a: a.cert.not_valid_after_utc + dt.timedelta(seconds=1),
            Reason.CERTIFICATE_EXPIRED,
            id="a-second-after-notAfter",
        ),
        pytest.param(
            lambda a: dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc),
            Reason.CERTIFICATE_EXPIRED,
            id="far-future",
        ),
    ],
)
def test_at_judges_at_that_instant(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    alice: Issued,
    when: Callable[[Issued], dt.datetime],
    reason: Reason | None,
) -> None:
    status, out, _ = check(capsys, files, "good", *OFF, "--at", _iso(when(alice)), "--json")
    result = json.loads(out)
    if reason is None:
        assert status == 0
        assert result["outcome"] == "accepted"
    else:
        assert status == 1
        assert result["reason"] == reason.value


def test_at_without_a_zone_is_utc(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    status, out, _ = check(capsys, files, "good", *OFF, "--at", "2000-01-01T00:00:00", "--json")
    assert status == 1
    assert json.loads(out)["reason"] == Reason.CERTIFICATE_NOT_YET_VALID.value


def test_json_before_the_command(capsys: pytest.CaptureFixture[str], files: dict[str, Path]) -> None:
    # DESIGN.md: --json gives machine output; it is a global option, so it may come first.
    status = main(["--json", "check", str(files["expired"]), "--trust", str(files["root"]), *OFF])
    out = capsys.readouterr().out
    assert status == 1
    assert json.loads(out)["reason"] == Reason.CERTIFICATE_EXPIRED.value


# -- usage errors -----------------------------------------------------------------------------


USAGE = [
    pytest.param(["check", "{good}"], id="missing-trust"),
    pytest.param(["check", "--trust", "{root}", *OFF], id="missing-chain"),
    pytest.param(["check", "{missing}", "--trust", "{root}", *OFF], id="unreadable-chain"),
    pytest.param(["check", "{dir}", "--trust", "{root}", *OFF], id="chain-is-a-directory"),
    pytest.param(["check", "{good}", "--trust", "{missing}", *OFF], id="unreadable-trust"),
    pytest.param(["check", "{good}", "--trust", "{garbage}", *OFF], id="trust-not-pem"),
    pytest.param(["check", "{good}", "--trust", "{empty}", *OFF], id="trust-empty"),
    pytest.param(
        ["check", "{good}", "--trust", "{root}", "--intermediates", "{missing}", *OFF],
        id="unreadable-intermediates",
    ),
    pytest.param(
        ["check", "{good}", "--trust", "{root}", "--revocation", "sometimes"], id="revocation-unknown"
    ),
    pytest.param(["check", "{good}", "--trust", "{root}", *OFF, "--crl", "{root}"], id="crl-with-revocation-off"),
    pytest.param(["check", "{good}", "--trust", "{root}", "--crl", "{missing}"], id="crl-unreadable"),
    pytest.param(["check", "{good}", "--trust", "{root}", *OFF, "--at", "yesterday"], id="at-not-iso8601"),
    pytest.param(["check", "{good}", "--trust", "{root}", *OFF, "--eku", "never"], id="eku-unknown"),
    pytest.param([], id="no-command"),
    pytest.param(["frobnicate"], id="unknown-command"),
]


def _expand(argv: list[str], files: dict[str, Path], tmp_path: Path) -> list[str]:
    names = {f"{{{k}}}": str(v) for k, v in files.items()}
    names["{missing}"] = str(tmp_path / "does-not-exist.pem")
    names["{dir}"] = str(tmp_path)
    return [names.get(a, a) for a in argv]


@pytest.mark.parametrize("argv", USAGE)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, argv: list[str]
) -> None:
    status = main(_expand(argv, files, tmp_path))
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err  # the reason for the usage error is said on stderr
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["check", "{good}", "--trust", "{root}", "--crl", "{missing}"], id="crl-unreadable"),
        pytest.param(["check", "{missing}", "--trust", "{root}", *OFF], id="unreadable-chain"),
    ],
)
def test_usage_errors_in_json(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path, argv: list[str]
) -> None:
    status = main([*_expand(argv, files, tmp_path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 2
    assert result["outcome"] == "error"
    assert result["error"] == "usage"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == 0
    assert "--trust" in capsys.readouterr().out


# -- as a program -----------------------------------------------------------------------------


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed console script (the package is installed editable into this venv)."""
    script = Path(sys.executable).parent / "mtls-admin"
    assert script.exists(), f"{script} is missing: pip install -e . into this venv"
    return subprocess.run(
        [str(script), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def test_as_a_subprocess(files: dict[str, Path], alice: Issued) -> None:
    accepted = _run("check", str(files["good"]), "--trust", str(files["root"]), *OFF, "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["leaf"]["fingerprint"] == alice.fingerprint

    refused = _run("check", str(files["expired"]), "--trust", str(files["root"]), *OFF)
    assert refused.returncode == 1, refused.stderr
    assert "certificate_expired" in refused.stdout

    # Revocation defaults to require: a certificate that names no OCSP responder and no CRL.
    unchecked = _run("check", str(files["good"]), "--trust", str(files["root"]))
    assert unchecked.returncode == 1, unchecked.stderr
    assert "no_revocation_source" in unchecked.stdout

    usage = _run("check", str(files["good"]), "--trust", str(files["root"]), "--eku", "never")
    assert usage.returncode == 2
    assert usage.stderr
