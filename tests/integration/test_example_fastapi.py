"""examples/fastapi_app, run as its README says: make_demo.py, then run-uvicorn.sh or run-hypercorn.sh.

A copy of the example goes to a temporary directory per ASGI server. Its nginx.conf gets other
ports, ``proxy_bind 127.0.0.2`` (nginx connects upstream from its own address, which is the app's
only trusted proxy, so that the tests' own 127.0.0.1 is an untrusted peer) and, as root,
``user root;`` (see conftest.start_nginx). Real ``curl --cert`` requests and real WebSocket
handshakes (an ssl socket with the client certificate, framed by wsproto) then go through nginx's
TLS to the FastAPI app, whose store is the SQLite database make_demo.py wrote and whose
revocation check reads the demo CRLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_middleware.testing import Issued
from tests.conftest import require_service

from .clients import TIMEOUT, curl
from .conftest import LOOPBACK, PROXY_ADDRESS, REPO_ROOT, free_port, require_module
from .examples import (
    HEALTHY,
    copy_with_demo,
    demo_clients,
    example_env,
    refusals,
    render_nginx_conf,
    run_script,
)
from .examples import Site as ExampleSite

pytestmark = pytest.mark.services

EXAMPLE = REPO_ROOT / "examples" / "fastapi_app"
FILES = ("app.py", "make_demo.py", "nginx.conf", "run-uvicorn.sh", "run-hypercorn.sh")
SERVERS = ("uvicorn", "hypercorn")


@dataclass(frozen=True)
class Site(ExampleSite):
    server: str
    directory: Path
    app_port: int

    @property
    def demo(self) -> Path:
        return self.directory / "demo"

    def fingerprint(self, client: str) -> str:
        leaf = x509.load_pem_x509_certificate((self.demo / f"{client}.pem").read_bytes())
        return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module", params=SERVERS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    server: str = request.param
    require_service("curl")
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    require_module(server)
    require_module("fastapi")
    directory = tmp_path_factory.mktemp(f"fastapi-example-{server}")
    env = example_env()
    copy_with_demo("fastapi_app", FILES, directory, env)
    port, app_port = free_port(), free_port()
    conf = directory / "nginx.test.conf"
    # nginx connects upstream from its own address, the app's only trusted proxy.
    conf.write_text(
        render_nginx_conf(
            "fastapi_app", (directory / "nginx.conf").read_text(), port=port, app_port=app_port,
            upstream_extra=f"\n            proxy_bind {PROXY_ADDRESS};",
        )
    )  # fmt: skip
    env.update(
        BIND=f"{LOOPBACK}:{app_port}",
        NGINX_CONF=conf.name,
        PYTHON=sys.executable,
        MTLS_TRUSTED_PROXIES=PROXY_ADDRESS,
    )
    with run_script(directory / f"run-{server}.sh", server, port=port, app_port=app_port, env=env):
        demo = directory / "demo"
        yield Site(port, demo / "root.pem", demo_clients(demo), server, directory, app_port)


# -- HTTP through nginx ---------------------------------------------------------------------------
def test_registered_certificate_gets_through_with_its_identity(site: Site) -> None:
    answer = site.get("/whoami", "alice")
    assert answer.status == 200, answer
    assert answer.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": site.fingerprint("alice"),
        "source": "proxy:nginx",
        # revocation="require" with the demo CRLs: the leaf and the issuing CA were both checked.
        "revocation": "crl:good,crl:good",
        "display_name": "alice",  # request.user, from MTLSAuthBackend
    }


@pytest.mark.parametrize(
    ("client", "status", "reason"),
    refusals(unregistered="bob", inactive="carol", revoked="eve", other_ca="mallory"),
)
def test_bad_certificate_gets_its_reason_code(
    site: Site, client: str | None, status: int, reason: str
) -> None:
    assert site.refusal("/whoami", client) == (status, reason)


def test_exempt_health_path_needs_no_certificate(site: Site) -> None:
    assert site.json("/health") == HEALTHY


def test_served_openapi_declares_mutual_tls(site: Site) -> None:
    document = site.get("/openapi.json", "alice").json()
    assert document["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert document["paths"]["/whoami"]["get"]["security"] == [{"mutualTLS": []}]


# -- past nginx: the server must not take the client address from a header ----------------------
def test_forwarded_headers_do_not_make_a_local_process_the_proxy(site: Site) -> None:
    """From 127.0.0.1 straight to the app port, claiming to be nginx's 127.0.0.2 by header.

    uvicorn believes X-Forwarded-For from 127.0.0.1 unless started with --no-proxy-headers (as
    run-uvicorn.sh does); hypercorn reads none unless wrapped in its ProxyFixMiddleware. Either
    way the trusted-proxy gate must see 127.0.0.1 and refuse the forged certificate header.
    """
    alice_pem = (site.demo / "alice.pem").read_bytes().split(b"-----END CERTIFICATE-----")[0]
    headers = {
        "X-Forwarded-For": PROXY_ADDRESS,
        "Forwarded": f"for={PROXY_ADDRESS};proto=https",
        "X-Real-IP": PROXY_ADDRESS,
        "X-SSL-Client-Cert": quote((alice_pem + b"-----END CERTIFICATE-----\n").decode(), safe=""),
        "X-SSL-Client-Verify": "SUCCESS",
    }
    answer = curl(f"http://{LOOPBACK}:{site.app_port}/whoami", headers=headers, interface=LOOPBACK)
    assert (answer.status, answer.error) == (401, "untrusted_proxy")


# -- WebSockets through nginx ---------------------------------------------------------------------
@dataclass(frozen=True)
class WebSocketOutcome:
    messages: list[str]
    close_code: int | None
    close_reason: str | None


def websocket(site: Site, client: str | None, path: str = "/ws") -> WebSocketOutcome:
    """Open a WebSocket over TLS (with ``client``'s certificate) and read until it is closed."""
    require_module("wsproto")  # hypercorn's own dependency
    import wsproto
    from wsproto.events import (
        AcceptConnection,
        CloseConnection,
        RejectConnection,
        Request,
        TextMessage,
    )

    ctx = ssl.create_default_context(cafile=str(site.demo / "root.pem"))
    if client:
        ctx.load_cert_chain(site.demo / f"{client}.pem", site.demo / f"{client}.key")
    raw = socket.create_connection((LOOPBACK, site.port), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(connection.send(Request(host="localhost", target=path)))
        messages: list[str] = []
        text = ""
        while True:
            data = sock.recv(65536)
            connection.receive_data(data or None)
            for event in connection.events():
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"WebSocket refused with HTTP {event.status_code}")
                if isinstance(event, AcceptConnection):
                    continue
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        messages.append(text)
                        text = ""
                elif isinstance(event, CloseConnection):
                    sock.sendall(connection.send(event.response()))
                    return WebSocketOutcome(messages, event.code, event.reason)
            if not data:
                return WebSocketOutcome(messages, None, None)


def test_websocket_gets_the_identity(site: Site) -> None:
    outcome = websocket(site, "alice")
    assert [json.loads(m) for m in outcome.messages] == [{"user_id": "alice", "org": "acme"}]
    assert outcome.close_code == 1000


WS_REFUSED = [
    pytest.param(None, "no_certificate", id="no-certificate"),
    pytest.param("bob", "unknown_certificate", id="unregistered"),
    pytest.param("eve", "certificate_revoked", id="revoked-in-crl"),
]


@pytest.mark.parametrize(("client", "reason"), WS_REFUSED)
def test_refused_websocket_is_closed_with_1008_and_its_reason(
    site: Site, client: str | None, reason: str
) -> None:
    outcome = websocket(site, client)
    assert (outcome.messages, outcome.close_code, outcome.close_reason) == ([], 1008, reason)


# -- examples/envoy: the configuration, and the app reading XFCC as Envoy sends it ------------------
# Envoy cannot be installed here: its configuration is checked for the settings the app relies on,
# and the example app (in-process, MTLS_PROXY=envoy) is given the XFCC header Envoy builds with
# them (tests/sources covers the envoy profile's grammar and hostile values).
ENVOY_EXAMPLE = REPO_ROOT / "examples" / "envoy"


def _load_example(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _typed(node: Any, type_suffix: str) -> list[dict[str, Any]]:
    """Every mapping under ``node`` whose ``@type`` ends with ``type_suffix``."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if str(node.get("@type", "")).endswith(type_suffix):
            found.append(node)
        for value in node.values():
            found += _typed(value, type_suffix)
    elif isinstance(node, list):
        for value in node:
            found += _typed(value, type_suffix)
    return found


@pytest.fixture(scope="module")
def envoy_config() -> dict[str, Any]:
    require_module("yaml")  # PyYAML, a dependency of schemathesis (dev extra)
    import yaml  # type: ignore[import-untyped]

    config = yaml.safe_load((ENVOY_EXAMPLE / "envoy.yaml").read_text())
    assert isinstance(config, dict)
    return config


def test_envoy_forwards_the_whole_chain_in_xfcc(envoy_config: dict[str, Any]) -> None:
    (manager,) = _typed(envoy_config, ".http_connection_manager.v3.HttpConnectionManager")
    # SANITIZE_SET: the client's own XFCC is dropped, this connection's certificate is set.
    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"] == {
        "subject": True, "cert": True, "chain": True, "uri": True, "dns": True,
    }  # fmt: skip
    assert {"upgrade_type": "websocket"} in manager["upgrade_configs"]


def test_envoy_requests_any_client_certificate_and_lets_the_app_judge(
    envoy_config: dict[str, Any],
) -> None:
    (tls,) = _typed(envoy_config, ".tls.v3.DownstreamTlsContext")
    assert tls["require_client_certificate"] is False
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trust_chain_verification"] == "ACCEPT_UNTRUSTED"
    files = [validation["trusted_ca"]["filename"]]
    for pair in tls["common_tls_context"]["tls_certificates"]:
        files += [pair["certificate_chain"]["filename"], pair["private_key"]["filename"]]
    # The files make_demo.py writes, relative to examples/envoy (Envoy's working directory).
    written = {"root.pem", "server.pem", "server.key"}
    assert {(ENVOY_EXAMPLE / f).resolve().parent for f in files} == {(EXAMPLE / "demo").resolve()}
    assert {Path(f).name for f in files} == written


def test_envoy_sends_to_the_port_the_run_scripts_bind(envoy_config: dict[str, Any]) -> None:
    (cluster,) = envoy_config["static_resources"]["clusters"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (target,) = endpoints["lb_endpoints"]
    address = target["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 8000)
    for script in ("run-uvicorn.sh", "run-hypercorn.sh"):
        assert "127.0.0.1:8000" in (EXAMPLE / script).read_text()


@pytest.fixture(scope="module")
def envoy_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """The example app configured as examples/envoy/README.md says, with a fresh demo directory."""
    require_module("fastapi")
    demo = tmp_path_factory.mktemp("envoy-demo")
    _load_example("fastapi_example_make_demo", EXAMPLE / "make_demo.py").make_demo(demo)
    example = _load_example("fastapi_example_app", EXAMPLE / "app.py")
    config = example.config_from_env(
        {
            "MTLS_TRUST_ROOTS": str(demo / "root.pem"),
            "MTLS_INTERMEDIATES": "",  # XFCC's Chain carries the intermediate
            "MTLS_STORE": f"sqlite:///{demo / 'mtls.db'}",
            "MTLS_CRLS": f"{demo / 'root.crl'},{demo / 'issuing.crl'}",
            "MTLS_PROXY": "envoy",
            "MTLS_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    try:
        yield example.create_app(config), demo
    finally:
        config.resolved_store.close()


def _xfcc(demo: Path, client: str) -> str:
    from tests.sources.profile_cases import envoy

    chain = x509.load_pem_x509_certificates((demo / f"{client}.pem").read_bytes())
    key = serialization.load_pem_private_key((demo / f"{client}.key").read_bytes(), None)
    issued = Issued(chain[0], key, tuple(chain[1:]))  # type: ignore[arg-type]
    return envoy(issued)["X-Forwarded-Client-Cert"]


def _envoy_get(app: Any, peer: str, headers: dict[str, str]) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            return await http.get("/whoami", headers=headers)

    return asyncio.run(get())


ENVOY_CASES = [
    pytest.param("alice", "127.0.0.1", 200, None, id="registered"),
    pytest.param("eve", "127.0.0.1", 403, "certificate_revoked", id="revoked-in-crl"),
    pytest.param("mallory", "127.0.0.1", 403, "untrusted_issuer", id="other-ca"),
    pytest.param(None, "127.0.0.1", 401, "no_certificate", id="no-xfcc"),
    pytest.param("alice", "127.0.0.9", 401, "untrusted_proxy", id="xfcc-from-another-peer"),
]


@pytest.mark.parametrize(("client", "peer", "status", "reason"), ENVOY_CASES)
def test_example_app_reads_xfcc_as_envoy_sends_it(
    envoy_app: tuple[Any, Path], client: str | None, peer: str, status: int, reason: str | None
) -> None:
    app, demo = envoy_app
    headers = {"X-Forwarded-Client-Cert": _xfcc(demo, client)} if client else {}
    response = _envoy_get(app, peer, headers)
    assert response.status_code == status, response.text
    if reason is None:
        body = response.json()
        assert (body["user_id"], body["source"]) == ("alice", "proxy:envoy")
        assert body["revocation"] == "crl:good,crl:good"
    else:
        assert response.json()["error"] == reason
