"""contrib/starlette.py: request.user, auth scopes and @requires from our middleware's verdict.

Every app here is a real Starlette app with our ASGI MTLSMiddleware outermost and Starlette's
AuthenticationMiddleware inside it, driven by Starlette's TestClient; the certificate reaches it
through the ASGI TLS extension (mtls_middleware.testing.with_client_certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import warnings
from typing import Any, Literal

import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from mtls_middleware import ENVIRON_KEY, Identity, MemoryStore, MTLSConfig, MTLSError, Reason
from mtls_middleware.asgi import WEBSOCKET_POLICY_VIOLATION, MTLSMiddleware
from mtls_middleware.contrib.starlette import (
    CertificateUser,
    MTLSAuthBackend,
    get_identity,
    handle_mtls_error,
    mtls_exception_handler,
)
from mtls_middleware.identity import require_certificate_login
from mtls_middleware.testing import Issued, TestPKI, with_client_certificate

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2; httpx is what it runs on here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


Mode = Literal["required", "optional"]


def body_of(response: Any) -> dict[str, Any]:
    data = response.json()
    assert isinstance(data, dict)
    return data


# -- the app under test ---------------------------------------------------------------------------
async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "display_name": user.display_name,
            "scopes": request.auth.scopes,
            "org": user.org if isinstance(user, CertificateUser) else None,
        }
    )


@requires("mtls")
async def mtls_only(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


@requires("api_only")
async def api_clients(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


async def enforce(request: Request) -> JSONResponse:
    # An app with another login method asks whether this user must use a certificate.
    user_id = request.query_params["user"]
    require_certificate_login(request.app.state.store, user_id, get_identity(request))
    return JSONResponse({"user": user_id})


async def ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": websocket.user.display_name, "scopes": websocket.auth.scopes})
    await websocket.close()


async def ws_raises(websocket: WebSocket) -> None:
    raise MTLSError(Reason.CERTIFICATE_AUTH_DISABLED)


def make_app(
    pki: TestPKI, store: MemoryStore, *, mode: Mode = "required", auth_outermost: bool = False
) -> Starlette:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off", mode=mode)
    mtls = Middleware(MTLSMiddleware, config=config)
    auth = Middleware(AuthenticationMiddleware, backend=MTLSAuthBackend())
    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/mtls", mtls_only),
            Route("/api", api_clients),
            Route("/enforce", enforce),
            WebSocketRoute("/ws", ws_whoami),
            WebSocketRoute("/ws-raises", ws_raises),
        ],
        # The first listed is the outermost: ours must run before Starlette's reads the scope.
        middleware=[auth, mtls] if auth_outermost else [mtls, auth],
        exception_handlers={MTLSError: mtls_exception_handler},
    )
    app.state.store = store
    return app


def client(app: Any, chain: Issued | None) -> TestClient:
    """A TestClient of ``app`` (any ASGI app) presenting ``chain`` through the TLS extension."""
    return TestClient(with_client_certificate(app, chain) if chain is not None else app)


# -- the backend on its own -----------------------------------------------------------------------
def identity_for(issued: Issued, permissions: frozenset[str] = frozenset()) -> Identity:
    now = dt.datetime.now(dt.timezone.utc)
    return Identity(
        user_id="alice", org="acme", fingerprint=issued.fingerprint, subject="CN=alice",
        issuer="CN=ca", serial="01", not_before=now, not_after=now, certificate=issued.cert,
        chain=issued.chain, source="tls:asgi", permissions=permissions,
    )  # fmt: skip


def authenticate(scope: dict[str, Any]) -> tuple[AuthCredentials, Any] | None:
    return asyncio.run(MTLSAuthBackend().authenticate(HTTPConnection(scope)))


def test_backend_translates_the_identity_into_user_and_scopes(alice: Issued) -> None:
    identity = identity_for(alice, frozenset({"enforce_mtls", "api_only"}))
    result = authenticate({"type": "http", ENVIRON_KEY: identity})
    assert result is not None
    credentials, user = result
    assert credentials.scopes == ["authenticated", "mtls", "api_only", "enforce_mtls"]
    assert isinstance(user, CertificateUser)
    assert user.mtls_identity is identity
    assert (user.is_authenticated, user.display_name, user.identity) == (True, "alice", "alice")
    assert (user.user_id, user.org, user.permissions) == ("alice", "acme", identity.permissions)
    assert user == CertificateUser(identity)
    assert "alice" in repr(user)


NO_IDENTITY = {
    "absent": {"type": "http"},
    "not_an_identity": {"type": "http", ENVIRON_KEY: "alice"},
    "none": {"type": "websocket", ENVIRON_KEY: None},
}


@pytest.mark.parametrize("scope", NO_IDENTITY.values(), ids=NO_IDENTITY.keys())
def test_backend_without_an_identity_returns_none(scope: dict[str, Any]) -> None:
    assert authenticate(scope) is None


# -- through the stack ----------------------------------------------------------------------------
def test_accepted_request_has_a_certificate_user(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    response = client(make_app(pki, store), alice).get("/whoami")
    assert response.status_code == 200
    assert body_of(response) == {
        "authenticated": True,
        "display_name": "alice",
        "scopes": ["authenticated", "mtls"],
        "org": "acme",
    }


def test_requires_mtls_passes_a_certificate_user(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    response = client(make_app(pki, store), alice).get("/mtls")
    assert (response.status_code, body_of(response)) == (200, {"user": "alice"})


def test_permissions_become_scopes(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    app_client = client(make_app(pki, store), alice)
    assert app_client.get("/api").status_code == 403  # alice lacks api_only
    store.set_user_permissions("alice", ["api_only"])
    response = app_client.get("/api")
    assert (response.status_code, body_of(response)) == (200, {"user": "alice"})


def test_optional_mode_without_certificate_is_unauthenticated(pki: TestPKI, store: MemoryStore) -> None:
    app_client = client(make_app(pki, store, mode="optional"), None)
    whoami_body = body_of(app_client.get("/whoami"))
    assert (whoami_body["authenticated"], whoami_body["scopes"]) == (False, [])
    assert app_client.get("/mtls").status_code == 403  # @requires refuses, the Starlette way


def test_required_mode_refuses_before_starlette_sees_the_request(pki: TestPKI, store: MemoryStore) -> None:
    response = client(make_app(pki, store), None).get("/mtls")
    assert response.status_code == 401
    assert body_of(response) == {"error": "no_certificate", "message": Reason.NO_CERTIFICATE.message}


def test_wrong_stack_order_leaves_the_user_unauthenticated(
    alice: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    """AuthenticationMiddleware outside ours reads the scope before the identity is in it."""
    response = client(make_app(pki, store, auth_outermost=True), alice).get("/whoami")
    assert response.status_code == 200
    assert body_of(response)["authenticated"] is False


def test_mtls_error_in_a_view_gets_our_json(pki: TestPKI, store: MemoryStore) -> None:
    store.add_user("erin", org="acme", permissions=["enforce_mtls"])
    response = client(make_app(pki, store, mode="optional"), None).get("/enforce?user=erin")
    assert response.status_code == 401
    assert body_of(response) == {"error": "no_certificate", "message": Reason.NO_CERTIFICATE.message}


# -- WebSockets -----------------------------------------------------------------------------------
def test_websocket_user(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    with client(make_app(pki, store), alice).websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"user": "alice", "scopes": ["authenticated", "mtls"]}


WS_REFUSED = {
    "no_certificate": (lambda c: None, Reason.NO_CERTIFICATE),
    "unregistered": (lambda c: c["bob"], Reason.UNKNOWN_CERTIFICATE),
    "other_pki": (lambda c: c["foreign"], Reason.UNTRUSTED_ISSUER),
}


@pytest.mark.parametrize(("pick", "reason"), WS_REFUSED.values(), ids=WS_REFUSED.keys())
def test_refused_websocket_is_closed_with_1008_and_the_reason(
    pick: Any, reason: Reason, bob: Issued, other_pki: TestPKI, pki: TestPKI, store: MemoryStore
) -> None:
    chains = {"bob": bob, "foreign": other_pki.issue_client("mallory")}
    app_client = client(make_app(pki, store), pick(chains))
    with app_client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (WEBSOCKET_POLICY_VIOLATION, reason.value)


def test_mtls_error_in_a_websocket_endpoint_closes_with_1008(
    alice: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    app_client = client(make_app(pki, store), alice)
    with app_client.websocket_connect("/ws-raises") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (1008, "certificate_auth_disabled")


def test_exception_handler_does_not_hide_other_exceptions() -> None:
    with pytest.raises(KeyError):
        asyncio.run(handle_mtls_error(HTTPConnection({"type": "http"}), KeyError("x")))
