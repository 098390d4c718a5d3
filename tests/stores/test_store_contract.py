"""The store contract: every store (memory, SQLite) behaves the same for every method.

Each test runs once per store kind of ``tests/stores/backends.py`` (memory, SQLite in tmp_path,
PostgreSQL, the Django app's store).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware import (
    CertificateError,
    ConfigurationError,
    HistorySink,
    LoginRecord,
    ManagementError,
    MTLSError,
    Reason,
    Store,
    ValidationError,
)
from mtls_middleware.stores import (
    API_ONLY,
    ENFORCE_MTLS,
    KNOWN_PERMISSIONS,
    MANAGE_CERTIFICATES,
    BatchRefused,
    OrgRecord,
    Upload,
    UserRecord,
)
from mtls_middleware.stores.base import MAX_UPLOAD_BYTES
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI
from tests.stores.backends import KINDS, open_kind

UTC = dt.timezone.utc


@pytest.fixture(params=[pytest.param(kind, id=kind) for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty(kind: str, tmp_path: Path) -> Iterator[Store]:
    """A new store with nothing in it."""
    store = open_kind(kind, tmp_path)
    yield store
    store.close()


@pytest.fixture
def seeded(empty: Store, alice: Issued) -> Store:
    """User ``alice`` (org ``acme``) owning the ``alice`` certificate, labelled "alice laptop"."""
    empty.add_user("alice", org="acme")
    empty.upload_certificate(alice.chain_pem, user_id="alice", label="alice laptop")
    return empty


def test_is_a_store_and_a_history_sink(empty: Store) -> None:
    assert isinstance(empty, Store)
    assert isinstance(empty, HistorySink)


# -- organisations ------------------------------------------------------------------------------


def test_set_org_and_list_orgs(empty: Store) -> None:
    assert empty.list_orgs() == []
    assert empty.set_org("zeta", cert_auth=False) == OrgRecord("zeta", False)
    empty.add_user("ann", org="alpha")
    assert empty.list_orgs() == [OrgRecord("alpha", True), OrgRecord("zeta", False)]
    assert empty.set_org("zeta", cert_auth=True) == OrgRecord("zeta", True)
    assert empty.list_orgs() == [OrgRecord("alpha", True), OrgRecord("zeta", True)]


def test_an_org_first_seen_through_add_user_has_cert_auth_on(empty: Store) -> None:
    empty.add_user("dave", org="new-org")
    principal = empty.resolve_user("dave")
    assert principal is not None
    assert principal.org_cert_auth is True


def test_set_org_before_any_user_applies_to_its_users(empty: Store) -> None:
    empty.set_org("closed", cert_auth=False)
    empty.add_user("erin", org="closed")
    principal = empty.resolve_user("erin")
    assert principal is not None
    assert principal.org_cert_auth is False
    assert empty.list_orgs() == [OrgRecord("closed", False)]  # add_user did not switch it on


def test_switching_an_org_off_shows_in_resolve_certificate(seeded: Store, alice: Issued) -> None:
    seeded.set_org("acme", cert_auth=False)
    principal = seeded.resolve_certificate(alice.fingerprint)
    assert principal is not None
    assert principal.org_cert_auth is False


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s: s.set_org("", cert_auth=True), id="set-org"),
        pytest.param(lambda s: s.add_user("ann", org=""), id="add-user"),
    ],
)
def test_empty_org_name_is_refused(action: Callable[[Store], object], empty: Store) -> None:
    with pytest.raises(ConfigurationError):
        action(empty)
    assert empty.list_orgs() == []


# -- users ------------------------------------------------------------------------------------


def test_permission_constants() -> None:
    assert (ENFORCE_MTLS, API_ONLY) == ("enforce_mtls", "api_only")
    assert frozenset({ENFORCE_MTLS, API_ONLY, MANAGE_CERTIFICATES}) == KNOWN_PERMISSIONS


def test_add_user_returns_the_record(empty: Store) -> None:
    record = empty.add_user("carol", org="beta", active=False, permissions=[API_ONLY, "reports"])
    assert record == UserRecord("carol", "beta", False, frozenset({API_ONLY, "reports"}))
    assert empty.get_user("carol") == record
    principal = empty.resolve_user("carol")
    assert principal is not None
    assert (principal.user_id, principal.org, principal.active) == ("carol", "beta", False)
    assert principal.permissions == frozenset({API_ONLY, "reports"})


def test_add_user_defaults(empty: Store) -> None:
    assert empty.add_user("dan") == UserRecord("dan", "default", True, frozenset())
    assert empty.list_orgs() == [OrgRecord("default", True)]


def test_adding_an_existing_user_updates_it_and_moves_its_certificates(seeded: Store, alice: Issued) -> None:
    updated = seeded.add_user("alice", org="beta", active=False, permissions=[ENFORCE_MTLS])
    assert updated == UserRecord("alice", "beta", False, frozenset({ENFORCE_MTLS}))
    assert seeded.get_user("alice") == updated
    assert [u.user_id for u in seeded.list_users()] == ["alice"]
    assert seeded.get_certificate(alice.fingerprint).org == "beta"
    assert [c.fingerprint for c in seeded.list_certificates(org="beta")] == [alice.fingerprint]
    assert seeded.list_certificates(org="acme") == []
    principal = seeded.resolve_certificate(alice.fingerprint)
    assert principal is not None
    assert (principal.org, principal.active) == ("beta", False)


def test_list_users(empty: Store) -> None:
    empty.add_user("zoe", org="b")
    empty.add_user("adam", org="a")
    empty.add_user("mia", org="b")
    assert [u.user_id for u in empty.list_users()] == ["adam", "mia", "zoe"]
    assert [u.user_id for u in empty.list_users(org="b")] == ["mia", "zoe"]
    assert empty.list_users(org="nobody") == []


def test_set_user_active(seeded: Store, alice: Issued) -> None:
    assert seeded.set_user_active("alice", False) == UserRecord("alice", "acme", False)
    principal = seeded.resolve_certificate(alice.fingerprint)
    assert principal is not None
    assert principal.active is False
    assert seeded.set_user_active("alice", True).active is True
    assert seeded.get_user("alice").active is True


def test_set_user_permissions(seeded: Store, alice: Issued) -> None:
    record = seeded.set_user_permissions("alice", [ENFORCE_MTLS, API_ONLY])
    assert record.permissions == frozenset({ENFORCE_MTLS, API_ONLY})
    assert seeded.get_user("alice").permissions == record.permissions
    principal = seeded.resolve_certificate(alice.fingerprint)
    assert principal is not None
    assert principal.permissions == record.permissions
    assert seeded.set_user_permissions("alice", []).permissions == frozenset()


@pytest.mark.parametrize(
    "permissions",
    [pytest.param([""], id="empty-name"), pytest.param(["  "], id="blank-name"), pytest.param("api_only", id="a-string")],
)
def test_bad_permission_names_are_refused(permissions: Any, seeded: Store) -> None:
    with pytest.raises(ConfigurationError):
        seeded.set_user_permissions("alice", permissions)
    with pytest.raises(ConfigurationError):
        seeded.add_user("ann", permissions=permissions)
    assert seeded.get_user("alice").permissions == frozenset()
    assert [u.user_id for u in seeded.list_users()] == ["alice"]


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s, b: s.get_user("ghost"), id="get"),
        pytest.param(lambda s, b: s.set_user_active("ghost", False), id="set-active"),
        pytest.param(lambda s, b: s.set_user_permissions("ghost", [API_ONLY]), id="set-permissions"),
        pytest.param(lambda s, b: s.upload_certificate(b.cert_pem, user_id="ghost"), id="upload"),
        pytest.param(lambda s, b: s.add_user(""), id="empty-user-id"),
    ],
)
def test_unknown_user(action: Callable[[Store, Issued], object], seeded: Store, bob: Issued) -> None:
    with pytest.raises(ManagementError) as info:
        action(seeded, bob)
    assert info.value.reason is Reason.UNKNOWN_USER
    assert info.value.status == 404
    assert seeded.resolve_certificate(bob.fingerprint) is None
    assert [u.user_id for u in seeded.list_users()] == ["alice"]


# Undecodable bytes (a command-line argument, a CSV field) arrive as lone surrogates: a dict keeps
# them, SQLite cannot. Both stores refuse them the same way, with a reason code.
NOT_TEXT = "b\udcffob"


@pytest.mark.parametrize(
    ("action", "error", "reason"),
    [
        pytest.param(lambda s, b: s.add_user(NOT_TEXT), ManagementError, Reason.UNKNOWN_USER, id="user-id"),
        pytest.param(
            lambda s, b: s.add_user("ann", org=NOT_TEXT), ConfigurationError, Reason.CONFIGURATION_ERROR,
            id="org",
        ),
        pytest.param(
            lambda s, b: s.set_org(NOT_TEXT, cert_auth=False), ConfigurationError,
            Reason.CONFIGURATION_ERROR, id="set-org",
        ),
        pytest.param(
            lambda s, b: s.set_user_permissions("alice", [NOT_TEXT]), ConfigurationError,
            Reason.CONFIGURATION_ERROR, id="permission",
        ),
        pytest.param(
            lambda s, b: s.upload_certificate(b.cert_pem, user_id=NOT_TEXT), ManagementError,
            Reason.UNKNOWN_USER, id="upload-user-id",
        ),
        pytest.param(
            lambda s, b: s.upload_certificate(b.cert_pem, user_id="alice", label=NOT_TEXT),
            ConfigurationError, Reason.CONFIGURATION_ERROR, id="upload-label",
        ),
        pytest.param(
            lambda s, b: s.rename_certificate(s.list_certificates()[0].fingerprint, NOT_TEXT),
            ConfigurationError, Reason.CONFIGURATION_ERROR, id="rename",
        ),
    ],
)
def test_text_that_is_not_utf8_is_refused(
    action: Callable[[Store, Issued], object],
    error: type[Exception],
    reason: Reason,
    seeded: Store,
    bob: Issued,
) -> None:
    with pytest.raises(error) as info:
        action(seeded, bob)
    assert info.value.reason is reason  # type: ignore[attr-defined]
    assert [u.user_id for u in seeded.list_users()] == ["alice"]
    assert [c.label for c in seeded.list_certificates()] == ["alice laptop"]


@pytest.mark.parametrize(
    ("upload", "reason"),
    [
        pytest.param(lambda b: Upload(b.cert_pem, NOT_TEXT), Reason.UNKNOWN_USER, id="user-id"),
        pytest.param(lambda b: Upload(b.cert_pem, "alice", NOT_TEXT), Reason.CONFIGURATION_ERROR, id="label"),
    ],
)
def test_a_batch_refuses_text_that_is_not_utf8_at_its_row(
    upload: Callable[[Issued], Upload], reason: Reason, seeded: Store, bob: Issued, pki: TestPKI
) -> None:
    good = pki.issue_client("good")
    with pytest.raises(BatchRefused) as info:
        seeded.upload_certificates([Upload(good.cert_pem, "alice"), upload(bob)])
    assert [(index, e.reason) for index, e in info.value.refusals] == [(1, reason)]
    assert seeded.resolve_certificate(good.fingerprint) is None


# -- certificates: uploads ------------------------------------------------------------------------


def _expired(pki: TestPKI) -> bytes:
    now = dt.datetime.now(UTC)
    day = dt.timedelta(days=1)
    return pki.issue_client("old", not_before=now - 9 * day, not_after=now - day).cert_pem


def _future(pki: TestPKI) -> bytes:
    return pki.issue_client("later", not_before=dt.datetime.now(UTC) + dt.timedelta(days=1)).cert_pem


def _eleven(pki: TestPKI) -> bytes:
    ca = pki.issuing
    for level in range(9):
        ca = pki.issue_ca(f"contract CA {level}", parent=ca)
    issued = pki.issue_client("eleven", issuer=ca)
    assert len(issued.chain) == 11
    return issued.chain_pem


REFUSED_UPLOADS: list[Any] = [
    pytest.param(lambda p, b: b"hello world", Reason.MALFORMED_CERTIFICATE, id="malformed-not-pem"),
    pytest.param(
        lambda p, b: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        Reason.MALFORMED_CERTIFICATE,
        id="malformed-garbage-pem",
    ),
    pytest.param(lambda p, b: b.cert_der, Reason.MALFORMED_CERTIFICATE, id="malformed-der"),
    pytest.param(lambda p, b: b"", Reason.MALFORMED_CERTIFICATE, id="malformed-empty"),
    pytest.param(lambda p, b: b.key_pem + b.cert_pem, Reason.MALFORMED_CERTIFICATE, id="private-key-in-upload"),
    pytest.param(
        lambda p, b: b.cert_pem + b"\n" * MAX_UPLOAD_BYTES, Reason.CERTIFICATE_TOO_LARGE, id="over-1MB"
    ),
    pytest.param(lambda p, b: _eleven(p), Reason.CHAIN_TOO_LONG, id="11-certificates"),
    pytest.param(lambda p, b: _expired(p), Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param(lambda p, b: _future(p), Reason.CERTIFICATE_NOT_YET_VALID, id="not-yet-valid"),
    pytest.param(
        lambda p, b: p.issue_client("srv", eku=(SERVER_AUTH,)).cert_pem,
        Reason.MISSING_CLIENT_AUTH_EKU,
        id="missing-client-auth-eku",
    ),
    pytest.param(
        lambda p, b: p.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH)).cert_pem,
        Reason.DUAL_PURPOSE_EKU,
        id="dual-purpose-eku",
    ),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED_UPLOADS)
def test_upload_refusals(
    make: Callable[[TestPKI, Issued], bytes], reason: Reason, empty: Store, pki: TestPKI, bob: Issued
) -> None:
    empty.add_user("bob")
    generation = empty.generation
    with pytest.raises(MTLSError) as info:
        empty.upload_certificate(make(pki, bob), user_id="bob")
    assert info.value.reason is reason
    assert isinstance(info.value, (CertificateError, ValidationError))
    assert 400 <= info.value.status < 500
    assert empty.list_certificates() == []
    assert empty.generation == generation


def test_upload_returns_the_record(empty: Store, bob: Issued, pki: TestPKI) -> None:
    empty.add_user("bob", org="beta")
    before = dt.datetime.now(UTC).replace(microsecond=0)
    record = empty.upload_certificate(bob.chain_pem, user_id="bob", label="bob's laptop", uploaded_by="admin")
    assert record.fingerprint == bob.fingerprint
    assert (record.user_id, record.org, record.label, record.uploaded_by) == ("bob", "beta", "bob's laptop", "admin")
    assert record.pem == bob.chain_pem
    assert record.subject == "CN=bob,O=mtls_middleware test"
    assert record.issuer == pki.issuing.cert.subject.rfc4514_string()
    assert record.serial == format(bob.cert.serial_number, "x")
    assert (record.not_before, record.not_after) == (bob.cert.not_valid_before_utc, bob.cert.not_valid_after_utc)
    assert before <= record.uploaded_at <= dt.datetime.now(UTC)
    assert empty.get_certificate(bob.fingerprint) == record  # what is stored is what was returned
    principal = empty.resolve_certificate(bob.fingerprint)
    assert principal is not None
    assert (principal.user_id, principal.org) == ("bob", "beta")


def test_label_defaults_to_the_subject(empty: Store, bob: Issued) -> None:
    empty.add_user("bob")
    assert empty.upload_certificate(bob.cert_pem, user_id="bob").label == "CN=bob,O=mtls_middleware test"


@pytest.mark.parametrize(
    ("owner", "org"),
    [
        pytest.param("alice", "acme", id="same-user"),
        pytest.param("mallory", "acme", id="other-user-same-org"),
        pytest.param("mallory", "other", id="other-org"),
    ],
)
def test_duplicate_certificate(owner: str, org: str, seeded: Store, alice: Issued) -> None:
    if owner != "alice":
        seeded.add_user(owner, org=org)
    generation = seeded.generation
    # The leaf alone, without the intermediate it was first uploaded with: still the same certificate.
    with pytest.raises(ManagementError) as info:
        seeded.upload_certificate(alice.cert_pem, user_id=owner)
    assert info.value.reason is Reason.DUPLICATE_CERTIFICATE
    assert info.value.status == 409
    assert seeded.get_certificate(alice.fingerprint).user_id == "alice"
    assert len(seeded.list_certificates()) == 1
    assert seeded.generation == generation


# -- certificates: management verbs ---------------------------------------------------------------


def test_list_certificates_filters_and_days_left(seeded: Store, bob: Issued, pki: TestPKI, alice: Issued) -> None:
    carol = pki.issue_client("carol", not_after=dt.datetime.now(UTC) + dt.timedelta(days=10, hours=1))
    seeded.add_user("bob", org="beta")
    seeded.add_user("carol", org="beta")
    seeded.upload_certificate(bob.cert_pem, user_id="bob")
    seeded.upload_certificate(carol.cert_pem, user_id="carol")

    def fingerprints(**filters: Any) -> list[str]:
        return [r.fingerprint for r in seeded.list_certificates(**filters)]

    assert fingerprints() == [alice.fingerprint, bob.fingerprint, carol.fingerprint]  # upload order
    assert fingerprints(user_id="bob") == [bob.fingerprint]
    assert fingerprints(org="beta") == [bob.fingerprint, carol.fingerprint]
    assert fingerprints(org="beta", user_id="carol") == [carol.fingerprint]
    assert fingerprints(org="acme", user_id="carol") == []
    assert fingerprints(user_id="nobody") == []
    (listed,) = seeded.list_certificates(user_id="carol")
    assert listed.days_left() == 10


def test_show_accepts_any_case(seeded: Store, alice: Issued) -> None:
    record = seeded.get_certificate(alice.fingerprint.upper())
    assert record.fingerprint == alice.fingerprint  # lowercase
    assert (record.user_id, record.org, record.label) == ("alice", "acme", "alice laptop")
    assert seeded.resolve_certificate(alice.fingerprint.upper()) is not None


def test_download_returns_the_exact_upload(empty: Store, bob: Issued, alice: Issued) -> None:
    empty.add_user("bob")
    odd = b"  \r\nleading words\r\n" + bob.cert_pem.replace(b"\n", b"\r\n") + b"\t\r\n\r\n\x00"
    empty.upload_certificate(odd, user_id="bob")
    assert empty.download_certificate(bob.fingerprint) == odd
    assert empty.download_certificate(bob.fingerprint.upper()) == odd
    empty.upload_certificate(alice.chain_pem, user_id="bob")
    assert empty.download_certificate(alice.fingerprint) == alice.chain_pem


def test_rename(seeded: Store, alice: Issued) -> None:
    renamed = seeded.rename_certificate(alice.fingerprint.upper(), "new laptop")
    assert renamed.label == "new laptop"
    assert renamed.fingerprint == alice.fingerprint
    assert seeded.get_certificate(alice.fingerprint).label == "new laptop"
    assert seeded.resolve_certificate(alice.fingerprint) is not None


def test_delete(seeded: Store, alice: Issued) -> None:
    seeded.delete_certificate(alice.fingerprint.upper())
    assert seeded.resolve_certificate(alice.fingerprint) is None
    assert seeded.list_certificates() == []
    with pytest.raises(ManagementError) as info:
        seeded.delete_certificate(alice.fingerprint)
    assert info.value.reason is Reason.NOT_FOUND


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s, fp: s.get_certificate(fp), id="show"),
        pytest.param(lambda s, fp: s.download_certificate(fp), id="download"),
        pytest.param(lambda s, fp: s.rename_certificate(fp, "x"), id="rename"),
        pytest.param(lambda s, fp: s.delete_certificate(fp), id="delete"),
    ],
)
def test_not_found(action: Callable[[Store, str], object], seeded: Store, bob: Issued) -> None:
    generation = seeded.generation
    with pytest.raises(ManagementError) as info:
        action(seeded, bob.fingerprint)
    assert info.value.reason is Reason.NOT_FOUND
    assert info.value.status == 404
    assert seeded.generation == generation
    assert len(seeded.list_certificates()) == 1


# -- batch upload ---------------------------------------------------------------------------------


def test_upload_certificates_stores_all(empty: Store, pki: TestPKI) -> None:
    issued = [pki.issue_client(f"batch{i}") for i in range(3)]
    empty.add_user("u1", org="one")
    empty.add_user("u2", org="two")
    uploads = [
        Upload(issued[0].cert_pem, "u1", "first"),
        Upload(issued[1].chain_pem, "u2"),
        Upload(issued[2].cert_pem, "u1", "third"),
    ]
    records = empty.upload_certificates(uploads, uploaded_by="csv")
    assert [(r.fingerprint, r.user_id, r.org, r.uploaded_by) for r in records] == [
        (issued[0].fingerprint, "u1", "one", "csv"),
        (issued[1].fingerprint, "u2", "two", "csv"),
        (issued[2].fingerprint, "u1", "one", "csv"),
    ]
    assert [r.label for r in records] == ["first", issued[1].cert.subject.rfc4514_string(), "third"]
    assert empty.list_certificates() == records
    assert empty.download_certificate(issued[1].fingerprint) == issued[1].chain_pem


def test_upload_certificates_of_nothing(empty: Store) -> None:
    generation = empty.generation
    assert empty.upload_certificates([]) == []
    assert empty.generation == generation


def test_upload_certificates_is_all_or_nothing(seeded: Store, pki: TestPKI, alice: Issued) -> None:
    good = [pki.issue_client(f"good{i}") for i in range(2)]
    seeded.add_user("u1")
    generation = seeded.generation
    uploads = [
        Upload(good[0].cert_pem, "u1"),
        Upload(_expired(pki), "u1"),
        Upload(good[1].cert_pem, "ghost"),
        Upload(alice.cert_pem, "u1"),  # registered to alice already
        Upload(good[0].chain_pem, "u1"),  # the same leaf as row 0, in this batch
        Upload(b"junk", "u1"),
    ]
    with pytest.raises(BatchRefused) as info:
        seeded.upload_certificates(uploads)
    refused = info.value
    assert isinstance(refused, ManagementError)
    assert refused.reason is Reason.CERTIFICATE_EXPIRED  # the first refusal's
    assert [(index, error.reason) for index, error in refused.refusals] == [
        (1, Reason.CERTIFICATE_EXPIRED),
        (2, Reason.UNKNOWN_USER),
        (3, Reason.DUPLICATE_CERTIFICATE),
        (4, Reason.DUPLICATE_CERTIFICATE),
        (5, Reason.MALFORMED_CERTIFICATE),
    ]
    assert [c.fingerprint for c in seeded.list_certificates()] == [alice.fingerprint]
    assert seeded.resolve_certificate(good[0].fingerprint) is None
    assert seeded.generation == generation


# -- generation -----------------------------------------------------------------------------------


def _record(outcome: str = "accepted", user: str | None = "alice", at: float = 1.0) -> LoginRecord:
    return LoginRecord(outcome, "tls:environ", user_id=user, time=at, peer="192.0.2.1")


GENERATION: list[Any] = [
    pytest.param(lambda s, a, b: s.delete_certificate(a.fingerprint), True, id="delete"),
    pytest.param(lambda s, a, b: s.set_user_active("alice", False), True, id="deactivate"),
    pytest.param(lambda s, a, b: s.set_user_active("alice", True), True, id="activate"),
    pytest.param(lambda s, a, b: s.set_user_permissions("alice", [API_ONLY]), True, id="permissions"),
    pytest.param(lambda s, a, b: s.add_user("alice", org="beta"), True, id="change-user"),
    pytest.param(lambda s, a, b: s.add_user("zed"), True, id="add-user"),
    pytest.param(lambda s, a, b: s.set_org("acme", cert_auth=False), True, id="org-off"),
    pytest.param(lambda s, a, b: s.set_org("acme", cert_auth=True), True, id="org-on"),
    pytest.param(lambda s, a, b: s.upload_certificate(b.chain_pem, user_id="alice"), True, id="upload"),
    pytest.param(lambda s, a, b: s.upload_certificates([Upload(b.cert_pem, "alice")]), True, id="batch"),
    pytest.param(lambda s, a, b: s.rename_certificate(a.fingerprint, "x"), False, id="rename"),
    pytest.param(lambda s, a, b: s.list_certificates(), False, id="list"),
    pytest.param(lambda s, a, b: s.get_certificate(a.fingerprint), False, id="show"),
    pytest.param(lambda s, a, b: s.list_users(), False, id="list-users"),
    pytest.param(lambda s, a, b: (s.record(_record()), s.flush()), False, id="history-write"),
    pytest.param(lambda s, a, b: s.login_history(), False, id="history-read"),
    pytest.param(lambda s, a, b: s.prune_history(older_than=dt.timedelta(0)), False, id="history-prune"),
]


@pytest.mark.parametrize(("change", "bumps"), GENERATION)
def test_generation(
    change: Callable[[Store, Issued, Issued], object], bumps: bool, seeded: Store, alice: Issued, bob: Issued
) -> None:
    before = seeded.generation
    change(seeded, alice, bob)
    assert (seeded.generation != before) is bumps


def test_generation_changes_each_time(seeded: Store) -> None:
    seen = {seeded.generation}
    for active in (False, True, False):
        seeded.set_user_active("alice", active)
        seen.add(seeded.generation)
    assert len(seen) == 4


# -- login history --------------------------------------------------------------------------------


def _at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


@pytest.fixture
def history(empty: Store) -> Store:
    for rec in [
        _record("accepted", "alice", 100.0),
        _record("unknown_certificate", None, 200.0),
        _record("user_inactive", "alice", 300.0),
        _record("accepted", "bob", 400.0),
        _record("certificate_expired", "bob", 500.0),
        _record("user_inactive", "bob", 500.0),  # same time, recorded later: listed first
    ]:
        empty.record(rec)
    return empty


@pytest.mark.parametrize(
    ("filters", "times"),
    [
        pytest.param({}, [500.0, 500.0, 400.0, 300.0, 200.0, 100.0], id="all-newest-first"),
        pytest.param({"user_id": "alice"}, [300.0, 100.0], id="user"),
        pytest.param({"failed_only": True}, [500.0, 500.0, 300.0, 200.0], id="failed-only"),
        pytest.param({"outcome": "user_inactive"}, [500.0, 300.0], id="outcome"),
        pytest.param({"outcome": Reason.USER_INACTIVE}, [500.0, 300.0], id="outcome-as-reason"),
        pytest.param({"outcome": "accepted"}, [400.0, 100.0], id="outcome-accepted"),
        pytest.param({"since": _at(300.0)}, [500.0, 500.0, 400.0, 300.0], id="since-inclusive"),
        pytest.param({"until": _at(300.0)}, [200.0, 100.0], id="until-exclusive"),
        pytest.param({"since": _at(200.0), "until": _at(500.0)}, [400.0, 300.0, 200.0], id="window"),
        pytest.param({"since": dt.datetime(1970, 1, 1, 0, 6, 40)}, [500.0, 500.0, 400.0], id="naive-is-utc"),
        pytest.param({"user_id": "bob", "failed_only": True}, [500.0, 500.0], id="user-and-failed"),
        pytest.param({"limit": 2}, [500.0, 500.0], id="limit"),
        pytest.param({"limit": 0}, [], id="limit-0"),
        pytest.param({"limit": None}, [500.0, 500.0, 400.0, 300.0, 200.0, 100.0], id="no-limit"),
        pytest.param({"user_id": "nobody"}, [], id="no-match"),
    ],
)
def test_login_history_filters(filters: dict[str, Any], times: list[float], history: Store) -> None:
    assert [r.time for r in history.login_history(**filters)] == times


def test_login_history_keeps_every_field(empty: Store) -> None:
    full = LoginRecord(
        "certificate_revoked", "proxy:nginx", "ab" * 32, "CN=x", "CN=ca", "1f", "x", "acme",
        "revoked by OCSP", "ocsp", 1_700_000_000.25, "10.0.0.1",
    )
    empty.record(full)
    assert empty.login_history() == [full]


def test_same_time_newest_recorded_first(history: Store) -> None:
    assert [r.outcome for r in history.login_history(limit=2)] == ["user_inactive", "certificate_expired"]


def test_prune_history(empty: Store) -> None:
    now = time.time()
    for age_days in (40, 31, 29, 1):
        empty.record(_record(at=now - age_days * 86400))
    assert empty.prune_history(older_than=dt.timedelta(days=30)) == 2
    assert [round((now - r.time) / 86400) for r in empty.login_history()] == [1, 29]
    assert empty.prune_history(older_than=dt.timedelta(days=30)) == 0


def test_prune_refuses_a_negative_age(empty: Store) -> None:
    with pytest.raises(ValueError, match="negative"):
        empty.prune_history(older_than=dt.timedelta(days=-1))


def test_flush_and_close(empty: Store) -> None:
    empty.record(_record())
    assert empty.flush(timeout=10) is True
    assert len(empty.login_history()) == 1
    empty.close()
    empty.close()  # idempotent


# -- abbreviated fingerprints (for tools) ----------------------------------------------------------


def test_find_fingerprints_by_prefix(seeded: Store, alice: Issued, bob: Issued) -> None:
    seeded.add_user("bob", org="acme")
    seeded.upload_certificate(bob.chain_pem, user_id="bob")
    both = sorted([alice.fingerprint, bob.fingerprint])
    assert seeded.find_fingerprints("") == []
    assert seeded.find_fingerprints(alice.fingerprint[:12]) == [alice.fingerprint]
    assert seeded.find_fingerprints(alice.fingerprint[:12].upper()) == [alice.fingerprint]
    assert seeded.find_fingerprints(alice.fingerprint) == [alice.fingerprint]
    common = ""
    for a, b in zip(*both, strict=True):
        if a != b:
            break
        common += a
    if common:  # the two fingerprints share a first digit or more
        assert seeded.find_fingerprints(common, limit=5) == both
        assert seeded.find_fingerprints(common, limit=1) == both[:1]
    for fp in both:
        assert seeded.find_fingerprints(fp[: len(common) + 1], limit=5) == [fp]
    missing = "f" * 10 if not any(fp.startswith("f" * 10) for fp in both) else "0" * 10
    assert seeded.find_fingerprints(missing) == []
    assert seeded.find_fingerprints("not hex!") == []
