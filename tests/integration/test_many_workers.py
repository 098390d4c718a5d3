"""Four gunicorn workers behind real nginx, one shared store, one shared revocation cache.

A Python client with alice's certificate sends N requests through nginx (TLS, client
certificates) to gunicorn with 4 sync workers, which share a store (SQLite file; PostgreSQL when
the PostgreSQL store is available) and a Redis revocation cache (a redis-server of our own). Then:

- every request was accepted, by all 4 workers, and the OCSP responder was asked once for the
  whole cluster (the other workers found the verified response in Redis);
- a certificate deleted by another process is refused by every worker from the next request on,
  with no accepted request after the deletion returned;
- after a graceful shutdown (the workers' history writers flush at exit), the store holds exactly
  one history row per request.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware.stores import Store, open_store
from mtls_middleware.testing import TestPKI
from tests.conftest import REQUIRE_SERVICES, require_service
from tests.integration.conftest import (
    LOOPBACK,
    PROXY_ADDRESS,
    Materials,
    free_port,
    gunicorn_argv,
    require_module,
    start_nginx,
    start_server,
)
from tests.revocation.ocsp_server import OCSPTestResponder
from tests.revocation.redis_server import RedisServer

WORKERS = 4
#: Requests of the load phase; the load runs in a few seconds on a 2-CPU machine.
REQUESTS = 2000
THREADS = 8
APP = "tests.integration.workers_app:wsgi_app()"


# -- the store every process shares ------------------------------------------------------------


PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store every process opens: a SQLite file, or a PostgreSQL schema of this test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mtls.db'}"
        return
    require_module("psycopg")
    import psycopg

    try:
        admin = psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)
    schema = f"mtls_workers_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{PG_SERVER}?schema={schema}"
    finally:
        with admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def shared_store(store_url: str, materials: Materials) -> Iterator[Store]:
    store = open_store(store_url)
    store.add_user("alice", org="acme")
    store.upload_certificate(materials.clients["alice"].issued.chain_pem, user_id="alice")
    yield store
    close = getattr(store, "close", None)
    if callable(close):
        close()


# -- the cluster -----------------------------------------------------------------------------


@dataclass
class Cluster:
    nginx_port: int
    responder: OCSPTestResponder
    stop_app: Any


@pytest.fixture
def cluster(
    materials: Materials,
    pki: TestPKI,
    store_url: str,
    shared_store: Store,
    tmp_path: Path,
) -> Iterator[Cluster]:
    require_service("nginx", "nginx is not installed (apt-get install nginx-light)")
    with RedisServer(tmp_path) as redis_server, OCSPTestResponder(pki.issuing) as responder:
        port = free_port()
        argv = gunicorn_argv(port, "--workers", str(WORKERS))
        argv[-1] = APP
        env = materials.app_env(proxy="nginx", trusted=[PROXY_ADDRESS])
        env.update(
            MTLS_WK_STORE=store_url,
            MTLS_WK_OCSP=responder.url,
            MTLS_WK_REVOCATION_CACHE=redis_server.url,
        )
        app = start_server(f"gunicorn ({WORKERS} workers)", argv, port=port, log=tmp_path / "gunicorn.log", env=env)
        try:
            nginx, _ = start_nginx(materials, upstream_port=port, prefix=tmp_path / "nginx")
            try:
                yield Cluster(nginx.port, responder, app.stop)
            finally:
                nginx.stop()
        finally:
            app.stop()


# -- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    pid: str
    body: dict[str, Any]


class Client:
    """Keep-alive HTTPS connections with alice's certificate, one per thread."""

    def __init__(self, materials: Materials, port: int) -> None:
        alice = materials.clients["alice"]
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(materials.root))
        self.context.check_hostname = False  # the server certificate names localhost; the chain is verified
        self.context.load_cert_chain(alice.cert, alice.key)
        self.port = port
        self._local = threading.local()

    def get(self) -> Answer:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPSConnection(
                LOOPBACK, self.port, context=self.context, timeout=30
            )
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
        return Answer(response.status, response.getheader("X-Worker-Pid") or "?", json.loads(body))

    def many(self, count: int) -> list[Answer]:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(lambda _: self.get(), range(count)))


# -- the test --------------------------------------------------------------------------------


def test_four_workers_share_revocation_history_and_deletions(
    cluster: Cluster, materials: Materials, shared_store: Store, store_url: str
) -> None:
    client = Client(materials, cluster.nginx_port)
    # One worker asks the responder and shares the response; the others must find it in Redis.
    # (Concurrent first requests share one fetch too, see tests/revocation/test_shared_cache.py;
    # here a Redis reply delayed past its timeout by a saturated CI machine would, by design, let
    # a worker fetch for itself.)
    first = client.get()
    assert first.status == 200
    assert cluster.responder.requests == 1
    answers = [first, *client.many(REQUESTS - 1)]
    statuses = Counter(a.status for a in answers)
    assert statuses == {200: REQUESTS}, [a.body for a in answers if a.status != 200][:3]
    assert {a.body["user_id"] for a in answers} == {"alice"}
    assert {a.body["revocation"] for a in answers} == {"ocsp:good"}
    pids = {a.pid for a in answers}
    assert len(pids) == WORKERS  # the load reached every worker
    assert cluster.responder.requests == 1  # one OCSP fetch for the whole cluster

    # Deleted by another process: every worker refuses it, and never accepts it again. SQLite's
    # shared change counter is read on every request: refused from the very next one. PostgreSQL
    # tells the workers by NOTIFY: the bound is 1 s (typically a few ms).
    shared_store.delete_certificate(materials.clients["alice"].fingerprint)
    deleted = time.monotonic()
    refused_at: dict[str, float] = {}
    after: list[Answer] = []
    while refused_at.keys() != pids and len(after) < REQUESTS:
        for answer in client.many(THREADS * 4):
            after.append(answer)
            if answer.status == 403:
                refused_at.setdefault(answer.pid, time.monotonic())
            else:
                assert answer.pid not in refused_at, "a worker accepted a deleted certificate again"
    assert refused_at.keys() == pids
    assert {a.body.get("error") for a in after if a.status != 200} == {"unknown_certificate"}
    if store_url.startswith("sqlite"):
        assert Counter(a.status for a in after) == {403: len(after)}  # not one accepted after the delete
    else:
        assert max(refused_at.values()) - deleted < 1.0

    cluster.stop_app()  # SIGTERM: a graceful shutdown, each worker's history writer flushes at exit
    history = shared_store.login_history(limit=None)
    outcomes = Counter(r.outcome for r in history)
    accepted_after = sum(1 for a in after if a.status == 200)
    assert outcomes == {"accepted": REQUESTS + accepted_after, "unknown_certificate": len(after) - accepted_after}
    assert len({r.fingerprint for r in history}) == 1

