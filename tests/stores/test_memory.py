"""stores/memory.py: MemoryStore's management methods, upload rules and pipeline lookups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from mtls_middleware import (
    CertificateError,
    CertificateRecord,
    ConfigurationError,
    HistorySink,
    LoginRecord,
    ManagementError,
    MemoryStore,
    MTLSError,
    Reason,
    Store,
    ValidationError,
    open_store,
)
from mtls_middleware.stores.base import MAX_UPLOAD_BYTES, check_upload
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("memory://") is not open_store("memory://")


@pytest.mark.parametrize("url", ["bogus://x", "", "memory", "/tmp/x.db"], ids=repr)
def test_open_store_unknown(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_memory_store_is_a_store_and_a_history_sink() -> None:
    store = MemoryStore()
    assert isinstance(store, Store)
    assert isinstance(store, HistorySink)


# -- users, orgs, lookups ---------------------------------------------------------------------


def test_resolve_certificate(store: MemoryStore, alice: Issued, bob: Issued) -> None:
    principal = store.resolve_certificate(alice.fingerprint)
    assert principal is not None
    assert (principal.user_id, principal.org, principal.active, principal.org_cert_auth) == (
        "alice",
        "acme",
        True,
        True,
    )
    assert store.resolve_certificate(bob.fingerprint) is None


def test_resolve_user_reflects_changes(store: MemoryStore) -> None:
    store.set_user_active("alice", False)
    store.set_org("acme", cert_auth=False)
    principal = store.resolve_user("alice")
    assert principal is not None
    assert principal.active is False
    assert principal.org_cert_auth is False
    assert store.resolve_user("nobody") is None


def test_add_user_with_permissions() -> None:
    store = MemoryStore()
    record = store.add_user("carol", org="beta", active=False, permissions=["read", "write"])
    assert (record.user_id, record.org, record.active) == ("carol", "beta", False)
    assert record.permissions == frozenset({"read", "write"})
    principal = store.resolve_user("carol")
    assert principal is not None
    assert principal.permissions == frozenset({"read", "write"})


def test_a_new_org_has_cert_auth_on() -> None:
    store = MemoryStore()
    store.add_user("dave", org="new-org")
    principal = store.resolve_user("dave")
    assert principal is not None
    assert principal.org_cert_auth is True


def test_set_org_before_any_user() -> None:
    store = MemoryStore()
    store.set_org("closed", cert_auth=False)
    store.add_user("erin", org="closed")
    principal = store.resolve_user("erin")
    assert principal is not None
    assert principal.org_cert_auth is False


@pytest.mark.parametrize(
    ("change", "bumps"),
    [
        pytest.param(lambda s, a, b: s.delete_certificate(a.fingerprint), True, id="delete"),
        pytest.param(lambda s, a, b: s.set_user_active("alice", False), True, id="deactivate"),
        pytest.param(lambda s, a, b: s.set_org("acme", cert_auth=False), True, id="org-off"),
        pytest.param(lambda s, a, b: s.add_user("zed"), True, id="add-user"),
        pytest.param(lambda s, a, b: s.upload_certificate(b.chain_pem, user_id="alice"), True, id="upload"),
        pytest.param(lambda s, a, b: s.rename_certificate(a.fingerprint, "x"), False, id="rename"),
        pytest.param(lambda s, a, b: s.list_certificates(), False, id="list"),
    ],
)
def test_generation(
    change: Callable[[MemoryStore, Issued, Issued], object],
    bumps: bool,
    store: MemoryStore,
    alice: Issued,
    bob: Issued,
) -> None:
    before = store.generation
    change(store, alice, bob)
    assert (store.generation != before) is bumps


# -- certificates -----------------------------------------------------------------------------


def test_upload_returns_the_record(store: MemoryStore, bob: Issued, pki: TestPKI) -> None:
    store.add_user("bob", org="beta")
    record = store.upload_certificate(bob.chain_pem, user_id="bob", label="bob's laptop", uploaded_by="admin")
    assert isinstance(record, CertificateRecord)
    assert record.fingerprint == bob.fingerprint
    assert (record.user_id, record.org, record.label) == ("bob", "beta", "bob's laptop")
    assert record.pem == bob.chain_pem
    assert record.subject == "CN=bob,O=mtls_middleware test"
    assert record.issuer == pki.issuing.cert.subject.rfc4514_string()
    assert record.serial == format(bob.cert.serial_number, "x")
    assert record.not_after == bob.cert.not_valid_after_utc
    assert record.uploaded_by == "admin"
    assert 0 < record.days_left() <= 30
    assert store.resolve_certificate(bob.fingerprint) is not None


def test_label_defaults_to_the_subject(bob: Issued) -> None:
    store = MemoryStore()
    store.add_user("bob")
    assert store.upload_certificate(bob.cert_pem, user_id="bob").label == "CN=bob,O=mtls_middleware test"


def test_list_certificates_filters(store: MemoryStore, bob: Issued, pki: TestPKI) -> None:
    carol = pki.issue_client("carol")
    store.add_user("bob", org="beta")
    store.add_user("carol", org="beta")
    store.upload_certificate(bob.cert_pem, user_id="bob")
    store.upload_certificate(carol.cert_pem, user_id="carol")

    def fingerprints(**filters: Any) -> set[str]:
        return {r.fingerprint for r in store.list_certificates(**filters)}

    assert len(fingerprints()) == 3
    assert fingerprints(user_id="bob") == {bob.fingerprint}
    assert fingerprints(org="beta") == {bob.fingerprint, carol.fingerprint}
    assert fingerprints(org="beta", user_id="carol") == {carol.fingerprint}
    assert fingerprints(org="acme", user_id="carol") == set()
    assert fingerprints(user_id="nobody") == set()


def test_get_and_download(store: MemoryStore, alice: Issued) -> None:
    record = store.get_certificate(alice.fingerprint)
    assert record.user_id == "alice"
    assert store.get_certificate(alice.fingerprint.upper()) == record
    assert store.download_certificate(alice.fingerprint) == alice.chain_pem  # as uploaded


def test_download_is_byte_exact(bob: Issued) -> None:
    store = MemoryStore()
    store.add_user("bob")
    uploaded = b"\r\n" + bob.cert_pem.replace(b"\n", b"\r\n") + b"\r\n"
    store.upload_certificate(uploaded, user_id="bob")
    assert store.download_certificate(bob.fingerprint) == uploaded


def test_rename(store: MemoryStore, alice: Issued) -> None:
    renamed = store.rename_certificate(alice.fingerprint, "new laptop")
    assert renamed.label == "new laptop"
    assert store.get_certificate(alice.fingerprint).label == "new laptop"
    assert store.resolve_certificate(alice.fingerprint) is not None


def test_delete(store: MemoryStore, alice: Issued) -> None:
    store.delete_certificate(alice.fingerprint.upper())
    assert store.resolve_certificate(alice.fingerprint) is None
    assert store.list_certificates() == []


# -- management refusals ----------------------------------------------------------------------


def _expired(pki: TestPKI) -> Issued:
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    return pki.issue_client("old", not_before=now - 9 * day, not_after=now - day)


def _future(pki: TestPKI) -> Issued:
    now = dt.datetime.now(dt.timezone.utc)
    return pki.issue_client("later", not_before=now + dt.timedelta(days=1))


def _eleven(pki: TestPKI) -> bytes:
    ca = pki.issuing
    for level in range(9):
        ca = pki.issue_ca(f"upload CA {level}", parent=ca)
    issued = pki.issue_client("eleven", issuer=ca)
    assert len(issued.chain) == 11
    return issued.chain_pem


UPLOADS: list[Any] = [
    pytest.param(
        lambda p, a: a.chain_pem + b"\n" * MAX_UPLOAD_BYTES, Reason.CERTIFICATE_TOO_LARGE, id="over-1MB"
    ),
    pytest.param(lambda p, a: _eleven(p), Reason.CHAIN_TOO_LONG, id="11-certificates"),
    pytest.param(lambda p, a: _expired(p).cert_pem, Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param(lambda p, a: _future(p).cert_pem, Reason.CERTIFICATE_NOT_YET_VALID, id="not-yet-valid"),
    pytest.param(
        lambda p, a: p.issue_client("srv", eku=(SERVER_AUTH,)).cert_pem,
        Reason.MISSING_CLIENT_AUTH_EKU,
        id="server-auth-eku-only",
    ),
    pytest.param(
        lambda p, a: p.issue_client("none", eku=None).cert_pem,
        Reason.MISSING_CLIENT_AUTH_EKU,
        id="no-eku-at-all",
    ),
    pytest.param(
        lambda p, a: p.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH)).cert_pem,
        Reason.DUAL_PURPOSE_EKU,
        id="dual-eku",
    ),
    pytest.param(
        lambda p, a: b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        Reason.MALFORMED_CERTIFICATE,
        id="garbage-pem",
    ),
    pytest.param(lambda p, a: b"hello world", Reason.MALFORMED_CERTIFICATE, id="not-pem"),
    pytest.param(lambda p, a: b"", Reason.MALFORMED_CERTIFICATE, id="empty"),
    pytest.param(lambda p, a: a.key_pem, Reason.MALFORMED_CERTIFICATE, id="private-key"),
    pytest.param(lambda p, a: a.cert_der, Reason.MALFORMED_CERTIFICATE, id="der-not-pem"),
    # A key bundled with the certificate would be stored and handed out by download_certificate.
    pytest.param(
        lambda p, a: a.key_pem + a.cert_pem,
        Reason.MALFORMED_CERTIFICATE,
        id="private-key-bundled-before-the-certificate",
    ),
    pytest.param(
        lambda p, a: a.cert_pem + a.key_pem,
        Reason.MALFORMED_CERTIFICATE,
        id="private-key-bundled-after-the-certificate",
    ),
]


@pytest.mark.parametrize(("make", "reason"), UPLOADS)
def test_upload_refusals(
    make: Callable[[TestPKI, Issued], bytes], reason: Reason, pki: TestPKI, bob: Issued
) -> None:
    store = MemoryStore()
    store.add_user("bob")
    data = make(pki, bob)
    with pytest.raises(MTLSError) as info:
        store.upload_certificate(data, user_id="bob")
    assert info.value.reason is reason
    assert isinstance(info.value, (CertificateError, ValidationError, ManagementError))
    assert 400 <= info.value.status < 500
    assert store.list_certificates() == []


def test_upload_allows_dual_purpose_only_when_asked(pki: TestPKI) -> None:
    dual = pki.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH))
    leaf, chain = check_upload(dual.chain_pem, allow_dual_purpose_eku=True)
    assert leaf == dual.cert
    assert chain == dual.chain


def test_upload_of_exactly_the_limit_is_not_too_large(bob: Issued) -> None:
    data = bob.cert_pem + b"\n" * (MAX_UPLOAD_BYTES - len(bob.cert_pem))
    assert len(data) == MAX_UPLOAD_BYTES
    leaf, _ = check_upload(data)
    assert leaf == bob.cert


def test_upload_judges_validity_at_the_given_time(bob: Issued) -> None:
    later = bob.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(ValidationError) as info:
        check_upload(bob.cert_pem, now=later)
    assert info.value.reason is Reason.CERTIFICATE_EXPIRED


def test_duplicate_certificate(store: MemoryStore, alice: Issued) -> None:
    store.add_user("mallory", org="other")
    for user in ("alice", "mallory"):
        with pytest.raises(ManagementError) as info:
            store.upload_certificate(alice.cert_pem, user_id=user)
        assert info.value.reason is Reason.DUPLICATE_CERTIFICATE
        assert info.value.status == 409
    assert store.get_certificate(alice.fingerprint).user_id == "alice"


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s, b: s.upload_certificate(b.cert_pem, user_id="ghost"), id="upload"),
        pytest.param(lambda s, b: s.set_user_active("ghost", False), id="set-active"),
        pytest.param(lambda s, b: s.add_user(""), id="empty-user-id"),
    ],
)
def test_unknown_user(
    action: Callable[[MemoryStore, Issued], object], store: MemoryStore, bob: Issued
) -> None:
    with pytest.raises(ManagementError) as info:
        action(store, bob)
    assert info.value.reason is Reason.UNKNOWN_USER
    assert store.resolve_certificate(bob.fingerprint) is None


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda s, fp: s.get_certificate(fp), id="get"),
        pytest.param(lambda s, fp: s.download_certificate(fp), id="download"),
        pytest.param(lambda s, fp: s.rename_certificate(fp, "x"), id="rename"),
        pytest.param(lambda s, fp: s.delete_certificate(fp), id="delete"),
    ],
)
def test_not_found(action: Callable[[MemoryStore, str], object], store: MemoryStore, bob: Issued) -> None:
    with pytest.raises(ManagementError) as info:
        action(store, bob.fingerprint)
    assert info.value.reason is Reason.NOT_FOUND
    assert info.value.status == 404


def test_delete_twice_is_not_found(store: MemoryStore, alice: Issued) -> None:
    store.delete_certificate(alice.fingerprint)
    with pytest.raises(ManagementError) as info:
        store.delete_certificate(alice.fingerprint)
    assert info.value.reason is Reason.NOT_FOUND


# -- history ----------------------------------------------------------------------------------


def _record(outcome: str, user: str | None, at: float) -> LoginRecord:
    return LoginRecord(outcome, "tls:environ", user_id=user, time=at, peer="192.0.2.1")


def test_login_history() -> None:
    store = MemoryStore()
    store.record(_record("accepted", "alice", 1.0))
    store.record(_record("unknown_certificate", None, 2.0))
    store.record(_record("user_inactive", "alice", 3.0))
    store.record(_record("accepted", "bob", 4.0))
    assert [r.time for r in store.login_history()] == [4.0, 3.0, 2.0, 1.0]  # newest first
    assert [r.time for r in store.login_history(user_id="alice")] == [3.0, 1.0]
    assert [r.time for r in store.login_history(failed_only=True)] == [3.0, 2.0]
    assert [r.time for r in store.login_history(limit=2)] == [4.0, 3.0]
    assert [r.time for r in store.login_history(user_id="alice", failed_only=True)] == [3.0]


def test_history_size_is_bounded() -> None:
    store = MemoryStore(history_size=3)
    for index in range(5):
        store.record(_record("accepted", "alice", float(index)))
    assert [r.time for r in store.login_history()] == [4.0, 3.0, 2.0]
