"""authenticator.py: the stages in order, the verdict cache, and one record per attempt."""

from __future__ import annotations

import datetime as dt
import gc
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import mtls_middleware.authenticator as authenticator_module
from mtls_middleware import (
    FingerprintMapper,
    Identity,
    MemoryHistory,
    MemoryStore,
    MTLSConfig,
    MTLSError,
    Reason,
)
from mtls_middleware.authenticator import MISS, Authenticator, asgi_peer
from mtls_middleware.stores.base import Principal
from mtls_middleware.testing import Issued, TestPKI

PROXY = "10.0.0.1"


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def environ_for(issued: Issued | None, peer: str = "192.0.2.10") -> dict[str, Any]:
    environ: dict[str, Any] = {"REMOTE_ADDR": peer, "PATH_INFO": "/"}
    if issued is not None:
        leaf, *rest = issued.chain
        environ["SSL_CLIENT_CERT"] = pem(leaf)
        for index, cert in enumerate(rest):
            environ[f"SSL_CLIENT_CERT_CHAIN_{index}"] = pem(cert)
    return environ


def make_auth(pki: TestPKI, store: MemoryStore, **options: Any) -> Authenticator:
    settings: dict[str, Any] = {"trust_roots": [pki.root.cert], "store": store, "revocation": "off"}
    settings.update(options)
    return Authenticator(MTLSConfig(**settings))


class Spy:
    """Wraps a callable and counts the calls; behaviour is the real one's."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def validate_spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[Authenticator], Spy]:
    def install(auth: Authenticator) -> Spy:
        spy = Spy(auth.validator.validate)
        monkeypatch.setattr(auth.validator, "validate", spy)
        return spy

    return install


@pytest.fixture
def parse_spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(authenticator_module.parse_chain)
    monkeypatch.setattr(authenticator_module, "parse_chain", spy)
    return spy


class Clock:
    """Stands in for the authenticator module's ``time``: real time unless ``now`` is set."""

    def __init__(self) -> None:
        self.now: float | None = None

    def time(self) -> float:
        return self.now if self.now is not None else time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(authenticator_module, "time", fake)
    return fake


def reason_of(auth: Authenticator, environ: dict[str, Any]) -> Reason | None:
    """The refusal reason of one request, or None when it was accepted."""
    try:
        auth.authenticate_wsgi(environ)
    except MTLSError as exc:
        return exc.reason
    return None


def register(store: MemoryStore, issued: Issued, user: str, org: str = "acme") -> None:
    store.add_user(user, org=org)
    store.upload_certificate(issued.chain_pem, user_id=user)


# -- the pipeline -----------------------------------------------------------------------------


def test_accepted_identity(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    auth = make_auth(pki, store)
    identity = auth.authenticate_wsgi(environ_for(alice))
    assert isinstance(identity, Identity)
    assert identity.user_id == "alice"
    assert identity.fingerprint == alice.fingerprint
    assert identity.chain == (alice.cert, pki.issuing.cert, pki.root.cert)


def test_accepted_identity_from_an_asgi_scope(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, history=history)
    scope = {
        "type": "http",
        "client": ("192.0.2.11", 50000),
        "extensions": {"tls": {"client_cert_chain": [alice.cert_pem.decode(), pki.issuing.cert_pem.decode()]}},
    }
    identity = auth.authenticate_asgi(scope)
    assert isinstance(identity, Identity)
    assert (identity.user_id, identity.fingerprint) == ("alice", alice.fingerprint)
    assert [(r.outcome, r.peer) for r in history] == [("accepted", "192.0.2.11")]


def test_no_certificate_in_optional_mode_is_none(pki: TestPKI, store: MemoryStore) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, mode="optional", history=history)
    assert auth.authenticate_wsgi(environ_for(None)) is None
    assert list(history) == []  # nothing was attempted


def test_configured_intermediates_complete_a_leaf_only_chain(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    environ = {"REMOTE_ADDR": "192.0.2.1", "SSL_CLIENT_CERT": pem(alice.cert)}
    assert reason_of(make_auth(pki, store), dict(environ)) is Reason.UNTRUSTED_ISSUER
    with_intermediates = make_auth(pki, store, intermediates=[pki.issuing.cert])
    assert reason_of(with_intermediates, dict(environ)) is None


def test_the_configured_mapper_finds_the_user(pki: TestPKI, alice: Issued) -> None:
    from mtls_middleware import SanEmailMapper

    store = MemoryStore()
    store.add_user("alice@example.org", org="acme")  # no certificate registered at all
    auth = make_auth(pki, store, identity_mapper=SanEmailMapper())
    identity = auth.authenticate_wsgi(environ_for(alice))
    assert identity is not None
    assert identity.user_id == "alice@example.org"
    assert reason_of(make_auth(pki, store), environ_for(alice)) is Reason.UNKNOWN_CERTIFICATE


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ({"client": ("203.0.113.9", 1234)}, "203.0.113.9"),
        ({"client": ["::1", 1234]}, "::1"),
        ({"client": None}, None),
        ({}, None),
    ],
    ids=["ipv4", "ipv6-list", "client-None", "no-client"],
)
def test_asgi_peer(peer: dict[str, Any], expected: str | None) -> None:
    assert asgi_peer(peer) == expected


def test_untrusted_peer_in_asgi_is_refused_and_recorded(pki: TestPKI, store: MemoryStore) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, proxy="nginx", trusted_proxies=[PROXY], history=history)
    scope = {"type": "http", "client": ("198.51.100.7", 1), "headers": [(b"x-ssl-client-cert", b"x")]}
    with pytest.raises(MTLSError) as info:
        auth.extract_asgi(scope)
    assert info.value.reason is Reason.UNTRUSTED_PROXY
    (record,) = list(history)
    assert (record.outcome, record.source, record.peer) == (
        "untrusted_proxy",
        "proxy:nginx",
        "198.51.100.7",
    )


# -- the verdict cache ------------------------------------------------------------------------


def test_a_repeat_is_neither_parsed_nor_validated_again(
    pki: TestPKI,
    store: MemoryStore,
    alice: Issued,
    parse_spy: Spy,
    validate_spy: Callable[[Authenticator], Spy],
) -> None:
    auth = make_auth(pki, store)
    validate = validate_spy(auth)
    identities = [auth.authenticate_wsgi(environ_for(alice)) for _ in range(5)]
    assert parse_spy.calls == 1
    assert validate.calls == 1
    assert all(i is identities[0] for i in identities)


def test_a_cache_hit_through_proxy_headers_does_not_decode_or_parse(
    pki: TestPKI, store: MemoryStore, alice: Issued, parse_spy: Spy
) -> None:
    from urllib.parse import quote

    auth = make_auth(pki, store, proxy="nginx", trusted_proxies=[PROXY], intermediates=[pki.issuing.cert])
    environ = {"REMOTE_ADDR": PROXY, "HTTP_X_SSL_CLIENT_CERT": quote(pem(alice.cert))}
    first = auth.extract_wsgi(dict(environ))
    assert auth.authenticate(first, peer=PROXY) is not None
    second = auth.extract_wsgi(dict(environ))
    assert second is not None
    assert auth.authenticate_cached(second, peer=PROXY) is not MISS
    assert second._items is None  # the header was never decoded
    assert parse_spy.calls == 1


def test_cache_disabled_judges_every_time(
    pki: TestPKI, store: MemoryStore, alice: Issued, validate_spy: Callable[[Authenticator], Spy]
) -> None:
    auth = make_auth(pki, store, cache_size=0)
    validate = validate_spy(auth)
    for _ in range(3):
        assert reason_of(auth, environ_for(alice)) is None
    assert validate.calls == 3


@pytest.mark.parametrize("shortest", ["leaf", "intermediate"])
def test_an_entry_expires_with_the_shortest_notafter_of_the_path(
    shortest: str,
    pki: TestPKI,
    store: MemoryStore,
    clock: Clock,
    validate_spy: Callable[[Authenticator], Spy],
) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    soon, later = now + dt.timedelta(hours=1), now + dt.timedelta(days=20)
    if shortest == "leaf":
        client = pki.issue_client("short leaf", not_after=soon)
    else:
        ca = pki.issue_ca("short-lived CA", not_after=soon)
        client = pki.issue_client("long leaf", issuer=ca, not_after=later)
    register(store, client, "carol")
    auth = make_auth(pki, store)
    validate = validate_spy(auth)

    assert reason_of(auth, environ_for(client)) is None
    assert validate.calls == 1
    clock.now = soon.timestamp() - 1
    assert reason_of(auth, environ_for(client)) is None
    assert validate.calls == 1  # still cached one second before
    clock.now = soon.timestamp()
    assert reason_of(auth, environ_for(client)) is None  # (validation itself runs at real time)
    assert validate.calls == 2  # the entry did not outlive the shortest-lived certificate


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param(
            lambda s, fp: s.delete_certificate(fp), Reason.UNKNOWN_CERTIFICATE, id="delete-certificate"
        ),
        pytest.param(
            lambda s, fp: s.set_user_active("alice", False), Reason.USER_INACTIVE, id="deactivate-user"
        ),
        pytest.param(
            lambda s, fp: s.set_org("acme", cert_auth=False),
            Reason.CERTIFICATE_AUTH_DISABLED,
            id="switch-org-off",
        ),
    ],
)
def test_a_store_change_takes_effect_on_the_very_next_request(
    change: Callable[[MemoryStore, str], object],
    reason: Reason,
    pki: TestPKI,
    store: MemoryStore,
    alice: Issued,
) -> None:
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    for _ in range(2):  # accepted, then accepted from the cache
        assert reason_of(auth, environ_for(alice)) is None
    change(store, alice.fingerprint)
    assert reason_of(auth, environ_for(alice)) is reason


def test_undoing_a_change_takes_effect_at_once_too(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    store.set_user_active("alice", False)
    assert reason_of(auth, environ_for(alice)) is Reason.USER_INACTIVE
    assert reason_of(auth, environ_for(alice)) is Reason.USER_INACTIVE  # cached refusal
    store.set_user_active("alice", True)
    assert reason_of(auth, environ_for(alice)) is None


def test_a_store_change_during_the_judgement_invalidates_its_verdict(
    pki: TestPKI,
    store: MemoryStore,
    alice: Issued,
    validate_spy: Callable[[Authenticator], Spy],
) -> None:
    class ChangingMapper(FingerprintMapper):
        def map(self, leaf: x509.Certificate, fingerprint: str, s: Any) -> Principal | None:
            principal = super().map(leaf, fingerprint, s)
            if not changed:
                changed.append(True)
                store.add_user("someone-else")  # any change bumps the generation
            return principal

    changed: list[bool] = []
    auth = make_auth(pki, store, identity_mapper=ChangingMapper())
    validate = validate_spy(auth)
    assert reason_of(auth, environ_for(alice)) is None
    assert reason_of(auth, environ_for(alice)) is None
    assert validate.calls == 2  # the first verdict was stale when made


def test_cache_size_bounds_the_cache(pki: TestPKI, validate_spy: Callable[[Authenticator], Spy]) -> None:
    store = MemoryStore()
    clients = [pki.issue_client(f"user{i}") for i in range(6)]
    for index, client in enumerate(clients):
        register(store, client, f"user{index}")
    auth = make_auth(pki, store, cache_size=2)
    validate = validate_spy(auth)

    for client in clients:  # six distinct chains through a cache of two
        assert reason_of(auth, environ_for(client)) is None
    assert validate.calls == 6
    for client in clients[-2:]:  # the newest two are still there
        assert reason_of(auth, environ_for(client)) is None
    assert validate.calls == 6
    assert reason_of(auth, environ_for(clients[0])) is None  # the oldest was evicted
    assert validate.calls == 7
    assert auth._cache is not None
    assert len(auth._cache) <= 2


def test_negative_verdicts_are_cached(
    pki: TestPKI,
    store: MemoryStore,
    bob: Issued,
    clock: Clock,
    validate_spy: Callable[[Authenticator], Spy],
) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, negative_cache_seconds=60, history=history)
    validate = validate_spy(auth)
    assert reason_of(auth, environ_for(bob)) is Reason.UNKNOWN_CERTIFICATE
    assert reason_of(auth, environ_for(bob)) is Reason.UNKNOWN_CERTIFICATE
    assert validate.calls == 1
    assert [r.outcome for r in history] == ["unknown_certificate"] * 2  # a hit is recorded too
    assert history.query(limit=1)[0].fingerprint == bob.fingerprint

    clock.now = time.time() + 61  # the negative entry lives negative_cache_seconds
    assert reason_of(auth, environ_for(bob)) is Reason.UNKNOWN_CERTIFICATE
    assert validate.calls == 2


def test_a_registration_ends_a_cached_refusal_at_once(pki: TestPKI, store: MemoryStore, bob: Issued) -> None:
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    assert reason_of(auth, environ_for(bob)) is Reason.UNKNOWN_CERTIFICATE
    register(store, bob, "bob")
    assert reason_of(auth, environ_for(bob)) is None


def test_parse_failures_are_cached_too(pki: TestPKI, store: MemoryStore, parse_spy: Spy) -> None:
    auth = make_auth(pki, store)
    environ = {"REMOTE_ADDR": "192.0.2.1", "SSL_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nx\n"}
    for _ in range(3):
        assert reason_of(auth, dict(environ)) is Reason.MALFORMED_CERTIFICATE
    assert parse_spy.calls == 1


def test_not_yet_valid_is_not_cached(
    pki: TestPKI, store: MemoryStore, validate_spy: Callable[[Authenticator], Spy]
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    future = pki.issue_client("future", not_before=now + dt.timedelta(days=1))
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    validate = validate_spy(auth)
    for _ in range(3):
        assert reason_of(auth, environ_for(future)) is Reason.CERTIFICATE_NOT_YET_VALID
    assert validate.calls == 3


def test_an_internal_error_is_not_cached(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    calls: list[int] = []

    class FlakyMapper:
        def map(self, leaf: x509.Certificate, fingerprint: str, s: Any) -> Principal | None:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("database went away")
            return s.resolve_certificate(fingerprint)

    auth = make_auth(pki, store, identity_mapper=FlakyMapper())
    assert reason_of(auth, environ_for(alice)) is Reason.INTERNAL_ERROR
    assert reason_of(auth, environ_for(alice)) is None
    assert len(calls) == 2


def test_judging_at_another_instant_bypasses_the_cache(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    auth = make_auth(pki, store)
    assert reason_of(auth, environ_for(alice)) is None  # cached as accepted now
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    presented = auth.extract_wsgi(environ_for(alice))
    with pytest.raises(MTLSError) as info:
        auth.authenticate(presented, peer=None, at=later)
    assert info.value.reason is Reason.CERTIFICATE_EXPIRED
    earlier = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(MTLSError) as info:
        auth.authenticate(presented, peer=None, at=earlier)
    assert info.value.reason is Reason.CERTIFICATE_NOT_YET_VALID
    assert reason_of(auth, environ_for(alice)) is None  # the cache was not touched by either


def test_clear_cache(
    pki: TestPKI, store: MemoryStore, alice: Issued, validate_spy: Callable[[Authenticator], Spy]
) -> None:
    auth = make_auth(pki, store)
    validate = validate_spy(auth)
    auth.authenticate_wsgi(environ_for(alice))
    auth.clear_cache()
    auth.authenticate_wsgi(environ_for(alice))
    assert validate.calls == 2


def test_a_cached_acceptance_still_honours_a_failed_proxy_verdict(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    from urllib.parse import quote

    history = MemoryHistory()
    auth = make_auth(
        pki,
        store,
        proxy="nginx",
        trusted_proxies=[PROXY],
        intermediates=[pki.issuing.cert],
        history=history,
    )
    header = quote(pem(alice.cert))

    def request(verify: str) -> Reason | None:
        environ = {
            "REMOTE_ADDR": PROXY,
            "HTTP_X_SSL_CLIENT_CERT": header,
            "HTTP_X_SSL_CLIENT_VERIFY": verify,
        }
        return reason_of(auth, environ)

    assert request("SUCCESS") is None
    assert request("FAILED:certificate revoked") is Reason.PROXY_VERIFICATION_FAILED
    assert request("SUCCESS") is None
    records = list(history)
    assert [r.outcome for r in records] == ["accepted", "proxy_verification_failed", "accepted"]
    refused = records[1]
    assert refused.fingerprint == alice.fingerprint
    assert refused.user_id == "alice"
    assert refused.source == "proxy:nginx"
    assert refused.peer == PROXY
    assert "FAILED:certificate revoked" in refused.detail


# -- one record per attempt -------------------------------------------------------------------


def test_one_record_per_attempt_in_a_burst(
    pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued
) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, history=history)
    plan = [alice, bob, None, alice, alice, bob] * 7
    for issued in plan:
        reason_of(auth, environ_for(issued))
    outcomes = {None: "no_certificate", id(alice): "accepted", id(bob): "unknown_certificate"}
    assert [r.outcome for r in history] == [outcomes[id(i) if i is not None else None] for i in plan]


def test_one_record_per_attempt_from_many_threads(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    history = MemoryHistory()
    auth = make_auth(pki, store, history=history)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                assert auth.authenticate_wsgi(environ_for(alice)) is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(history) == 400
    assert all(r.accepted for r in history)


def test_a_failing_history_sink_does_not_fail_the_request(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    class BrokenSink:
        def record(self, record: Any) -> None:
            raise OSError("disk full")

    auth = make_auth(pki, store, history=BrokenSink())
    assert reason_of(auth, environ_for(alice)) is None
    assert reason_of(auth, environ_for(None)) is Reason.NO_CERTIFICATE


class Environ(dict):  # type: ignore[type-arg]
    """A WSGI environ that can be weakly referenced."""


def test_a_cached_refusal_does_not_retain_earlier_requests(
    pki: TestPKI, store: MemoryStore, bob: Issued
) -> None:
    # The cached refusal is raised again on every hit; it must not keep each request (its
    # environ, via the frames of a growing traceback) alive for as long as the entry lives.
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    assert reason_of(auth, environ_for(bob)) is Reason.UNKNOWN_CERTIFICATE  # now cached
    environ = Environ(environ_for(bob))
    ref = weakref.ref(environ)
    assert reason_of(auth, environ) is Reason.UNKNOWN_CERTIFICATE  # a hit
    del environ
    gc.collect()
    assert ref() is None


def test_repeated_cache_hits_do_not_grow_the_refusal(pki: TestPKI, store: MemoryStore, bob: Issued) -> None:
    auth = make_auth(pki, store, negative_cache_seconds=3600)
    depths = []
    for _ in range(20):
        try:
            auth.authenticate_wsgi(environ_for(bob))
        except MTLSError as exc:
            depths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert len(depths) == 20
    assert depths[-1] <= depths[1]


# -- what a revocation refusal records ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "summary", "label"),
    [
        pytest.param("revoked", "certificate_revoked", "ocsp:revoked", "ocsp", id="revoked"),
        pytest.param("unknown", "revocation_unavailable", "failed:unavailable", "failed", id="unknown-no-crl"),
        pytest.param(None, "no_revocation_source", "none:no-source", "none", id="no-source"),
    ],
)
def test_revocation_refusal_records_what_the_stage_found(
    pki: TestPKI, status: str | None, reason: str, summary: str, label: str
) -> None:
    from mtls_middleware.metrics import Counters
    from tests.revocation.ocsp_server import OCSPTestResponder

    with OCSPTestResponder(pki.issuing) as responder:
        leaf = pki.issue_client(f"refusal {reason}", ocsp_url=responder.url if status else None)
        if status == "revoked":
            responder.set_status(
                leaf.cert.serial_number, "revoked",
                revoked_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1),
            )
        elif status is not None:
            responder.set_status(leaf.cert.serial_number, status)
        store = MemoryStore()
        store.add_user("zoe")
        store.upload_certificate(leaf.chain_pem, user_id="zoe")
        counters = Counters()
        config = MTLSConfig(
            trust_roots=[pki.root.cert], intermediates=[pki.issuing.cert], store=store,
            revocation="require", revocation_scope="leaf", metrics=counters,
        )
        auth = Authenticator(config)
        with pytest.raises(MTLSError) as refused:
            auth.authenticate_wsgi(environ_for(leaf))
        assert refused.value.reason.value == reason
        record = store.login_history(limit=1)[0]
        assert record.outcome == reason
        assert record.revocation == summary
        assert counters.snapshot() == {(reason, label): 1}


@pytest.mark.parametrize(
    ("who", "outcome", "revocation"),
    [
        pytest.param("bob", "unknown_certificate", "off", id="refused-after-revocation-keeps-it"),
        pytest.param("expired", "certificate_expired", None, id="refused-before-revocation-has-none"),
    ],
)
def test_a_refusal_records_what_the_revocation_stage_found_before_it(
    pki: TestPKI, store: MemoryStore, bob: Issued, who: str, outcome: str, revocation: str | None
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    leaf = bob if who == "bob" else pki.issue_client(
        "expired", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1)
    )
    auth = make_auth(pki, store)
    with pytest.raises(MTLSError):
        auth.authenticate_wsgi(environ_for(leaf))
    record = store.login_history(limit=1)[0]
    assert record.outcome == outcome
    assert record.revocation == revocation
