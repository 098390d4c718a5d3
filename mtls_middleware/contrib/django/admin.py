"""The Django admin for certificates, users' certificate settings, organisations, the login
history and the audit log.

Certificates are uploaded, renamed and deleted through the store
(:func:`~mtls_middleware.contrib.django.store.shared_store`), so the upload rules are the same as
everywhere and a deletion invalidates cached verdicts at once; each of these changes, and every
change of a user's settings or an organisation, is recorded in the audit log with the actor
``django:<username>``. Deleting a user deletes its certificates too, and records a
``certificate.delete`` entry for each of them besides the ``user.delete``. The login history and
the audit log are read-only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html

from ...errors import ManagementError, MTLSError, Reason
from ...history import ACCEPTED
from ...stores.base import AuditEntry as AuditRecord
from .forms import CertificateRenameForm, CertificateUploadForm, CertificateUserForm
from .models import AuditEntry, Certificate, CertificateUser, LoginAttempt, Organisation
from .store import DjangoStore, _from_db, _to_db, shared_store

__all__ = [
    "AuditEntryAdmin",
    "CertificateAdmin",
    "CertificateUserAdmin",
    "LoginAttemptAdmin",
    "OrganisationAdmin",
]

_UTC = dt.timezone.utc
_SHORT = 16  # hex digits of a fingerprint shown in lists


def _store() -> DjangoStore:
    return shared_store(router.db_for_write(Certificate))


def actor(request: HttpRequest) -> str:
    """The audit log's actor for an admin request: ``django:<username>``."""
    return f"django:{request.user.get_username()}"


def _audit(request: HttpRequest, action: str, target: str, before: Any, after: Any) -> None:
    _store().record_audit(AuditRecord(
        actor=actor(request), action=action, target=target, before=before, after=after,
        time=dt.datetime.now(_UTC),
    ))


def _cert_state(cert: Certificate) -> dict[str, Any]:
    return {"user_id": cert.user.user_id, "label": cert.label, "subject": cert.subject}


# -- certificates ---------------------------------------------------------------------------------


class ExpiryFilter(admin.SimpleListFilter):
    """Certificates by how soon they expire."""

    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("expired", "expired"),
            ("7", "within 7 days"),
            ("30", "within 30 days"),
            ("later", "in more than 30 days"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        now = dt.datetime.now(_UTC)
        value = self.value()
        if value == "expired":
            return queryset.filter(not_after__lt=_to_db(now))
        if value in ("7", "30"):
            soon = now + dt.timedelta(days=int(value))
            return queryset.filter(not_after__gte=_to_db(now), not_after__lt=_to_db(soon))
        if value == "later":
            return queryset.filter(not_after__gte=_to_db(now + dt.timedelta(days=30)))
        return queryset


@admin.register(Certificate)
class CertificateAdmin(admin.ModelAdmin):
    """Upload (the store's rules, reason codes as form errors), list and filter by user,
    organisation and expiry, download the PEM as uploaded, rename, delete."""

    list_display = (
        "label", "user_id", "org", "short_fingerprint", "not_after", "expiry", "uploaded_at",
        "uploaded_by", "download_link",
    )
    list_filter = (
        ExpiryFilter,
        ("user__org", admin.RelatedOnlyFieldListFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("fingerprint", "label", "subject", "user__user_id")
    list_select_related = ("user", "user__org")
    readonly_fields = (
        "fingerprint", "user", "org", "subject", "issuer", "serial", "not_before", "not_after",
        "uploaded_at", "uploaded_by", "download_link",
    )

    # -- columns ----------------------------------------------------------------------------
    @admin.display(description="user", ordering="user__user_id")
    def user_id(self, obj: Certificate) -> str:
        return str(obj.user.user_id)

    @admin.display(description="organisation", ordering="user__org__name")
    def org(self, obj: Certificate) -> str:
        return str(obj.user.org.name)

    @admin.display(description="fingerprint", ordering="fingerprint")
    def short_fingerprint(self, obj: Certificate) -> str:
        return f"{obj.fingerprint[:_SHORT]}…"

    @admin.display(description="expires in")
    def expiry(self, obj: Certificate) -> str:
        days = (_from_db(obj.not_after) - dt.datetime.now(_UTC)).days
        return "expired" if days < 0 else f"{days} days"

    @admin.display(description="PEM")
    def download_link(self, obj: Certificate) -> str:
        if obj.pk is None:
            return "-"
        url = reverse(f"{self.admin_site.name}:mtls_middleware_certificate_download", args=[obj.pk])
        return str(format_html('<a href="{}">download</a>', url))  # SafeString stays safe

    # -- forms ------------------------------------------------------------------------------
    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            return type(
                "CertificateUploadForm", (CertificateUploadForm,),
                {"store": _store(), "uploaded_by": actor(request)},
            )
        return CertificateRenameForm

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("user", "label", "pem_file", "pem_text")
        return ("label", *self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Certificate, form: Any, change: bool) -> None:
        if not change:
            record = form.record  # stored by the form's validation
            _audit(request, "certificate.upload", record.fingerprint, None, {
                "user_id": record.user_id, "label": record.label, "subject": record.subject,
            })
            return
        before = Certificate.objects.get(pk=obj.pk).label
        renamed = _store().rename_certificate(obj.fingerprint, form.cleaned_data["label"])
        _audit(
            request, "certificate.rename", renamed.fingerprint, {"label": before}, {"label": renamed.label}
        )

    def _delete(self, request: HttpRequest, obj: Certificate) -> None:
        state = _cert_state(obj)
        try:
            _store().delete_certificate(obj.fingerprint)
        except ManagementError as exc:
            if exc.reason is not Reason.NOT_FOUND:  # gone already: what was asked is done
                raise
            return
        _audit(request, "certificate.delete", obj.fingerprint, state, None)

    def delete_model(self, request: HttpRequest, obj: Certificate) -> None:
        self._delete(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset.select_related("user"):
            self._delete(request, obj)

    # -- download ---------------------------------------------------------------------------
    def get_urls(self) -> list[Any]:
        download = path(
            "<path:object_id>/download/",
            self.admin_site.admin_view(self.download_view),
            name="mtls_middleware_certificate_download",
        )
        return [download, *super().get_urls()]

    def download_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The PEM exactly as uploaded, as an attachment named after the fingerprint."""
        obj = self.get_object(request, admin.utils.unquote(object_id))
        if obj is None or not self.has_view_permission(request, obj):
            raise PermissionDenied
        try:
            pem = _store().download_certificate(obj.fingerprint)
        except MTLSError as exc:
            messages.error(request, f"{exc.reason.value}: {exc.reason.message}")
            raise PermissionDenied from None
        response = HttpResponse(pem, content_type="application/x-pem-file")
        response["Content-Disposition"] = f'attachment; filename="{obj.fingerprint}.pem"'
        response["X-Content-Type-Options"] = "nosniff"
        return response


# -- users and organisations ----------------------------------------------------------------------


def _user_state(user: CertificateUser) -> dict[str, Any]:
    return {
        "org": user.org.name, "active": bool(user.active), "permissions": sorted(user.permissions or ()),
    }


@admin.register(CertificateUser)
class CertificateUserAdmin(admin.ModelAdmin):
    """Users' certificate settings: organisation, active, permissions (each change invalidates
    cached verdicts: the model's signals raise the generation)."""

    form = CertificateUserForm
    list_display = ("user_id", "org", "active", "permission_names", "certificate_count", "django_account")
    list_filter = ("active", ("org", admin.RelatedOnlyFieldListFilter))
    search_fields = ("user_id",)
    list_select_related = ("org",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(certificate_total=Count("certificates"))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("user_id",) if obj is not None else ()  # a user id is the identity: never renamed

    @admin.display(description="permissions")
    def permission_names(self, obj: CertificateUser) -> str:
        return ", ".join(sorted(obj.permissions or ())) or "-"

    @admin.display(description="certificates", ordering="certificate_total")
    def certificate_count(self, obj: CertificateUser) -> int:
        return int(getattr(obj, "certificate_total", 0))

    @admin.display(description="Django user")
    def django_account(self, obj: CertificateUser) -> str:
        user = obj.django_user()
        return "-" if user is None else str(user.get_username())

    def save_model(self, request: HttpRequest, obj: CertificateUser, form: Any, change: bool) -> None:
        before = _user_state(CertificateUser.objects.select_related("org").get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)
        _audit(request, "user.update" if change else "user.create", obj.user_id, before, _user_state(obj))

    def delete_model(self, request: HttpRequest, obj: CertificateUser) -> None:
        state = _user_state(obj)
        # The user's certificates go with it (CASCADE): each is audited as a deletion of its own,
        # as if deleted one by one, so that a certificate's audit trail does not end in silence.
        cascaded = [
            (cert.fingerprint, _cert_state(cert))
            for cert in obj.certificates.select_related("user").order_by("fingerprint")
        ]
        super().delete_model(request, obj)
        for fingerprint, cert_state in cascaded:
            _audit(request, "certificate.delete", fingerprint, cert_state, None)
        _audit(request, "user.delete", obj.user_id, state, None)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset.select_related("org"):
            self.delete_model(request, obj)


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    """Organisations; switching certificate login off refuses their users' certificates at once."""

    list_display = ("name", "cert_auth", "user_count")
    list_editable = ("cert_auth",)
    list_filter = ("cert_auth",)
    search_fields = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(user_total=Count("users"))

    @admin.display(description="users", ordering="user_total")
    def user_count(self, obj: Organisation) -> int:
        return int(getattr(obj, "user_total", 0))

    def save_model(self, request: HttpRequest, obj: Organisation, form: Any, change: bool) -> None:
        before = {"cert_auth": Organisation.objects.get(pk=obj.pk).cert_auth} if change else None
        super().save_model(request, obj, form, change)
        _audit(request, "org.set", obj.name, before, {"cert_auth": bool(obj.cert_auth)})

    def delete_model(self, request: HttpRequest, obj: Organisation) -> None:
        state = {"cert_auth": bool(obj.cert_auth)}
        super().delete_model(request, obj)  # refused by the admin while it has users (PROTECT)
        _audit(request, "org.delete", obj.name, state, None)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


# -- read-only logs -------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by those with the view permission; nobody adds, changes or deletes."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OutcomeFilter(admin.SimpleListFilter):
    """Accepted, any refusal, or one reason code."""

    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(ACCEPTED, "accepted"), ("refused", "refused (any reason)")] + [
            (reason.value, reason.value) for reason in Reason
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value is None:
            return queryset
        if value == "refused":
            return queryset.exclude(outcome=ACCEPTED)
        return queryset.filter(outcome=value)


class WhenFilter(admin.SimpleListFilter):
    """Login attempts by age (the history keeps POSIX times)."""

    title = "date"
    parameter_name = "when"
    _WINDOWS: ClassVar[dict[str, dt.timedelta]] = {
        "1h": dt.timedelta(hours=1), "24h": dt.timedelta(days=1), "7d": dt.timedelta(days=7),
        "30d": dt.timedelta(days=30),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1h", "past hour"), ("24h", "past 24 hours"), ("7d", "past 7 days"),
                ("30d", "past 30 days"), ("older", "older than 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        now = dt.datetime.now(_UTC).timestamp()
        if value in self._WINDOWS:
            return queryset.filter(time__gte=now - self._WINDOWS[value].total_seconds())
        if value == "older":
            return queryset.filter(time__lt=now - self._WINDOWS["30d"].total_seconds())
        return queryset


class UserFilter(admin.SimpleListFilter):
    """Attempts of one user id (those that appear in the history)."""

    title = "user"
    parameter_name = "user_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = (
            LoginAttempt.objects.exclude(user_id=None).order_by("user_id")
            .values_list("user_id", flat=True).distinct()[:200]
        )
        return [(user_id, user_id) for user_id in ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        return queryset if value is None else queryset.filter(user_id=value)


@admin.register(LoginAttempt)
class LoginAttemptAdmin(ReadOnlyAdmin):
    """The login history: every attempt with its outcome; read-only."""

    list_display = (
        "time_utc", "outcome", "user_id", "org", "short_fingerprint", "source", "peer", "revocation",
    )
    list_filter = (OutcomeFilter, UserFilter, WhenFilter)
    search_fields = ("fingerprint", "user_id", "subject", "detail")
    show_full_result_count = False  # a large history: no second COUNT(*) per page

    @admin.display(description="time (UTC)", ordering="time")
    def time_utc(self, obj: LoginAttempt) -> str:
        return obj.when.strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="fingerprint")
    def short_fingerprint(self, obj: LoginAttempt) -> str:
        return f"{obj.fingerprint[:_SHORT]}…" if obj.fingerprint else "-"


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The audit log: who changed which certificate, user or organisation; read-only."""

    list_display = ("time", "actor", "action", "target")
    list_filter = ("action",)
    search_fields = ("actor", "target")
    show_full_result_count = False
