"""A real browser for end-to-end tests: headless Chromium that presents a client certificate.

Chromium on Linux has no switch to present a client certificate. It takes certificates (trust
anchors and client identities) from the NSS database in ``$HOME/.pki/nssdb``, and it picks a client
certificate without asking only when the managed policy ``AutoSelectCertificateForUrls`` names the
origin; otherwise it opens a selection dialog, which in headless mode nobody can answer: the
navigation hangs until the page-load timeout. So :func:`chromium`:

* makes a fresh ``HOME`` whose NSS database trusts ``trust_roots`` for TLS servers (``C,,``) and
  holds the ``client`` certificate, key and intermediates (imported as PKCS#12). Test servers are
  therefore trusted the way a real root is: no ``--ignore-certificate-errors``;
* writes ``/etc/chromium/policies/managed/mtls-test-<pid>-<random>.json`` with one
  ``AutoSelectCertificateForUrls`` entry per origin, filtered on the issuer CN of ``client``, and
  removes it when the block ends, however it ends;
* starts ``/usr/bin/chromedriver`` (never Selenium Manager) with that ``HOME``, Chromium headless
  with a fresh profile and a NetLog (:func:`netlog_events` reads it after the block), and quits
  both on leaving the block, killing any Chromium process of this browser still alive after that.

The policy directory is shared by every Chromium on the machine, and Chromium reads all of its
files (one file wins a policy; they are not merged), so browsers are serialised: a lock on that
directory is held for the whole block, by this process and by other pytest processes alike.
Policy files left by a killed run are removed under that lock.

Timeouts keep a hang under a minute: page load :data:`PAGE_LOAD_TIMEOUT`, any one chromedriver
command :data:`COMMAND_TIMEOUT`, element waits :data:`WAIT_TIMEOUT`.

Use::

    from tests.integration.browser import chromium

    def test_login(pki, alice, tmp_path):
        with chromium(trust_roots=[pki.root.cert], client=alice,
                      auto_select_origins=["https://127.0.0.1:8443"], tmp_path=tmp_path) as browser:
            browser.get("https://127.0.0.1:8443/login")
            browser.click("#login")
            assert "alice" in browser.text

Screenshots go to ``$MTLS_TEST_ARTIFACTS/browser/`` (default ``<repo>/test-artifacts/browser/``);
a block that raises saves ``<tmp_path name>-failure.png`` there first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from mtls_middleware.testing import Issued
from tests.conftest import REQUIRE_SERVICES, require_service

from .conftest import REPO_ROOT, require_module

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = [
    "COMMAND_TIMEOUT",
    "PAGE_LOAD_TIMEOUT",
    "POLICY_DIR",
    "WAIT_TIMEOUT",
    "Browser",
    "artifacts_dir",
    "auto_select_policy",
    "chromium",
    "netlog_events",
    "require_browser",
]

CHROMEDRIVER = "/usr/bin/chromedriver"
#: Debian's /usr/bin/chromium is a shell wrapper that adds flags from /etc/chromium.d (remote
#: extensions, --load-extension ...); the binary behind it is started directly when present.
CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
POLICY_DIR = Path("/etc/chromium/policies/managed")
POLICY_PREFIX = "mtls-test-"

PAGE_LOAD_TIMEOUT = 30.0
COMMAND_TIMEOUT = 45.0
WAIT_TIMEOUT = 10.0
#: How long to wait for another test process's browser to finish with the policy directory.
LOCK_TIMEOUT = 300.0
#: Each NSS tool call (they never need long; a prompt would otherwise wait forever).
TOOL_TIMEOUT = 30.0

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)

_in_process = threading.Lock()


def _skip_or_fail(message: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


def require_browser() -> None:
    """Skip (or, under MTLS_REQUIRE_SERVICES=1, fail) unless a browser can be run here.

    Needs chromium, chromedriver, certutil and pk12util (apt: chromium chromium-driver
    libnss3-tools), the Python module selenium, and a writable :data:`POLICY_DIR` (created when
    missing, which takes root).
    """
    require_service("chromium", "chromium is not installed (apt-get install chromium)")
    require_service("chromedriver", "chromedriver is not installed (apt-get install chromium-driver)")
    for tool in ("certutil", "pk12util"):
        require_service(tool, f"{tool} is not installed (apt-get install libnss3-tools)")
    require_module("selenium")
    try:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _skip_or_fail(f"cannot create the Chromium policy directory {POLICY_DIR} ({exc}; run as root)")
    if not os.access(POLICY_DIR, os.W_OK):
        _skip_or_fail(f"the Chromium policy directory {POLICY_DIR} is not writable (run as root)")


def artifacts_dir() -> Path:
    """Where screenshots go: ``$MTLS_TEST_ARTIFACTS/browser``, else ``<repo>/test-artifacts/browser``.

    Created when missing.
    """
    root = os.environ.get("MTLS_TEST_ARTIFACTS")
    directory = (Path(root) if root else REPO_ROOT / "test-artifacts") / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _common_name(name: x509.Name, what: str) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        raise ValueError(f"{what} has no CN: the auto-select filter needs one")
    return str(values[0].value)


def auto_select_policy(origins: Sequence[str], issuer_cn: str) -> dict[str, Any]:
    """The managed-policy document that auto-selects certificates issued by ``issuer_cn``.

    Each origin (``https://host:port``, a Chromium content-settings pattern) becomes one entry; the
    policy's value is a list of JSON *strings*, each ``{"pattern": ..., "filter": {"ISSUER":
    {"CN": ...}}}`` (a list of objects is rejected, and Chromium ignores it silently).
    """
    entries = [json.dumps({"pattern": origin, "filter": {"ISSUER": {"CN": issuer_cn}}}) for origin in origins]
    return {"AutoSelectCertificateForUrls": entries}


def _run(argv: Sequence[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TOOL_TIMEOUT
    )
    if result.returncode != 0:
        pytest.fail(
            f"$ {' '.join(argv)} exited with {result.returncode}\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


def _make_nssdb(home: Path, trust_roots: Sequence[x509.Certificate], client: Issued | None) -> None:
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    env = {**os.environ, "HOME": str(home)}
    _run(["certutil", "-N", "--empty-password", "-d", db], env)
    for index, root in enumerate(trust_roots):
        pem = home / f"root-{index}.pem"
        pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        # "C,," : a CA trusted to issue TLS server certificates (SSL column), nothing else.
        _run(["certutil", "-A", "-n", f"mtls-test-root-{index}", "-t", "C,,", "-i", str(pem), "-d", db], env)
    if client is not None:
        password = secrets.token_urlsafe(24)
        p12 = pkcs12.serialize_key_and_certificates(
            b"mtls-test-client",
            client.key,
            client.cert,
            list(client.intermediates),
            serialization.BestAvailableEncryption(password.encode()),
        )
        path = home / "client.p12"
        path.write_bytes(p12)
        _run(["pk12util", "-i", str(path), "-d", db, "-W", password, "-K", ""], env)
        path.unlink()


@contextlib.contextmanager
def _policy_lock() -> Iterator[None]:
    if not _in_process.acquire(blocking=False):
        raise RuntimeError("one browser at a time: chromium() blocks do not nest (they share the policy)")
    try:
        fd = os.open(POLICY_DIR, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the flock
    finally:
        _in_process.release()


def _processes_using(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat.rpartition(")")[2].split()[:1]
        if marker.encode() in cmdline and state != ["Z"]:
            found.append(int(entry.name))
    return found


def _reap(marker: str, timeout: float = 5.0) -> None:
    # chromedriver's quit ends the browser process; its helpers (zygotes, crashpad, started with
    # the profile path on their command lines) leave a moment later. A crashed driver leaves them
    # running: they must not outlive the test.
    deadline = time.monotonic() + timeout
    while _processes_using(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _processes_using(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not cleaned:
        raise ValueError(f"screenshot name {name!r} has no usable character")
    return cleaned


class Browser:
    """A running headless Chromium (through chromedriver); ``driver`` for anything not here."""

    def __init__(self, driver: WebDriver, *, netlog: Path, wait_timeout: float = WAIT_TIMEOUT) -> None:
        self.driver = driver
        #: Chromium's NetLog: complete (readable by :func:`netlog_events`) once the block has ended.
        self.netlog = netlog
        self.wait_timeout = wait_timeout

    def get(self, url: str) -> None:
        """Load ``url`` and wait for the page.

        Raises:
            selenium.common.exceptions.TimeoutException: no page within the page-load timeout
                (also what a pending certificate-selection dialog looks like).
        """
        self.driver.get(url)

    def click(self, selector: str, *, navigates: bool = True) -> None:
        """Click the element matching CSS ``selector`` once it is clickable.

        With ``navigates`` (the default) return only once the next page has loaded.

        Raises:
            selenium.common.exceptions.TimeoutException: no clickable element, or no new page,
                within ``wait_timeout``.
        """
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, self.wait_timeout)
        element = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))
        # The page is marked, and the next one is the first without the mark that has loaded.
        # (Waiting for the old <html> element to go stale raced with the navigation: Chromium
        # answered "Node with given id does not belong to the document", an error of its own
        # rather than a stale element.) Errors while the pages change over are retried.
        marker = secrets.token_hex(8)
        self.driver.execute_script("document.documentElement.dataset.mtlsOldPage = arguments[0]", marker)
        element.click()
        if navigates:
            settled = WebDriverWait(self.driver, self.wait_timeout, ignored_exceptions=(WebDriverException,))
            settled.until(
                lambda d: d.execute_script(
                    "return document.readyState === 'complete' && "
                    "document.documentElement.dataset.mtlsOldPage !== arguments[0]",
                    marker,
                )
            )

    @property
    def text(self) -> str:
        """The page's visible text (``document.body.innerText``; empty without a body)."""
        return str(self.driver.execute_script("return document.body ? document.body.innerText : ''"))

    @property
    def current_url(self) -> str:
        return str(self.driver.current_url)

    @property
    def title(self) -> str:
        return str(self.driver.title)

    def screenshot(self, name: str) -> Path:
        """Save the viewport as ``<artifacts_dir()>/<name>.png`` (replacing one there); its path.

        Raises:
            ValueError: ``name`` has no letter, digit, ``.``, ``_`` or ``-``.
            RuntimeError: Chromium did not produce an image.
        """
        path = artifacts_dir() / f"{_safe_name(name)}.png"
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium did not save a screenshot to {path}")
        return path

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies visible to the current page, as WebDriver reports them (name, value,
        domain, path, secure, httpOnly, sameSite, expiry)."""
        return list(self.driver.get_cookies())


def netlog_events(path: Path, *types: str) -> list[dict[str, Any]]:
    """The events of a finished NetLog whose type is one of ``types`` (all without), in order.

    Each event is Chromium's dict with ``type`` replaced by its name (``SSL_CLIENT_CERT_REQUESTED``,
    ``SSL_CLIENT_CERT_PROVIDED``, ``SSL_CONNECT`` ...). Read it after the ``chromium()`` block: the
    file is complete JSON only once Chromium has quit.

    Raises:
        ValueError: the file is not a complete NetLog.
    """
    try:
        log = json.loads(path.read_text())
        names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
        events = log["events"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a complete NetLog ({exc}); read it after the browser quit") from None
    wanted = set(types)
    found = []
    for event in events:
        name = names.get(event.get("type"), str(event.get("type")))
        if not wanted or name in wanted:
            found.append({**event, "type": name})
    return found


@contextlib.contextmanager
def chromium(
    *,
    trust_roots: Sequence[x509.Certificate],
    client: Issued | None,
    auto_select_origins: Sequence[str],
    tmp_path: Path,
    page_load_timeout: float = PAGE_LOAD_TIMEOUT,
) -> Iterator[Browser]:
    """A headless Chromium that trusts ``trust_roots`` and presents ``client`` to ``auto_select_origins``.

    ``trust_roots`` are trusted as TLS server issuers only; ``client`` (with its intermediates) is
    imported when given, and offered without a dialog to the origins listed (``https://host:port``),
    to no other. ``tmp_path`` holds the browser's HOME, profile, driver log and NetLog. Skips (or
    fails under MTLS_REQUIRE_SERVICES=1) as :func:`require_browser`.

    Raises:
        ValueError: ``auto_select_origins`` without ``client``, or a client whose issuer has no CN.
        RuntimeError: a ``chromium()`` block is already open in this process.
    """
    require_browser()
    if auto_select_origins and client is None:
        raise ValueError("auto_select_origins needs a client certificate to select")
    issuer_cn = _common_name(client.cert.issuer, "the client certificate's issuer") if client else ""

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.remote.remote_connection import RemoteConnection

    home = tmp_path / f"browser-home-{secrets.token_hex(4)}"
    home.mkdir()
    _make_nssdb(home, trust_roots, client)
    profile = home / "profile"
    netlog = home / "netlog.json"
    policy = POLICY_DIR / f"{POLICY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.json"

    options = webdriver.ChromeOptions()
    if CHROMIUM_BINARY.is_file():
        options.binary_location = str(CHROMIUM_BINARY)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--log-net-log={netlog}")
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}

    with _policy_lock():
        for stale in POLICY_DIR.glob(f"{POLICY_PREFIX}*.json"):
            stale.unlink(missing_ok=True)  # from a run that was killed: no live browser owns it
        driver: WebDriver | None = None
        try:
            if auto_select_origins:
                policy.write_text(json.dumps(auto_select_policy(auto_select_origins, issuer_cn), indent=1))
                policy.chmod(0o644)
            service = Service(
                executable_path=CHROMEDRIVER, env=env, log_output=str(home / "chromedriver.log")
            )
            driver = webdriver.Chrome(service=service, options=options)
            # Without this a request to a stuck chromedriver waits forever (the socket default).
            if isinstance(driver.command_executor, RemoteConnection):
                driver.command_executor.client_config.timeout = COMMAND_TIMEOUT
            driver.set_page_load_timeout(page_load_timeout)
            driver.set_script_timeout(WAIT_TIMEOUT)
            browser = Browser(driver, netlog=netlog)
            try:
                yield browser
            except BaseException:
                with contextlib.suppress(Exception):
                    browser.screenshot(f"{tmp_path.name}-failure")
                raise
        finally:
            try:
                if driver is not None:
                    with contextlib.suppress(Exception):
                        driver.quit()
                _reap(str(home))
            finally:
                policy.unlink(missing_ok=True)
