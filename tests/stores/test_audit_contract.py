"""The audit contract: ``record_audit`` and ``audit_log`` behave the same in every store.

Each test runs once per store kind of ``tests/stores/backends.py``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware import ConfigurationError, Store
from mtls_middleware.stores.base import MANAGE_CERTIFICATES, AuditEntry
from mtls_middleware.stores.sqlite import SQLiteStore
from tests.stores.backends import KINDS, open_kind

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=[pytest.param(kind, id=kind) for kind in KINDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_kind(str(request.param), tmp_path)
    yield opened
    opened.close()


def entry(
    actor: str = "admin",
    action: str = "certificate.rename",
    target: str = "ab" * 32,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    minutes: int = 0,
) -> AuditEntry:
    return AuditEntry(
        actor=actor, action=action, target=target, before=before, after=after,
        time=T0 + dt.timedelta(minutes=minutes),
    )


def test_manage_certificates_is_a_known_permission(store: Store) -> None:
    store.add_user("admin", permissions=[MANAGE_CERTIFICATES])
    assert store.get_user("admin").permissions == {"manage_certificates"}


def test_record_returns_the_entry_with_an_increasing_id(store: Store) -> None:
    first = store.record_audit(entry(before={"label": "old"}, after={"label": "new"}))
    second = store.record_audit(entry(action="certificate.delete", before={"label": "new"}))
    assert 0 < first.id < second.id
    assert first == AuditEntry(
        actor="admin", action="certificate.rename", target="ab" * 32,
        before={"label": "old"}, after={"label": "new"}, time=T0, id=first.id,
    )
    assert second.after is None


def test_log_gives_back_what_was_recorded_newest_first(store: Store) -> None:
    nested = {"label": "é ☃", "permissions": ["a", "b"], "active": True, "n": 3, "none": None}
    recorded = [
        store.record_audit(entry(after=nested)),
        store.record_audit(entry(action="user.create", target="bob", minutes=1)),
        store.record_audit(entry(action="org.set", target="acme", before={"cert_auth": True},
                                 after={"cert_auth": False}, minutes=2)),
    ]
    assert store.audit_log() == recorded[::-1]
    assert store.audit_log()[-1].after == nested
    assert store.audit_log()[-1].time == T0  # microseconds kept, aware UTC


def test_naive_time_is_utc_and_other_zones_are_converted(store: Store) -> None:
    naive = store.record_audit(
        AuditEntry("admin", "org.set", "acme", None, None, T0.replace(tzinfo=None))
    )
    zoned = store.record_audit(AuditEntry(
        "admin", "org.set", "acme", None, None, T0.astimezone(dt.timezone(dt.timedelta(hours=5)))))
    assert naive.time == zoned.time == T0
    assert [e.time.utcoffset() for e in store.audit_log()] == [dt.timedelta(0), dt.timedelta(0)]


def test_tuples_come_back_as_lists(store: Store) -> None:
    recorded = store.record_audit(entry(after={"permissions": ("a", "b")}))
    assert recorded.after == {"permissions": ["a", "b"]}
    assert store.audit_log()[0].after == {"permissions": ["a", "b"]}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"actor": "carol"}, ["c1"], id="actor"),
        pytest.param({"target": "acme"}, ["a2", "a1"], id="target"),
        pytest.param({"action": "user.create"}, ["c1", "u1"], id="action"),
        pytest.param({"since": T0 + dt.timedelta(minutes=1)}, ["c1", "a2", "u1"], id="since-inclusive"),
        pytest.param({"until": T0 + dt.timedelta(minutes=1)}, ["a1"], id="until-exclusive"),
        pytest.param({"since": (T0 + dt.timedelta(minutes=2)).replace(tzinfo=None)}, ["c1", "a2"],
                     id="since-naive-is-utc"),
        pytest.param({"actor": "admin", "action": "org.set"}, ["a2", "a1"], id="combined"),
        pytest.param({"actor": "nobody"}, [], id="no-match"),
        pytest.param({"limit": 2}, ["c1", "a2"], id="limit"),
        pytest.param({"limit": 0}, [], id="limit-zero"),
        pytest.param({"limit": None}, ["c1", "a2", "u1", "a1"], id="limit-none"),
    ],
)
def test_filters(store: Store, filters: dict[str, Any], expected: list[str]) -> None:
    names = {}
    names[store.record_audit(entry(action="org.set", target="acme", after={"tag": "a1"})).id] = "a1"
    names[store.record_audit(entry(action="user.create", target="bob", minutes=1)).id] = "u1"
    names[store.record_audit(entry(action="org.set", target="acme", minutes=2)).id] = "a2"
    names[store.record_audit(entry("carol", "user.create", "dan", minutes=3)).id] = "c1"
    assert [names[e.id] for e in store.audit_log(**filters)] == expected


def test_before_id_pages_through_everything_once(store: Store) -> None:
    ids = [store.record_audit(entry(target=f"t{i}", minutes=i)).id for i in range(7)]
    seen: list[int] = []
    cursor: int | None = None
    while True:
        page = store.audit_log(before_id=cursor, limit=3)
        if not page:
            break
        seen.extend(e.id for e in page)
        cursor = page[-1].id
    assert seen == ids[::-1]
    assert store.audit_log(before_id=ids[0]) == []
    assert store.audit_log(before_id=2**70, limit=1)[0].id == ids[-1]  # out of int64: no error


def test_newest_first_is_by_id_even_when_times_go_backwards(store: Store) -> None:
    later = store.record_audit(entry(minutes=10))
    earlier = store.record_audit(entry(minutes=0))
    assert [e.id for e in store.audit_log()] == [earlier.id, later.id]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(AuditEntry("", "org.set", "acme", None, None, T0), id="empty-actor"),
        pytest.param(AuditEntry("admin", "", "acme", None, None, T0), id="empty-action"),
        pytest.param(AuditEntry("admin", "org.set", "", None, None, T0), id="empty-target"),
        pytest.param(AuditEntry("ad\udcffmin", "org.set", "acme", None, None, T0), id="surrogate-actor"),
        pytest.param(AuditEntry("admin", "org.set", "acme", {"x": {1, 2}}, None, T0), id="set-not-json"),
        pytest.param(AuditEntry("admin", "org.set", "acme", None, {"x": float("nan")}, T0), id="nan"),
        pytest.param(AuditEntry("admin", "org.set", "acme", None, ["a"], T0), id="list-not-object"),  # type: ignore[arg-type]
        pytest.param(AuditEntry("admin", "org.set", "acme", None, None, "now"), id="time-not-datetime"),  # type: ignore[arg-type]
    ],
)
def test_bad_entries_are_refused_and_nothing_is_stored(store: Store, bad: AuditEntry) -> None:
    with pytest.raises(ConfigurationError):
        store.record_audit(bad)
    assert store.audit_log() == []


def test_audit_is_not_a_generation_change(store: Store) -> None:
    before = store.generation
    store.record_audit(entry())
    assert store.generation == before


def test_sqlite_file_of_schema_1_is_upgraded_and_keeps_its_data(tmp_path: Path) -> None:
    """A file written before the audit log existed gains the table and keeps its users."""
    from mtls_middleware.stores import sqlite as sqlite_module

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in sqlite_module.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO orgs (org) VALUES ('acme')")
    conn.execute("INSERT INTO users (user_id, org) VALUES ('ann', 'acme')")
    conn.execute("PRAGMA user_version = 1")
    conn.execute(f"PRAGMA application_id = {sqlite_module.APPLICATION_ID}")
    conn.commit()
    conn.close()
    with SQLiteStore(db) as upgraded:
        assert upgraded.schema_version_found == 1
        assert upgraded.get_user("ann").org == "acme"
        assert upgraded.record_audit(entry()).id == 1
    with SQLiteStore(db) as reopened:
        assert reopened.schema_version_found == sqlite_module.SCHEMA_VERSION
        assert [e.id for e in reopened.audit_log()] == [1]
