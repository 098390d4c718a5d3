"""The revocation cache shared through a real redis-server: one fetch for many workers, Redis
never trusted, an outage survived.

Each "worker" is a middleware with an Authenticator (and so a revocation checker, local caches and
single flight) of its own, as in another process; they share only the store and the Redis URL.
Fetches are counted at the real OCSP responder and CRL server of :mod:`tests.revocation`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from werkzeug.test import Client

from mtls_middleware import MemoryStore, MTLSConfig
from mtls_middleware.errors import ConfigurationError
from mtls_middleware.revocation.crl import CRLSource, crl_der
from mtls_middleware.revocation.shared import SharedCache
from mtls_middleware.testing import Issued, TestPKI, crl_bytes, make_crl
from mtls_middleware.wsgi import MTLSMiddleware
from tests.revocation import test_middleware
from tests.revocation.crl_server import CRLServer
from tests.revocation.ocsp_server import OCSPTestResponder
from tests.revocation.redis_server import RedisServer, SlowRelay, silent_port
from tests.revocation.test_middleware import _echo, _environ

NOW = dt.datetime.now(dt.timezone.utc)
MINUTE = dt.timedelta(minutes=1)
CRL_PATH = "/issuing.crl"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[Any]:
    """The test Redis, running and empty."""
    if redis_server.process is None:
        redis_server.start()
    client: Any = redis_server.client()
    client.flushall()
    yield client
    client.close()


# The real OCSP responder and CRL server of the middleware tests, function-scoped fixtures.
responder = test_middleware.responder
crls = test_middleware.crls


class Cluster:
    """Workers sharing a store and a Redis URL, nothing else."""

    def __init__(self, pki: TestPKI, url: str) -> None:
        self.pki = pki
        self.url = url
        self.store = MemoryStore()
        self.store.add_user("carol", org="acme")
        self.workers: list[MTLSMiddleware] = []

    def issue(self, name: str, **endpoints: str) -> Issued:
        leaf = self.pki.issue_client(name, **endpoints)  # type: ignore[arg-type]
        self.store.upload_certificate(leaf.chain_pem, user_id="carol")
        return leaf

    def worker(self, mode: str = "require", **options: Any) -> MTLSMiddleware:
        settings: dict[str, Any] = {
            # Generous for a loaded CI machine: a waiter gives up on the lock holder after one timeout.
            "revocation_timeout": 2.0,
            "revocation_deadline": 4.0,
            **options,
        }
        config = MTLSConfig(
            trust_roots=[self.pki.root.cert],
            store=self.store,
            revocation=mode,  # type: ignore[arg-type]
            revocation_scope="leaf",
            revocation_cache=self.url,
            **settings,
        )
        app = MTLSMiddleware(_echo, config)
        self.workers.append(app)
        return app

    def get(self, app: MTLSMiddleware, leaf: Issued) -> Any:
        return Client(app).get("/", environ_overrides=_environ(leaf, self.pki))

    def close(self) -> None:
        for app in self.workers:
            app.authenticator.close()


@pytest.fixture
def cluster(pki: TestPKI, redis_db: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    c = Cluster(pki, redis_server.url)
    yield c
    c.close()


def shared(app: MTLSMiddleware) -> SharedCache:
    checker = app.authenticator.revocation
    assert checker is not None
    assert checker.shared_cache is not None
    return checker.shared_cache


def data_keys(client: Any, kind: str) -> list[bytes]:
    return [k for k in client.keys(f"*:revocation:{kind}:*") if not k.endswith(b":lock")]


# -- one worker fetches, the others read Redis -------------------------------------------------


def test_second_worker_gets_the_ocsp_response_from_redis(
    cluster: Cluster, responder: OCSPTestResponder, redis_db: Any
) -> None:
    leaf = cluster.issue("ocsp shared", ocsp_url=responder.url)
    a, b = cluster.worker(), cluster.worker()
    assert cluster.get(a, leaf).json["revocation"] == "ocsp:good"
    assert responder.requests == 1
    assert len(data_keys(redis_db, "ocsp")) == 1
    assert cluster.get(b, leaf).json["revocation"] == "ocsp:good"
    assert responder.requests == 1  # B asked Redis, not the responder
    assert shared(b).stats()["hits"] == 1
    assert "cached" in cluster.store.login_history(limit=1)[0].detail


def test_second_worker_gets_the_crl_from_redis(cluster: Cluster, crls: CRLServer, redis_db: Any) -> None:
    leaf = cluster.issue("crl shared", crl_url=crls.url(CRL_PATH))
    crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing)))
    a, b = cluster.worker(), cluster.worker()
    assert cluster.get(a, leaf).json["revocation"] == "crl:good"
    assert crls.count(CRL_PATH) == 1
    assert cluster.get(b, leaf).json["revocation"] == "crl:good"
    assert crls.count(CRL_PATH) == 1
    assert shared(b).stats()["hits"] == 1


def test_a_revoked_status_is_shared_too(cluster: Cluster, crls: CRLServer) -> None:
    leaf = cluster.issue("crl revoked shared", crl_url=crls.url(CRL_PATH))
    crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing, [leaf.cert.serial_number])))
    for app in (cluster.worker(), cluster.worker()):
        assert cluster.get(app, leaf).json["error"] == "certificate_revoked"
    assert crls.count(CRL_PATH) == 1


@pytest.mark.parametrize("kind", ["ocsp", "crl"])
def test_many_workers_at_once_cause_one_fetch(
    cluster: Cluster, responder: OCSPTestResponder, crls: CRLServer, kind: str
) -> None:
    if kind == "ocsp":
        leaf = cluster.issue("burst ocsp", ocsp_url=responder.url)
        responder.delay = 0.4  # every worker arrives while the first fetch is in flight
    else:
        leaf = cluster.issue("burst crl", crl_url=crls.url(CRL_PATH))
        crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing)), delay=0.4)
    workers = [cluster.worker() for _ in range(8)]
    start = threading.Barrier(len(workers))

    def one(app: MTLSMiddleware) -> int:
        start.wait()
        return int(cluster.get(app, leaf).status_code)

    with ThreadPoolExecutor(len(workers)) as pool:
        assert list(pool.map(one, workers)) == [200] * len(workers)
    fetches = responder.requests if kind == "ocsp" else crls.count(CRL_PATH)
    assert fetches == 1
    assert sum(shared(w).stats()["waits"] for w in workers) >= 1


def test_the_shared_response_expires_at_next_update(
    cluster: Cluster, responder: OCSPTestResponder, redis_db: Any
) -> None:
    responder.validity = dt.timedelta(seconds=1)
    leaf = cluster.issue("short shared", ocsp_url=responder.url)
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "ocsp")
    assert 0 < redis_db.pttl(key) <= 1000  # no longer than the response's nextUpdate
    threading.Event().wait(1.3)
    assert data_keys(redis_db, "ocsp") == []
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    assert responder.requests == 2  # the new worker had to ask again


def test_a_crl_refreshed_by_one_worker_is_picked_up_by_the_others(
    cluster: Cluster, crls: CRLServer
) -> None:
    leaf = cluster.issue("crl refresh", crl_url=crls.url(CRL_PATH))
    now = dt.datetime.now(dt.timezone.utc)
    ending = make_crl(cluster.pki.issuing, this_update=now - dt.timedelta(minutes=9), next_update=now + MINUTE)
    crls.set(CRL_PATH, crl_bytes(ending))
    a, b = cluster.worker(cache_size=0), cluster.worker(cache_size=0)  # every request asks the source
    assert cluster.get(a, leaf).status_code == 200
    assert cluster.get(b, leaf).status_code == 200
    assert crls.count(CRL_PATH) == 1
    newer = make_crl(cluster.pki.issuing, this_update=now, next_update=now + 60 * MINUTE)
    crls.set(CRL_PATH, crl_bytes(newer))
    # In the last tenth of its life, a use starts a background refresh: A fetches the new CRL ...
    assert cluster.get(a, leaf).status_code == 200
    _refreshed(a)
    assert crls.count(CRL_PATH) == 2
    # ... and B, refreshing in turn, finds it in Redis.
    assert cluster.get(b, leaf).status_code == 200
    _refreshed(b)
    assert crls.count(CRL_PATH) == 2
    held = _crl_source(b).cached(crls.url(CRL_PATH))
    assert held is not None
    assert held.this_update == newer.last_update_utc


def test_a_background_refresh_holds_its_lock_as_long_as_it_may_run(
    cluster: Cluster, crls: CRLServer, redis_db: Any
) -> None:
    leaf = cluster.issue("refresh lock", crl_url=crls.url(CRL_PATH))
    now = dt.datetime.now(dt.timezone.utc)
    ending = make_crl(cluster.pki.issuing, this_update=now - dt.timedelta(minutes=9), next_update=now + MINUTE)
    crls.set(CRL_PATH, crl_bytes(ending))
    a = cluster.worker(cache_size=0)
    assert cluster.get(a, leaf).status_code == 200
    gate = threading.Event()
    crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing, this_update=now)), gate=gate)
    try:
        assert cluster.get(a, leaf).status_code == 200  # starts the refresh, held at the server
        for _ in range(500):  # the refresh thread takes the lock on its own time
            locks = [k for k in redis_db.keys("*:revocation:crl:*") if k.endswith(b":lock")]
            if locks:
                break
            threading.Event().wait(0.01)
        (lock,) = locks
        # The refresh may take refresh_timeout (60 s), far longer than a request's deadline (4 s).
        assert redis_db.pttl(lock) > 4_000
    finally:
        gate.set()
    _refreshed(a)
    assert crls.count(CRL_PATH) == 2


def _crl_source(app: MTLSMiddleware) -> CRLSource:
    checker = app.authenticator.revocation
    assert checker is not None
    assert isinstance(checker.crl_source, CRLSource)
    return checker.crl_source


def _refreshed(app: MTLSMiddleware) -> None:
    source = _crl_source(app)
    for _ in range(500):
        if source.refreshes_running() == 0:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the background refresh did not finish")


@pytest.mark.parametrize("kind", ["ocsp", "crl"])
def test_revocation_max_age_bounds_the_shared_lifetime(
    cluster: Cluster, responder: OCSPTestResponder, crls: CRLServer, redis_db: Any, kind: str
) -> None:
    # Valid for an hour by nextUpdate, but max_age allows 30 s past thisUpdate: Redis keeps it no longer.
    if kind == "ocsp":
        responder.validity = dt.timedelta(hours=1)
        leaf = cluster.issue("max age ocsp", ocsp_url=responder.url)
    else:
        leaf = cluster.issue("max age crl", crl_url=crls.url(CRL_PATH))
        now = dt.datetime.now(dt.timezone.utc)
        crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing, this_update=now, next_update=now + 60 * MINUTE)))
    assert cluster.get(cluster.worker(revocation_max_age=30), leaf).status_code == 200
    (key,) = data_keys(redis_db, kind)
    assert 0 < redis_db.pttl(key) <= 30_000


# -- Redis vouches for nothing -----------------------------------------------------------------


def _ocsp_request(leaf: Issued, pki: TestPKI) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf.cert, pki.issuing.cert, hashes.SHA1())  # noqa: S303
    return builder.build().public_bytes(serialization.Encoding.DER)


def _tampered(case: str, leaf: Issued, pki: TestPKI, responder: OCSPTestResponder, stored: bytes) -> bytes:
    label, _, der = stored.partition(b"\n")
    serial = leaf.cert.serial_number
    if case == "garbage":
        return label + b"\nnot an OCSP response"
    if case == "bit-flipped-signature":
        return label + b"\n" + der[:-1] + bytes([der[-1] ^ 1])
    if case == "forged-revoked":  # a 'revoked' signed by a key that may not speak for the issuer
        responder.fault = "wrong-key"
        responder.set_status(serial, "revoked", revoked_at=NOW)
        forged = responder.respond(_ocsp_request(leaf, pki))
        responder.fault = None
        responder.set_status(serial, "good")
        return label + b"\n" + forged
    if case == "other-certificate":  # genuine, but about someone else
        other = pki.issue_client("someone else")
        responder.set_status(other.cert.serial_number, "revoked", revoked_at=NOW)
        return label + b"\n" + responder.respond(_ocsp_request(other, pki))
    assert case == "stale"
    responder.fault = "stale"
    stale = responder.respond(_ocsp_request(leaf, pki))
    responder.fault = None
    return label + b"\n" + stale


@pytest.mark.parametrize(
    "case", ["garbage", "bit-flipped-signature", "forged-revoked", "other-certificate", "stale"]
)
def test_tampered_ocsp_data_in_redis_is_refused_and_refetched(
    cluster: Cluster, responder: OCSPTestResponder, redis_db: Any, case: str
) -> None:
    leaf = cluster.issue(f"tampered {case}", ocsp_url=responder.url)
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "ocsp")
    good = redis_db.get(key)
    redis_db.set(key, _tampered(case, leaf, cluster.pki, responder, good), px=60_000)
    b = cluster.worker()
    response = cluster.get(b, leaf)
    assert response.status_code == 200
    assert response.json["revocation"] == "ocsp:good"
    assert responder.requests == 2  # B refused what Redis held and asked the responder
    assert shared(b).stats()["rejected"] == 1
    # B shared what it fetched in place of the tampered copy: a third worker uses it.
    c = cluster.worker()
    assert cluster.get(c, leaf).status_code == 200
    assert responder.requests == 2
    assert shared(c).stats()["hits"] == 1


def test_forged_crl_in_redis_is_refused_and_refetched(cluster: Cluster, crls: CRLServer, redis_db: Any) -> None:
    leaf = cluster.issue("forged crl", crl_url=crls.url(CRL_PATH))
    genuine = crl_bytes(make_crl(cluster.pki.issuing))
    crls.set(CRL_PATH, genuine)
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "crl")
    forged = make_crl(
        cluster.pki.issuing, [leaf.cert.serial_number], signer_key=cluster.pki.issue_client("forger").key
    )
    redis_db.set(key, forged.public_bytes(serialization.Encoding.DER), px=60_000)
    b = cluster.worker()
    response = cluster.get(b, leaf)
    assert response.status_code == 200  # the forged "revoked" did not count
    assert crls.count(CRL_PATH) == 2
    assert shared(b).stats()["rejected"] == 1
    assert redis_db.get(key) == crl_der(genuine)  # B shared the genuine CRL in its place


def test_another_cas_genuine_crl_in_redis_is_refused_and_refetched(
    cluster: Cluster, crls: CRLServer, redis_db: Any
) -> None:
    # Authentic and fresh, but the root's: stored under this URL it must not fail the location.
    leaf = cluster.issue("wrong issuer", crl_url=crls.url(CRL_PATH))
    genuine = crl_bytes(make_crl(cluster.pki.issuing))
    crls.set(CRL_PATH, genuine)
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "crl")
    redis_db.set(key, crl_der(crl_bytes(make_crl(cluster.pki.root))), px=600_000)
    b = cluster.worker()
    assert [cluster.get(b, leaf).status_code for _ in range(2)] == [200, 200]
    assert crls.count(CRL_PATH) == 2  # B refused the root's CRL and asked the URL, once
    assert shared(b).stats()["rejected"] == 1
    assert redis_db.get(key) == crl_der(genuine)  # and shared the right one in its place
    c = cluster.worker()
    assert cluster.get(c, leaf).status_code == 200
    assert shared(c).stats()["hits"] == 1


def test_another_cas_crl_that_its_configured_url_really_serves_stays_in_redis(
    cluster: Cluster, crls: CRLServer, redis_db: Any
) -> None:
    # A configured URL may serve another CA's CRL (here the root's): shared by whoever checked a
    # certificate of that CA, it is no forgery, and a worker checking someone else must not delete it.
    root_crl = crl_bytes(make_crl(cluster.pki.root))
    root_url = crls.set("/root.crl", root_crl)
    issuing_url = crls.set(CRL_PATH, crl_bytes(make_crl(cluster.pki.issuing)))
    leaf = cluster.issue("configured urls")  # no distribution point of its own
    key = f"mtls_middleware:revocation:crl:{root_url}"
    redis_db.set(key, crl_der(root_crl), px=600_000)
    b = cluster.worker(crls=[root_url, issuing_url])
    assert cluster.get(b, leaf).json["revocation"] == "crl:good"
    assert shared(b).stats()["rejected"] == 0
    assert redis_db.exists(key) == 1


def test_an_older_ocsp_good_replayed_into_redis_is_refused_by_a_worker_that_saw_newer(
    cluster: Cluster, responder: OCSPTestResponder, redis_db: Any
) -> None:
    # Genuine and unexpired, but superseded: the "good" from before the certificate was revoked.
    leaf = cluster.issue("replayed good", ocsp_url=responder.url)
    responder.clock_offset = -MINUTE
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "ocsp")
    old_good = redis_db.get(key)
    redis_db.delete(key)
    responder.clock_offset = dt.timedelta(0)
    responder.validity = dt.timedelta(seconds=1)  # B's own copy of the "revoked" soon leaves its memory
    responder.set_status(leaf.cert.serial_number, "revoked", revoked_at=NOW)
    b = cluster.worker(cache_size=0)  # no verdict cache: every request asks the revocation checker
    assert cluster.get(b, leaf).json["error"] == "certificate_revoked"
    threading.Event().wait(1.2)
    redis_db.set(key, old_good, px=60_000)
    assert cluster.get(b, leaf).json["error"] == "certificate_revoked"
    assert shared(b).stats()["rejected"] == 1
    assert responder.requests == 3  # B refused the replay and asked the responder again


def test_oversize_ocsp_data_in_redis_is_refused_unread(
    cluster: Cluster, responder: OCSPTestResponder, redis_db: Any
) -> None:
    # A genuine response behind a 1 MB label: it would verify, but is far over max_ocsp_bytes.
    leaf = cluster.issue("oversize ocsp", ocsp_url=responder.url)
    assert cluster.get(cluster.worker(), leaf).status_code == 200
    (key,) = data_keys(redis_db, "ocsp")
    _, _, der = redis_db.get(key).partition(b"\n")
    redis_db.set(key, b"x" * 1_000_000 + b"\n" + der, px=60_000)
    b = cluster.worker()
    assert cluster.get(b, leaf).json["revocation"] == "ocsp:good"
    assert shared(b).stats()["rejected"] == 1
    assert shared(b).stats()["hits"] == 0
    assert responder.requests == 2  # B asked the responder instead
    assert len(redis_db.get(key)) < 65536  # the oversize value is gone, B's answer shared in its place


@pytest.mark.parametrize("size", [pytest.param(100, id="at-the-cap"), pytest.param(101, id="one-byte-over")])
def test_shared_data_is_capped_at_max_bytes(redis_db: Any, redis_server: RedisServer, size: int) -> None:
    cache = SharedCache(redis_server.url, prefix="capped:")
    try:
        redis_db.set("capped:crl:http://ca/x.crl", b"c" * size)
        claim = cache.claim("crl", "http://ca/x.crl", deadline=time.monotonic() + 5, max_bytes=100)
        if size <= 100:
            assert claim.data == b"c" * size
        else:
            assert claim.data is None
            assert claim.token is not None  # a miss: this worker fetches it
            assert cache.stats()["rejected"] == 1
            assert redis_db.exists("capped:crl:http://ca/x.crl") == 0
    finally:
        cache.close()


# -- Redis down, hung, back ----------------------------------------------------------------------


def test_redis_killed_mid_run_then_restarted(
    cluster: Cluster, responder: OCSPTestResponder, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mtls_middleware")
    first, second, third = (cluster.issue(f"outage {n}", ocsp_url=responder.url) for n in range(3))
    a, b = cluster.worker(), cluster.worker()
    assert cluster.get(a, first).status_code == 200
    assert cluster.get(b, first).status_code == 200
    assert responder.requests == 1

    redis_server.stop()
    # Without Redis each worker fetches for itself: served, not refused.
    assert cluster.get(a, second).json["revocation"] == "ocsp:good"
    assert cluster.get(b, second).json["revocation"] == "ocsp:good"
    assert responder.requests == 3
    assert shared(a).stats()["errors"] >= 1
    assert len(_cache_logs(caplog, "unavailable")) == 2  # one warning per worker, not one per request
    # Require mode fails closed only when the responder is down as well.
    responder.stop()
    assert cluster.get(a, third).status_code == 503
    assert cluster.get(a, third).json["error"] == "revocation_unavailable"
    assert cluster.get(cluster.worker("soft-fail"), third).status_code == 200

    with OCSPTestResponder(cluster.pki.issuing) as again:
        fourth = cluster.issue("after the outage", ocsp_url=again.url)
        redis_server.start()
        threading.Event().wait(shared(a).retry_after + 0.1)  # the workers try Redis again after this
        assert cluster.get(a, fourth).status_code == 200
        assert cluster.get(b, fourth).status_code == 200
        assert again.requests == 1  # shared again
        assert len(_cache_logs(caplog, "is back")) == 2
        assert shared(b).stats()["hits"] >= 2


def _cache_logs(caplog: pytest.LogCaptureFixture, word: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "revocation cache" in r.getMessage() and word in r.getMessage()]


def test_a_hung_redis_costs_one_timeout_not_the_request(pki: TestPKI, responder: OCSPTestResponder) -> None:
    sock, url = silent_port()  # accepts connections, never answers
    try:
        c = Cluster(pki, url)
        leaf = c.issue("hung redis", ocsp_url=responder.url)
        app = c.worker()
        started = time.monotonic()
        assert c.get(app, leaf).json["revocation"] == "ocsp:good"
        assert time.monotonic() - started < 4.0  # within the revocation deadline (a bound, not a benchmark)
        stats = shared(app).stats()
        assert stats["errors"] == 1  # then Redis is left alone for retry_after seconds
        assert stats["hits"] == 0
        c.close()
    finally:
        sock.close()


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(0.4, id="slower-than-half-the-timeout"),
        pytest.param(0.2, id="just-under-half-the-timeout"),
    ],
)
def test_a_slow_redis_never_costs_more_than_one_timeout_past_the_deadline(
    pki: TestPKI, responder: OCSPTestResponder, redis_server: RedisServer, redis_db: Any, delay: float
) -> None:
    # Deadline 2 s, Redis timeout 0.5 s; the responder answers late, so the fetch ends near the
    # deadline and whatever Redis is asked after it would run past.
    responder.delay = 0.75
    with SlowRelay(redis_server.port, delay) as relay:
        c = Cluster(pki, relay.url)
        try:
            leaf = c.issue(f"slow redis {delay}", ocsp_url=responder.url)
            app = c.worker(revocation_timeout=1.0, revocation_deadline=2.0)
            timeout = shared(app).timeout
            started = time.monotonic()
            response = c.get(app, leaf)
            took = time.monotonic() - started
            print(f"\nreply delay {delay} s: the request took {took:.2f} s; stats {shared(app).stats()}")
            assert response.json["revocation"] == "ocsp:good"
            assert took < 2.0 + timeout  # a bound, not a benchmark
            if delay > timeout / 2:
                assert shared(app).stats()["errors"] == 1  # then Redis is left alone for retry_after
        finally:
            c.close()


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:6379/0", id="http-scheme"),
        pytest.param("redis://", id="no-host"),
        pytest.param("redis://127.0.0.1:notaport/0", id="bad-port"),
        pytest.param("unix://", id="unix-without-path"),
        pytest.param(6379, id="not-a-string"),
    ],
)
def test_a_bad_revocation_cache_url_fails_at_start_up(pki: TestPKI, url: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MTLSConfig(trust_roots=[pki.root.cert], store=MemoryStore(), revocation_cache=url)
    assert "revocation_cache" in caught.value.detail


def test_the_password_never_reaches_a_message() -> None:
    cache = SharedCache("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(cache)
    with pytest.raises(ConfigurationError) as caught:
        SharedCache("ftp://user:s3cret@host/0")
    assert "s3cret" not in caught.value.detail


def test_without_redis_py_the_configuration_says_what_to_install(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uninstalled package is the one fault this machine cannot produce for real.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigurationError) as caught:
        MTLSConfig(trust_roots=[pki.root.cert], store=MemoryStore(), revocation_cache="redis://127.0.0.1/0")
    assert "mtls_middleware[redis]" in caught.value.detail
    # With revocation off nothing would use it: the URL is checked, redis-py is not needed.
    MTLSConfig(
        trust_roots=[pki.root.cert], store=MemoryStore(), revocation="off", revocation_cache="redis://127.0.0.1/0"
    )
