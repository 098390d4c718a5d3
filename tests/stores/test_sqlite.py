"""stores/sqlite.py: URLs, schema and migrations, WAL, several processes on one file, history.

Real SQLite files in tmp_path and real subprocesses (``python -c``) for the multi-process cases.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mtls_middleware import ConfigurationError, LoginRecord, Reason
from mtls_middleware.stores import SQLiteStore, open_store
from mtls_middleware.stores import sqlite as sqlite_module
from mtls_middleware.stores.sqlite import APPLICATION_ID, SCHEMA_VERSION
from mtls_middleware.testing import Issued, TestPKI
from tests.stores.helpers import finish, history_record, race_to_upload, run_python, use_in_a_forked_child


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mtls.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()


def _raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def _scalar(db: Path, sql: str) -> object:
    conn = _raw(db)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()




# -- URLs -----------------------------------------------------------------------------------------


def test_relative_url_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub.db")
    try:
        assert isinstance(store, SQLiteStore)
        store.add_user("alice")
    finally:
        store.close()
    assert _scalar(tmp_path / "sub.db", "SELECT user_id FROM users") == "alice"


def test_absolute_url(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    assert str(path).startswith("/")
    store = open_store(f"sqlite:///{path}")  # sqlite:////tmp/...
    try:
        store.add_user("alice")
    finally:
        store.close()
    assert path.is_file()
    assert (tmp_path / "abs.db-generation").is_file()


def test_memory_url() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        store.add_user("alice")
        generation = store.generation
        store.set_user_active("alice", False)
        assert store.generation != generation
        store.record(history_record(1))
        assert [r.time for r in store.login_history()] == [1001.0]
    finally:
        store.close()
    assert not Path(":memory:").exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:/x.db", "sqlite:x.db"], ids=repr)
def test_malformed_sqlite_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert "no/such/dir" in info.value.detail


# -- the file: schema, migrations, WAL ------------------------------------------------------------


def test_schema_version_and_application_id_are_recorded(store: SQLiteStore, db: Path) -> None:
    assert store.schema_version_found == 0
    assert _scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    assert _scalar(db, "PRAGMA application_id") == APPLICATION_ID


def test_wal_mode(store: SQLiteStore, db: Path) -> None:
    assert _scalar(db, "PRAGMA journal_mode") == "wal"


def test_reopening_keeps_the_data_and_migrates_nothing(db: Path, alice: Issued) -> None:
    with SQLiteStore(db) as first:
        first.add_user("alice", org="acme")
        first.upload_certificate(alice.chain_pem, user_id="alice")
        first.record(history_record(1))
        generation = first.generation
    for _ in range(2):
        with SQLiteStore(db) as again:
            assert again.schema_version_found == SCHEMA_VERSION
            assert again.generation == generation
            assert again.download_certificate(alice.fingerprint) == alice.chain_pem
            assert len(again.login_history()) == 1
    assert _scalar(db, "PRAGMA user_version") == SCHEMA_VERSION


def test_a_newer_schema_is_refused(db: Path) -> None:
    SQLiteStore(db).close()
    conn = _raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigurationError) as info:
        SQLiteStore(db)
    assert f"schema version {SCHEMA_VERSION + 1}" in info.value.detail
    assert _scalar(db, "PRAGMA user_version") == SCHEMA_VERSION + 1  # left alone


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param("CREATE TABLE notes (text TEXT)", id="tables-of-someone-else"),
        pytest.param("PRAGMA application_id = 42", id="other-application-id"),
    ],
)
def test_a_database_of_another_application_is_refused(setup: str, db: Path) -> None:
    conn = _raw(db)
    conn.execute(setup)
    conn.close()
    with pytest.raises(ConfigurationError):
        SQLiteStore(db)
    assert _scalar(db, "PRAGMA user_version") == 0


def test_migrations_apply_in_order_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SQLiteStore(db) as old:
        old.add_user("alice")
    step = ("CREATE TABLE extra (x INTEGER)", "INSERT INTO extra (x) SELECT count(*) FROM users")
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*sqlite_module.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with SQLiteStore(db) as new:
        assert new.schema_version_found == SCHEMA_VERSION
        assert new.get_user("alice").user_id == "alice"
    # A second run of the step would fail (the table exists) or add a row.
    with SQLiteStore(db) as again:
        assert again.schema_version_found == SCHEMA_VERSION + 1
    assert _scalar(db, "PRAGMA user_version") == SCHEMA_VERSION + 1
    assert _scalar(db, "SELECT group_concat(x) FROM extra") == "1"


def test_a_failing_migration_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLiteStore(db).close()
    step = ("CREATE TABLE half (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*sqlite_module.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(ConfigurationError):
        SQLiteStore(db)
    assert _scalar(db, "PRAGMA user_version") == SCHEMA_VERSION
    assert _scalar(db, "SELECT count(*) FROM sqlite_master WHERE name = 'half'") == 0


def test_pem_is_stored_as_a_blob_byte_for_byte(store: SQLiteStore, db: Path, bob: Issued) -> None:
    store.add_user("bob")
    odd = b"\r\n" + bob.cert_pem.replace(b"\n", b"\r\n") + b" \x00\xff"
    store.upload_certificate(odd, user_id="bob")
    conn = _raw(db)
    try:
        value, kind = conn.execute("SELECT pem, typeof(pem) FROM certificates").fetchone()
    finally:
        conn.close()
    assert (value, kind) == (odd, "blob")


# -- several stores, several processes ----------------------------------------------------------


def test_two_stores_on_one_file_share_the_generation(db: Path, alice: Issued) -> None:
    with SQLiteStore(db) as one, SQLiteStore(db) as two:
        one.add_user("alice")
        one.upload_certificate(alice.cert_pem, user_id="alice")
        before = two.generation
        assert two.resolve_certificate(alice.fingerprint) is not None
        one.delete_certificate(alice.fingerprint)
        assert two.generation != before
        assert two.resolve_certificate(alice.fingerprint) is None


def test_a_lost_generation_file_is_rebuilt_from_the_database(db: Path) -> None:
    with SQLiteStore(db) as first:
        first.add_user("alice")
        first.set_user_active("alice", False)
        generation = first.generation
    Path(f"{db}-generation").unlink()
    with SQLiteStore(db) as again:
        assert again.generation == generation


def test_a_sidecar_left_from_a_deleted_database_still_changes(db: Path) -> None:
    # The shared counter only rises: a new database starting again at 0 must still move it,
    # or verdicts cached under the old number would outlive deletes.
    with SQLiteStore(db) as first:
        for user in ("a", "b", "c"):
            first.add_user(user)
    for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    with SQLiteStore(db) as fresh:
        before = fresh.generation
        fresh.add_user("alice")
        assert fresh.generation != before


def test_the_generation_file_gets_the_database_files_permissions(db: Path) -> None:
    with SQLiteStore(db):
        pass
    db.chmod(0o600)
    Path(f"{db}-generation").unlink()
    previous = os.umask(0)
    try:
        with SQLiteStore(db):
            pass
    finally:
        os.umask(previous)
    assert Path(f"{db}-generation").stat().st_mode & 0o777 == 0o600


def test_a_symbolic_link_in_place_of_the_generation_file_is_refused(db: Path, tmp_path: Path) -> None:
    with SQLiteStore(db):
        pass
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    Path(f"{db}-generation").unlink()
    Path(f"{db}-generation").symlink_to(target)
    with pytest.raises(ConfigurationError):
        SQLiteStore(db)
    assert target.read_bytes() == b""






def test_two_processes_racing_to_upload_one_certificate(db: Path, tmp_path: Path, pki: TestPKI) -> None:
    with SQLiteStore(db) as store:
        store.add_user("p0", org="one")
        store.add_user("p1", org="two")
    assert race_to_upload(f"sqlite:///{db}", tmp_path, pki, rounds=4) == [["duplicate_certificate", "ok"]] * 4
    with SQLiteStore(db) as store:
        assert len(store.list_certificates()) == 4


DELETER = """
    import sys
    from mtls_middleware.stores import open_store
    store = open_store(sys.argv[1])
    store.delete_certificate(sys.argv[2])
    store.close()
"""

WATCHER = """
    import sys
    from mtls_middleware.stores import open_store
    store = open_store(sys.argv[1])
    fingerprint = sys.argv[2]
    print(store.generation, store.resolve_certificate(fingerprint) is not None, flush=True)
    sys.stdin.readline()  # the parent changed something meanwhile
    print(store.generation, store.resolve_certificate(fingerprint) is not None, flush=True)
    store.close()
"""


def test_a_delete_in_another_process_is_seen_at_once(db: Path, alice: Issued) -> None:
    with SQLiteStore(db) as store:
        store.add_user("alice")
        store.upload_certificate(alice.cert_pem, user_id="alice")
        before = store.generation
        assert store.resolve_certificate(alice.fingerprint) is not None
        finish(run_python(DELETER, f"sqlite:///{db}", alice.fingerprint))
        assert store.generation != before
        assert store.resolve_certificate(alice.fingerprint) is None


def test_another_process_sees_a_delete_at_once(db: Path, alice: Issued) -> None:
    with SQLiteStore(db) as store:
        store.add_user("alice")
        store.upload_certificate(alice.cert_pem, user_id="alice")
        watcher = run_python(WATCHER, f"sqlite:///{db}", alice.fingerprint)
        assert watcher.stdout is not None
        assert watcher.stdin is not None
        generation, known = watcher.stdout.readline().split()
        assert known == "True"
        store.delete_certificate(alice.fingerprint)
        watcher.stdin.write("go\n")
        watcher.stdin.flush()
        after, still_known = finish(watcher).split()
    assert after != generation
    assert still_known == "False"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_uses_connections_and_a_writer_of_its_own(db: Path, alice: Issued) -> None:
    with SQLiteStore(db) as store:
        store.add_user("alice")
        store.record(history_record(0))
        store.flush()
        assert use_in_a_forked_child(store, alice.cert_pem) == 0
        store.record(history_record(9))
        assert len(store.login_history(user_id="child")) == 5
        assert len(store.login_history()) == 7
        assert store.resolve_certificate(alice.fingerprint) is not None


# -- login history through the writer -----------------------------------------------------------


def test_a_burst_of_records_then_flush_gives_every_row(store: SQLiteStore, db: Path) -> None:
    count = 5000
    for index in range(count):
        store.record(history_record(index))
    assert store.flush(timeout=30) is True
    assert _scalar(db, "SELECT count(*) FROM login_history") == count
    assert _scalar(db, "SELECT count(DISTINCT time) FROM login_history") == count


def test_records_from_many_threads_all_arrive(store: SQLiteStore) -> None:
    def work(n: int) -> None:
        for index in range(300):
            store.record(history_record(n * 1000 + index, user=f"t{n}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.login_history(limit=None)) == 1800
    assert len(store.login_history(user_id="t3", limit=None)) == 300


def test_close_flushes(db: Path) -> None:
    store = SQLiteStore(db)
    for index in range(700):
        store.record(history_record(index))
    store.close()
    assert _scalar(db, "SELECT count(*) FROM login_history") == 700


def test_a_clean_interpreter_exit_loses_nothing(db: Path) -> None:
    script = """
        import sys
        from mtls_middleware.history import LoginRecord
        from mtls_middleware.stores import open_store
        store = open_store(sys.argv[1])
        for index in range(2000):
            store.record(LoginRecord("accepted", "tls", time=float(index)))
        # neither flush() nor close(): the exit handler must write them
    """
    finish(run_python(script, f"sqlite:///{db}"))
    assert _scalar(db, "SELECT count(*) FROM login_history") == 2000


def test_back_pressure_waits_instead_of_dropping(db: Path) -> None:
    store = SQLiteStore(db, history_queue=2, history_batch=1)
    gate = threading.Event()
    write = store._db.write_history

    def slow_write(batch: Sequence[LoginRecord]) -> None:
        gate.wait(30)  # a disk that stalls: nothing a real file does on demand
        write(batch)

    store._writer._channel.write_batch = slow_write
    try:
        recorder = threading.Thread(target=lambda: [store.record(history_record(i)) for i in range(10)])
        recorder.start()
        deadline = time.monotonic() + 30
        while store.history_writer.waits == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store.history_writer.waits >= 1
        assert recorder.is_alive()  # blocked in record(), not dropping
        gate.set()
        recorder.join(30)
        assert not recorder.is_alive()
        assert [r.time for r in store.login_history(limit=None)] == [1000.0 + i for i in reversed(range(10))]
        assert store.history_writer.lost == 0
    finally:
        gate.set()
        store.close()


def test_records_after_close_are_counted_lost_without_retrying(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import time as _time

    from mtls_middleware import LoginRecord

    store = SQLiteStore(tmp_path / "closed.db")
    writer = store.history_writer
    record = store.record  # what a request's closure bound before the store was closed
    store.close()
    caplog.clear()
    for _ in range(3):
        record(LoginRecord("accepted", "tls", time=_time.time()))
    assert writer.lost == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("after the history was closed" in m for m in messages)
    assert not any("retrying" in m for m in messages)  # no retries, so no sleeps on a request
