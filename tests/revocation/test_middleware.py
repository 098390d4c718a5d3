"""The revocation stage through the WSGI and ASGI middleware: real responders, real CRL servers.

Each fault gives the documented verdict in each mode; the history says what was checked; fifty
requests for a new certificate make one OCSP fetch; the event loop never waits for a responder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.test import Client

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig
from mtls_middleware.asgi import MTLSMiddleware as ASGIMiddleware
from mtls_middleware.testing import Issued, TestPKI, crl_bytes, make_crl
from mtls_middleware.wsgi import MTLSMiddleware
from tests.revocation.crl_server import CRLServer
from tests.revocation.ocsp_server import OCSPTestResponder

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


def _echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    identity = environ.get(ENVIRON_KEY)
    body = {"user": identity.user_id, "revocation": identity.revocation} if identity else {}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def _environ(leaf: Issued, pki: TestPKI) -> dict[str, str]:
    pem = leaf.cert.public_bytes(serialization.Encoding.PEM).decode()
    chain = pki.issuing.cert.public_bytes(serialization.Encoding.PEM).decode()
    return {"SSL_CLIENT_CERT": pem, "SSL_CLIENT_CERT_CHAIN_0": chain, "REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def responder(pki: TestPKI) -> Iterator[OCSPTestResponder]:
    with OCSPTestResponder(pki.issuing) as r:
        yield r


@pytest.fixture
def crls() -> Iterator[CRLServer]:
    with CRLServer() as s:
        yield s


class World:
    """A store with one user, and a way to issue that user a certificate with given endpoints."""

    def __init__(self, pki: TestPKI) -> None:
        self.pki = pki
        self.store = MemoryStore()
        self.store.add_user("carol", org="acme")

    def issue(self, name: str, *, ocsp_url: str | None = None, crl_url: str | None = None) -> Issued:
        leaf = self.pki.issue_client(name, ocsp_url=ocsp_url, crl_url=crl_url)
        self.store.upload_certificate(leaf.chain_pem, user_id="carol")
        return leaf

    def config(self, mode: str, **options: Any) -> MTLSConfig:
        settings: dict[str, Any] = {
            "trust_roots": [self.pki.root.cert],
            "store": self.store,
            "revocation": mode,
            "revocation_scope": "leaf",
            "revocation_timeout": 1.0,
            "revocation_deadline": 3.0,
        }
        return MTLSConfig(**{**settings, **options})


@pytest.fixture
def world(pki: TestPKI) -> World:
    return World(pki)


# -- each fault, each mode --------------------------------------------------------------------

# (what the certificate names / what its endpoints do) -> verdict per mode: (status, reason)
OK = (200, None)
FAULTS = [
    pytest.param("ocsp-good", {"require": OK, "soft-fail": OK, "off": OK}, id="ocsp-good"),
    pytest.param(
        "ocsp-revoked",
        {"require": (403, "certificate_revoked"), "soft-fail": (403, "certificate_revoked"), "off": OK},
        id="ocsp-revoked",
    ),
    pytest.param(
        "ocsp-unknown-no-crl",
        {"require": (503, "revocation_unavailable"), "soft-fail": OK, "off": OK},
        id="ocsp-unknown-without-crl",
    ),
    pytest.param("ocsp-unknown-crl-good", {"require": OK, "soft-fail": OK, "off": OK}, id="ocsp-unknown-crl-good"),
    pytest.param(
        "ocsp-down-no-crl",
        {"require": (503, "revocation_unavailable"), "soft-fail": OK, "off": OK},
        id="ocsp-down-without-crl",
    ),
    pytest.param("ocsp-500-crl-good", {"require": OK, "soft-fail": OK, "off": OK}, id="ocsp-http-500-crl-good"),
    pytest.param(
        "ocsp-garbage-crl-revoked",
        {"require": (403, "certificate_revoked"), "soft-fail": (403, "certificate_revoked"), "off": OK},
        id="ocsp-garbage-crl-revoked",
    ),
    pytest.param(
        "ocsp-wrong-key-crl-stale",
        {"require": (503, "revocation_unavailable"), "soft-fail": OK, "off": OK},
        id="ocsp-forged-crl-stale",
    ),
    pytest.param(
        "crl-forged",
        {"require": (503, "revocation_unavailable"), "soft-fail": OK, "off": OK},
        id="crl-forged-signature",
    ),
    pytest.param(
        "nothing",
        {"require": (403, "no_revocation_source"), "soft-fail": OK, "off": OK},
        id="no-responder-no-crl",
    ),
]


def _arrange(case: str, world: World, responder: OCSPTestResponder, crls: CRLServer, pki: TestPKI) -> Issued:
    ocsp_url = responder.url if case.startswith("ocsp") else None
    crl_url = crls.url("/issuing.crl") if "crl" in case else None
    leaf = world.issue(case, ocsp_url=ocsp_url, crl_url=crl_url)
    serial = leaf.cert.serial_number
    if case == "ocsp-revoked":
        responder.set_status(serial, "revoked", revoked_at=NOW - DAY)
    if case.startswith("ocsp-unknown"):
        responder.set_status(serial, "unknown")
    if case.startswith("ocsp-down"):
        responder.stop()
    for fault in ("500", "garbage", "wrong-key"):
        if f"-{fault}-" in case:
            responder.fault = {"500": "http-500"}.get(fault, fault)
    if case.endswith("crl-good"):
        crls.set("/issuing.crl", crl_bytes(make_crl(pki.issuing)))
    if case.endswith("crl-revoked"):
        crls.set("/issuing.crl", crl_bytes(make_crl(pki.issuing, [serial])))
    if case.endswith("crl-stale"):
        stale = make_crl(pki.issuing, this_update=NOW - 3 * DAY, next_update=NOW - DAY)
        crls.set("/issuing.crl", crl_bytes(stale))
    if case == "crl-forged":
        forged = make_crl(pki.issuing, signer_key=pki.issue_client("forger").key)
        crls.set("/issuing.crl", crl_bytes(forged))
    return leaf


@pytest.mark.parametrize("mode", ["require", "soft-fail", "off"])
@pytest.mark.parametrize(("case", "verdicts"), FAULTS)
def test_each_fault_in_each_mode(
    pki: TestPKI,
    world: World,
    responder: OCSPTestResponder,
    crls: CRLServer,
    case: str,
    verdicts: dict[str, tuple[int, str | None]],
    mode: str,
) -> None:
    leaf = _arrange(case, world, responder, crls, pki)
    app = MTLSMiddleware(_echo, world.config(mode))
    response = Client(app).get("/", environ_overrides=_environ(leaf, pki))
    status, reason = verdicts[mode]
    assert response.status_code == status, response.get_data(as_text=True)
    record = world.store.login_history(limit=1)[0]
    if reason is None:
        assert record.outcome == "accepted"
        body = json.loads(response.get_data())
        if mode == "off":
            assert body["revocation"] == "off"
        elif mode == "soft-fail" and verdicts["require"] != OK:
            assert body["revocation"].startswith("soft-fail:")
        else:
            assert body["revocation"] == ("ocsp:good" if case == "ocsp-good" else "crl:good")
    else:
        assert response.json == {"error": reason, "message": response.json["message"]}
        assert record.outcome == reason
        assert "Traceback" not in response.get_data(as_text=True)


# -- what the history says ----------------------------------------------------------------------


def test_history_records_method_responder_and_time(
    pki: TestPKI, world: World, responder: OCSPTestResponder
) -> None:
    leaf = world.issue("history", ocsp_url=responder.url)
    client = Client(MTLSMiddleware(_echo, world.config("require")))
    assert client.get("/", environ_overrides=_environ(leaf, pki)).status_code == 200
    assert client.get("/", environ_overrides=_environ(leaf, pki)).status_code == 200
    second, first = world.store.login_history(limit=2)
    assert first.revocation == second.revocation == "ocsp:good"
    assert responder.url in first.detail
    assert "ms" in first.detail
    assert "verdict cached" in second.detail  # the second request spent no time on a responder
    assert responder.requests == 1


def test_revoked_refusal_names_method_and_source(pki: TestPKI, world: World, responder: OCSPTestResponder) -> None:
    leaf = world.issue("revoked history", ocsp_url=responder.url)
    responder.set_status(leaf.cert.serial_number, "revoked", revoked_at=NOW - DAY)
    response = Client(MTLSMiddleware(_echo, world.config("require"))).get("/", environ_overrides=_environ(leaf, pki))
    assert response.status_code == 403
    record = world.store.login_history(limit=1)[0]
    assert record.outcome == "certificate_revoked"
    assert "ocsp" in record.detail
    assert responder.url in record.detail
    assert record.fingerprint == leaf.fingerprint
    assert record.user_id is None  # refused before the map stage: revocation comes first


def test_chain_scope_checks_the_intermediate_too(
    pki: TestPKI, world: World, responder: OCSPTestResponder, crls: CRLServer
) -> None:
    leaf = world.issue("chain scope", ocsp_url=responder.url)
    root_crl = crls.set("/root.crl", crl_bytes(make_crl(pki.root, [pki.issuing.cert.serial_number])))
    config = world.config("require", revocation_scope="chain", crls=[root_crl])
    response = Client(MTLSMiddleware(_echo, config)).get("/", environ_overrides=_environ(leaf, pki))
    assert response.status_code == 403
    assert response.json["error"] == "certificate_revoked"
    # The same with scope "leaf": the revoked intermediate is not looked at.
    config = world.config("require", revocation_scope="leaf", crls=[root_crl])
    response = Client(MTLSMiddleware(_echo, config)).get("/", environ_overrides=_environ(leaf, pki))
    assert response.status_code == 200


def test_chain_scope_good_intermediate(pki: TestPKI, world: World, responder: OCSPTestResponder, crls: CRLServer) -> None:
    leaf = world.issue("chain scope good", ocsp_url=responder.url)
    root_crl = crls.set("/root.crl", crl_bytes(make_crl(pki.root)))
    config = world.config("require", revocation_scope="chain", crls=[root_crl])
    response = Client(MTLSMiddleware(_echo, config)).get("/", environ_overrides=_environ(leaf, pki))
    assert response.status_code == 200
    assert response.json["revocation"] == "ocsp:good,crl:good"


# -- concurrency ------------------------------------------------------------------------------


def test_fifty_wsgi_requests_for_a_new_certificate_make_one_ocsp_fetch(
    pki: TestPKI, world: World, responder: OCSPTestResponder
) -> None:
    leaf = world.issue("fifty wsgi", ocsp_url=responder.url)
    responder.delay = 0.3  # all fifty arrive while the first fetch is in flight
    app = MTLSMiddleware(_echo, world.config("require"))
    environ = _environ(leaf, pki)
    start = threading.Barrier(50)

    def one(_: int) -> int:
        start.wait()
        return Client(app).get("/", environ_overrides=environ).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(50)))
    assert statuses == [200] * 50
    assert responder.requests == 1
    assert len(world.store.login_history(limit=100)) == 50


def test_fifty_asgi_requests_for_a_new_certificate_make_one_ocsp_fetch(
    pki: TestPKI, world: World, responder: OCSPTestResponder
) -> None:
    leaf = world.issue("fifty asgi", ocsp_url=responder.url)
    responder.delay = 0.3
    app = ASGIMiddleware(_asgi_echo, world.config("require"))

    async def main() -> list[int]:
        transport = _TLSTransport(app, leaf, pki)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            responses = await asyncio.gather(*(client.get("/") for _ in range(50)))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 50
    assert responder.requests == 1


def test_event_loop_keeps_serving_while_a_responder_is_slow(
    pki: TestPKI, world: World, responder: OCSPTestResponder
) -> None:
    leaf = world.issue("slow loop", ocsp_url=responder.url)
    responder.delay = 1.5
    config = world.config(
        "require", exempt_paths=["/health"], revocation_timeout=5.0, revocation_deadline=5.0
    )
    app = ASGIMiddleware(_asgi_echo, config)

    async def main() -> tuple[bool, int, int]:
        transport = _TLSTransport(app, leaf, pki)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            slow = asyncio.ensure_future(client.get("/"))
            while responder.requests == 0:  # the authenticated request is waiting on the responder
                await asyncio.sleep(0.01)
            health = await client.get("/health")
            still_waiting = not slow.done()
            return still_waiting, health.status_code, (await slow).status_code

    still_waiting, health, authenticated = asyncio.run(main())
    assert health == 200
    assert still_waiting  # the loop answered /health while the OCSP fetch was in flight
    assert authenticated == 200


async def _asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    identity = scope.get(ENVIRON_KEY)
    body = json.dumps({"revocation": identity.revocation if identity else None}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class _TLSTransport(httpx.ASGITransport):
    """httpx's ASGI transport, with the ASGI TLS extension carrying the client's chain."""

    def __init__(self, app: Any, leaf: Issued, pki: TestPKI) -> None:
        chain = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf.cert, pki.issuing.cert)]

        async def with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope = {**scope, "extensions": {"tls": {"client_cert_chain": chain}}}
            await app(scope, receive, send)

        super().__init__(app=with_tls, client=("127.0.0.1", 50000))


# -- the verdict lives no longer than the OCSP response -------------------------------------------


def test_verdict_not_reused_after_the_ocsp_response_expires(
    pki: TestPKI, world: World, responder: OCSPTestResponder
) -> None:
    responder.validity = dt.timedelta(seconds=1)
    leaf = world.issue("short lived answer", ocsp_url=responder.url)
    client = Client(MTLSMiddleware(_echo, world.config("require")))
    assert client.get("/", environ_overrides=_environ(leaf, pki)).status_code == 200
    assert responder.requests == 1
    threading.Event().wait(1.5)  # past nextUpdate: neither the verdict nor the response may be reused
    assert client.get("/", environ_overrides=_environ(leaf, pki)).status_code == 200
    assert responder.requests == 2


# -- a real `openssl ocsp` responder in front of the middleware ---------------------------------


@pytest.mark.services
def test_real_openssl_responder_through_the_middleware(
    pki: TestPKI, world: World, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.conftest import REQUIRE_SERVICES, require_service
    from tests.revocation.ocsp_server import make_responder_certificate
    from tests.revocation.openssl_ocsp import IndexEntry, NamespaceUnavailable, OpenSSLOCSPResponder

    openssl = require_service("openssl")
    unshare = require_service("unshare", "unshare (util-linux) keeps openssl ocsp on loopback")
    good, revoked, unknown = (world.issue(f"openssl e2e {n}") for n in ("good", "revoked", "unknown"))
    responder = OpenSSLOCSPResponder(
        ca=pki.issuing,
        signer=make_responder_certificate(pki.issuing, "e2e OCSP responder"),
        entries=[
            IndexEntry.for_certificate(good.cert),
            IndexEntry.for_certificate(revoked.cert, revoked_at=NOW - DAY, reason="keyCompromise"),
        ],
        directory=tmp_path_factory.mktemp("openssl-e2e"),
        openssl=openssl,
        unshare=unshare,
    )
    try:
        responder.start()
    except NamespaceUnavailable as exc:
        message = f"no network namespace to keep openssl ocsp on loopback: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)
    try:
        client = Client(MTLSMiddleware(_echo, world.config("require", ocsp_responder=responder.url)))
        ok = client.get("/", environ_overrides=_environ(good, pki))
        assert ok.status_code == 200
        assert ok.json["revocation"] == "ocsp:good"
        refused = client.get("/", environ_overrides=_environ(revoked, pki))
        assert refused.status_code == 403
        assert refused.json["error"] == "certificate_revoked"
        record = world.store.login_history(limit=1)[0]
        assert "keyCompromise" in record.detail
        # unknown to the responder, and no CRL: status cannot be established
        missing = client.get("/", environ_overrides=_environ(unknown, pki))
        assert missing.status_code == 503
        assert missing.json["error"] == "revocation_unavailable"
    finally:
        responder.stop()
