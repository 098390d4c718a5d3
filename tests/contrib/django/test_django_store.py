"""DjangoStore beyond the shared contract (``tests/stores``, kind ``django``): the generation
follows changes made through the ORM and by other processes, the verdict cache behind the
middleware drops at once, races are decided by the database, faults have reason codes."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mtls_middleware import ConfigurationError, LoginRecord, ManagementError, MTLSError, Reason
from mtls_middleware.testing import Issued, TestPKI
from tests.contrib.django.store_support import get_as, manage_py, middleware_client, wait_for
from tests.stores.backend_postgresql import drop_schemas, new_schema, require_postgres
from tests.stores.helpers import Relay


@pytest.fixture
def seeded(django_store: Any, alice: Issued) -> Any:
    django_store.add_user("alice", org="acme")
    django_store.upload_certificate(alice.chain_pem, user_id="alice", label="alice laptop")
    return django_store


def _models() -> Any:
    from mtls_middleware.contrib.django import models

    return models


# -- the generation: ORM changes ------------------------------------------------------------------


def _cert() -> Any:
    return _models().Certificate.objects.get()


def _user() -> Any:
    return _models().CertificateUser.objects.get(user_id="alice")


def _deactivate() -> None:
    user = _user()
    user.active = False
    user.save()


def _org_off() -> None:
    org = _models().Organisation.objects.get(name="acme")
    org.cert_auth = False
    org.save()


def _new_org() -> None:
    _models().Organisation.objects.create(name="fresh")


def _rename_label_only() -> None:
    cert = _cert()
    cert.label = "renamed"
    cert.save(update_fields=["label"])


def _delete_user_cascades() -> None:
    _user().delete()


def _queryset_update() -> None:
    _models().CertificateUser.objects.update(active=False)  # sends no signal


def _queryset_update_then_invalidate() -> None:
    from mtls_middleware.contrib.django.signals import invalidate

    _models().CertificateUser.objects.update(active=False)
    invalidate()


ORM_CHANGES: list[Any] = [
    pytest.param(lambda: _cert().delete(), True, id="delete-certificate"),
    pytest.param(lambda: _models().Certificate.objects.all().delete(), True, id="queryset-delete"),
    pytest.param(_deactivate, True, id="deactivate-user"),
    pytest.param(_delete_user_cascades, True, id="delete-user"),
    pytest.param(_org_off, True, id="org-off"),
    pytest.param(_new_org, True, id="create-org"),
    pytest.param(_rename_label_only, False, id="rename-update-fields-label"),
    pytest.param(_queryset_update, False, id="queryset-update-sends-no-signal"),
    pytest.param(_queryset_update_then_invalidate, True, id="queryset-update-then-invalidate"),
]


@pytest.mark.parametrize(("change", "bumps"), ORM_CHANGES)
def test_orm_changes_raise_the_generation(change: Callable[[], object], bumps: bool, seeded: Any) -> None:
    before = seeded.generation
    change()
    assert (seeded.generation != before) is bumps


def test_a_change_counts_at_once_and_again_at_its_commit(seeded: Any) -> None:
    from django.db import transaction

    before = seeded.generation
    with transaction.atomic():
        _deactivate()
        # At once, for this thread (a test inside Django's TestCase never commits) ...
        inside = seeded.generation
        assert inside != before
    # ... and again at the commit: other threads may have cached the state before it.
    assert seeded.generation != inside


def test_orm_changes_raise_the_shared_row_once_after_their_commit(seeded: Any, pki: TestPKI) -> None:
    """What other processes poll: raised after the commit, once for the whole transaction."""
    from django.db import transaction

    from mtls_middleware.contrib.django.signals import read_row

    for index in range(3):
        seeded.upload_certificate(pki.issue_client(f"more{index}").cert_pem, user_id="alice")
    start = read_row("default")
    assert start is not None
    with transaction.atomic():
        _user().delete()  # the user and her four certificates: five post_delete signals
        assert read_row("default") == start  # nothing before the commit
    assert read_row("default") == start + 1
    with transaction.atomic():
        _new_org()
        transaction.set_rollback(True)
    assert read_row("default") == start + 1  # rolled back: nothing to tell


# -- the generation and the middleware: other processes -----------------------------------------


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        pytest.param(["cert", "delete", "{fp}"], "unknown_certificate", id="certificate-deleted"),
        pytest.param(["user", "add", "alice", "--org", "acme", "--inactive"], "user_inactive", id="user-deactivated"),
        pytest.param(["org", "set", "acme", "--cert-auth", "off"], "certificate_auth_disabled", id="org-switched-off"),
    ],
)
def test_a_change_by_another_process_refuses_the_next_requests(
    seeded: Any, pki: TestPKI, alice: Issued, command: list[str], reason: str
) -> None:
    client = middleware_client(seeded, pki)
    for _ in range(2):  # the second is answered from the verdict cache
        assert get_as(client, alice) == (200, None)
    before = seeded.generation
    ran = manage_py("mtls", *(arg.format(fp=alice.fingerprint) for arg in command))
    assert ran.returncode == 0, ran.stderr
    # The other process's change reaches this one through the polled generation row.
    assert wait_for(lambda: seeded.generation != before)
    assert get_as(client, alice) == (403, reason)


def test_deleting_through_the_orm_refuses_the_very_next_request(seeded: Any, pki: TestPKI, alice: Issued) -> None:
    client = middleware_client(seeded, pki)
    assert get_as(client, alice) == (200, None)
    assert get_as(client, alice) == (200, None)
    _cert().delete()
    assert get_as(client, alice) == (403, "unknown_certificate")


def test_deleting_inside_a_transaction_refuses_that_threads_next_request(
    seeded: Any, pki: TestPKI, alice: Issued
) -> None:
    """As in a Django ``TestCase``, whose transaction never commits."""
    from django.db import transaction

    client = middleware_client(seeded, pki)
    assert get_as(client, alice) == (200, None)
    with transaction.atomic():
        _cert().delete()
        assert get_as(client, alice) == (403, "unknown_certificate")
        transaction.set_rollback(True)
    assert get_as(client, alice) == (200, None)


def test_every_request_leaves_one_history_row(seeded: Any, pki: TestPKI, alice: Issued, bob: Issued) -> None:
    client = middleware_client(seeded, pki)
    for index in range(30):
        get_as(client, alice if index % 3 else bob)
    assert seeded.flush(timeout=30)
    rows = _models().LoginAttempt.objects.all()
    assert rows.filter(outcome="accepted", user_id="alice").count() == 20
    assert rows.filter(outcome="unknown_certificate").count() == 10


# -- races, limits and faults ---------------------------------------------------------------------


def test_racing_uploads_of_one_certificate_store_it_once(django_store: Any, pki: TestPKI) -> None:
    contested = pki.issue_client("contested")
    for name in ("u0", "u1", "u2", "u3"):
        django_store.add_user(name)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def upload(user_id: str) -> None:
        from django.db import connection

        barrier.wait()
        try:
            results.append(django_store.upload_certificate(contested.cert_pem, user_id=user_id))
        except MTLSError as exc:
            results.append(exc.reason)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(f"u{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(map(str, results)).count(str(Reason.DUPLICATE_CERTIFICATE)) == 3
    assert len(django_store.list_certificates()) == 1


def test_a_history_value_longer_than_its_column_is_cut_not_lost(django_store: Any) -> None:
    long_org = "o" * 400
    django_store.record(LoginRecord("accepted", "tls:environ", user_id="alice", org=long_org, time=5.0))
    (stored,) = django_store.login_history()
    assert stored.org == long_org[:255]
    assert stored.user_id == "alice"


@pytest.mark.parametrize(
    ("action", "error", "reason"),
    [
        pytest.param(lambda s: s.add_user("u" * 256), ManagementError, Reason.UNKNOWN_USER, id="user-id-too-long"),
        pytest.param(
            lambda s: s.add_user("ann", org="o" * 256), ConfigurationError, Reason.CONFIGURATION_ERROR,
            id="org-too-long",
        ),
        pytest.param(
            lambda s: s.set_org("o" * 256, cert_auth=True), ConfigurationError, Reason.CONFIGURATION_ERROR,
            id="set-org-too-long",
        ),
    ],
)
def test_names_longer_than_the_columns_are_refused(
    action: Callable[[Any], object], error: type[MTLSError], reason: Reason, django_store: Any
) -> None:
    with pytest.raises(error) as info:
        action(django_store)
    assert info.value.reason is reason
    assert django_store.list_users() == []
    assert django_store.list_orgs() == []


def test_times_are_utc_also_without_use_tz(django_store: Any, bob: Issued) -> None:
    from django.test import override_settings
    from django.utils import timezone

    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        django_store.add_user("bob")
        stored = django_store.upload_certificate(bob.cert_pem, user_id="bob")
        read = django_store.get_certificate(bob.fingerprint)
        # Kept as Django keeps every datetime without USE_TZ: naive local time (what the admin shows).
        kept = _cert().not_after
        assert kept == timezone.make_naive(bob.cert.not_valid_after_utc, timezone.get_default_timezone())
    assert read == stored
    assert read.not_after == bob.cert.not_valid_after_utc
    assert read.not_after.tzinfo is not None


def test_a_database_that_cannot_be_reached_is_store_unavailable(alice: Issued) -> None:
    from django.db import connections

    from mtls_middleware.contrib.django.store import DjangoStore

    if connections["impatient"].vendor != "sqlite":
        pytest.skip("holds an SQLite file lock; a PostgreSQL outage is the PostgreSQL store's test")
    store = DjangoStore(using="impatient")
    try:
        holder = sqlite3.connect(connections["impatient"].settings_dict["NAME"], isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            before = store.generation
            for action in (lambda: store.add_user("ann"), lambda: store.resolve_certificate(alice.fingerprint)):
                with pytest.raises(MTLSError) as info:
                    action()
                assert info.value.reason is Reason.STORE_UNAVAILABLE
                assert info.value.status == 503
            assert store.generation != before  # cached verdicts are not trusted meanwhile
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        store.add_user("ann")  # back without a restart
        assert store.get_user("ann").user_id == "ann"
    finally:
        store.close()
        connections["impatient"].close()


def test_an_unknown_database_alias_is_a_configuration_error() -> None:
    from mtls_middleware.contrib.django.store import DjangoStore

    with pytest.raises(ConfigurationError, match="no database 'nowhere'"):
        DjangoStore(using="nowhere")


def test_shared_store_is_one_per_database_and_reopens_after_close() -> None:
    from mtls_middleware.contrib.django.store import shared_store

    first = shared_store()
    assert shared_store() is first
    first.close()
    second = shared_store()
    assert second is not first
    assert second.list_users() == []


def test_open_store_names_the_django_store() -> None:
    from mtls_middleware.contrib.django.store import DjangoStore
    from mtls_middleware.stores import open_store

    store = open_store("django://")
    try:
        assert isinstance(store, DjangoStore)
    finally:
        store.close()


def test_migrations_match_the_models() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "mtls_middleware", "--check", "--dry-run", verbosity=0)



# -- the poll's deadline: a database that stops answering, a polling thread that ends ------------


@pytest.fixture
def relayed_alias() -> Iterator[tuple[str, Relay]]:
    """A database alias on PostgreSQL (a schema of its own, migrated) reached through a
    :class:`Relay` the test can freeze or cut; removed afterwards."""
    import psycopg
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    dsn = require_postgres()
    schema = new_schema()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')  # our own generated name
    relay = Relay()
    alias = f"relay_{schema}"
    database = {
        **settings.DATABASES["default"],
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": relay.port,
        "USER": "postgres",
        "NAME": "test",
        "OPTIONS": {"options": f"-c search_path={schema}", "connect_timeout": 2},
    }
    # Django's defaults filled in (in place), as for the aliases of the settings file.
    connections.configure_settings({"default": dict(settings.DATABASES["default"]), alias: database})
    settings.DATABASES[alias] = connections.settings[alias] = database
    try:
        call_command("migrate", "mtls_middleware", database=alias, verbosity=0, interactive=False)
        yield alias, relay
    finally:
        relay.frozen = False
        relay.cut()
        with contextlib.suppress(Exception):
            connections[alias].close()
        connections.settings.pop(alias, None)
        settings.DATABASES.pop(alias, None)
        drop_schemas([schema])


def test_a_database_that_stops_answering_stops_cached_verdicts_within_the_bound(
    relayed_alias: tuple[str, Relay], pki: TestPKI, alice: Issued
) -> None:
    from mtls_middleware.contrib.django.store import DjangoStore

    alias, relay = relayed_alias
    store = DjangoStore(using=alias)
    try:
        store.add_user("alice", org="acme")
        store.upload_certificate(alice.chain_pem, user_id="alice")
        client = middleware_client(store, pki)
        assert get_as(client, alice) == (200, None)
        assert store.generation == store.generation  # verdicts are served from the cache
        # A partition: TCP stays up, nothing is answered; the poll's read waits (for the kernel's
        # TCP timeout, about 15 minutes). Within STALE_AFTER, every read is a new number.
        relay.frozen = True
        assert wait_for(lambda: store.generation != store.generation, 10.0)
        # The partition ends with the connections lost: polls succeed again, the cache is back.
        relay.cut()
        relay.frozen = False
        relay.restore()
        assert wait_for(lambda: store.generation == store.generation, 15.0)
        # (The request thread's own connection was cut too: its first query may find out.)
        assert wait_for(lambda: get_as(client, alice) == (200, None), 15.0)
    finally:
        relay.frozen = False
        relay.cut()
        store.close()


def test_a_polling_thread_that_ends_is_noticed_and_restarted(django_store: Any) -> None:
    from mtls_middleware.contrib.django.signals import watch

    def pollers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "mtls-generation default" and t.is_alive()]

    found = watch("default")
    (first,) = pollers()
    assert django_store.generation == django_store.generation
    assert found._stop is not None
    found._stop.set()  # the thread ends without a word: nothing else would notice
    first.join(5)
    assert not first.is_alive()
    assert wait_for(lambda: django_store.generation != django_store.generation, 10.0)
    assert [t is not first for t in pollers()] == [True]
    # The new thread reads the row: the generation is steady again.
    assert wait_for(lambda: django_store.generation == django_store.generation, 10.0)
