"""The verdict-cache hit answered in one frame (Authenticator.hit_wsgi / hit_asgi).

It answers only "accepted and still good"; every other case must fall through to the general path
and get the same answer as a cold request would. Each test first warms the cache with a good
request, then changes one thing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.test import Client

from mtls_middleware import MemoryStore, MTLSConfig, Reason
from mtls_middleware.asgi import MTLSMiddleware as ASGIMiddleware
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware as WSGIMiddleware

PROXY = "10.0.0.7"


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    identity = environ.get("mtls_middleware.identity")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"user": identity.user_id if identity else None}).encode()]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    identity = scope.get("mtls_middleware.identity")
    body = json.dumps({"user": identity.user_id if identity else None}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def proxy_config(pki: TestPKI, store: MemoryStore) -> MTLSConfig:
    return MTLSConfig(
        trust_roots=[pki.root.cert],
        intermediates=[pki.issuing.cert],
        store=store,
        revocation="off",
        proxy="nginx",
        trusted_proxies=[PROXY],
    )


def tls_config(pki: TestPKI, store: MemoryStore) -> MTLSConfig:
    return MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")


class WSGI:
    def __init__(self, config: MTLSConfig) -> None:
        self.client = Client(WSGIMiddleware(wsgi_app, config))

    def proxy(self, issued: Issued, *, peer: str = PROXY, verify: str = "SUCCESS") -> tuple[int, str]:
        headers = {"X-SSL-Client-Cert": quote(issued.cert_pem.decode(), safe=""), "X-SSL-Client-Verify": verify}
        response = self.client.get("/", headers=headers, environ_base={"REMOTE_ADDR": peer})
        return response.status_code, response.get_json().get("error") or response.get_json()["user"]

    def tls(self, issued: Issued) -> tuple[int, str]:
        leaf, *rest = (p.decode() for p in _pems(issued))
        environ = {"REMOTE_ADDR": "192.0.2.1", "SSL_CLIENT_CERT": leaf}
        environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i, pem in enumerate(rest)})
        response = self.client.get("/", environ_base=environ)
        return response.status_code, response.get_json().get("error") or response.get_json()["user"]


def _pems(issued: Issued) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    return [c.public_bytes(serialization.Encoding.PEM) for c in issued.chain]


class ASGI:
    def __init__(self, config: MTLSConfig) -> None:
        self.app = ASGIMiddleware(asgi_app, config)

    def _run(self, scope: dict[str, Any]) -> tuple[int, str]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(self.app(scope, receive, send))
        body = json.loads(sent[1]["body"])
        return sent[0]["status"], body.get("error") or body["user"]

    def proxy(
        self, issued: Issued, *, peer: str = PROXY, verify: str = "SUCCESS", duplicate: bool = False
    ) -> tuple[int, str]:
        cert = (b"x-ssl-client-cert", quote(issued.cert_pem.decode(), safe="").encode())
        headers = [cert, (b"x-ssl-client-verify", verify.encode())] + ([cert] if duplicate else [])
        return self._run({"type": "http", "path": "/", "headers": headers, "client": (peer, 5000)})

    def tls(self, issued: Issued) -> tuple[int, str]:
        chain = [p.decode() for p in _pems(issued)]
        scope = {
            "type": "http",
            "path": "/",
            "headers": [],
            "client": ("192.0.2.1", 5000),
            "extensions": {"tls": {"client_cert_chain": chain}},
        }
        return self._run(scope)


ADAPTERS = [pytest.param(WSGI, id="wsgi"), pytest.param(ASGI, id="asgi")]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda a, s, c: a.proxy(c), (200, "alice"), id="repeat-is-accepted"),
        pytest.param(lambda a, s, c: a.proxy(c, peer="192.0.2.99"), (401, "untrusted_proxy"), id="same-header-untrusted-peer"),
        pytest.param(lambda a, s, c: a.proxy(c, verify="FAILED:certificate revoked"), (403, "proxy_verification_failed"), id="proxy-now-reports-failure"),
        pytest.param(lambda a, s, c: (s.delete_certificate(c.fingerprint), a.proxy(c))[1], (403, "unknown_certificate"), id="certificate-deleted"),
        pytest.param(lambda a, s, c: (s.set_user_active("alice", False), a.proxy(c))[1], (403, "user_inactive"), id="user-deactivated"),
        pytest.param(lambda a, s, c: (s.set_org("acme", cert_auth=False), a.proxy(c))[1], (403, "certificate_auth_disabled"), id="org-switched-off"),
    ],
)
def test_proxy_hit_falls_through_on_any_change(
    pki: TestPKI, store: MemoryStore, alice: Issued, adapter: type, change: Callable[..., tuple[int, str]], expected: tuple[int, str]
) -> None:
    client = adapter(proxy_config(pki, store))
    assert client.proxy(alice) == (200, "alice")
    before = len(store.login_history(limit=1000))
    assert change(client, store, alice) == expected
    records = store.login_history(limit=1000)
    assert len(records) == before + 1  # exactly one record for the attempt, hit or not
    assert records[0].outcome == ("accepted" if expected[0] == 200 else expected[1])


def test_asgi_duplicated_header_is_refused_even_when_cached(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    client = ASGI(proxy_config(pki, store))
    assert client.proxy(alice) == (200, "alice")
    assert client.proxy(alice, duplicate=True) == (400, Reason.MALFORMED_CERTIFICATE.value)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tls_hit_and_delete(pki: TestPKI, store: MemoryStore, alice: Issued, adapter: type) -> None:
    client = adapter(tls_config(pki, store))
    assert client.tls(alice) == (200, "alice")
    assert client.tls(alice) == (200, "alice")
    store.delete_certificate(alice.fingerprint)
    assert client.tls(alice) == (403, "unknown_certificate")
    assert [r.outcome for r in store.login_history(limit=3)] == ["unknown_certificate", "accepted", "accepted"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hit_records_the_current_peer_and_time(pki: TestPKI, store: MemoryStore, alice: Issued, adapter: type) -> None:
    client = adapter(tls_config(pki, store))
    client.tls(alice)
    first = store.login_history(limit=1)[0]
    client.tls(alice)
    second = store.login_history(limit=1)[0]
    assert second.time >= first.time
    assert second.peer == "192.0.2.1"
    assert second[:10] == first[:10]  # everything but time and peer is the verdict's
