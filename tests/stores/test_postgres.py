"""The PostgreSQL store with the real server: migrations, the pool, races decided by the database,
invalidation across processes (NOTIFY, the fallback re-read, a killed listener) and an outage
made by cutting a TCP relay between the store and the server (the system server is never
stopped). The contract suite runs over this store as well (``-k postgresql``)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_middleware.errors import ConfigurationError, MTLSError, Reason
from mtls_middleware.history import LoginRecord
from mtls_middleware.stores import open_store
from mtls_middleware.testing import Issued, TestPKI
from tests.integration.conftest import free_port
from tests.stores.backend_postgresql import DSN, drop_schemas, new_schema, require_postgres
from tests.stores.helpers import (
    Relay,
    changes_refusing_alice,
    finish,
    history_record,
    race_to_upload,
    run_python,
    tls_environ,
    use_in_a_forked_child,
    wsgi_client,
)

psycopg = pytest.importorskip("psycopg")

from mtls_middleware.stores.postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402


@pytest.fixture
def schema() -> Iterator[str]:
    require_postgres()
    name = new_schema()
    yield name
    drop_schemas([name])


def _url(schema: str, dsn: str = DSN) -> str:
    return f"{dsn}?schema={schema}"


def _sql(query: str, *args: Any, schema: str = "") -> list[tuple[Any, ...]]:
    """Run ``query`` on the test server; ``{s}`` in it names ``schema``."""
    from psycopg import sql

    with psycopg.connect(DSN, autocommit=True) as conn:
        cursor = conn.execute(sql.SQL(query).format(s=sql.Identifier(schema or "public")), args)
        return cursor.fetchall() if cursor.description else []


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()










# -- URLs and start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_store_takes_postgresql_urls_with_a_schema(scheme: str, schema: str) -> None:
    store = open_store(_url(schema, DSN.replace("postgresql", scheme, 1)))
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema == schema
        store.add_user("alice")
    finally:
        store.close()
    assert _sql("SELECT user_id FROM {s}.users", schema=schema) == [("alice",)]


def test_a_url_carries_pool_options_and_arguments_win(schema: str) -> None:
    url = _url(schema) + "&max_size=3&timeout=1.5&fallback_interval=7"
    with PostgresStore(url) as from_url, PostgresStore(url, max_size=5) as overridden:
        assert (from_url._pool.max_size, from_url._pool.timeout) == (3, 1.5)
        assert from_url._fallback_interval == 7.0
        assert overridden._pool.max_size == 5


@pytest.mark.parametrize("option", ["max_size=many", "timeout=soon", "min_size=1.5"])
def test_a_bad_url_option_is_a_configuration_error(option: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PostgresStore(f"{DSN}?{option}")
    assert option.split("=")[0] in info.value.detail


@pytest.mark.parametrize("name", ["Upper", "1digit", "semi;colon", "x" * 41, ""])
def test_a_bad_schema_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        PostgresStore(DSN, schema=name)


def test_an_unreachable_server_at_start_up_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test", schema="nowhere")
    assert "is the server running" in info.value.detail


def test_without_psycopg_the_url_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Uninstalling psycopg is not something a test can do to the venv: hide the module instead.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigurationError) as info:
        open_store("postgresql://postgres@127.0.0.1/test")
    assert "mtls_middleware[postgresql]" in info.value.detail


# -- migrations -----------------------------------------------------------------------------------


def test_migrates_an_empty_schema_and_reopens_without_migrating(schema: str, alice: Issued) -> None:
    with PostgresStore(DSN, schema=schema) as store:
        assert store.schema_version_found == 0
        store.add_user("alice")
        store.upload_certificate(alice.chain_pem, user_id="alice")
    assert _sql("SELECT value FROM {s}.meta WHERE key = 'schema_version'", schema=schema) == [(SCHEMA_VERSION,)]
    with PostgresStore(DSN, schema=schema) as again:
        assert again.schema_version_found == SCHEMA_VERSION
        assert again.download_certificate(alice.fingerprint) == alice.chain_pem


def test_concurrent_openers_migrate_once(schema: str) -> None:
    found: list[int] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            with PostgresStore(DSN, schema=schema) as store:
                found.append(store.schema_version_found)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(found) == [0] + [SCHEMA_VERSION] * 3


def test_a_newer_schema_is_refused(schema: str) -> None:
    PostgresStore(DSN, schema=schema).close()
    _sql("UPDATE {s}.meta SET value = %s WHERE key = 'schema_version'", SCHEMA_VERSION + 1, schema=schema)
    with pytest.raises(ConfigurationError) as info:
        PostgresStore(DSN, schema=schema)
    assert "upgrade mtls_middleware" in info.value.detail


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("CREATE TABLE {s}.orders (id INT)", id="foreign-table"),
        pytest.param("CREATE TABLE {s}.meta (key TEXT PRIMARY KEY, value BIGINT)", id="foreign-meta"),
    ],
)
def test_a_schema_of_another_application_is_refused(schema: str, setup: str) -> None:
    _sql("CREATE SCHEMA {s}", schema=schema)
    _sql(setup, schema=schema)
    with pytest.raises(ConfigurationError) as info:
        PostgresStore(DSN, schema=schema)
    assert "another application" in info.value.detail


def test_pem_is_stored_as_bytea_byte_for_byte(schema: str, bob: Issued) -> None:
    pem = b"# a comment the uploader kept\r\n" + bob.chain_pem + b"\n\n"
    with PostgresStore(DSN, schema=schema) as store:
        store.add_user("bob")
        store.upload_certificate(pem, user_id="bob")
    ((stored, kind),) = _sql("SELECT pem, pg_typeof(pem)::text FROM {s}.certificates", schema=schema)
    assert (bytes(stored), kind) == (pem, "bytea")


# -- the pool -------------------------------------------------------------------------------------


def test_lookups_from_many_threads_share_a_bounded_pool(schema: str, alice: Issued) -> None:
    with PostgresStore(DSN, schema=schema, min_size=1, max_size=2) as store:
        store.add_user("alice")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        answers: list[object] = []

        def lookups() -> None:
            for _ in range(20):
                answers.append(store.resolve_certificate(alice.fingerprint))

        threads = [threading.Thread(target=lookups) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == 160
        assert all(a is not None for a in answers)
        backends = _sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", f"mtls {schema}")
        assert 1 <= backends[0][0] <= 2


def test_a_pooled_connection_killed_by_the_server_is_replaced_unseen(schema: str, alice: Issued) -> None:
    with PostgresStore(DSN, schema=schema, min_size=1, max_size=1) as store:
        store.add_user("alice")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        killed = _sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            f"mtls {schema}",
        )
        assert killed == [(True,)]
        assert store.resolve_certificate(alice.fingerprint) is not None


# -- races between processes ----------------------------------------------------------------------






def test_two_processes_racing_to_upload_one_certificate(schema: str, tmp_path: Path, pki: TestPKI) -> None:
    with PostgresStore(DSN, schema=schema) as store:
        store.add_user("p0", org="one")
        store.add_user("p1", org="two")
    assert race_to_upload(_url(schema), tmp_path, pki, rounds=4) == [["duplicate_certificate", "ok"]] * 4
    with PostgresStore(DSN, schema=schema) as store:
        assert len(store.list_certificates()) == 4


# -- invalidation across processes ----------------------------------------------------------------

# A worker: its own store and middleware; it serves the certificate until refused. The fallback
# re-read is 60 s away, so only a notification can refuse it within the test's wait.
WORKER = """
    import json, sys, time
    from werkzeug.test import Client
    from mtls_middleware import MTLSConfig
    from mtls_middleware.stores.postgres import PostgresStore
    from mtls_middleware.wsgi import MTLSMiddleware
    url, materials = sys.argv[1], json.load(open(sys.argv[2]))
    store = PostgresStore(url, fallback_interval=60.0)
    def ok(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]
    config = MTLSConfig(trust_roots=materials["root"], store=store, revocation="off")
    client = Client(MTLSMiddleware(ok, config))
    environ = materials["environ"]
    statuses = [client.get("/", environ_overrides=environ).status_code for _ in range(3)]
    print("ready", *statuses, flush=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        response = client.get("/", environ_overrides=environ)
        if response.status_code != 200:
            print(repr(time.time()), response.json["error"], flush=True)
            break
        time.sleep(0.001)
    else:
        print("never-refused", "-", flush=True)
    store.close()
"""

CHANGER = """
    import sys, time
    from mtls_middleware.stores.postgres import PostgresStore
    url, change, fingerprint = sys.argv[1:4]
    store = PostgresStore(url)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    if change == "delete":
        store.delete_certificate(fingerprint)
    elif change == "deactivate":
        store.set_user_active("alice", False)
    else:
        store.set_org("acme", cert_auth=False)
    print(repr(started), repr(time.time()), store.resolve_certificate(fingerprint) is not None, flush=True)
    store.close()
"""


@pytest.mark.parametrize(
    ("change", "reason"), changes_refusing_alice(delete="delete", deactivate="deactivate", org_off="org-off")
)
def test_a_change_in_one_worker_process_is_refused_by_another(
    schema: str, tmp_path: Path, pki: TestPKI, alice: Issued, change: str, reason: str
) -> None:
    import json

    with PostgresStore(DSN, schema=schema) as store:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
    materials = tmp_path / "materials.json"
    root = tmp_path / "root.pem"
    root.write_bytes(pki.root.cert.public_bytes(serialization.Encoding.PEM))
    materials.write_text(json.dumps({"root": str(root), "environ": tls_environ(alice, pki)}))
    worker = run_python(WORKER, _url(schema), str(materials))
    changer = run_python(CHANGER, _url(schema), change, alice.fingerprint)
    try:
        assert worker.stdout is not None
        assert changer.stdout is not None
        assert changer.stdin is not None
        assert worker.stdout.readline().split() == ["ready", "200", "200", "200"]  # then from cache
        assert changer.stdout.readline().strip() == "ready"
        changer.stdin.write("go\n")
        changer.stdin.flush()
        started, committed, _ = changer.stdout.readline().split()
        refused_at, error = worker.stdout.readline().split()
    finally:
        finish(worker)
        finish(changer)
    assert error == reason
    print(
        f"\n{change}: refused by the other worker {(float(refused_at) - float(started)) * 1000:.1f} ms "
        f"after the call started, {(float(refused_at) - float(committed)) * 1000:.1f} ms after it returned"
    )


def test_a_change_without_a_notification_is_seen_by_the_fallback_re_read(schema: str) -> None:
    with PostgresStore(DSN, schema=schema, fallback_interval=0.5) as store:
        store.add_user("alice")
        before = store.generation
        # What a lost message looks like: the counter moves, nobody is told.
        _sql("UPDATE {s}.meta SET value = value + 1 WHERE key = 'generation'", schema=schema)
        assert _wait_for(lambda: store.generation != before, 5.0)


def test_a_killed_listener_drops_cached_verdicts_and_reconnects(
    schema: str, pki: TestPKI, alice: Issued
) -> None:
    with PostgresStore(DSN, schema=schema, fallback_interval=60.0, reconnect_delay=0.1) as store:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = wsgi_client(store, pki)
        assert client.get("/", environ_overrides=tls_environ(alice, pki)).status_code == 200
        before = store.generation
        killed = _sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            f"mtls listener {schema}",
        )
        assert killed == [(True,)]
        assert _wait_for(lambda: store._listener.reconnections == 1 and store.listener_connected)
        assert store.generation != before
        # Back to notifications: another store's delete is refused here without the fallback.
        with PostgresStore(DSN, schema=schema) as other:
            other.delete_certificate(alice.fingerprint)
        assert _wait_for(
            lambda: client.get("/", environ_overrides=tls_environ(alice, pki)).status_code == 403, 5.0
        )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_uses_connections_of_its_own(schema: str, alice: Issued) -> None:
    with PostgresStore(DSN, schema=schema) as store:
        store.add_user("alice")
        store.record(history_record(0))
        assert store.flush(10)
        assert use_in_a_forked_child(store, alice.chain_pem) == 0
        # The parent's connections survived the child's exit.
        assert store.resolve_certificate(alice.fingerprint) is not None
        assert len(store.login_history(user_id="child")) == 5
        assert store.listener_connected


# -- PostgreSQL unreachable: a relay we can cut ---------------------------------------------------


@pytest.fixture
def relay() -> Iterator[Relay]:
    require_postgres()
    relay = Relay()
    yield relay
    relay.cut()


def _through(relay: Relay, schema: str, **options: Any) -> PostgresStore:
    options = {"timeout": 1.0, "fallback_interval": 1.0, "reconnect_delay": 0.1, **options}
    return PostgresStore(f"postgresql://postgres@127.0.0.1:{relay.port}/test", schema=schema, **options)


def test_an_outage_gives_503_keeps_the_history_and_recovers_without_restart(
    relay: Relay, schema: str, pki: TestPKI, alice: Issued
) -> None:
    store = _through(relay, schema)
    try:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = wsgi_client(store, pki)
        environ = tls_environ(alice, pki)
        assert client.get("/", environ_overrides=environ).status_code == 200
        assert client.get("/", environ_overrides=environ).status_code == 200  # cached

        relay.cut()
        assert _wait_for(lambda: not store.listener_connected)
        outage = [client.get("/", environ_overrides=environ) for _ in range(3)]
        # Fail closed: the cached verdict is not served while deletions elsewhere go unheard.
        assert [r.status_code for r in outage] == [503] * 3
        assert {(r.json or {}).get("error") for r in outage} == {"store_unavailable"}
        with pytest.raises(MTLSError) as info:
            store.delete_certificate(alice.fingerprint)
        assert info.value.reason is Reason.STORE_UNAVAILABLE
        assert store.flush(0.5) is False  # the records wait in the outage backlog

        statuses = [200, 200] + [r.status_code for r in outage]

        def answered() -> bool:
            statuses.append(client.get("/", environ_overrides=environ).status_code)
            return statuses[-1] == 200

        relay.restore()
        assert _wait_for(answered, 15.0)
        assert store.flush(10)
        # Every attempt, made before, during and after the outage, is in the history once.
        outcomes = [r.outcome for r in store.login_history(limit=None)]
        assert outcomes.count("store_unavailable") == statuses.count(503)
        assert outcomes.count("accepted") == statuses.count(200)
        assert len(outcomes) == len(statuses)
        assert store.history_dropped == 0
        assert store.history_writer.lost == 0
    finally:
        store.close()


def test_a_server_that_stops_answering_drops_cached_verdicts_within_the_bound(
    relay: Relay, schema: str, pki: TestPKI, alice: Issued
) -> None:
    store = _through(relay, schema, fallback_interval=0.5)
    try:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = wsgi_client(store, pki)
        assert client.get("/", environ_overrides=tls_environ(alice, pki)).status_code == 200
        assert store.listener_connected
        before = store.generation
        relay.frozen = True
        # The re-read gets no answer: the listener gives up after fallback_interval, drops the
        # cached verdicts and keeps trying. (Without its deadline it would wait forever.)
        assert _wait_for(lambda: not store.listener_connected, 5.0)
        assert store.generation != before
    finally:
        relay.cut()  # frees the requests and the pool's connections that wait on the frozen relay
        store.close()


def test_an_outage_longer_than_the_backlog_loses_a_counted_number_of_records(
    relay: Relay, schema: str
) -> None:
    store = _through(relay, schema, history_backlog=5, history_batch=2)
    try:
        relay.cut()
        assert _wait_for(lambda: not store.listener_connected)
        for index in range(8):
            store.record(history_record(index))
        store.history_writer.flush(10)
        assert store.history_backlog == 5
        assert store.history_dropped == 3
        relay.restore()
        assert _wait_for(lambda: store.listener_connected, 15.0)
        assert store.flush(10)
        kept = sorted(r.time for r in store.login_history(limit=None))
        assert kept == [1003.0, 1004.0, 1005.0, 1006.0, 1007.0]  # the oldest went first
    finally:
        store.close()


def test_history_written_during_an_outage_arrives_once_and_in_order(relay: Relay, schema: str) -> None:
    store = _through(relay, schema)
    try:
        store.record(history_record(0))
        assert store.flush(10)
        relay.cut()
        assert _wait_for(lambda: not store.listener_connected)
        for index in range(1, 201):
            store.record(history_record(index))
        relay.restore()
        # Nobody calls flush or records more: the listener's reconnection writes the backlog.
        assert _wait_for(lambda: store.history_backlog == 0 and store.history_writer.pending == 0, 15.0)
        times = [r.time for r in store.login_history(limit=None)]
        assert times == [1000.0 + i for i in range(200, -1, -1)]
    finally:
        store.close()


def test_nul_characters_never_reach_postgresql_as_errors(schema: str) -> None:
    # PostgreSQL text cannot hold NUL; a hostile certificate can still carry one (a SAN mapped to
    # a user id, a subject in the history): lookups find nobody, records are kept, nothing raises.
    with PostgresStore(DSN, schema=schema) as store:
        store.add_user("alice")
        assert store.resolve_user("alice\x00") is None
        with pytest.raises(MTLSError) as info:
            store.get_user("alice\x00")
        assert info.value.reason is Reason.UNKNOWN_USER
        with pytest.raises(MTLSError) as info:
            store.add_user("eve\x00")
        assert info.value.reason is Reason.UNKNOWN_USER
        store.record(LoginRecord("unknown_certificate", "tls:environ", subject="CN=a\x00b", time=5.0))
        assert [r.subject for r in store.login_history()] == ["CN=a\\x00b"]
        assert store.history_dropped == 0


def test_naive_and_aware_datetimes_filter_the_history_alike(schema: str) -> None:
    with PostgresStore(DSN, schema=schema) as store:
        for index in range(3):
            store.record(history_record(index))
        naive = dt.datetime(1970, 1, 1, 0, 16, 41)
        assert [r.time for r in store.login_history(since=naive)] == [1002.0, 1001.0]
        assert [r.time for r in store.login_history(since=naive.replace(tzinfo=dt.timezone.utc))] == [
            1002.0, 1001.0,
        ]


def test_a_counter_that_went_back_is_a_change_too(schema: str) -> None:
    # A database restored from a backup: the counter is lower than the one this process saw.
    with PostgresStore(DSN, schema=schema, fallback_interval=0.5) as store:
        store.add_user("alice")
        store.add_user("bob")
        before = store.generation
        _sql("UPDATE {s}.meta SET value = 1 WHERE key = 'generation'", schema=schema)
        assert _wait_for(lambda: store.generation != before, 5.0)


# -- the listener's own faults --------------------------------------------------------------------

# A busy server process holds more than 1024 descriptors; select() cannot watch one above 1023.
MANY_FDS = """
    import os, resource, sys, time
    from mtls_middleware.history import LoginRecord
    from mtls_middleware.stores.postgres import PostgresStore
    url = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    store = PostgresStore(url, fallback_interval=60.0)
    other = PostgresStore(url)
    try:
        listener_fd = store._listener.conn.pgconn.socket if store._listener.conn else -1
        before = store.generation
        other.add_user("bob")  # only the notification can tell within the wait below
        deadline = time.monotonic() + 10
        while store.generation == before and time.monotonic() < deadline:
            time.sleep(0.01)
        store.record(LoginRecord("accepted", "tls:environ", user_id="bob", time=1000.0))
        flushed = store.flush(10)
        print(max(held) > 1023, listener_fd > 1023, store.listener_connected,
              store._listener.failures, store.generation != before, flushed, store.history_backlog)
    finally:
        other.close()
        store.close()
"""


def test_the_listener_works_with_more_than_1024_descriptors_open(schema: str) -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the hard RLIMIT_NOFILE is below 1200: cannot hold 1100 descriptors")
    PostgresStore(DSN, schema=schema).close()
    out = finish(run_python(MANY_FDS, _url(schema))).split()
    # descriptors above 1023 held, the listener's among them; connected, never failed; a change
    # made elsewhere is seen; the history is written (not kept back for a listener that is down).
    assert out == ["True", "True", "True", "0", "True", "True", "0"]


def test_a_failing_listener_backs_off_and_logs_once_per_outage(
    schema: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with PostgresStore(DSN, schema=schema, fallback_interval=0.4, reconnect_delay=0.05) as store:
        listener = store._listener
        sleeps: list[float] = []
        real_sleep = listener._sleep

        def failing_session(reconnected: bool) -> None:
            raise RuntimeError("a fault of the listener's own (not the database's)")

        def recorded_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            real_sleep(seconds)

        monkeypatch.setattr(listener, "_session", failing_session)
        monkeypatch.setattr(listener, "_sleep", recorded_sleep)
        caplog.set_level("WARNING", logger="mtls_middleware")
        killed = _sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            f"mtls listener {schema}",
        )
        assert killed == [(True,)]
        assert _wait_for(lambda: len(sleeps) >= 6)
        assert not store.listener_connected
        assert sleeps[:6] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubling, capped at fallback_interval
        failed = [r for r in caplog.records if "listener" in r.getMessage() and r.levelname == "ERROR"]
        assert len(failed) == 1  # the first failure of the outage, with its traceback
        assert failed[0].exc_info is not None


def test_a_listener_thread_that_hangs_stops_cached_verdicts_within_the_bound(
    schema: str, pki: TestPKI, alice: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresStore(DSN, schema=schema, fallback_interval=0.2) as store:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = wsgi_client(store, pki)
        environ = tls_environ(alice, pki)
        assert client.get("/", environ_overrides=environ).status_code == 200
        listener = store._listener
        release = threading.Event()

        def hung(pgconn: Any) -> None:
            release.wait(30)  # a fault of its own: the thread lives on, its connection flag set

        monkeypatch.setattr(listener, "_dispatch", hung)
        try:
            with PostgresStore(DSN, schema=schema) as other:
                other.delete_certificate(alice.fingerprint)  # its notification goes unheard here
            # Within 2 * fallback_interval, the generation is new at every read: no cached verdict.
            assert _wait_for(lambda: store.generation != store.generation, 5.0)
            refused = client.get("/", environ_overrides=environ)
            assert (refused.status_code, (refused.json or {}).get("error")) == (403, "unknown_certificate")
            # Alive, so not replaced (a dead thread is: the next test): the heartbeat is what told.
            assert store._listener is listener
            assert listener.thread.is_alive()
            assert store.listener_connected
        finally:
            release.set()


class _ListenerKilled(BaseException):
    """No real part raises it: an exception the listener's loop does not survive."""


@pytest.mark.parametrize("noticed_by", ["a-stale-read", "a-history-batch"])
def test_a_listener_thread_killed_by_an_exception_is_replaced(
    schema: str,
    pki: TestPKI,
    alice: Issued,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    noticed_by: str,
) -> None:
    # The fallback re-read is 60 s away: within the waits below only a listener can refuse
    # alice's cached verdict (a notification) or write the history backlog (its reconnection).
    with PostgresStore(DSN, schema=schema, fallback_interval=60.0, reconnect_delay=0.05) as store:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = wsgi_client(store, pki)
        environ = tls_environ(alice, pki)
        assert client.get("/", environ_overrides=environ).status_code == 200
        assert store.flush(10)
        caplog.set_level("WARNING", logger="mtls_middleware")
        dead = store._listener

        def killed(reconnected: bool) -> None:
            raise _ListenerKilled("a fault of the listener thread itself")

        # Its session ends (the backend is terminated) and the next one raises: the thread dies.
        monkeypatch.setattr(dead, "_session", killed)
        killed_backends = _sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            f"mtls listener {schema}",
        )
        assert killed_backends == [(True,)]
        dead.thread.join(5)
        assert not dead.thread.is_alive()
        assert store._listener is dead  # nothing has looked yet

        if noticed_by == "a-stale-read":
            assert _wait_for(lambda: store.generation >= 0 and store._listener is not dead)
        else:
            # Recorded while no listener runs; nobody reads the generation or flushes.
            for index in range(50):
                store.record(history_record(index, user="meanwhile"))
            assert _wait_for(lambda: store._listener is not dead)
        assert _wait_for(lambda: store.listener_connected and store._listener.thread.is_alive())
        assert store._listener.reconnections == 1
        if noticed_by == "a-history-batch":
            # The new listener's reconnection wrote the backlog (login_history would flush it).
            assert _wait_for(lambda: store.history_backlog == 0 and store.history_writer.pending == 0)
            assert len(store.login_history(user_id="meanwhile", limit=None)) == 50

        # Notifications flow again: a delete in another store is refused here, from the cache.
        assert client.get("/", environ_overrides=environ).status_code == 200
        with PostgresStore(DSN, schema=schema) as other:
            other.delete_certificate(alice.fingerprint)
        assert _wait_for(lambda: client.get("/", environ_overrides=environ).status_code == 403, 5.0)
        refused = client.get("/", environ_overrides=environ)
        assert (refused.status_code, (refused.json or {}).get("error")) == (403, "unknown_certificate")

        died = [r for r in caplog.records if "died" in r.getMessage()]
        started = [r for r in caplog.records if "started a new one" in r.getMessage()]
        assert len(died) == len(started) == 1
        assert died[0].exc_info is not None
        assert died[0].exc_info[0] is _ListenerKilled


# -- load and hostile notifications ---------------------------------------------------------------


def test_a_busy_pool_gives_503_and_keeps_the_cached_verdicts(schema: str) -> None:
    with PostgresStore(DSN, schema=schema, max_size=1, timeout=0.2) as store:
        store.add_user("alice")
        before = store.generation
        # A slow request holds the only connection: the database is fine, the pool is busy.
        with store._pool.connection(), pytest.raises(MTLSError) as info:
            store.resolve_certificate("ab" * 32)
        assert info.value.reason is Reason.STORE_UNAVAILABLE
        assert store.generation == before  # load is not a missed change: the cache stays


def test_a_forged_notification_does_not_silence_invalidation(schema: str, alice: Issued) -> None:
    # Any role may NOTIFY on the channel. The fallback re-read is 60 s away: only notifications
    # and the process's own writes can raise the generation within the waits below.
    with (
        PostgresStore(DSN, schema=schema, fallback_interval=60.0) as writer,
        PostgresStore(DSN, schema=schema, fallback_interval=60.0) as reader,
    ):
        writer.add_user("alice")
        writer.upload_certificate(alice.chain_pem, user_id="alice")
        _sql("SELECT pg_notify(%s, %s)", writer.channel, str(10**15))
        assert _wait_for(lambda: writer._seen == reader._seen == 10**15, 5.0)
        seen_by_writer, seen_by_reader = writer.generation, reader.generation
        writer.delete_certificate(alice.fingerprint)
        assert writer.generation != seen_by_writer  # its own write, at once
        assert _wait_for(lambda: reader.generation != seen_by_reader, 5.0)  # the real notification
