"""The browser harness against real TLS servers: what Chromium presents, and to whom.

Two listeners serve one echo app, which answers with the CN of the client certificate the TLS
layer received ("none" without one) and records it: :mod:`mtls_middleware.server` (requests a
client certificate at every handshake, the "Log in with certificate" origin) and werkzeug with a
stdlib ``ssl`` context that requests none (the rest of the site).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from mtls_middleware.server import TLSServer, make_context
from mtls_middleware.testing import Issued, TestPKI

from .browser import (
    POLICY_DIR,
    POLICY_PREFIX,
    _processes_using,
    artifacts_dir,
    chromium,
    netlog_events,
    require_browser,
)
from .conftest import LOOPBACK, free_port

pytestmark = pytest.mark.services

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class EchoApp:
    """A WSGI app that shows and records the CN of the client certificate of each request."""

    seen: list[str] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        pem = environ.get("SSL_CLIENT_CERT")
        cn = "none"
        if pem:
            leaf = x509.load_pem_x509_certificate(pem.encode())
            cn = str(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        if environ.get("PATH_INFO") != "/favicon.ico":
            self.seen.append(cn)
        body = (
            "<!doctype html><html><head><title>echo</title></head><body>"
            f"<p id='client'>client: {cn}</p><p id='path'>path: {environ.get('PATH_INFO')}</p>"
            "<a id='next' href='/next'>next</a></body></html>"
        ).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Set-Cookie", "seen=1; Path=/; Secure; HttpOnly; SameSite=Lax"),
            ],
        )
        return [body]


@dataclass(frozen=True)
class Site:
    app: EchoApp
    mtls_origin: str  # asks for a client certificate
    plain_origin: str  # asks for none


@pytest.fixture(scope="module")
def site(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_browser()
    server_cert = pki.issue_server("localhost")
    app = EchoApp()

    mtls = TLSServer(
        app, make_context(list(server_cert.chain), server_cert.key, [pki.root.cert]), port=free_port()
    )
    certfile, keyfile = server_cert.write(tmp_path_factory.mktemp("browser-site"), "server")
    plain_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    plain_ctx.load_cert_chain(certfile, keyfile)  # verify_mode CERT_NONE: no certificate request
    plain = make_server(LOOPBACK, free_port(), app, threaded=True, ssl_context=plain_ctx)

    threads = [
        threading.Thread(target=mtls.serve_forever, name="browser-mtls", daemon=True),
        threading.Thread(target=plain.serve_forever, name="browser-plain", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield Site(app, f"https://{LOOPBACK}:{mtls.server_port}", f"https://{LOOPBACK}:{plain.server_port}")
    finally:
        mtls.shutdown()
        plain.shutdown()
        plain.server_close()
        for thread in threads:
            thread.join(timeout=5)


@pytest.fixture
def app(site: Site) -> EchoApp:
    site.app.seen.clear()
    return site.app


def test_policy_selects_the_client_certificate(
    site: Site, app: EchoApp, pki: TestPKI, alice: Issued, tmp_path: Path
) -> None:
    with chromium(
        trust_roots=[pki.root.cert], client=alice, auto_select_origins=[site.mtls_origin], tmp_path=tmp_path
    ) as browser:
        browser.get(f"{site.mtls_origin}/login")
        assert "client: alice" in browser.text
        shot = browser.screenshot("test_browser-policy-selects")
    assert app.seen == ["alice"]
    provided = netlog_events(browser.netlog, "SSL_CLIENT_CERT_PROVIDED")
    assert [e["params"]["cert_count"] for e in provided] == [2]  # the leaf and its intermediate
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 2000  # a 1280x900 page with text; a blank or broken PNG is far smaller


def test_listener_without_certificate_request_gets_none(
    site: Site, app: EchoApp, pki: TestPKI, alice: Issued, tmp_path: Path
) -> None:
    # The same browser as a logged-in user's: certificate imported, policy for the mTLS origin.
    with chromium(
        trust_roots=[pki.root.cert], client=alice, auto_select_origins=[site.mtls_origin], tmp_path=tmp_path
    ) as browser:
        browser.get(f"{site.plain_origin}/")
        assert "client: none" in browser.text
        browser.click("#next")
        assert browser.current_url == f"{site.plain_origin}/next"
        assert "path: /next" in browser.text
        cookies = {c["name"]: c for c in browser.cookies()}
    assert app.seen == ["none", "none"]
    assert cookies["seen"]["value"] == "1"
    assert cookies["seen"]["secure"] is True
    assert cookies["seen"]["httpOnly"] is True
    events = netlog_events(browser.netlog, "SSL_CLIENT_CERT_REQUESTED")
    assert events == []


def test_without_policy_the_certificate_is_not_sent(
    site: Site, app: EchoApp, pki: TestPKI, alice: Issued, tmp_path: Path
) -> None:
    from selenium.common.exceptions import TimeoutException

    # Policy for the other origin only. Chromium is asked for a certificate, has a matching one, and
    # leaves the choice to a dialog, which no one answers in headless mode: no page, no certificate.
    with (
        chromium(
            trust_roots=[pki.root.cert],
            client=alice,
            auto_select_origins=[site.plain_origin],
            tmp_path=tmp_path,
            page_load_timeout=5,
        ) as browser,
        pytest.raises(TimeoutException),
    ):
        browser.get(f"{site.mtls_origin}/login")
    assert "alice" not in app.seen
    requested = netlog_events(browser.netlog, "SSL_CLIENT_CERT_REQUESTED")
    assert requested, "the TLS server never asked: the test proves nothing"
    assert netlog_events(browser.netlog, "SSL_CLIENT_CERT_PROVIDED") == []


def test_server_certificates_are_trusted_through_nss_only(site: Site, app: EchoApp, tmp_path: Path) -> None:
    # No trust roots: the same server is refused, so no flag is making Chromium accept anything.
    with chromium(trust_roots=[], client=None, auto_select_origins=[], tmp_path=tmp_path) as browser:
        browser.get(f"{site.plain_origin}/")
        assert "NET::ERR_CERT_AUTHORITY_INVALID" in browser.text
    assert app.seen == []


def test_leaves_no_policy_file_and_no_process(
    site: Site, pki: TestPKI, alice: Issued, tmp_path: Path
) -> None:
    inside: dict[str, Any] = {}

    def fail_inside() -> None:
        with chromium(
            trust_roots=[pki.root.cert],
            client=alice,
            auto_select_origins=[site.mtls_origin],
            tmp_path=tmp_path,
        ) as browser:
            inside["policies"] = list(POLICY_DIR.glob(f"{POLICY_PREFIX}*.json"))
            inside["home"] = str(browser.netlog.parent)
            inside["processes"] = _processes_using(inside["home"])
            raise RuntimeError("the test fails inside the block")

    with pytest.raises(RuntimeError, match="fails inside"):
        fail_inside()
    assert len(inside["policies"]) == 1
    assert inside["processes"]  # the process check below does see Chromium's processes
    assert not inside["policies"][0].exists()  # this browser's file (others may run in parallel)
    assert _processes_using(inside["home"]) == []
    assert (artifacts_dir() / f"{tmp_path.name}-failure.png").read_bytes().startswith(PNG_SIGNATURE)
