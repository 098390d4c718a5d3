"""``mtls-admin serve``: the installed console script serving a WSGI app from a module in the current
directory, requested with curl, stopped with a signal; and its usage errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtls_middleware.testing import Issued, TestPKI
from tests.admin.conftest import MTLS_ADMIN, run_program
from tests.conftest import require_service

TIMEOUT = 15

APP_MODULE = """\
import json
from pathlib import Path

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig
from mtls_middleware.wsgi import MTLSMiddleware

HERE = Path(__file__).parent
store = MemoryStore()
store.add_user("alice", org="acme")
store.upload_certificate((HERE / "alice.pem").read_bytes(), user_id="alice")


def whoami(environ, start_response):
    body = json.dumps({"user_id": environ[ENVIRON_KEY].user_id}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = MTLSMiddleware(whoami, MTLSConfig(trust_roots=HERE / "root.pem", store=store, revocation="off"))
not_an_app = 42
"""


@dataclass(frozen=True)
class Site:
    directory: Path
    root: Path
    cert: Path
    key: Path
    alice: tuple[Path, Path]

    def serve_args(self, spec: str = "tests_app_module:app") -> list[str]:
        files = ["--cert", str(self.cert), "--key", str(self.key), "--trust", str(self.root)]
        return ["serve", spec, "--port", "0", *files]


@pytest.fixture
def site(tmp_path: Path, pki: TestPKI, alice: Issued) -> Site:
    root = pki.write(tmp_path)
    cert, key = pki.issue_server("localhost").write(tmp_path, "server")
    alice_files = alice.write(tmp_path, "alice")
    (tmp_path / "tests_app_module.py").write_text(APP_MODULE)
    return Site(tmp_path, root, cert, key, alice_files)


@pytest.fixture
def served(site: Site) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``mtls-admin serve`` running in the site's directory; yields the process and its port."""
    env = {k: v for k, v in os.environ.items() if k not in ("MTLS_DB", "PYTHONPATH")}
    process = subprocess.Popen(
        [str(MTLS_ADMIN), *site.serve_args()],
        cwd=site.directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket listens
        match = re.search(r"https://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no address in {line!r}: the server exited with {process.poll()}"
        yield process, int(match.group(1))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def curl(port: int, site: Site, client: tuple[Path, Path] | None) -> tuple[int, dict[str, str]]:
    argv = [require_service("curl"), "--silent", "--show-error", "--noproxy", "*", "--max-time", "10"]
    argv += ["--cacert", str(site.root), "--write-out", "\n%{http_code}"]
    if client is not None:
        argv += ["--cert", str(client[0]), "--key", str(client[1])]
    argv.append(f"https://127.0.0.1:{port}/")
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), json.loads(body)


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_serves_the_app_until_a_signal_then_exits_0(
    served: tuple[subprocess.Popen[str], int], site: Site, signum: signal.Signals
) -> None:
    process, port = served
    assert curl(port, site, site.alice) == (200, {"user_id": "alice"})
    status, body = curl(port, site, None)
    assert (status, body["error"]) == (401, "no_certificate")
    process.send_signal(signum)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in out


@pytest.mark.parametrize(
    ("spec", "mentions"),
    [
        pytest.param("tests_app_module", "MODULE:APP", id="no-colon"),
        pytest.param("tests_app_module:", "MODULE:APP", id="no-app"),
        pytest.param("no_such_module:app", "cannot import", id="unknown-module"),
        pytest.param("tests_app_module:missing", "no attribute", id="unknown-attribute"),
        pytest.param("tests_app_module:not_an_app", "not a WSGI application", id="not-callable"),
    ],
)
def test_a_bad_app_is_a_usage_error(site: Site, spec: str, mentions: str) -> None:
    done = run_program(*site.serve_args(spec), cwd=site.directory)
    assert done.returncode == 2
    assert mentions in done.stderr.decode()


@pytest.mark.parametrize(
    ("option", "mentions"),
    [
        pytest.param("--cert", "certfile", id="cert-unreadable"),
        pytest.param("--key", "keyfile", id="key-unreadable"),
        pytest.param("--trust", "trust_roots", id="trust-unreadable"),
    ],
)
def test_unreadable_files_are_usage_errors(site: Site, option: str, mentions: str) -> None:
    argv = site.serve_args()
    argv[argv.index(option) + 1] = str(site.directory / "missing.pem")
    done = run_program(*argv, cwd=site.directory)
    assert done.returncode == 2
    assert mentions in done.stderr.decode()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["serve", "tests_app_module:app"], id="no-cert-key-trust"),
        pytest.param(
            ["serve", "tests_app_module:app", "--port", "70000", "--cert", "c", "--key", "k", "--trust", "t"],
            id="bad-port",
        ),
    ],
)
def test_argument_errors_exit_2(site: Site, argv: list[str]) -> None:
    assert run_program(*argv, cwd=site.directory).returncode == 2
