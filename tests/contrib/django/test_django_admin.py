"""The Django admin, driven over HTTP by Django's test client logged in as a superuser: real form
posts, the real (SQLite) database, the store's rules and reason codes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from mtls_middleware import Reason
from mtls_middleware.stores.base import MAX_UPLOAD_BYTES
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI
from tests.contrib.django.store_support import get_as, middleware_client

UTC = dt.timezone.utc


def _models() -> Any:
    from mtls_middleware.contrib.django import models

    return models


def url(name: str, *args: object) -> str:
    return reverse(f"admin:mtls_middleware_{name}", args=args)


@pytest.fixture
def admin_client() -> Client:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("admin", "admin@example.org", "pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def store() -> Any:
    """The store the admin works through (its changes are this process's changes)."""
    from mtls_middleware.contrib.django.store import shared_store

    return shared_store()


@pytest.fixture
def alice_user(store: Any, alice: Issued) -> Any:
    store.add_user("alice", org="acme")
    store.upload_certificate(alice.chain_pem, user_id="alice", label="alice laptop")
    return _models().CertificateUser.objects.get(user_id="alice")


def upload(client: Client, user: Any, *, pem: bytes | None = None, text: str = "", label: str = "") -> Any:
    data: dict[str, Any] = {"user": user.pk, "label": label, "pem_text": text}
    if pem is not None:
        data["pem_file"] = SimpleUploadedFile("cert.pem", pem, content_type="application/x-pem-file")
    return client.post(url("certificate_add"), data)


def error_codes(response: Any) -> list[str]:
    assert response.status_code == 200  # the form again, with its errors
    form = response.context_data["adminform"].form
    return [error.code for errors in form.errors.as_data().values() for error in errors]


# -- upload ---------------------------------------------------------------------------------------


def test_upload_a_file_keeps_it_byte_for_byte_and_audits(
    admin_client: Client, store: Any, bob: Issued
) -> None:
    store.add_user("bob", org="beta")
    bob_user = _models().CertificateUser.objects.get(user_id="bob")
    odd = b"leading words\r\n" + bob.chain_pem.replace(b"\n", b"\r\n") + b"\r\n"
    before = store.generation
    response = upload(admin_client, bob_user, pem=odd, label="bob's phone")
    assert response.status_code == 302
    record = store.get_certificate(bob.fingerprint)
    assert (record.user_id, record.org, record.label, record.uploaded_by) == ("bob", "beta", "bob's phone", "django:admin")
    assert store.download_certificate(bob.fingerprint) == odd
    assert store.generation != before
    (entry,) = store.audit_log(action="certificate.upload")
    assert (entry.actor, entry.target, entry.before) == ("django:admin", bob.fingerprint, None)
    assert entry.after is not None
    assert entry.after["user_id"] == "bob"


def test_upload_pasted_text_labelled_by_its_subject(admin_client: Client, store: Any, bob: Issued) -> None:
    store.add_user("bob")
    bob_user = _models().CertificateUser.objects.get(user_id="bob")
    response = upload(admin_client, bob_user, text=bob.cert_pem.decode())
    assert response.status_code == 302
    assert store.get_certificate(bob.fingerprint).label == "CN=bob,O=mtls_middleware test"


def _expired(pki: TestPKI, bob: Issued, alice: Issued) -> bytes:
    now = dt.datetime.now(UTC)
    return pki.issue_client("old", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1)).cert_pem


def _eleven(pki: TestPKI, bob: Issued, alice: Issued) -> bytes:
    ca = pki.issuing
    for level in range(9):
        ca = pki.issue_ca(f"admin CA {level}", parent=ca)
    return pki.issue_client("eleven", issuer=ca).chain_pem


REFUSED: list[Any] = [
    pytest.param(lambda p, b, a: b"hello", Reason.MALFORMED_CERTIFICATE, id="not-pem"),
    pytest.param(lambda p, b, a: b.cert_der, Reason.MALFORMED_CERTIFICATE, id="der"),
    pytest.param(lambda p, b, a: b.key_pem + b.cert_pem, Reason.MALFORMED_CERTIFICATE, id="private-key"),
    pytest.param(lambda p, b, a: b.cert_pem + b"\n" * MAX_UPLOAD_BYTES, Reason.CERTIFICATE_TOO_LARGE, id="over-1MB"),
    pytest.param(_eleven, Reason.CHAIN_TOO_LONG, id="11-certificates"),
    pytest.param(_expired, Reason.CERTIFICATE_EXPIRED, id="expired"),
    pytest.param(
        lambda p, b, a: p.issue_client("srv", eku=(SERVER_AUTH,)).cert_pem, Reason.MISSING_CLIENT_AUTH_EKU,
        id="no-client-auth-eku",
    ),
    pytest.param(
        lambda p, b, a: p.issue_client("dual", eku=(CLIENT_AUTH, SERVER_AUTH)).cert_pem, Reason.DUAL_PURPOSE_EKU,
        id="dual-purpose-eku",
    ),
    pytest.param(lambda p, b, a: a.cert_pem, Reason.DUPLICATE_CERTIFICATE, id="duplicate-of-another-user"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED)
def test_upload_refusals_are_form_errors_with_reason_codes(
    make: Callable[[TestPKI, Issued, Issued], bytes], reason: Reason, admin_client: Client, store: Any,
    alice_user: Any, pki: TestPKI, bob: Issued, alice: Issued,
) -> None:
    store.add_user("bob")
    bob_user = _models().CertificateUser.objects.get(user_id="bob")
    before = store.generation
    response = upload(admin_client, bob_user, pem=make(pki, bob, alice))
    assert error_codes(response) == [reason.value]
    assert escape(reason.message) in response.content.decode()  # said to the human, too
    assert [c.user_id for c in store.list_certificates()] == ["alice"]
    assert store.audit_log() == []
    assert store.generation == before


@pytest.mark.parametrize(
    ("pem", "text", "code"),
    [
        pytest.param(None, "", "malformed_certificate", id="nothing"),
        pytest.param(b"x", "y", "invalid_request", id="file-and-text"),
    ],
)
def test_upload_needs_exactly_one_source(
    pem: bytes | None, text: str, code: str, admin_client: Client, alice_user: Any
) -> None:
    assert error_codes(upload(admin_client, alice_user, pem=pem, text=text)) == [code]


# -- list, filters, download ----------------------------------------------------------------------


@pytest.fixture
def three(store: Any, alice_user: Any, pki: TestPKI) -> dict[str, str]:
    """alice (acme) with her certificate, expiring in a year; bob (beta) with one expiring in 5 days,
    carol (beta) one already expired (expiry dates set after the upload: uploads refuse expired
    certificates)."""
    now = dt.datetime.now(UTC)
    store.add_user("bob", org="beta")
    store.add_user("carol", org="beta")
    soon = pki.issue_client("bob-soon", not_after=now + dt.timedelta(days=5))
    gone = pki.issue_client("carol-old")
    store.upload_certificate(soon.cert_pem, user_id="bob")
    store.upload_certificate(gone.cert_pem, user_id="carol")
    certificates = _models().Certificate.objects
    certificates.filter(fingerprint=gone.fingerprint).update(not_after=now - dt.timedelta(days=1))
    certificates.filter(user__user_id="alice").update(not_after=now + dt.timedelta(days=365))
    alice_fp = store.list_certificates(user_id="alice")[0].fingerprint
    return {"alice": alice_fp, "bob": soon.fingerprint, "carol": gone.fingerprint}


def listed(client: Client, **query: Any) -> list[str]:
    response = client.get(url("certificate_changelist"), query)
    assert response.status_code == 200
    return sorted(c.user.user_id for c in response.context_data["cl"].result_list)


def test_list_and_filter_by_user_org_and_expiry(admin_client: Client, three: dict[str, str]) -> None:
    models = _models()
    bob = models.CertificateUser.objects.get(user_id="bob")
    beta = models.Organisation.objects.get(name="beta")
    assert listed(admin_client) == ["alice", "bob", "carol"]
    assert listed(admin_client, user__id__exact=bob.pk) == ["bob"]
    assert listed(admin_client, user__org__id__exact=beta.pk) == ["bob", "carol"]
    assert listed(admin_client, expiry="expired") == ["carol"]
    assert listed(admin_client, expiry="7") == ["bob"]
    assert listed(admin_client, expiry="30") == ["bob"]
    assert listed(admin_client, expiry="later") == ["alice"]
    assert listed(admin_client, q=three["alice"][:20]) == ["alice"]


def test_download_is_the_upload_as_an_attachment(admin_client: Client, alice_user: Any, alice: Issued) -> None:
    cert = _models().Certificate.objects.get()
    response = admin_client.get(url("certificate_download", cert.pk))
    assert response.status_code == 200
    assert response.content == alice.chain_pem
    assert response["Content-Type"] == "application/x-pem-file"
    assert response["Content-Disposition"] == f'attachment; filename="{alice.fingerprint}.pem"'


def test_download_needs_a_staff_login(alice_user: Any, alice: Issued) -> None:
    cert = _models().Certificate.objects.get()
    response = Client().get(url("certificate_download", cert.pk))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    assert alice.chain_pem not in response.content


def test_download_of_a_missing_certificate_is_refused(admin_client: Client) -> None:
    assert admin_client.get(url("certificate_download", 999)).status_code == 403


# -- rename and delete ----------------------------------------------------------------------------


def test_rename_changes_only_the_label(admin_client: Client, store: Any, alice_user: Any, alice: Issued) -> None:
    cert = _models().Certificate.objects.get()
    before = store.generation
    response = admin_client.post(url("certificate_change", cert.pk), {"label": "new laptop"})
    assert response.status_code == 302
    record = store.get_certificate(alice.fingerprint)
    assert (record.label, record.user_id, record.pem) == ("new laptop", "alice", alice.chain_pem)
    assert store.generation == before  # a rename invalidates nothing
    (entry,) = store.audit_log(action="certificate.rename")
    assert (entry.actor, entry.before, entry.after) == ("django:admin", {"label": "alice laptop"}, {"label": "new laptop"})


def test_delete_refuses_the_next_request_at_once(
    admin_client: Client, store: Any, alice_user: Any, alice: Issued, pki: TestPKI
) -> None:
    client = middleware_client(store, pki)
    assert get_as(client, alice) == (200, None)
    assert get_as(client, alice) == (200, None)  # now in the verdict cache
    cert = _models().Certificate.objects.get()
    response = admin_client.post(url("certificate_delete", cert.pk), {"post": "yes"})
    assert response.status_code == 302
    assert store.list_certificates() == []
    assert get_as(client, alice) == (403, "unknown_certificate")
    (entry,) = store.audit_log(action="certificate.delete")
    assert (entry.actor, entry.target, entry.after) == ("django:admin", alice.fingerprint, None)
    assert entry.before is not None
    assert entry.before["user_id"] == "alice"


def test_delete_selected_goes_through_the_store(admin_client: Client, store: Any, three: dict[str, str]) -> None:
    models = _models()
    chosen = list(models.Certificate.objects.filter(user__org__name="beta").values_list("pk", flat=True))
    before = store.generation
    response = admin_client.post(
        url("certificate_changelist"), {"action": "delete_selected", "_selected_action": chosen, "post": "yes"}
    )
    assert response.status_code == 302
    assert [c.user_id for c in store.list_certificates()] == ["alice"]
    assert store.generation != before
    assert sorted(e.target for e in store.audit_log(action="certificate.delete")) == sorted(
        [three["bob"], three["carol"]]
    )


# -- users and organisations ----------------------------------------------------------------------


def test_add_a_user_with_permissions(admin_client: Client, store: Any) -> None:
    acme = store.set_org("acme", cert_auth=True) and _models().Organisation.objects.get(name="acme")
    before = store.generation
    response = admin_client.post(
        url("certificateuser_add"),
        {"user_id": "dora", "org": acme.pk, "active": "on", "permissions": "enforce_mtls, api_only reports"},
    )
    assert response.status_code == 302
    user = store.get_user("dora")
    assert (user.org, user.active, user.permissions) == ("acme", True, {"enforce_mtls", "api_only", "reports"})
    assert store.generation != before
    (entry,) = store.audit_log(action="user.create")
    assert entry.after == {"org": "acme", "active": True, "permissions": ["api_only", "enforce_mtls", "reports"]}


def test_deactivating_a_user_refuses_the_next_request(
    admin_client: Client, store: Any, alice_user: Any, alice: Issued, pki: TestPKI
) -> None:
    client = middleware_client(store, pki)
    assert get_as(client, alice) == (200, None)
    response = admin_client.post(
        url("certificateuser_change", alice_user.pk), {"org": alice_user.org.pk, "permissions": ""}
    )  # the "active" checkbox left unticked
    assert response.status_code == 302
    assert store.get_user("alice").active is False
    assert get_as(client, alice) == (403, "user_inactive")
    (entry,) = store.audit_log(action="user.update")
    assert (entry.before or {})["active"] is True
    assert (entry.after or {})["active"] is False


def test_switching_an_organisation_off_refuses_the_next_request(
    admin_client: Client, store: Any, alice_user: Any, alice: Issued, pki: TestPKI
) -> None:
    client = middleware_client(store, pki)
    assert get_as(client, alice) == (200, None)
    acme = _models().Organisation.objects.get(name="acme")
    response = admin_client.post(url("organisation_change", acme.pk), {"name": "acme"})  # cert_auth unticked
    assert response.status_code == 302
    assert store.list_orgs()[0].cert_auth is False
    assert get_as(client, alice) == (403, "certificate_auth_disabled")
    (entry,) = store.audit_log(action="org.set")
    assert (entry.target, entry.before, entry.after) == ("acme", {"cert_auth": True}, {"cert_auth": False})


def test_deleting_a_user_audits_each_cascaded_certificate(
    admin_client: Client, store: Any, alice_user: Any, alice: Issued, pki: TestPKI
) -> None:
    second = pki.issue_client("alice-phone")
    store.upload_certificate(second.chain_pem, user_id="alice", label="alice phone")
    response = admin_client.post(url("certificateuser_delete", alice_user.pk), {"post": "yes"})
    assert response.status_code == 302
    assert store.list_certificates() == []
    deleted = store.audit_log(action="certificate.delete")
    assert sorted((e.actor, e.target, e.after) for e in deleted) == sorted(
        [("django:admin", alice.fingerprint, None), ("django:admin", second.fingerprint, None)]
    )
    assert {(e.before or {}).get("user_id") for e in deleted} == {"alice"}
    assert {(e.before or {}).get("label") for e in deleted} == {"alice laptop", "alice phone"}
    (entry,) = store.audit_log(action="user.delete")
    assert (entry.actor, entry.target) == ("django:admin", "alice")


def test_delete_selected_users_audits_each_cascaded_certificate(
    admin_client: Client, store: Any, three: dict[str, str]
) -> None:
    models = _models()
    chosen = list(models.CertificateUser.objects.filter(org__name="beta").values_list("pk", flat=True))
    response = admin_client.post(
        url("certificateuser_changelist"), {"action": "delete_selected", "_selected_action": chosen, "post": "yes"}
    )
    assert response.status_code == 302
    assert [c.user_id for c in store.list_certificates()] == ["alice"]
    deleted = store.audit_log(action="certificate.delete")
    assert sorted((e.actor, e.target, (e.before or {}).get("user_id")) for e in deleted) == sorted(
        [("django:admin", three["bob"], "bob"), ("django:admin", three["carol"], "carol")]
    )
    assert sorted(e.target for e in store.audit_log(action="user.delete")) == ["bob", "carol"]


# -- the login history and the audit log: read-only ------------------------------------------------


@pytest.fixture
def history(store: Any) -> None:
    from mtls_middleware import LoginRecord

    now = dt.datetime.now(UTC).timestamp()
    for outcome, user, age in [
        ("accepted", "alice", 60),
        ("user_inactive", "alice", 120),
        ("unknown_certificate", None, 600),
        ("accepted", "bob", 3 * 86400),
        ("certificate_expired", "bob", 40 * 86400),
    ]:
        store.record(LoginRecord(outcome, "tls:environ", user_id=user, time=now - age))
    assert store.flush(timeout=30)


def history_outcomes(client: Client, **query: Any) -> list[tuple[str, str | None]]:
    response = client.get(url("loginattempt_changelist"), query)
    assert response.status_code == 200
    return [(r.outcome, r.user_id) for r in response.context_data["cl"].result_list]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            {}, [("accepted", "alice"), ("user_inactive", "alice"), ("unknown_certificate", None),
                 ("accepted", "bob"), ("certificate_expired", "bob")], id="all-newest-first",
        ),
        pytest.param({"outcome": "accepted"}, [("accepted", "alice"), ("accepted", "bob")], id="accepted"),
        pytest.param(
            {"outcome": "refused"},
            [("user_inactive", "alice"), ("unknown_certificate", None), ("certificate_expired", "bob")],
            id="refused-any",
        ),
        pytest.param({"outcome": "user_inactive"}, [("user_inactive", "alice")], id="one-reason"),
        pytest.param({"user_id": "bob"}, [("accepted", "bob"), ("certificate_expired", "bob")], id="user"),
        pytest.param(
            {"when": "1h"}, [("accepted", "alice"), ("user_inactive", "alice"), ("unknown_certificate", None)],
            id="past-hour",
        ),
        pytest.param({"when": "older"}, [("certificate_expired", "bob")], id="older-than-30-days"),
        pytest.param({"when": "7d", "user_id": "bob"}, [("accepted", "bob")], id="date-and-user"),
    ],
)
def test_login_history_filters(query: dict[str, str], expected: list[Any], admin_client: Client, history: None) -> None:
    assert history_outcomes(admin_client, **query) == expected


def test_login_history_is_read_only(admin_client: Client, history: None) -> None:
    attempt = _models().LoginAttempt.objects.first()
    assert admin_client.get(url("loginattempt_add")).status_code == 403
    assert admin_client.get(url("loginattempt_delete", attempt.pk)).status_code == 403
    page = admin_client.get(url("loginattempt_change", attempt.pk))
    assert page.status_code == 200  # viewable
    assert admin_client.post(url("loginattempt_change", attempt.pk), {"outcome": "accepted"}).status_code == 403
    changelist = admin_client.get(url("loginattempt_changelist"))
    assert "delete_selected" not in changelist.content.decode()
    assert _models().LoginAttempt.objects.count() == 5


def test_audit_log_is_read_only(admin_client: Client, store: Any, alice_user: Any) -> None:
    from mtls_middleware.stores.base import AuditEntry

    store.record_audit(AuditEntry("someone", "org.set", "acme", None, {"cert_auth": False}, dt.datetime.now(UTC)))
    entry = _models().AuditEntry.objects.get()
    assert admin_client.get(url("auditentry_changelist")).status_code == 200
    assert admin_client.get(url("auditentry_add")).status_code == 403
    assert admin_client.post(url("auditentry_change", entry.pk), {"actor": "x"}).status_code == 403
    assert admin_client.get(url("auditentry_delete", entry.pk)).status_code == 403
    assert _models().AuditEntry.objects.get().actor == "someone"


def test_every_page_renders(admin_client: Client, alice_user: Any, history: None, alice: Issued) -> None:
    from django.contrib.auth import get_user_model

    models = _models()
    get_user_model().objects.create_user("alice")  # shown as alice's Django account
    cert, org = models.Certificate.objects.get(), models.Organisation.objects.get()
    pages = [
        url("certificate_changelist"), url("certificate_add"), url("certificate_change", cert.pk),
        url("certificateuser_changelist"), url("certificateuser_add"), url("certificateuser_change", alice_user.pk),
        url("organisation_changelist"), url("organisation_add"), url("organisation_change", org.pk),
        url("loginattempt_changelist"), url("auditentry_changelist"), reverse("admin:index"),
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
    users = admin_client.get(url("certificateuser_changelist")).context_data["cl"].result_list
    assert [(u.user_id, u.certificate_total) for u in users] == [("alice", 1)]
    change = admin_client.get(url("certificate_change", cert.pk)).content.decode()
    assert alice.fingerprint in change
    assert url("certificate_download", cert.pk) in change
