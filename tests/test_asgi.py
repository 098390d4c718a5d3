"""asgi.py: the ASGI adapter, driven in-process with asyncio.run and hand-written receive/send."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pipeline_cases as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtls_middleware import ENVIRON_KEY, Identity, MemoryHistory, MemoryStore, MTLSConfig, Reason
from mtls_middleware.admin.rest import serve_lifespan
from mtls_middleware.asgi import WEBSOCKET_POLICY_VIOLATION, MTLSMiddleware
from mtls_middleware.testing import Issued, TestPKI

Message = dict[str, Any]


@pytest.fixture(scope="session")
def certs(pki: TestPKI, other_pki: TestPKI, alice: Issued, bob: Issued) -> pc.Certs:
    return pc.make_certs(pki, other_pki, alice, bob)


class EchoApp:
    """The protected ASGI app: remembers scopes (and the thread it ran on), echoes the user."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.calls: list[tuple[Any, Any, Any]] = []
        self.thread: int | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        self.calls.append((scope, receive, send))
        self.thread = threading.get_ident()
        identity = scope.get(ENVIRON_KEY)
        user = identity.user_id if identity else None
        if scope["type"] == "http":
            body = json.dumps({"user": user}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            message = await receive()
            assert message["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": json.dumps({"user": user})})
            await send({"type": "websocket.close", "code": 1000})
        elif scope["type"] == "lifespan":
            await serve_lifespan(receive, send)


def run(app: Any, scope: dict[str, Any], inbox: list[Message]) -> list[Message]:
    """Drive one ASGI connection to its end; return what the app sent."""

    async def main() -> list[Message]:
        pending = list(inbox)
        sent: list[Message] = []

        async def receive() -> Message:
            if pending:
                return pending.pop(0)
            await asyncio.sleep(0)
            return {"type": "http.disconnect" if scope["type"] == "http" else "websocket.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    return asyncio.run(main())


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def http(app: Any, presentation: pc.Presentation, path: str = "/") -> Response:
    scope = presentation.asgi_scope("http", path)
    sent = run(app, scope, [{"type": "http.request", "body": b"", "more_body": False}])
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    return Response(
        start["status"],
        dict(start.get("headers", [])),
        b"".join(m.get("body", b"") for m in bodies),
    )


def websocket(app: Any, presentation: pc.Presentation) -> list[Message]:
    return run(app, presentation.asgi_scope("websocket"), [{"type": "websocket.connect"}])


def make_app(config: MTLSConfig, **options: Any) -> tuple[MTLSMiddleware, EchoApp]:
    inner = EchoApp()
    return MTLSMiddleware(inner, config, **options), inner


# -- http -------------------------------------------------------------------------------------


def test_accepted_request_carries_the_identity(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    response = http(app, pc.alice_tls(alice))
    assert response.status == 200
    assert json.loads(response.body) == {"user": "alice"}
    identity = inner.scopes[-1][ENVIRON_KEY]
    assert isinstance(identity, Identity)
    assert identity.user_id == "alice"
    assert identity.org == "acme"
    assert identity.fingerprint == hashlib.sha256(alice.cert_der).hexdigest()
    assert identity.subject == alice.cert.subject.rfc4514_string()
    assert identity.chain == (alice.cert, pki.issuing.cert, pki.root.cert)
    assert identity.source == "tls:asgi"


def test_the_callers_scope_is_not_modified(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    scope = pc.alice_tls(alice).asgi_scope()
    run(app, scope, [{"type": "http.request", "body": b""}])
    assert ENVIRON_KEY not in scope
    assert ENVIRON_KEY in inner.scopes[-1]


@pytest.mark.parametrize("case", pc.REASON_CASES, ids=str)
def test_each_reason_code_is_reached(
    case: pc.Case, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    presentation = case.present(certs)
    history = MemoryHistory()
    app, inner = make_app(pc.config_for(pki, store, presentation, history=history))
    if case.mutate is not None:
        case.mutate(store)

    response = http(app, presentation)

    assert response.status == case.reason.status
    assert 400 <= response.status < 500
    assert response.headers[b"content-type"] == b"application/json"
    pc.assert_refusal_json(response.body, case.reason)
    assert inner.scopes == []
    (record,) = list(history)
    assert record.outcome == case.reason.value
    assert record.peer == presentation.peer
    assert record.detail
    assert record.detail.encode() not in response.body
    if presentation.via_proxy:
        assert record.source == "proxy:nginx"
    else:
        assert record.source in ("tls", "tls:asgi")
    if case.reason in pc.LEAF_KNOWN:
        assert record.fingerprint is not None
        assert record.subject is not None
        assert record.issuer is not None
    if case.reason in pc.USER_KNOWN:
        assert record.user_id == "alice"


@pytest.mark.parametrize("case", pc.HOSTILE_CASES, ids=str)
def test_hostile_input_gets_its_reason_and_a_4xx(
    case: pc.Case, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    presentation = case.present(certs)
    history = MemoryHistory()
    app, inner = make_app(
        pc.config_for(pki, store, presentation, history=history, intermediates=[pki.issuing.cert])
    )
    response = http(app, presentation)
    assert response.status == case.reason.status
    assert 400 <= response.status < 500
    pc.assert_refusal_json(response.body, case.reason)
    assert inner.scopes == []
    assert [r.outcome for r in history] == [case.reason.value]


@pytest.fixture(scope="module")
def fuzz_app(pki: TestPKI) -> MTLSMiddleware:
    config = MTLSConfig(
        trust_roots=[pki.root.cert],
        store=MemoryStore(),
        revocation="off",
        proxy="nginx",
        trusted_proxies=[pc.PROXY_PEER],
        cache_size=0,
    )
    return MTLSMiddleware(EchoApp(), config)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"x-ssl-client-cert", b"x-ssl-client-verify", b"x-other"]),
            st.one_of(st.binary(), st.text().map(lambda s: s.encode("utf-8"))),
        ),
        max_size=4,
    )
)
def test_arbitrary_headers_from_a_trusted_proxy_never_yield_a_5xx(
    fuzz_app: MTLSMiddleware, headers: list[tuple[bytes, bytes]]
) -> None:
    scope = pc.Presentation().asgi_scope()
    scope["headers"] = [(b"host", b"testserver"), *headers]
    sent = run(fuzz_app, scope, [{"type": "http.request", "body": b""}])
    status = sent[0]["status"]
    assert 400 <= status < 500
    body = json.loads(sent[1]["body"])
    assert set(body) == {"error", "message"}
    assert Reason(body["error"]).status == status


def test_http_refusal_through_httpx(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    presentation = pc.Presentation(cert_header=pc.escaped(alice), peer=pc.STRANGER)
    app, inner = make_app(pc.config_for(pki, store, presentation))

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(pc.STRANGER, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            return await client.get("/", headers=presentation.headers)

    response = asyncio.run(main())
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    pc.assert_refusal_json(response.content, Reason.UNTRUSTED_PROXY)
    assert inner.scopes == []


# -- the tls extension ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extensions",
    [
        pytest.param("absent", id="no-extensions-key"),
        pytest.param(None, id="extensions-None"),
        pytest.param({}, id="extensions-empty"),
        pytest.param({"tls": None}, id="tls-None"),
        pytest.param({"tls": {}}, id="tls-empty"),
        pytest.param({"tls": "yes"}, id="tls-not-a-mapping"),
        pytest.param({"tls": {"server_cert": None}}, id="no-client_cert_chain"),
        pytest.param({"tls": {"client_cert_chain": None}}, id="chain-None"),
        pytest.param({"tls": {"client_cert_chain": []}}, id="chain-empty-list"),
        pytest.param({"tls": {"client_cert_chain": "not a list"}}, id="chain-a-string"),
        pytest.param({"tls": {"client_cert_chain": {"a": 1}}}, id="chain-a-dict"),
        pytest.param({"tls": {"client_cert_chain": [None, 7]}}, id="chain-of-non-strings"),
    ],
)
def test_tls_extension_subsets_mean_no_certificate(extensions: Any, pki: TestPKI, store: MemoryStore) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    scope = pc.Presentation().asgi_scope()
    if extensions != "absent":
        scope["extensions"] = extensions
    sent = run(app, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 401
    pc.assert_refusal_json(sent[1]["body"], Reason.NO_CERTIFICATE)
    assert inner.scopes == []


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(list, id="list-of-str"),
        pytest.param(tuple, id="tuple-of-str"),
        pytest.param(lambda items: [i.encode() for i in items], id="list-of-bytes"),
    ],
)
def test_tls_extension_chain_shapes_accepted(
    shape: Any, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    scope = pc.Presentation().asgi_scope()
    scope["extensions"] = {"tls": {"client_cert_chain": shape(pc.pems(alice))}}
    sent = run(app, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 200
    assert inner.scopes[-1][ENVIRON_KEY].user_id == "alice"


def test_optional_mode_lets_no_certificate_through(pki: TestPKI, store: MemoryStore) -> None:
    app, inner = make_app(pc.tls_config(pki, store, mode="optional"))
    response = http(app, pc.Presentation())
    assert response.status == 200
    assert ENVIRON_KEY not in inner.scopes[-1]


def test_optional_mode_still_refuses_a_bad_certificate(
    pki: TestPKI, store: MemoryStore, certs: pc.Certs
) -> None:
    app, inner = make_app(pc.tls_config(pki, store, mode="optional"))
    response = http(app, pc.Presentation(tls=pc.pems(certs.expired)))
    assert response.status == 403
    pc.assert_refusal_json(response.body, Reason.CERTIFICATE_EXPIRED)
    assert inner.scopes == []


@pytest.mark.parametrize(
    ("path", "exempt"),
    [("/health", True), ("/health/live", True), ("/healthz", False), ("/", False)],
    ids=str,
)
def test_exempt_paths(path: str, exempt: bool, pki: TestPKI, store: MemoryStore) -> None:
    app, inner = make_app(pc.tls_config(pki, store, exempt_paths=["/health"]))
    response = http(app, pc.Presentation(), path=path)
    assert response.status == (200 if exempt else 401)
    assert len(inner.scopes) == (1 if exempt else 0)


@pytest.mark.parametrize(
    ("peer", "kept"),
    [pytest.param("192.0.2.66", False, id="untrusted-peer-headers-stripped"), pytest.param(pc.PROXY_PEER, True, id="trusted-proxy-headers-kept")],
)
def test_exempt_path_never_shows_the_app_a_strangers_certificate_header(
    peer: str, kept: bool, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    presentation = pc.Presentation(cert_header=pc.escaped(alice), verify_header="SUCCESS", peer=peer)
    app, inner = make_app(pc.config_for(pki, store, presentation, exempt_paths=["/health"]))
    response = http(app, presentation, path="/health")
    assert response.status == 200
    names = {name for name, _ in inner.scopes[-1]["headers"]}
    assert (b"x-ssl-client-cert" in names) is kept
    assert (b"x-ssl-client-verify" in names) is kept
    assert b"host" in names  # the rest of the request is untouched


# -- websocket --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param(None, Reason.NO_CERTIFICATE, id="no_certificate"),
        pytest.param("foreign", Reason.UNTRUSTED_ISSUER, id="untrusted_issuer"),
        pytest.param("bob", Reason.UNKNOWN_CERTIFICATE, id="unknown_certificate"),
        pytest.param("eleven", Reason.CHAIN_TOO_LONG, id="chain_too_long"),
    ],
)
def test_websocket_refused_with_1008_and_the_reason_code(
    name: str | None, reason: Reason, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    presentation = pc.Presentation(tls=pc.pems(getattr(certs, name)) if name else ())
    sent = websocket(app, presentation)
    # Accepted and closed at once: a close before accepting reaches clients as a bare HTTP 403.
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION, "reason": reason.value},
    ]
    assert WEBSOCKET_POLICY_VIOLATION == 1008
    assert inner.scopes == []


def test_websocket_accepted_sees_the_identity(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    sent = websocket(app, pc.alice_tls(alice))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert json.loads(sent[1]["text"]) == {"user": "alice"}
    assert inner.scopes[-1][ENVIRON_KEY].user_id == "alice"


# -- lifespan ---------------------------------------------------------------------------------


def test_lifespan_passes_through_untouched(pki: TestPKI, store: MemoryStore) -> None:
    history = MemoryHistory()
    app, inner = make_app(pc.tls_config(pki, store, history=history))
    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def main() -> list[Message]:
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Message] = []

        async def receive() -> Message:
            return inbox.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
        (seen_scope, seen_receive, seen_send) = inner.calls[-1]
        assert seen_scope is scope
        assert seen_receive is receive
        assert seen_send is send
        return sent

    sent = asyncio.run(main())
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert list(history) == []


# -- off the event loop -----------------------------------------------------------------------


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts what it is given."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_miss_runs_off_the_loop_and_a_hit_needs_no_executor(
    pki: TestPKI, store: MemoryStore, alice: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = CountingExecutor()
    app, inner = make_app(pc.tls_config(pki, store), executor=executor)
    validator = app.authenticator.validator
    real_validate = validator.validate
    validate_threads: list[int] = []
    store_threads: list[int] = []
    real_resolve = store.resolve_certificate

    def validate_spy(*args: Any, **kwargs: Any) -> Any:
        validate_threads.append(threading.get_ident())
        return real_validate(*args, **kwargs)

    def resolve_spy(fingerprint: str) -> Any:
        store_threads.append(threading.get_ident())
        return real_resolve(fingerprint)

    monkeypatch.setattr(validator, "validate", validate_spy)
    monkeypatch.setattr(store, "resolve_certificate", resolve_spy)

    try:
        assert http(app, pc.alice_tls(alice)).status == 200
        loop_thread = inner.thread
        assert loop_thread is not None
        assert len(validate_threads) == 1
        assert validate_threads[0] != loop_thread
        assert store_threads
        assert loop_thread not in store_threads
        assert executor.submitted == 1

        assert http(app, pc.alice_tls(alice)).status == 200
        assert len(validate_threads) == 1  # a hit: nothing judged again
        assert executor.submitted == 1  # ... and nothing handed to the pool
    finally:
        executor.shutdown()
    # With the pool gone, a hit is still answered: it never needed one.
    response = http(app, pc.alice_tls(alice))
    assert response.status == 200
    assert json.loads(response.body) == {"user": "alice"}
