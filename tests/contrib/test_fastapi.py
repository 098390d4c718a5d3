"""contrib/fastapi.py: the identity dependencies, our refusal body, WebSockets, OpenAPI mutualTLS.

Real FastAPI apps behind our ASGI MTLSMiddleware, driven by FastAPI's TestClient; certificates
reach them through the ASGI TLS extension (mtls_middleware.testing.with_client_certificate).
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, FastAPI, Security, WebSocket
from fastapi.openapi.utils import get_openapi
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.websockets import WebSocketDisconnect

from mtls_middleware import ConfigurationError, MemoryStore, MTLSConfig, Reason
from mtls_middleware.asgi import WEBSOCKET_POLICY_VIOLATION, MTLSMiddleware
from mtls_middleware.contrib.fastapi import (
    MUTUAL_TLS,
    CertificateIdentity,
    MutualTLS,
    OptionalCertificateIdentity,
    declare_mutual_tls,
    install,
    require_identity,
)
from mtls_middleware.contrib.starlette import MTLSAuthBackend
from mtls_middleware.identity import require_certificate_login
from mtls_middleware.testing import Issued, TestPKI
from tests.contrib.test_starlette import Mode, TestClient, client  # FastAPI's TestClient is Starlette's

NO_CERTIFICATE = {"error": "no_certificate", "message": Reason.NO_CERTIFICATE.message}


def make_app(*, installed: bool = True, **app_options: Any) -> FastAPI:
    app = FastAPI(**app_options)
    if installed:
        install(app)

    @app.get("/me")
    async def me(identity: CertificateIdentity) -> dict[str, str]:
        return {"user": identity.user_id, "org": identity.org, "fingerprint": identity.fingerprint}

    @app.get("/maybe")
    async def maybe(identity: OptionalCertificateIdentity) -> dict[str, str | None]:
        return {"user": identity.user_id if identity else None}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/user")
    async def user(request: Request) -> dict[str, Any]:
        return {"user": request.user.display_name, "scopes": request.auth.scopes}

    @app.get("/enforce/{user_id}")
    async def enforce(user_id: str, identity: OptionalCertificateIdentity) -> dict[str, str]:
        require_certificate_login(app.state.store, user_id, identity)
        return {"user": user_id}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, identity: CertificateIdentity) -> None:
        await websocket.accept()
        await websocket.send_json({"user": identity.user_id})
        await websocket.close()

    return app


def stack(app: FastAPI, pki: TestPKI, store: MemoryStore, *, mode: Mode = "required") -> FastAPI:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off", mode=mode)
    app.state.store = store
    # add_middleware puts each new one outside the previous: ours last, so it is outermost.
    app.add_middleware(AuthenticationMiddleware, backend=MTLSAuthBackend())
    app.add_middleware(MTLSMiddleware, config=config)
    return app


# -- the dependencies -----------------------------------------------------------------------------
def test_require_identity_returns_the_identity(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    response = client(stack(make_app(), pki, store), alice).get("/me")
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "org": "acme", "fingerprint": alice.fingerprint}


def test_require_identity_without_one_is_our_401(pki: TestPKI, store: MemoryStore) -> None:
    response = client(stack(make_app(), pki, store, mode="optional"), None).get("/me")
    assert response.status_code == 401
    assert response.json() == NO_CERTIFICATE
    assert response.headers["content-type"] == "application/json"


def test_without_middleware_the_dependency_fails_closed() -> None:
    response = client(make_app(), None).get("/me")
    assert (response.status_code, response.json()) == (401, NO_CERTIFICATE)


def test_without_install_fastapi_still_answers_401() -> None:
    """The documented fallback: the status is right, the body is FastAPI's own."""
    response = client(make_app(installed=False), None).get("/me")
    assert (response.status_code, response.json()) == (401, {"detail": "no_certificate"})


def test_optional_identity(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    app = stack(make_app(), pki, store, mode="optional")
    assert client(app, alice).get("/maybe").json() == {"user": "alice"}
    assert client(app, None).get("/maybe").json() == {"user": None}


def test_request_user_through_the_authentication_backend(
    alice: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    response = client(stack(make_app(), pki, store), alice).get("/user")
    assert response.json() == {"user": "alice", "scopes": ["authenticated", "mtls"]}


def test_mtls_error_in_an_endpoint_gets_our_json(pki: TestPKI, store: MemoryStore) -> None:
    store.add_user("erin", org="acme", permissions=["enforce_mtls"])
    response = client(stack(make_app(), pki, store, mode="optional"), None).get("/enforce/erin")
    assert (response.status_code, response.json()) == (401, NO_CERTIFICATE)


MIDDLEWARE_REFUSALS = {
    "unregistered": (lambda c: c["bob"], Reason.UNKNOWN_CERTIFICATE),
    "other_pki": (lambda c: c["foreign"], Reason.UNTRUSTED_ISSUER),
    "none_required": (lambda c: None, Reason.NO_CERTIFICATE),
}


@pytest.mark.parametrize(("pick", "reason"), MIDDLEWARE_REFUSALS.values(), ids=MIDDLEWARE_REFUSALS.keys())
def test_bad_certificate_is_refused_by_the_middleware(
    pick: Any, reason: Reason, bob: Issued, other_pki: TestPKI, pki: TestPKI, store: MemoryStore
) -> None:
    chains = {"bob": bob, "foreign": other_pki.issue_client("mallory")}
    response = client(stack(make_app(), pki, store), pick(chains)).get("/public")
    assert (response.status_code, response.json()["error"]) == (reason.status, reason.value)


# -- WebSockets -----------------------------------------------------------------------------------
def test_websocket_identity(alice: Issued, pki: TestPKI, store: MemoryStore) -> None:
    with client(stack(make_app(), pki, store), alice).websocket_connect("/ws") as ws:
        assert ws.receive_json() == {"user": "alice"}


WS_REFUSED = {
    # The middleware refuses (required mode): accepted, then closed 1008 with the reason.
    "middleware_no_certificate": (None, "required", Reason.NO_CERTIFICATE),
    "middleware_unregistered": ("bob", "required", Reason.UNKNOWN_CERTIFICATE),
    # The middleware lets it through (optional mode); the dependency refuses, the same way.
    "dependency_no_certificate": (None, "optional", Reason.NO_CERTIFICATE),
}


@pytest.mark.parametrize(("who", "mode", "reason"), WS_REFUSED.values(), ids=WS_REFUSED.keys())
def test_refused_websocket_is_closed_with_1008_and_the_reason(
    who: str | None, mode: Mode, reason: Reason, bob: Issued, pki: TestPKI, store: MemoryStore
) -> None:
    app_client = client(stack(make_app(), pki, store, mode=mode), bob if who else None)
    with app_client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (WEBSOCKET_POLICY_VIOLATION, reason.value)


def test_websocket_dependency_without_install_still_closes_1008(pki: TestPKI, store: MemoryStore) -> None:
    """Without install Starlette closes before accepting: still 1008 and the reason (a real
    server turns that into an HTTP 403 for the client)."""
    app_client = client(stack(make_app(installed=False), pki, store, mode="optional"), None)
    with pytest.raises(WebSocketDisconnect) as closed, app_client.websocket_connect("/ws"):
        pass
    assert (closed.value.code, closed.value.reason) == (1008, "no_certificate")


# -- OpenAPI --------------------------------------------------------------------------------------
def test_openapi_declares_mutual_tls_on_dependent_operations() -> None:
    document = make_app().openapi()
    schemes = document["components"]["securitySchemes"]
    assert list(schemes) == ["mutualTLS"]
    assert schemes["mutualTLS"]["type"] == MUTUAL_TLS
    assert set(schemes["mutualTLS"]) <= {"type", "description"}
    paths = document["paths"]
    assert paths["/me"]["get"]["security"] == [{"mutualTLS": []}]
    assert paths["/enforce/{user_id}"]["get"].get("security") is None  # optional_identity only
    assert paths["/public"]["get"].get("security") is None
    assert document["openapi"].startswith("3.1")


def test_openapi_document_is_valid_openapi_31() -> None:
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    document = make_app().openapi()
    errors = [str(e) for e in definitions.OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []


def test_openapi_served_document_and_install_twice() -> None:
    app = make_app()
    install(app)
    served = TestClient(app).get("/openapi.json").json()
    assert served["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"


def test_whole_api_declared_once_with_a_router_dependency() -> None:
    app = FastAPI()
    install(app)
    router = APIRouter(dependencies=[Security(require_identity)])

    @router.get("/a")
    async def a() -> None: ...

    @router.post("/b")
    async def b() -> None: ...

    @app.get("/health")
    async def health() -> None: ...

    app.include_router(router, prefix="/api")
    paths = app.openapi()["paths"]
    assert paths["/api/a"]["get"]["security"] == [{"mutualTLS": []}]
    assert paths["/api/b"]["post"]["security"] == [{"mutualTLS": []}]
    assert "security" not in paths["/health"]["get"]
    assert client(app, None).get("/api/a").json() == NO_CERTIFICATE


#: A second scheme, at module level: endpoint annotations are resolved from the module's globals.
piv_card = MutualTLS(scheme_name="clientCert", description="PIV card")


def test_custom_scheme_name_and_description() -> None:
    app = FastAPI()
    install(app)

    @app.get("/x")
    async def x(identity: Annotated[Any, Security(piv_card)]) -> None: ...

    document = app.openapi()
    assert document["components"]["securitySchemes"] == {
        "clientCert": {"type": "mutualTLS", "description": "PIV card"}
    }
    assert document["paths"]["/x"]["get"]["security"] == [{"clientCert": []}]


def test_declare_mutual_tls_fixes_a_document_built_by_hand() -> None:
    app = make_app(installed=False)
    document = get_openapi(title="t", version="1", routes=app.routes)
    assert document["components"]["securitySchemes"]["mutualTLS"]["type"] == "http"  # the stand-in
    declare_mutual_tls(document)
    assert document["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"


def test_install_refuses_openapi_30() -> None:
    app = FastAPI()
    app.openapi_version = "3.0.2"
    with pytest.raises(ConfigurationError, match=r"openapi_version is 3\.0\.2") as refused:
        install(app)
    assert refused.value.reason is Reason.CONFIGURATION_ERROR


def test_empty_scheme_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="scheme_name"):
        MutualTLS(scheme_name="")
