"""admin/cli.py: the store commands of ``mtls-admin`` (user, org, cert, history) against a real
SQLite file: exit 0 done, 1 refused (with the reason code), 2 usage error."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest

from mtls_middleware import LoginRecord, Reason
from mtls_middleware.admin.cli import main
from mtls_middleware.certs import fingerprint, parse_chain
from mtls_middleware.stores import open_store
from tests.admin.conftest import CLI, Ran, run_program


def fp_of(pem: bytes) -> str:
    return fingerprint(parse_chain([pem]).leaf)


def refused_with(ran: Ran, reason: Reason) -> None:
    """Human mode: exit 1 and ``refused: <code>: <message>`` on stderr."""
    assert ran.status == 1, (ran.out, ran.err)
    assert ran.err.startswith(f"refused: {reason.value}: "), ran.err


# -- users ------------------------------------------------------------------------------------


def test_user_add_and_list(cli: CLI) -> None:
    assert cli("user", "add", "alice", "--org", "acme").status == 0
    added = cli(
        "user",
        "add",
        "bob",
        "--inactive",
        "--permission",
        "api_only",
        "--permission",
        "enforce_mtls",
        "--json",
    )
    assert added.status == 0
    assert added.json() == {
        "user_id": "bob",
        "org": "default",
        "active": False,
        "permissions": ["api_only", "enforce_mtls"],
    }
    listed = cli("user", "list", "--json")
    assert listed.status == 0
    assert {u["user_id"]: (u["org"], u["active"], u["permissions"]) for u in listed.json()} == {
        "alice": ("acme", True, []),
        "bob": ("default", False, ["api_only", "enforce_mtls"]),
    }
    table = cli("user", "list").out.splitlines()
    assert table[0].split() == ["USER", "ORG", "ACTIVE", "PERMISSIONS"]
    assert table[1].split() == ["alice", "acme", "yes", "-"]
    assert table[2].split() == ["bob", "default", "no", "api_only,", "enforce_mtls"]
    only = cli("user", "list", "--org", "acme", "--json").json()
    assert [u["user_id"] for u in only] == ["alice"]


def test_user_add_again_updates(cli: CLI) -> None:
    cli("user", "add", "alice", "--org", "acme", "--permission", "api_only")
    again = cli("user", "add", "alice", "--org", "beta", "--json")
    assert again.status == 0
    assert cli("user", "list", "--json").json() == [
        {"user_id": "alice", "org": "beta", "active": True, "permissions": []}
    ]


def test_user_activate_and_deactivate(cli: CLI) -> None:
    cli("user", "add", "alice")
    off = cli("user", "deactivate", "alice", "--json")
    assert off.status == 0
    assert off.json()["active"] is False
    assert cli("user", "list", "--json").json()[0]["active"] is False
    on = cli("user", "activate", "alice")
    assert on.status == 0
    assert "active" in on.out
    assert cli("user", "list", "--json").json()[0]["active"] is True


@pytest.mark.parametrize("command", ["activate", "deactivate"])
def test_activating_an_unknown_user_is_refused(cli: CLI, command: str) -> None:
    refused_with(cli("user", command, "nobody"), Reason.UNKNOWN_USER)


def test_empty_lists_say_so(cli: CLI) -> None:
    assert cli("user", "list").out.strip() == "no users"
    assert cli("cert", "list").out.strip() == "no certificates"
    assert cli("history").out.strip() == "no login records"
    assert cli("user", "list", "--json").json() == []


# -- orgs -------------------------------------------------------------------------------------


def test_org_set_and_list(cli: CLI) -> None:
    assert cli("org", "set", "acme", "--cert-auth", "off").status == 0
    on = cli("org", "set", "beta", "--cert-auth", "on", "--json")
    assert on.json() == {"org": "beta", "cert_auth": True}
    orgs = {o["org"]: o["cert_auth"] for o in cli("org", "list", "--json").json()}
    assert orgs["acme"] is False
    assert orgs["beta"] is True
    table = cli("org", "list").out.splitlines()
    assert table[0].split() == ["ORG", "CERT", "AUTH"]
    assert ["acme", "off"] in [line.split() for line in table]


def test_org_switch_reaches_the_pipeline(cli: CLI, db: str) -> None:
    cli("user", "add", "alice", "--org", "acme")
    cli("org", "set", "acme", "--cert-auth", "off")
    store = open_store(db)
    try:
        principal = store.resolve_user("alice")
        assert principal is not None
        assert principal.org_cert_auth is False
    finally:
        store.close()


# -- cert upload ------------------------------------------------------------------------------


def test_upload_prints_the_fingerprint(cli: CLI, pem_files: dict[str, Path], pems: dict[str, bytes]) -> None:
    cli("user", "add", "carol")
    ran = cli("cert", "upload", str(pem_files["carol"]), "--user", "carol", "--label", "laptop")
    assert ran.status == 0
    assert ran.out.strip() == fp_of(pems["carol"])


def test_upload_json(cli: CLI, pem_files: dict[str, Path], pems: dict[str, bytes]) -> None:
    cli("user", "add", "carol", "--org", "acme")
    record = cli(
        "--json", "cert", "upload", str(pem_files["carol"]), "--user", "carol", "--org", "acme"
    ).json()
    assert record["fingerprint"] == fp_of(pems["carol"])
    assert record["user_id"] == "carol"
    assert record["org"] == "acme"
    assert record["label"] == record["subject"]  # no --label: the subject
    assert record["uploaded_by"].startswith("mtls-admin")
    assert record["days_left"] > 0
    for key in ("not_before", "not_after", "uploaded_at"):
        assert dt.datetime.strptime(record[key], "%Y-%m-%dT%H:%M:%SZ")


UPLOAD_REFUSALS = [
    pytest.param("garbage", "carol", Reason.MALFORMED_CERTIFICATE, id="garbage"),
    pytest.param("empty", "carol", Reason.MALFORMED_CERTIFICATE, id="empty"),
    pytest.param("der", "carol", Reason.MALFORMED_CERTIFICATE, id="der-not-pem"),
    pytest.param("with-key", "carol", Reason.MALFORMED_CERTIFICATE, id="private-key-included"),
    pytest.param("too-large", "carol", Reason.CERTIFICATE_TOO_LARGE, id="over-1MB"),
    pytest.param("eleven", "carol", Reason.CHAIN_TOO_LONG, id="eleven-certificates"),
    pytest.param("expired", "carol", Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param("not-yet-valid", "carol", Reason.CERTIFICATE_NOT_YET_VALID, id="not-yet-valid"),
    pytest.param("server-only", "carol", Reason.MISSING_CLIENT_AUTH_EKU, id="server-auth-only"),
    pytest.param("no-eku", "carol", Reason.MISSING_CLIENT_AUTH_EKU, id="no-eku"),
    pytest.param("dual", "carol", Reason.DUAL_PURPOSE_EKU, id="dual-purpose"),
    pytest.param("dave", "carol", Reason.DUPLICATE_CERTIFICATE, id="duplicate"),
    pytest.param("carol", "nobody", Reason.UNKNOWN_USER, id="unknown-user"),
]


@pytest.mark.parametrize(("pem", "user", "reason"), UPLOAD_REFUSALS)
def test_upload_refusals(cli: CLI, pem_files: dict[str, Path], pem: str, user: str, reason: Reason) -> None:
    cli("user", "add", "carol")
    assert cli("cert", "upload", str(pem_files["dave"]), "--user", "carol").status == 0
    refused_with(cli("cert", "upload", str(pem_files[pem]), "--user", user), reason)
    ran = cli("cert", "upload", str(pem_files[pem]), "--user", user, "--json")
    assert ran.status == 1
    assert ran.json()["error"] == reason.value
    assert ran.json()["message"]
    assert len(cli("cert", "list", "--json").json()) == 1  # only dave's


def test_upload_to_a_user_of_another_org_is_refused(cli: CLI, pem_files: dict[str, Path]) -> None:
    cli("user", "add", "carol", "--org", "acme")
    ran = cli("cert", "upload", str(pem_files["carol"]), "--user", "carol", "--org", "beta")
    refused_with(ran, Reason.UNKNOWN_USER)
    assert "beta" in ran.err
    assert cli("cert", "list", "--json").json() == []
    assert cli("cert", "upload", str(pem_files["carol"]), "--user", "carol", "--org", "acme").status == 0


def test_upload_from_stdin_and_download_exact_bytes(tmp_path: Path, db: str, pems: dict[str, bytes]) -> None:
    assert run_program("user", "add", "carol", db=db).returncode == 0
    uploaded = run_program("cert", "upload", "-", "--user", "carol", db=db, stdin=pems["crlf"])
    assert uploaded.returncode == 0, uploaded.stderr
    fp = uploaded.stdout.decode().strip()
    assert fp == fp_of(pems["crlf"])

    downloaded = run_program("cert", "download", fp, db=db)
    assert downloaded.returncode == 0
    assert downloaded.stdout == pems["crlf"]

    target = tmp_path / "out.pem"
    to_file = run_program("cert", "download", fp[:12], "-o", str(target), db=db)
    assert to_file.returncode == 0
    assert target.read_bytes() == pems["crlf"]


def test_download_to_an_unwritable_file_is_a_usage_error(
    cli: CLI, pem_files: dict[str, Path], tmp_path: Path
) -> None:
    cli("user", "add", "carol")
    fp = cli("cert", "upload", str(pem_files["carol"]), "--user", "carol").out.strip()
    ran = cli("cert", "download", fp, "-o", str(tmp_path / "no" / "such" / "dir.pem"))
    assert ran.status == 2
    assert ran.err.startswith("mtls-admin: error: cannot write ")


def test_download_json_holds_the_pem(cli: CLI, pem_files: dict[str, Path], pems: dict[str, bytes]) -> None:
    cli("user", "add", "carol")
    fp = cli("cert", "upload", str(pem_files["crlf"]), "--user", "carol").out.strip()
    ran = cli("cert", "download", fp, "--json")
    assert ran.json() == {"fingerprint": fp, "pem": pems["crlf"].decode()}


# -- cert list, show, rename, delete ----------------------------------------------------------


@pytest.fixture
def filled(cli: CLI, pem_files: dict[str, Path], pems: dict[str, bytes]) -> dict[str, str]:
    """carol (acme) with two certificates, dave (beta) with one; name -> fingerprint."""
    cli("user", "add", "carol", "--org", "acme")
    cli("user", "add", "dave", "--org", "beta")
    out = {}
    for name, user in (("carol", "carol"), ("crlf", "carol"), ("dave", "dave")):
        ran = cli("cert", "upload", str(pem_files[name]), "--user", user, "--label", f"{name} laptop")
        assert ran.status == 0, ran.err
        out[name] = ran.out.strip()
    return out


def test_cert_list_table(cli: CLI, filled: dict[str, str]) -> None:
    lines = cli("cert", "list").out.splitlines()
    header = lines[0]
    for column in ("USER", "LABEL", "FINGERPRINT", "SUBJECT", "ISSUER", "UPLOADED", "EXPIRES", "DAYS LEFT"):
        assert column in header
    assert len(lines) == 4
    row = next(line for line in lines if "dave laptop" in line)
    assert filled["dave"][:16] in row
    assert filled["dave"] not in row  # abbreviated in the table
    assert "CN=dave" in row
    # the columns line up: every row has its fingerprint where the header has FINGERPRINT
    column = header.index("FINGERPRINT")
    assert {line[column : column + 16] for line in lines[1:]} == {fp[:16] for fp in filled.values()}


def test_cert_list_json_and_filters(cli: CLI, filled: dict[str, str]) -> None:
    every = cli("cert", "list", "--json").json()
    assert {c["fingerprint"] for c in every} == set(filled.values())
    assert set(every[0]) == {
        "fingerprint",
        "user_id",
        "org",
        "label",
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "days_left",
        "uploaded_at",
        "uploaded_by",
    }
    carol = cli("cert", "list", "--user", "carol", "--json").json()
    assert {c["fingerprint"] for c in carol} == {filled["carol"], filled["crlf"]}
    beta = cli("cert", "list", "--org", "beta", "--json").json()
    assert [c["fingerprint"] for c in beta] == [filled["dave"]]
    assert cli("cert", "list", "--org", "nowhere", "--json").json() == []


def test_cert_list_of_an_unknown_user_is_refused(cli: CLI, filled: dict[str, str]) -> None:
    refused_with(cli("cert", "list", "--user", "nobody"), Reason.UNKNOWN_USER)


def test_cert_show(cli: CLI, filled: dict[str, str]) -> None:
    shown = cli("cert", "show", filled["dave"], "--json").json()
    assert shown["fingerprint"] == filled["dave"]
    assert shown["label"] == "dave laptop"
    assert shown["org"] == "beta"
    human = cli("cert", "show", filled["dave"])
    assert human.status == 0
    assert filled["dave"] in human.out
    assert "dave laptop" in human.out


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda fp: fp.upper(), id="uppercase"),
        pytest.param(
            lambda fp: ":".join(fp[i : i + 2] for i in range(0, 64, 2)).upper(), id="openssl-colons"
        ),
        pytest.param(lambda fp: fp[:16], id="unique-prefix"),
    ],
)
def test_fingerprint_spellings(cli: CLI, filled: dict[str, str], spelling: object) -> None:
    ran = cli("cert", "show", spelling(filled["dave"]), "--json")  # type: ignore[operator]
    assert ran.status == 0, ran.err
    assert ran.json()["fingerprint"] == filled["dave"]


def test_rename(cli: CLI, filled: dict[str, str]) -> None:
    ran = cli("cert", "rename", filled["dave"], "old phone", "--json")
    assert ran.status == 0
    assert ran.json()["label"] == "old phone"
    assert cli("cert", "show", filled["dave"], "--json").json()["label"] == "old phone"


def test_delete(cli: CLI, filled: dict[str, str]) -> None:
    ran = cli("cert", "delete", filled["dave"])
    assert ran.status == 0
    assert filled["dave"] in ran.out
    assert {c["fingerprint"] for c in cli("cert", "list", "--json").json()} == {
        filled["carol"],
        filled["crlf"],
    }
    refused_with(cli("cert", "show", filled["dave"]), Reason.NOT_FOUND)


UNKNOWN = "ab" * 32


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["cert", "show", UNKNOWN], id="show"),
        pytest.param(["cert", "download", UNKNOWN], id="download"),
        pytest.param(["cert", "rename", UNKNOWN, "x"], id="rename"),
        pytest.param(["cert", "delete", UNKNOWN], id="delete"),
        pytest.param(["cert", "delete", UNKNOWN[:10]], id="delete-prefix"),
    ],
)
def test_unknown_fingerprint_is_not_found(cli: CLI, filled: dict[str, str], argv: list[str]) -> None:
    refused_with(cli(*argv), Reason.NOT_FOUND)
    ran = cli(*argv, "--json")
    assert ran.status == 1
    assert ran.json()["error"] == Reason.NOT_FOUND.value
    assert len(cli("cert", "list", "--json").json()) == 3


# -- history ----------------------------------------------------------------------------------

HOUR = 3600.0


@pytest.fixture
def history(db: str) -> float:
    """Five attempts over ten days before now, recorded straight into the store; returns now."""
    now = time.time()
    records = [
        LoginRecord(
            "accepted", "tls", "aa" * 32, user_id="alice", org="acme", time=now - 240 * HOUR, peer="10.0.0.1"
        ),
        LoginRecord(
            "certificate_expired",
            "nginx",
            "bb" * 32,
            user_id="alice",
            detail="expired yesterday",
            time=now - 50 * HOUR,
            peer="10.0.0.2",
        ),
        LoginRecord(
            "accepted", "tls", "cc" * 32, user_id="bob", org="acme", time=now - 3 * HOUR, peer="10.0.0.3"
        ),
        LoginRecord(
            "unknown_certificate",
            "tls",
            "dd" * 32,
            detail="not registered",
            time=now - 2 * HOUR,
            peer="10.0.0.4",
        ),
        LoginRecord(
            "accepted", "tls", "aa" * 32, user_id="alice", org="acme", time=now - 1 * HOUR, peer="10.0.0.5"
        ),
    ]
    store = open_store(db)
    try:
        for record in records:
            store.record(record)
    finally:
        store.close()
    return now


def peers(ran: Ran) -> list[str]:
    return [r["peer"] for r in ran.json()]


def test_history_table(cli: CLI, history: float) -> None:
    lines = cli("history").out.splitlines()
    assert lines[0].split() == ["TIME", "OUTCOME", "USER", "FINGERPRINT", "SOURCE", "PEER", "DETAIL"]
    assert len(lines) == 6
    newest = lines[1].split()
    assert newest[0] == dt.datetime.fromtimestamp(history - HOUR, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert newest[1:6] == ["accepted", "alice", "aa" * 8, "tls", "10.0.0.5"]
    assert "expired yesterday" in lines[4]


def test_history_json(cli: CLI, history: float) -> None:
    rows = cli("history", "--json").json()
    assert peers_of(rows) == ["10.0.0.5", "10.0.0.4", "10.0.0.3", "10.0.0.2", "10.0.0.1"]
    assert rows[3]["fingerprint"] == "bb" * 32  # the full one
    assert rows[3]["outcome"] == "certificate_expired"
    assert rows[3]["detail"] == "expired yesterday"


def peers_of(rows: list[dict[str, object]]) -> list[object]:
    return [r["peer"] for r in rows]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--user", "alice"], ["10.0.0.5", "10.0.0.2", "10.0.0.1"], id="user"),
        pytest.param(["--failed"], ["10.0.0.4", "10.0.0.2"], id="failed"),
        pytest.param(["--outcome", "unknown_certificate"], ["10.0.0.4"], id="outcome-code"),
        pytest.param(
            ["--outcome", "accepted", "--user", "alice"],
            ["10.0.0.5", "10.0.0.1"],
            id="outcome-accepted-and-user",
        ),
        pytest.param(["--since", "SINCE"], ["10.0.0.5", "10.0.0.4", "10.0.0.3"], id="since"),
        pytest.param(["--limit", "2"], ["10.0.0.5", "10.0.0.4"], id="limit"),
        pytest.param(["--failed", "--limit", "1"], ["10.0.0.4"], id="failed-limit"),
    ],
)
def test_history_filters(cli: CLI, history: float, argv: list[str], expected: list[str]) -> None:
    since = dt.datetime.fromtimestamp(history - 10 * HOUR, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ran = cli("history", *[since if a == "SINCE" else a for a in argv], "--json")
    assert ran.status == 0, ran.err
    assert peers(ran) == expected


@pytest.mark.parametrize(
    ("age", "removed", "left"),
    [
        pytest.param("7d", 1, 4, id="days"),
        pytest.param("24h", 2, 3, id="hours"),
        pytest.param("150m", 3, 2, id="minutes"),
        pytest.param("365d", 0, 5, id="nothing-that-old"),
    ],
)
def test_history_prune(cli: CLI, history: float, age: str, removed: int, left: int) -> None:
    ran = cli("history", "prune", "--older-than", age, "--json")
    assert ran.status == 0, ran.err
    assert ran.json() == {"removed": removed}
    assert len(cli("history", "--json").json()) == left


def test_history_prune_human(cli: CLI, history: float) -> None:
    ran = cli("history", "prune", "--older-than", "7d")
    assert ran.status == 0
    assert ran.out.strip() == "removed 1 login record"


# -- the store: --db, MTLS_DB, the default ----------------------------------------------------


def test_mtls_db_env_is_honoured(tmp_path: Path) -> None:
    from_env = f"sqlite:///{tmp_path / 'from-env.db'}"
    added = run_program("user", "add", "alice", env={"MTLS_DB": from_env}, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "from-env.db").exists()
    assert not (tmp_path / "mtls.db").exists()
    listed = run_program("user", "list", "--json", env={"MTLS_DB": from_env}, cwd=tmp_path)
    assert [u["user_id"] for u in json.loads(listed.stdout)] == ["alice"]
    # --db wins over the environment
    other = f"sqlite:///{tmp_path / 'other.db'}"
    elsewhere = run_program("--db", other, "user", "list", "--json", env={"MTLS_DB": from_env}, cwd=tmp_path)
    assert json.loads(elsewhere.stdout) == []


def test_default_store_is_mtls_db_in_the_working_directory(tmp_path: Path) -> None:
    assert run_program("user", "add", "alice", cwd=tmp_path).returncode == 0
    store = open_store(f"sqlite:///{tmp_path / 'mtls.db'}")
    try:
        assert store.get_user("alice").user_id == "alice"
    finally:
        store.close()


def test_db_after_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'after.db'}"
    assert main(["user", "add", "alice", "--db", other]) == 0
    capsys.readouterr()
    assert main(["user", "list", "--json", "--db", other]) == 0
    assert [u["user_id"] for u in json.loads(capsys.readouterr().out)] == ["alice"]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("nosuch://x", id="unknown-scheme"),
        pytest.param("mtls.db", id="no-scheme"),
        pytest.param("sqlite:///", id="sqlite-without-path"),
        pytest.param("sqlite:///{tmp}/no/such/dir/x.db", id="sqlite-in-a-missing-directory"),
        pytest.param("sqlite:///{tmp}", id="sqlite-path-is-a-directory"),
        pytest.param("sqlite:///{tmp}/not-a-database.db", id="sqlite-file-not-a-database"),
    ],
)
def test_bad_db_url_is_a_usage_error(url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "not-a-database.db").write_bytes(b"garbage" * 100)
    url = url.replace("{tmp}", str(tmp_path))
    assert main(["--db", url, "user", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtls-admin: error: ")
    assert "Traceback" not in err
    assert main(["--db", url, "user", "list", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "usage"


def test_exit_statuses_of_the_installed_program(tmp_path: Path, db: str, pem_files: dict[str, Path]) -> None:
    assert run_program("user", "add", "carol", db=db).returncode == 0
    done = run_program("cert", "upload", str(pem_files["carol"]), "--user", "carol", db=db)
    assert done.returncode == 0
    refused = run_program("cert", "upload", str(pem_files["carol"]), "--user", "carol", "--json", db=db)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"] == Reason.DUPLICATE_CERTIFICATE.value
    usage = run_program("--db", "nosuch://x", "user", "list")
    assert usage.returncode == 2
    assert usage.stderr


# -- usage errors -----------------------------------------------------------------------------


USAGE = [
    pytest.param(["user"], id="user-without-command"),
    pytest.param(["user", "add"], id="user-add-without-id"),
    pytest.param(["user", "add", "x", "--permission", "sudo"], id="unknown-permission"),
    pytest.param(["org", "set", "acme"], id="org-set-without-cert-auth"),
    pytest.param(["org", "set", "acme", "--cert-auth", "maybe"], id="cert-auth-not-on-off"),
    pytest.param(["cert", "upload", "{carol}"], id="upload-without-user"),
    pytest.param(["cert", "upload", "{missing}", "--user", "carol"], id="upload-unreadable-file"),
    pytest.param(["cert", "upload", "{dir}", "--user", "carol"], id="upload-a-directory"),
    pytest.param(["cert", "show"], id="show-without-fingerprint"),
    pytest.param(["cert", "show", "not-hex"], id="fingerprint-not-hex"),
    pytest.param(["cert", "show", "abcd"], id="fingerprint-prefix-too-short"),
    pytest.param(["cert", "show", "ab" * 33], id="fingerprint-too-long"),
    pytest.param(["cert", "frobnicate"], id="unknown-cert-command"),
    pytest.param(["history", "--limit", "0"], id="limit-zero"),
    pytest.param(["history", "--limit", "many"], id="limit-not-a-number"),
    pytest.param(["history", "--since", "yesterday"], id="since-not-iso8601"),
    pytest.param(["history", "--outcome", "fine"], id="outcome-unknown"),
    pytest.param(["history", "prune"], id="prune-without-age"),
    pytest.param(["history", "prune", "--older-than", "90"], id="age-without-unit"),
    pytest.param(["history", "prune", "--older-than", "1w"], id="age-in-weeks"),
    pytest.param(["history", "prune", "--older-than", "0d"], id="age-zero"),
    pytest.param(["history", "prune", "--older-than", "-1d"], id="age-negative"),
    pytest.param(["history", "prune", "--older-than", "99999999d"], id="age-absurd"),
    pytest.param(["history", "purge"], id="unknown-history-command"),
    pytest.param(["history", "--user", "alice", "prune", "--older-than", "1d"], id="prune-with-a-filter"),
]


@pytest.mark.parametrize("argv", USAGE)
def test_usage_errors_exit_2(
    cli: CLI, argv: list[str], pem_files: dict[str, Path], tmp_path: Path, db: str
) -> None:
    names = {
        "{carol}": str(pem_files["carol"]),
        "{missing}": str(tmp_path / "missing.pem"),
        "{dir}": str(tmp_path),
    }
    argv = [names.get(a, a) for a in argv]
    ran = cli(*argv)
    assert ran.status == 2
    assert ran.err


# Undecodable bytes in an argument reach Python as lone surrogates.
NOT_UTF8 = "b\udcffob"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["cert", "list", "--user", NOT_UTF8], id="cert-list-user"),
        pytest.param(["cert", "list", "--org", NOT_UTF8], id="cert-list-org"),
        pytest.param(["user", "list", "--org", NOT_UTF8], id="user-list-org"),
        pytest.param(["history", "--user", NOT_UTF8], id="history-user"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(cli: CLI, argv: list[str]) -> None:
    cli("user", "add", "alice")
    ran = cli(*argv)
    assert ran.status == 2
    assert "is not UTF-8 text" in ran.err


def test_a_user_id_that_is_not_utf8_is_refused(cli: CLI) -> None:
    refused_with(cli("user", "add", NOT_UTF8), Reason.UNKNOWN_USER)
    assert cli("--json", "user", "list").json() == []


def test_unreadable_upload_creates_no_database(cli: CLI, tmp_path: Path) -> None:
    assert cli("cert", "upload", str(tmp_path / "missing.pem"), "--user", "carol").status == 2
    assert not (tmp_path / "mtls.db").exists()


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "import", "--help"]) == 0
    assert "pem_file" in capsys.readouterr().out
