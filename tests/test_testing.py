"""testing.py: the helpers that put a client certificate into test clients, through our middleware.

Each helper is shown working with a real test client (werkzeug, Flask, httpx, Starlette) in front
of the real WSGI/ASGI middleware: the certificate it presents is validated and mapped like one a
TLS server hands over, so a bad one is still refused with its reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pipeline_cases as pc
import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from werkzeug.test import Client
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response as WerkzeugResponse

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig, Reason
from mtls_middleware import asgi as mtls_asgi
from mtls_middleware import wsgi as mtls_wsgi
from mtls_middleware.testing import (
    ChainLike,
    Issued,
    TestPKI,
    client_certificate_environ,
    client_certificate_scope,
    with_client_certificate,
)

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2; httpx is what it runs on here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def config(pki: TestPKI, store: MemoryStore) -> MTLSConfig:
    # No intermediates configured: alice's issuing CA must come from the presented chain.
    return MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")


# -- WSGI -----------------------------------------------------------------------------------------
@WerkzeugRequest.application
def wsgi_echo(request: WerkzeugRequest) -> WerkzeugResponse:
    identity = request.environ.get(ENVIRON_KEY)
    body = {"user": identity.user_id, "source": identity.source} if identity else {"user": None}
    return WerkzeugResponse(json.dumps(body), mimetype="application/json")


def werkzeug_client(pki: TestPKI, store: MemoryStore) -> Client:
    return Client(mtls_wsgi.MTLSMiddleware(wsgi_echo, config(pki, store)))


def test_environ_holds_leaf_then_the_intermediates(alice: Issued, pki: TestPKI) -> None:
    environ = client_certificate_environ(alice)
    assert environ == {
        "SSL_CLIENT_CERT": alice.cert_pem.decode(),
        "SSL_CLIENT_CERT_CHAIN_0": pki.issuing.cert_pem.decode(),
    }


CHAIN_FORMS = {
    "issued": lambda a: a,
    "pem_bytes": lambda a: a.chain_pem,
    "pem_str": lambda a: a.chain_pem.decode(),
    "certificate_list": lambda a: list(a.chain),
    "certificate_tuple": lambda a: a.chain,
}


@pytest.mark.parametrize("form", CHAIN_FORMS.values(), ids=CHAIN_FORMS.keys())
def test_werkzeug_client_is_accepted_with_every_chain_form(
    form: Any, alice: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    client = werkzeug_client(pki, store)
    response = client.get("/", environ_base=client_certificate_environ(form(alice)))
    assert response.status_code == 200
    assert response.json == {"user": "alice", "source": "tls:environ"}


def test_single_certificate_presents_the_leaf_alone(alice: Issued) -> None:
    assert client_certificate_environ(alice.cert) == {"SSL_CLIENT_CERT": alice.cert_pem.decode()}


def test_werkzeug_client_without_the_helper_has_no_certificate(pki: TestPKI, store: MemoryStore) -> None:
    response = werkzeug_client(pki, store).get("/")
    assert response.status_code == 401
    pc.assert_refusal_json(response.data, Reason.NO_CERTIFICATE)


BAD = {
    "unregistered": (lambda c: c.bob, Reason.UNKNOWN_CERTIFICATE),
    "other_pki": (lambda c: c.foreign, Reason.UNTRUSTED_ISSUER),
    "expired": (lambda c: c.expired, Reason.CERTIFICATE_EXPIRED),
    "leaf_without_intermediate": (lambda c: c.alice.cert, Reason.UNTRUSTED_ISSUER),
}


@pytest.fixture(scope="module")
def certs(pki: TestPKI, other_pki: TestPKI, alice: Issued, bob: Issued) -> pc.Certs:
    return pc.make_certs(pki, other_pki, alice, bob)


@pytest.mark.parametrize(("pick", "reason"), BAD.values(), ids=BAD.keys())
def test_werkzeug_client_bad_certificate_is_refused_with_its_reason(
    pick: Any, reason: Reason, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    response = werkzeug_client(pki, store).get("/", environ_base=client_certificate_environ(pick(certs)))
    assert response.status_code == reason.status
    pc.assert_refusal_json(response.data, reason)


def test_flask_test_client(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/")  # type: ignore[untyped-decorator]
    def index() -> dict[str, str]:
        return {"user": flask.request.environ[ENVIRON_KEY].user_id}

    app.wsgi_app = mtls_wsgi.MTLSMiddleware(app.wsgi_app, config(pki, store))
    client = app.test_client()
    assert client.get("/", environ_base=client_certificate_environ(alice)).json == {"user": "alice"}
    assert client.get("/").status_code == 401


BAD_INPUT: dict[str, tuple[Any, type[Exception]]] = {
    "garbage_text": ("not a certificate", ValueError),
    "empty_pem": (b"", ValueError),
    "empty_list": ([], ValueError),
    "list_of_bytes": ([b"-----BEGIN CERTIFICATE-----"], TypeError),
}


@pytest.mark.parametrize(("chain", "error"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_chain_argument_raises(chain: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        client_certificate_environ(chain)
    with pytest.raises(error):
        with_client_certificate(lambda *a: None, chain)


# -- ASGI -----------------------------------------------------------------------------------------
async def who(request: Request) -> JSONResponse:
    identity = request.scope.get(ENVIRON_KEY)
    return JSONResponse({"user": identity.user_id if identity else None,
                         "source": identity.source if identity else None})


async def ws_who(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": websocket.scope[ENVIRON_KEY].user_id})
    await websocket.close()


def starlette_app(pki: TestPKI, store: MemoryStore) -> mtls_asgi.MTLSMiddleware:
    app = Starlette(routes=[Route("/", who), WebSocketRoute("/ws", ws_who)])
    return mtls_asgi.MTLSMiddleware(app, config(pki, store))


def test_asgi_scope_carries_the_tls_extension(alice: Issued, pki: TestPKI) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    original = {"type": "http", "extensions": {"http.response.debug": {}}}
    asyncio.run(with_client_certificate(app, alice)(original, None, None))
    tls = seen[0]["extensions"]["tls"]
    assert tls["client_cert_chain"] == [alice.cert_pem.decode(), pki.issuing.cert_pem.decode()]
    assert tls["client_cert_name"] == alice.cert.subject.rfc4514_string()
    assert "http.response.debug" in seen[0]["extensions"]
    assert original == {"type": "http", "extensions": {"http.response.debug": {}}}  # not changed


def test_lifespan_passes_through_untouched(alice: Issued) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "lifespan"}
    asyncio.run(with_client_certificate(app, alice)(scope, None, None))
    assert seen == [scope]
    assert seen[0] is scope


@pytest.mark.parametrize("form", CHAIN_FORMS.values(), ids=CHAIN_FORMS.keys())
def test_starlette_test_client_is_accepted(
    form: Any, alice: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    with TestClient(with_client_certificate(starlette_app(pki, store), form(alice))) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "source": "tls:asgi"}


def test_starlette_test_client_without_the_helper_has_no_certificate(
    pki: TestPKI, store: MemoryStore
) -> None:
    response = TestClient(starlette_app(pki, store)).get("/")
    assert response.status_code == 401
    pc.assert_refusal_json(response.content, Reason.NO_CERTIFICATE)


@pytest.mark.parametrize(("pick", "reason"), BAD.values(), ids=BAD.keys())
def test_starlette_test_client_bad_certificate_is_refused_with_its_reason(
    pick: Any, reason: Reason, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    response = TestClient(with_client_certificate(starlette_app(pki, store), pick(certs))).get("/")
    assert response.status_code == reason.status
    pc.assert_refusal_json(response.content, reason)


def test_starlette_test_client_websocket(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    client = TestClient(with_client_certificate(starlette_app(pki, store), alice))
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"user": "alice"}


def test_httpx_asgi_transport(alice: Issued, bob: Issued, pki: TestPKI, store: MemoryStore) -> None:
    app = starlette_app(pki, store)

    async def get(chain: ChainLike) -> httpx.Response:
        transport = httpx.ASGITransport(app=with_client_certificate(app, chain))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            return await client.get("/")

    good = asyncio.run(get(alice))
    assert (good.status_code, good.json()) == (200, {"user": "alice", "source": "tls:asgi"})
    bad = asyncio.run(get(bob))
    assert bad.status_code == 403
    pc.assert_refusal_json(bad.content, Reason.UNKNOWN_CERTIFICATE)


def test_certificate_object_is_accepted_by_both_helpers(alice: Issued) -> None:
    cert: x509.Certificate = alice.cert
    assert client_certificate_environ([cert]) == client_certificate_environ(cert)


def test_scope_entries_for_django_async_client(alice: Issued, pki: TestPKI) -> None:
    scope = client_certificate_scope(alice)
    assert list(scope) == ["extensions"]
    tls = scope["extensions"]["tls"]
    assert tls["client_cert_chain"] == [alice.cert_pem.decode(), pki.issuing.cert_pem.decode()]
    assert tls["client_cert_name"] == alice.cert.subject.rfc4514_string()
    assert tls["tls_version"] == 0x0304


def test_scope_entries_through_the_middleware(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    """What Django's AsyncClient does with its defaults: merge them into the request's scope."""
    app = mtls_asgi.MTLSMiddleware(Starlette(routes=[Route("/", who)]), config(pki, store))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("127.0.0.1", 1),
             **client_certificate_scope(alice)}
    sent: list[dict[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"]) == {"user": "alice", "source": "tls:asgi"}


def test_each_connection_gets_its_own_chain_list(alice: Issued) -> None:
    lengths: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        chain = scope["extensions"]["tls"]["client_cert_chain"]
        lengths.append(len(chain))
        chain.clear()  # a careless app

    wrapped = with_client_certificate(app, alice)
    asyncio.run(wrapped({"type": "http"}, None, None))
    asyncio.run(wrapped({"type": "http"}, None, None))
    assert lengths == [2, 2]


# -- writing key files ----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_write_creates_the_directory_and_an_owner_only_key(tmp_path: Path, alice: Issued) -> None:
    cert_path, key_path = alice.write(tmp_path / "new", "alice")
    assert (cert_path.read_bytes(), key_path.read_bytes()) == (alice.chain_pem, alice.key_pem)
    assert _mode(key_path) == 0o600


@pytest.mark.parametrize("name", [pytest.param("alice.key", id="key"), pytest.param("alice.pem", id="certificate")])
def test_write_refuses_a_planted_symlink_and_leaves_its_target_alone(
    tmp_path: Path, alice: Issued, name: str
) -> None:
    planted = tmp_path / "planted"
    planted.write_bytes(b"")
    planted.chmod(0o666)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / name).symlink_to(planted)
    with pytest.raises(FileExistsError):
        alice.write(shared, "alice")
    assert planted.read_bytes() == b""
    assert _mode(planted) == 0o666
    assert (shared / name).is_symlink()


def test_root_write_refuses_a_planted_symlink(tmp_path: Path, pki: TestPKI) -> None:
    planted = tmp_path / "planted"
    planted.write_bytes(b"precious")
    (tmp_path / "root.pem").symlink_to(planted)
    with pytest.raises(FileExistsError):
        pki.write(tmp_path)
    assert planted.read_bytes() == b"precious"


def test_write_replaces_an_existing_file_instead_of_writing_through_a_hard_link(
    tmp_path: Path, alice: Issued
) -> None:
    """A hard link planted at the key's name shares the attacker's file: the key must land in a
    new file of its own, with its own mode."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    elsewhere.chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.link(elsewhere, shared / "alice.key")
    _cert_path, key_path = alice.write(shared, "alice")
    assert elsewhere.read_bytes() == b""
    assert _mode(elsewhere) == 0o644
    assert key_path.read_bytes() == alice.key_pem
    assert _mode(key_path) == 0o600
    assert not os.path.samefile(key_path, elsewhere)


def test_write_twice_overwrites(tmp_path: Path, alice: Issued, bob: Issued) -> None:
    alice.write(tmp_path, "client")
    _cert_path, key_path = bob.write(tmp_path, "client")
    assert key_path.read_bytes() == bob.key_pem
    assert _mode(key_path) == 0o600
