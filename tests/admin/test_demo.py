"""``mtls-admin demo``: the installed console script and the in-process :class:`Demo` make real mTLS
requests through the TLS listener, the middleware, a real OCSP responder and CRL server on loopback;
each case gets its reason code, the history records it, and nothing is left running."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mtls_middleware.admin import demo as demo_module
from mtls_middleware.admin._responders import CRLServer, OCSPResponder
from mtls_middleware.admin.cli import main
from mtls_middleware.admin.demo import Demo, run_demo
from mtls_middleware.revocation.fetch import Fetcher
from mtls_middleware.revocation.ocsp import OCSPSource
from mtls_middleware.testing import TestPKI, make_crl
from tests.admin.conftest import MTLS_ADMIN, run_program
from tests.conftest import require_service
from tests.integration.conftest import free_port

#: Every case of the demo and the outcome it must get.
EXPECTED = {
    "registered": "accepted",
    "unregistered": "unknown_certificate",
    "expired": "certificate_expired",
    "revoked": "certificate_revoked",
    "no-client-auth-eku": "missing_client_auth_eku",
    "user-inactive": "user_inactive",
    "unknown-ca": "untrusted_issuer",
    "no-certificate": "no_certificate",
}
STATUS = {"accepted": 200, "no_certificate": 401}  # every other refusal here is a 403


def demo_env(tmp: Path) -> dict[str, str]:
    """The demo's temporary directory goes under ``tmp`` (so that the test sees it removed)."""
    tmp.mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp)}


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@contextlib.contextmanager
def occupied_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def cases_by_key(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["case"]: c for c in report["cases"]}


# -- the installed program -------------------------------------------------------------------


@pytest.fixture(scope="module")
def program_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[bytes], Path]:
    """One human-readable run of the console script (shared: the tests read its output)."""
    tmp = tmp_path_factory.mktemp("demo-tmp")
    return run_program("demo", "--port", "0", env=demo_env(tmp)), tmp


def test_program_exits_0(program_run: tuple[subprocess.CompletedProcess[bytes], Path]) -> None:
    result, _ = program_run
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().rstrip().endswith("8 of 8 cases as expected")


@pytest.mark.parametrize(("case", "code"), list(EXPECTED.items()), ids=list(EXPECTED))
def test_program_prints_each_case_with_its_code(
    program_run: tuple[subprocess.CompletedProcess[bytes], Path], case: str, code: str
) -> None:
    out = program_run[0].stdout.decode()
    cases, _ = out.split("Login history", 1)
    label = {
        "registered": "alice: registered",
        "unregistered": "bob: valid, not registered",
        "expired": "erin: expired",
        "revoked": "frank: revoked at the OCSP responder",
        "no-client-auth-eku": "dave: e-mail protection EKU only",
        "user-inactive": "carol: user deactivated",
        "unknown-ca": "mallory: issued by an unknown CA",
        "no-certificate": "(no client certificate)",
    }[case]
    line = next(ln for ln in cases.splitlines() if ln.startswith(label))
    assert re.search(rf"\s{STATUS.get(code, 403)}\s+{code}\b", line), line
    assert "UNEXPECTED" not in line


def test_program_echoes_the_accepted_identity(
    program_run: tuple[subprocess.CompletedProcess[bytes], Path],
) -> None:
    out = program_run[0].stdout.decode()
    assert "accepted: user alice, revocation ocsp:good,ocsp:good" in out
    assert "certificate_revoked (ocsp)" in out


def test_program_prints_the_history_table(
    program_run: tuple[subprocess.CompletedProcess[bytes], Path],
) -> None:
    history = program_run[0].stdout.decode().split("Login history", 1)[1].splitlines()[1:]
    header = history[0].split()
    assert header[:6] == ["TIME", "(UTC)", "OUTCOME", "USER", "FINGERPRINT", "REVOCATION"]
    rows = [ln.split() for ln in history[1:9]]
    # Oldest first, one row per case, in the order the requests were made.
    assert [r[1] for r in rows] == list(EXPECTED.values())
    by_outcome = {r[1]: r for r in rows}
    assert by_outcome["accepted"][2] == "alice"
    assert by_outcome["user_inactive"][2] == "carol"
    assert re.fullmatch(r"[0-9a-f]{16}", by_outcome["accepted"][3])
    assert by_outcome["certificate_revoked"][4] == "ocsp:revoked"
    assert by_outcome["no_certificate"][3] == "-"


def test_program_leaves_no_temporary_directory(
    program_run: tuple[subprocess.CompletedProcess[bytes], Path],
) -> None:
    _, tmp = program_run
    assert list(tmp.iterdir()) == []


def test_program_json(tmp_path: Path) -> None:
    result = run_program("demo", "--port", "0", "--json", env=demo_env(tmp_path / "tmp"))
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["ok"] is True
    cases = cases_by_key(report)
    assert {k: c["outcome"] for k, c in cases.items()} == EXPECTED
    assert all(c["ok"] and c["recorded"] for c in cases.values())
    assert {k: c["status"] for k, c in cases.items()} == {
        k: STATUS.get(code, 403) for k, code in EXPECTED.items()
    }
    assert cases["registered"]["user_id"] == "alice"
    assert cases["revoked"]["revocation"] == "ocsp:revoked"
    assert [r["outcome"] for r in report["history"]] == list(EXPECTED.values())
    assert report["ocsp_responder_up"] is True
    assert report["directory"] is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_port_fallback_when_the_port_is_taken(tmp_path: Path) -> None:
    with occupied_port() as port:
        result = run_program("demo", "--port", str(port), env=demo_env(tmp_path / "tmp"))
        out = result.stdout.decode()
        assert result.returncode == 0, out + result.stderr.decode()
        assert f"port {port} was taken; the OS picked " in out
        url = re.search(r"https://127\.0\.0\.1:(\d+)/", out)
        assert url is not None
        assert int(url.group(1)) != port


def test_port_fallback_json(tmp_path: Path) -> None:
    with occupied_port() as port:
        result = run_program("demo", "--port", str(port), "--json", env=demo_env(tmp_path / "tmp"))
    report = json.loads(result.stdout)
    assert result.returncode == 0
    assert report["requested_port"] == port
    assert report["port"] != port


def test_the_requested_port_is_used_when_free(tmp_path: Path) -> None:
    port = free_port()
    result = run_program("demo", "--port", str(port), "--json", env=demo_env(tmp_path / "tmp"))
    assert result.returncode == 0
    assert json.loads(result.stdout)["port"] == port
    assert refused(port)


def test_ocsp_down_falls_back_to_the_crl(tmp_path: Path) -> None:
    result = run_program("demo", "--port", "0", "--json", "--ocsp-down", env=demo_env(tmp_path / "tmp"))
    assert result.returncode == 0, result.stdout.decode()
    report = json.loads(result.stdout)
    assert report["ocsp_responder_up"] is False
    cases = cases_by_key(report)
    assert {k: c["outcome"] for k, c in cases.items()} == EXPECTED
    assert cases["revoked"]["revocation"] == "crl:revoked"
    assert cases["registered"]["revocation"] == "crl:good,crl:good"


def test_dir_keeps_the_files_and_the_store(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    result = run_program("demo", "--port", "0", "--dir", str(directory), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["directory"] == str(directory)
    for name in ("root.pem", "server.pem", "server.key", "registered.pem", "registered.key", "mtls.db"):
        assert (directory / name).is_file(), name
    # The kept store is an ordinary one: the history command reads what the demo recorded.
    history = run_program("history", "--json", db=f"sqlite:///{directory / 'mtls.db'}")
    outcomes = [r["outcome"] for r in json.loads(history.stdout)]
    assert sorted(outcomes) == sorted(EXPECTED.values())


def test_a_second_run_in_the_same_dir_shows_only_its_own_history(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    run_program("demo", "--port", "0", "--dir", str(directory))
    result = run_program("demo", "--port", "0", "--dir", str(directory), "--json")
    assert result.returncode == 0
    assert len(json.loads(result.stdout)["history"]) == len(EXPECTED)


def test_db_is_a_usage_error() -> None:
    result = run_program("demo", db="memory://")
    assert result.returncode == 2
    assert b"--db does not apply" in result.stderr


def test_a_dir_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_program("demo", "--port", "0", "--dir", str(blocker / "demo"))
    assert result.returncode == 2
    assert str(blocker) in result.stderr.decode()


def test_bad_port_is_a_usage_error() -> None:
    result = run_program("demo", "--port", "70000")
    assert result.returncode == 2


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 20) -> bytes:
    """Standard output up to and including the line holding ``marker``."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in time; got {seen.decode()}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the demo exited early: {seen.decode()}"
            seen += chunk
    while not seen.endswith(b"\n"):
        seen += os.read(fd, 65536)
    return seen


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_keep_running_serves_curl_until_a_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    curl = require_service("curl")
    tmp = tmp_path / "tmp"
    env = {**os.environ, **demo_env(tmp)}
    env.pop("MTLS_DB", None)
    proc = subprocess.Popen(
        [str(MTLS_ADMIN), "demo", "--port", "0", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        out = _read_until(proc, b"--cacert").decode()
        command = shlex.split(out.strip().splitlines()[-1])
        assert command[0] == "curl"
        port = int(command[-1].rsplit(":", 1)[1].strip("/"))
        cert = Path(command[command.index("--cert") + 1])
        assert cert.is_file()
        assert cert.is_relative_to(tmp)  # the temporary directory the test then sees removed
        # The command printed works as printed: alice is accepted and her identity echoed.
        answer = subprocess.run([curl, "-sS", *command[1:]], capture_output=True, timeout=20, check=False)
        assert answer.returncode == 0, answer.stderr.decode()
        assert json.loads(answer.stdout)["user_id"] == "alice"
        proc.send_signal(stop_signal)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert refused(port)
    assert list(tmp.iterdir()) == []


def test_examples_end_to_end_runs_the_demo(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "examples" / "end_to_end.py"
    env = {**os.environ, **demo_env(tmp_path / "tmp")}
    python = MTLS_ADMIN.parent / "python"
    result = subprocess.run(
        [str(python), str(script), "--port", "0", "--json"], capture_output=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["ok"] is True


# -- in process --------------------------------------------------------------------------------


def test_in_process_leaves_nothing_running() -> None:
    before = set(threading.enumerate())
    with Demo(port=0) as demo:
        port = demo.server.server_port
        services = (demo.responder.port, demo.crl_server.port)
        directory = demo.directory
        report = demo.run()
        assert directory.is_dir()
    assert report.ok, report.render()
    assert [t for t in threading.enumerate() if t not in before] == []
    assert refused(port)
    assert all(refused(p) for p in services)
    assert not directory.exists()


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_dir_that_does_not_exist_is_created_owner_only(tmp_path: Path) -> None:
    """It holds private keys: made 0o700 whatever the umask lets others read."""
    directory = tmp_path / "new" / "demo"
    with umask(0o022), Demo(port=0, directory=directory):
        assert stat_mode(directory) == 0o700
        assert stat_mode(directory / "registered.key") == 0o600
        assert stat_mode(directory / "server.key") == 0o600


def test_an_existing_dir_keeps_its_mode(tmp_path: Path) -> None:
    directory = tmp_path / "mine"
    directory.mkdir()
    directory.chmod(0o750)
    with Demo(port=0, directory=directory):
        pass
    assert stat_mode(directory) == 0o750
    assert stat_mode(directory / "registered.key") == 0o600


def stat_mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_in_process_cleans_up_after_an_exception() -> None:
    before = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt), Demo(port=0) as demo:  # noqa: PT012 - the block is the test
        port, directory = demo.server.server_port, demo.directory
        raise KeyboardInterrupt
    assert [t for t in threading.enumerate() if t not in before] == []
    assert refused(port)
    assert not directory.exists()


def test_the_revocation_statuses_come_from_the_ocsp_responder() -> None:
    with Demo(port=0) as demo:
        report = demo.run()
        ocsp_requests, crl_requests = demo.responder.requests, demo.crl_server.requests
    cases = {c.key: c for c in report.cases}
    assert cases["revoked"].revocation == "ocsp:revoked"
    assert cases["registered"].revocation == "ocsp:good,ocsp:good"
    assert ocsp_requests > 0
    assert crl_requests == 0


def test_with_the_responder_down_the_crls_are_fetched() -> None:
    with Demo(port=0, ocsp=False) as demo:
        report = demo.run()
        ocsp_requests, crl_requests = demo.responder.requests, demo.crl_server.requests
    assert report.ok, report.render()
    assert {c.key: c.revocation for c in report.cases}["revoked"] == "crl:revoked"
    assert ocsp_requests == 0
    assert crl_requests > 0


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--port", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {c["case"]: c["outcome"] for c in report["cases"]} == EXPECTED


def test_a_case_that_goes_wrong_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reactivating carol behind the demo's back: her request is accepted, which is not the case.
    start = Demo._start

    def start_then_reactivate(self: Demo) -> None:
        start(self)
        self.store.set_user_active("carol", True)

    monkeypatch.setattr(Demo, "_start", start_then_reactivate)
    assert main(["demo", "--port", "0"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("carol: user deactivated"))
    assert "accepted" in line
    assert "UNEXPECTED: expected user_inactive" in line
    assert out.rstrip().endswith("7 of 8 cases as expected: FAILED")


def test_run_demo_writes_to_the_stream_given() -> None:
    import io

    stream = io.StringIO()
    assert run_demo(port=0, json_output=True, out=stream) == 0
    assert json.loads(stream.getvalue())["ok"] is True


def test_interrupted_run_returns_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Demo) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Demo, "run", interrupted)
    before = set(threading.enumerate())
    assert run_demo(port=0) == 130
    assert [t for t in threading.enumerate() if t not in before] == []


def test_demo_module_names() -> None:
    assert set(demo_module.__all__) <= set(dir(demo_module))


# -- the demo's OCSP responder and CRL server ----------------------------------------------------


@pytest.fixture
def responder(pki: TestPKI) -> Iterator[OCSPResponder]:
    with OCSPResponder() as service:
        from mtls_middleware.admin.demo import _delegated_responder

        service.add_issuer(pki.issuing, _delegated_responder(pki.issuing, "test"))
        yield service


def _post(url: str, body: bytes) -> ocsp.OCSPResponse:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return ocsp.load_der_ocsp_response(answer.read())


def _request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 - RFC 5019's CertID
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(responder: OCSPResponder, pki: TestPKI, cert: x509.Certificate) -> str:
    source = OCSPSource(Fetcher(timeout=3), responder=responder.url)
    answer = source.status(
        cert, pki.issuing.cert, deadline=time.monotonic() + 5, now=dt.datetime.now(dt.timezone.utc)
    )
    return answer.status


@pytest.mark.parametrize("status", ["good", "revoked", "unknown"])
def test_responder_answers_from_its_table(responder: OCSPResponder, pki: TestPKI, status: str) -> None:
    leaf = pki.issue_client(f"table {status}").cert
    responder.set_status(pki.issuing, leaf.serial_number, status)
    # Judged by the library's own OCSP client: signature, delegation and CertID all check out.
    assert _status(responder, pki, leaf) == status


def test_responder_says_unknown_for_a_serial_not_in_its_table(responder: OCSPResponder, pki: TestPKI) -> None:
    assert _status(responder, pki, pki.issue_client("never registered").cert) == "unknown"


def test_responder_answers_the_get_form(responder: OCSPResponder, pki: TestPKI) -> None:
    leaf = pki.issue_client("by get").cert
    responder.set_status(pki.issuing, leaf.serial_number, "revoked")
    encoded = base64.b64encode(_request(leaf, pki.issuing.cert)).decode()
    with urllib.request.urlopen(f"{responder.url}/{encoded}", timeout=5) as answer:
        response = ocsp.load_der_ocsp_response(answer.read())
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_responder_refuses_an_issuer_it_does_not_serve(
    responder: OCSPResponder, other_pki: TestPKI
) -> None:
    leaf = other_pki.issue_client("stranger").cert
    response = _post(responder.url, _request(leaf, other_pki.issuing.cert))
    assert response.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_responder_answers_garbage_with_malformed_request(responder: OCSPResponder) -> None:
    response = _post(responder.url, b"not an OCSP request")
    assert response.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_responder_rejects_an_unknown_status(responder: OCSPResponder, pki: TestPKI) -> None:
    with pytest.raises(ValueError, match="not one of"):
        responder.set_status(pki.issuing, 1, "maybe")


def test_crl_server_serves_what_was_published(pki: TestPKI) -> None:
    crl = make_crl(pki.issuing, [42])
    with CRLServer() as server:
        server.publish("issuing.crl", crl)
        url = server.url("issuing.crl")
        with urllib.request.urlopen(url, timeout=5) as answer:
            served = x509.load_der_x509_crl(answer.read())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url("other.crl"), timeout=5)
        port = server.port
    assert served.get_revoked_certificate_by_serial_number(42) is not None
    assert missing.value.code == 404
    assert refused(port)
