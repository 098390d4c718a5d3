"""wsgi.py: the WSGI adapter, driven through werkzeug's test Client and EnvironBuilder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import pipeline_cases as pc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client, EnvironBuilder

from mtls_middleware import ENVIRON_KEY, Identity, MemoryHistory, MemoryStore, MTLSConfig, Reason
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware


@pytest.fixture(scope="session")
def certs(pki: TestPKI, other_pki: TestPKI, alice: Issued, bob: Issued) -> pc.Certs:
    return pc.make_certs(pki, other_pki, alice, bob)


class EchoApp:
    """The protected app: remembers every environ it is called with, answers 200."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.seen.append(environ)
        identity = environ.get(ENVIRON_KEY)
        body = json.dumps({"user": identity.user_id if identity else None}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


def make_app(config: MTLSConfig) -> tuple[MTLSMiddleware, EchoApp]:
    inner = EchoApp()
    return MTLSMiddleware(inner, config), inner


def send(app: MTLSMiddleware, presentation: pc.Presentation, path: str = "/") -> Any:
    return Client(app).get(path, headers=presentation.headers, environ_overrides=presentation.environ)


# -- accepted ---------------------------------------------------------------------------------


def test_accepted_request_carries_the_identity(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    app, inner = make_app(pc.tls_config(pki, store))
    response = send(app, pc.alice_tls(alice))
    assert response.status_code == 200
    identity = inner.seen[-1][ENVIRON_KEY]
    assert isinstance(identity, Identity)
    assert identity.user_id == "alice"
    assert identity.org == "acme"
    assert identity.fingerprint == hashlib.sha256(alice.cert_der).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", identity.fingerprint)
    assert identity.subject == "CN=alice,O=mtls_middleware test"
    assert identity.subject == alice.cert.subject.rfc4514_string()
    assert identity.issuer == pki.issuing.cert.subject.rfc4514_string()
    assert identity.serial == format(alice.cert.serial_number, "x")
    assert identity.not_after == alice.cert.not_valid_after_utc
    assert identity.certificate == alice.cert
    assert identity.chain == (alice.cert, pki.issuing.cert, pki.root.cert)
    assert identity.source == "tls:environ"
    assert identity.revocation == "off"


def test_accepted_through_nginx_headers(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    # nginx forwards only the leaf: the deployment names its intermediates.
    presentation = pc.Presentation(cert_header=pc.escaped(alice), verify_header="SUCCESS")
    config = pc.config_for(pki, store, presentation, intermediates=[pki.issuing.cert])
    app, inner = make_app(config)
    response = send(app, presentation)
    assert response.status_code == 200
    identity = inner.seen[-1][ENVIRON_KEY]
    assert identity.user_id == "alice"
    assert identity.source == "proxy:nginx"
    assert identity.chain == (alice.cert, pki.issuing.cert, pki.root.cert)


def test_nginx_issuer_unknown_is_not_a_verdict(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    # optional_no_ca: nginx says FAILED when it cannot find the issuer; the middleware decides.
    presentation = pc.Presentation(
        cert_header=pc.escaped(alice), verify_header="FAILED:unable to get local issuer certificate"
    )
    app, inner = make_app(pc.config_for(pki, store, presentation, intermediates=[pki.issuing.cert]))
    response = send(app, presentation)
    assert response.status_code == 200
    assert inner.seen[-1][ENVIRON_KEY].user_id == "alice"


# -- every reason code ------------------------------------------------------------------------


@pytest.mark.parametrize("case", pc.REASON_CASES, ids=str)
def test_each_reason_code_is_reached(
    case: pc.Case, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    presentation = case.present(certs)
    history = MemoryHistory()
    app, inner = make_app(pc.config_for(pki, store, presentation, history=history))
    if case.mutate is not None:
        case.mutate(store)

    response = send(app, presentation)

    assert response.status_code == case.reason.status
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    pc.assert_refusal_json(response.get_data(), case.reason)
    assert inner.seen == []

    # Exactly one history record, with what was known at the point of refusal.
    (record,) = list(history)
    assert record.outcome == case.reason.value
    assert not record.accepted
    assert record.peer == presentation.peer
    assert record.detail
    assert record.detail not in response.get_data(as_text=True)
    assert record.time == pytest.approx(time.time(), abs=60)
    if presentation.via_proxy:
        assert record.source == "proxy:nginx"
    else:
        assert record.source in ("tls", "tls:environ")
    if case.reason in pc.LEAF_KNOWN:
        leaf = x509.load_pem_x509_certificate(presentation.tls[0].encode())
        assert record.fingerprint == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
        assert record.subject == leaf.subject.rfc4514_string()
        assert record.issuer == leaf.issuer.rfc4514_string()
        assert record.serial == format(leaf.serial_number, "x")
    if case.reason in pc.USER_KNOWN:
        assert record.user_id == "alice"
        assert record.org == "acme"


@pytest.mark.parametrize("case", [c for c in pc.HOSTILE_CASES if not c.asgi_only], ids=str)
def test_hostile_input_gets_its_reason_and_a_4xx(
    case: pc.Case, certs: pc.Certs, pki: TestPKI, store: MemoryStore
) -> None:
    presentation = case.present(certs)
    history = MemoryHistory()
    app, inner = make_app(
        pc.config_for(pki, store, presentation, history=history, intermediates=[pki.issuing.cert])
    )
    response = send(app, presentation)
    assert response.status_code == case.reason.status
    assert 400 <= response.status_code < 500
    pc.assert_refusal_json(response.get_data(), case.reason)
    assert inner.seen == []
    assert [r.outcome for r in history] == [case.reason.value]


@pytest.fixture(scope="module")
def fuzz_app(pki: TestPKI) -> MTLSMiddleware:
    store = MemoryStore()
    config = MTLSConfig(
        trust_roots=[pki.root.cert],
        store=store,
        revocation="off",
        proxy="nginx",
        trusted_proxies=[pc.PROXY_PEER],
        cache_size=0,  # every example runs the whole pipeline
    )
    return MTLSMiddleware(EchoApp(), config)


_header_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255)),
    st.binary().map(quote),
    st.text().map(lambda s: quote("-----BEGIN CERTIFICATE-----\n") + s),
    st.text().map(lambda s: quote("-----BEGIN CERTIFICATE-----\n" + s + "\n-----END CERTIFICATE-----\n")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cert=_header_text, verify=st.one_of(st.none(), st.text(max_size=40)))
def test_arbitrary_header_text_from_a_trusted_proxy_never_yields_a_5xx(
    fuzz_app: MTLSMiddleware, cert: str, verify: str | None
) -> None:
    environ = EnvironBuilder(path="/", environ_overrides={"REMOTE_ADDR": pc.PROXY_PEER}).get_environ()
    environ["HTTP_X_SSL_CLIENT_CERT"] = cert
    if verify is not None:
        environ["HTTP_X_SSL_CLIENT_VERIFY"] = verify
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    body = b"".join(fuzz_app(environ, start_response))
    status = int(statuses[0].split()[0])
    assert 400 <= status < 500, (status, body)
    data = json.loads(body)
    assert set(data) == {"error", "message"}
    assert Reason(data["error"]).status == status


# -- fail closed ------------------------------------------------------------------------------


class ExplodingMapper:
    def map(self, leaf: x509.Certificate, fingerprint: str, store: Any) -> Any:
        raise RuntimeError("mapper exploded: secret-token-123")


def test_a_fault_of_ours_fails_closed_without_a_trace(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    history = MemoryHistory()
    app, inner = make_app(pc.tls_config(pki, store, identity_mapper=ExplodingMapper(), history=history))
    response = send(app, pc.alice_tls(alice))
    assert response.status_code == 500
    pc.assert_refusal_json(response.get_data(), Reason.INTERNAL_ERROR)
    assert "secret-token-123" not in response.get_data(as_text=True)
    assert inner.seen == []
    (record,) = list(history)
    assert record.outcome == "internal_error"
    assert "secret-token-123" in record.detail


# -- optional mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "user"),
    [
        pytest.param(None, None, None, id="no-certificate-passes-without-identity"),
        pytest.param("alice", None, "alice", id="good-certificate-gets-identity"),
        pytest.param("expired", Reason.CERTIFICATE_EXPIRED, None, id="expired-still-refused"),
        pytest.param("foreign", Reason.UNTRUSTED_ISSUER, None, id="untrusted-still-refused"),
        pytest.param("bob", Reason.UNKNOWN_CERTIFICATE, None, id="unknown-still-refused"),
    ],
)
def test_optional_mode(
    name: str | None,
    reason: Reason | None,
    user: str | None,
    certs: pc.Certs,
    pki: TestPKI,
    store: MemoryStore,
) -> None:
    app, inner = make_app(pc.tls_config(pki, store, mode="optional"))
    presentation = pc.Presentation(tls=pc.pems(getattr(certs, name)) if name else ())
    response = send(app, presentation)
    if reason is not None:
        assert response.status_code == reason.status
        pc.assert_refusal_json(response.get_data(), reason)
        assert inner.seen == []
        return
    assert response.status_code == 200
    seen = inner.seen[-1]
    if user is None:
        assert ENVIRON_KEY not in seen
    else:
        assert seen[ENVIRON_KEY].user_id == user
    assert json.loads(response.get_data()) == {"user": user}


def test_required_mode_refuses_what_optional_mode_lets_through(pki: TestPKI, store: MemoryStore) -> None:
    app, _ = make_app(pc.tls_config(pki, store))
    response = send(app, pc.Presentation())
    assert response.status_code == 401
    pc.assert_refusal_json(response.get_data(), Reason.NO_CERTIFICATE)


# -- exempt paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/health", True),
        ("/health/", True),
        ("/health/live", True),
        ("/metrics", True),
        ("/healthz", False),
        ("/healt", False),
        ("/", False),
        ("/api/health", False),
        ("/metricsx", False),
    ],
    ids=lambda v: str(v),
)
def test_exempt_paths(path: str, exempt: bool, pki: TestPKI, store: MemoryStore) -> None:
    history = MemoryHistory()
    app, inner = make_app(pc.tls_config(pki, store, exempt_paths=["/health", "/metrics"], history=history))
    response = send(app, pc.Presentation(), path=path)
    if exempt:
        assert response.status_code == 200
        assert ENVIRON_KEY not in inner.seen[-1]
        assert list(history) == []
    else:
        assert response.status_code == 401
        pc.assert_refusal_json(response.get_data(), Reason.NO_CERTIFICATE)
        assert inner.seen == []


@pytest.mark.parametrize(
    ("peer", "kept"),
    [pytest.param("192.0.2.66", False, id="untrusted-peer-headers-stripped"), pytest.param(pc.PROXY_PEER, True, id="trusted-proxy-headers-kept")],
)
def test_exempt_path_never_shows_the_app_a_strangers_certificate_header(
    peer: str, kept: bool, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    presentation = pc.Presentation(cert_header=pc.escaped(alice), verify_header="SUCCESS", peer=peer)
    app, inner = make_app(pc.config_for(pki, store, presentation, exempt_paths=["/health"]))
    response = send(app, presentation, path="/health")
    assert response.status_code == 200
    seen = inner.seen[-1]
    assert ("HTTP_X_SSL_CLIENT_CERT" in seen) is kept
    assert ("HTTP_X_SSL_CLIENT_VERIFY" in seen) is kept


# -- the TLS layer's environ keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        pytest.param("leaf+chain", 200, id="SSL_CLIENT_CERT+SSL_CLIENT_CERT_CHAIN_0"),
        pytest.param("leaf", 403, id="SSL_CLIENT_CERT-alone-lacks-the-intermediate"),
        pytest.param("uwsgi", 200, id="uwsgi-HTTPS_CLIENT_CERTIFICATE"),
        pytest.param("chain-gap", 403, id="chain-keys-stop-at-the-first-gap"),
    ],
)
def test_tls_layer_environ_keys(
    keys: str, status: int, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    leaf, intermediate = pc.pems(alice)
    environ = {
        "leaf+chain": {"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_0": intermediate},
        "leaf": {"SSL_CLIENT_CERT": leaf},
        "uwsgi": {"HTTPS_CLIENT_CERTIFICATE": leaf + intermediate},
        "chain-gap": {"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_1": intermediate},
    }[keys]
    app, inner = make_app(pc.tls_config(pki, store))
    response = Client(app).get("/", environ_overrides=environ)
    assert response.status_code == status
    if status == 200:
        identity = inner.seen[-1][ENVIRON_KEY]
        assert identity.user_id == "alice"
        assert identity.source == "tls:environ"
    else:
        pc.assert_refusal_json(response.get_data(), Reason.UNTRUSTED_ISSUER)


def test_client_cannot_forge_the_tls_layer_keys_with_a_header(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    # A request header "SSL-Client-Cert" arrives as HTTP_SSL_CLIENT_CERT, never SSL_CLIENT_CERT.
    app, _ = make_app(pc.tls_config(pki, store))
    response = Client(app).get("/", headers={"SSL-Client-Cert": pc.pems(alice)[0].replace("\n", "")})
    assert response.status_code == 401
    pc.assert_refusal_json(response.get_data(), Reason.NO_CERTIFICATE)


# -- untrusted peers --------------------------------------------------------------------------


def test_untrusted_peer_headers_are_removed_from_the_environ(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    presentation = pc.Presentation(cert_header=pc.escaped(alice), verify_header="SUCCESS", peer=pc.STRANGER)
    app, inner = make_app(pc.config_for(pki, store, presentation))
    environ = EnvironBuilder(
        path="/", headers=presentation.headers, environ_overrides=presentation.environ
    ).get_environ()
    assert "HTTP_X_SSL_CLIENT_CERT" in environ
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("401")
    pc.assert_refusal_json(body, Reason.UNTRUSTED_PROXY)
    assert "HTTP_X_SSL_CLIENT_CERT" not in environ
    assert "HTTP_X_SSL_CLIENT_VERIFY" not in environ
    assert inner.seen == []


def test_trusted_peer_without_headers_has_no_certificate(pki: TestPKI, store: MemoryStore) -> None:
    presentation = pc.Presentation(verify_header="NONE")
    app, _ = make_app(pc.config_for(pki, store, presentation))
    response = send(app, presentation)
    assert response.status_code == 401
    pc.assert_refusal_json(response.get_data(), Reason.NO_CERTIFICATE)


def test_untrusted_peer_without_headers_falls_back_to_the_tls_layer(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    config = pc.tls_config(pki, store, proxy="nginx", trusted_proxies=[pc.PROXY_PEER])
    app, inner = make_app(config)
    response = send(app, pc.Presentation(tls=pc.pems(alice), peer=pc.STRANGER))
    assert response.status_code == 200
    assert inner.seen[-1][ENVIRON_KEY].source == "tls:environ"


# -- history ----------------------------------------------------------------------------------


def test_a_burst_of_requests_gives_one_record_each(pki: TestPKI, store: MemoryStore, certs: pc.Certs) -> None:
    history = MemoryHistory()
    app, _ = make_app(pc.tls_config(pki, store, history=history))
    plan = ["alice", "bob", "expired", None] * 10  # cache hits and misses, accepted and refused
    expected = {
        "alice": "accepted",
        "bob": "unknown_certificate",
        "expired": "certificate_expired",
        None: "no_certificate",
    }
    for name in plan:
        send(app, pc.Presentation(tls=pc.pems(getattr(certs, name)) if name else ()))
    records = list(history)
    assert len(records) == len(plan)
    assert [r.outcome for r in records] == [expected[n] for n in plan]


def test_accepted_record_fields(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    history = MemoryHistory()
    app, _ = make_app(pc.tls_config(pki, store, history=history))
    for _ in range(2):  # the second is a verdict-cache hit: same record
        send(app, pc.alice_tls(alice))
    first, second = list(history)
    for record in (first, second):
        assert record.outcome == "accepted"
        assert record.accepted
        assert record.source == "tls:environ"
        assert record.peer == pc.PROXY_PEER
        assert record.fingerprint == alice.fingerprint
        assert record.subject == "CN=alice,O=mtls_middleware test"
        assert record.issuer == pki.issuing.cert.subject.rfc4514_string()
        assert record.serial == format(alice.cert.serial_number, "x")
        assert record.user_id == "alice"
        assert record.org == "acme"
        assert record.detail == ""
        assert record.revocation == "off"
    assert second.time >= first.time


def test_history_goes_to_the_store_by_default(
    pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued
) -> None:
    app, _ = make_app(pc.tls_config(pki, store))
    send(app, pc.alice_tls(alice))
    send(app, pc.Presentation(tls=pc.pems(bob)))
    newest, oldest = store.login_history()
    assert (oldest.outcome, newest.outcome) == ("accepted", "unknown_certificate")
    assert store.login_history(failed_only=True) == [newest]
    assert store.login_history(user_id="alice") == [oldest]


# -- the verdict cache as the app sees it -------------------------------------------------------


def test_certificate_expiring_in_two_seconds_is_refused_once_expired(
    pki: TestPKI, store: MemoryStore
) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    short = pki.issue_client(
        "short", not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(seconds=2)
    )
    store.add_user("short", org="acme")
    store.upload_certificate(short.chain_pem, user_id="short")
    app, _ = make_app(pc.tls_config(pki, store))
    presentation = pc.Presentation(tls=pc.pems(short))
    assert send(app, presentation).status_code == 200
    assert send(app, presentation).status_code == 200  # served from the verdict cache
    # Validation resolves time to whole seconds: one second past notAfter is expired.
    time.sleep(max(0.0, short.cert.not_valid_after_utc.timestamp() + 1.2 - time.time()))
    response = send(app, presentation)
    assert response.status_code == 403
    pc.assert_refusal_json(response.get_data(), Reason.CERTIFICATE_EXPIRED)
