"""The store's tables as Django models.

Users
    The store's user is a :class:`CertificateUser`: a settings row keyed by the ``user_id`` string
    the rest of the library uses (the identity's ``user_id``), not a foreign key to your user
    model. Machine accounts and people without a Django login can hold certificates too. Where
    your ``AUTH_USER_MODEL`` has a user whose ``USERNAME_FIELD`` equals the ``user_id``, that is
    the same person: :meth:`CertificateUser.django_user` finds it, and the authentication backend
    maps an identity to it the same way.

Times
    Kept as Django keeps them: aware with ``USE_TZ = True`` (recommended), naive local time of
    ``TIME_ZONE`` without (the hour repeated when clocks go back is then ambiguous); the store
    hands out aware UTC datetimes either way. The login history keeps its POSIX ``time`` exactly
    as recorded.

Change them through :class:`~mtls_middleware.contrib.django.store.DjangoStore` or the admin;
direct ORM saves and deletes work too (signals keep the store's generation current), but
``QuerySet.update()`` and raw SQL bypass signals: call
:func:`~mtls_middleware.contrib.django.signals.invalidate` after them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models

__all__ = [
    "AuditEntry",
    "Certificate",
    "CertificateUser",
    "LoginAttempt",
    "Organisation",
    "StoreGeneration",
]

#: Longest user id and organisation name (like Django's own usernames, an indexable column).
NAME_LENGTH = 255


class Organisation(models.Model):
    """An organisation; certificate login can be switched off for all its users at once."""

    name = models.CharField(max_length=NAME_LENGTH, unique=True)
    cert_auth = models.BooleanField(
        "certificate login", default=True,
        help_text="Off refuses its users' certificate logins.",
    )

    class Meta:
        db_table = "mtls_organisation"
        ordering = ("name",)
        verbose_name = "organisation"

    def __str__(self) -> str:
        return str(self.name)


class CertificateUser(models.Model):
    """A user's certificate settings: organisation, whether it may sign in, its permissions."""

    user_id = models.CharField(
        "user id", max_length=NAME_LENGTH, unique=True,
        help_text="The identity's user id; equal to a Django user's username when it is one.",
    )
    org = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="users", verbose_name="organisation"
    )
    active = models.BooleanField(
        default=True, help_text="Off refuses the user's certificate logins (user_inactive)."
    )
    #: A sorted list of permission names (``enforce_mtls``, ``api_only``, the app's own).
    permissions = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "mtls_user"
        ordering = ("user_id",)
        verbose_name = "certificate user"

    def __str__(self) -> str:
        return str(self.user_id)

    def django_user(self) -> Any:
        """The ``AUTH_USER_MODEL`` user whose ``USERNAME_FIELD`` is this ``user_id``, or None."""
        model = get_user_model()
        return model._default_manager.filter(**{model.USERNAME_FIELD: self.user_id}).first()


class Certificate(models.Model):
    """A registered certificate: one owner store-wide, the upload kept byte for byte."""

    fingerprint = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the leaf's DER, lowercase hex."
    )
    user = models.ForeignKey(
        CertificateUser, on_delete=models.CASCADE, related_name="certificates", verbose_name="user"
    )
    label = models.TextField()
    pem = models.BinaryField("PEM as uploaded")
    subject = models.TextField()
    issuer = models.TextField()
    serial = models.TextField(help_text="Lowercase hex.")
    not_before = models.DateTimeField("valid from")
    not_after = models.DateTimeField("expires", db_index=True)
    uploaded_at = models.DateTimeField("uploaded")
    uploaded_by = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "mtls_certificate"
        ordering = ("id",)  # upload order

    def __str__(self) -> str:
        return str(self.label)


class LoginAttempt(models.Model):
    """One authentication attempt of the login history (written by the store's writer thread)."""

    outcome = models.CharField(max_length=64, help_text='"accepted" or a reason code.')
    source = models.TextField()
    fingerprint = models.CharField(max_length=64, null=True, blank=True)
    subject = models.TextField(null=True, blank=True)
    issuer = models.TextField(null=True, blank=True)
    serial = models.TextField(null=True, blank=True)
    user_id = models.CharField("user id", max_length=NAME_LENGTH, null=True, blank=True)
    org = models.CharField("organisation", max_length=NAME_LENGTH, null=True, blank=True)
    detail = models.TextField(blank=True, default="")
    revocation = models.TextField(null=True, blank=True)
    #: POSIX seconds, exactly as recorded.
    time = models.FloatField(db_index=True)
    peer = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "mtls_login_history"
        ordering = ("-time", "-id")
        verbose_name = "login attempt"
        verbose_name_plural = "login history"
        indexes = (
            models.Index(fields=["user_id", "time"], name="mtls_history_user"),
            models.Index(fields=["outcome", "time"], name="mtls_history_outcome"),
        )

    def __str__(self) -> str:
        return f"{self.outcome} {self.user_id or self.fingerprint or '-'} at {self.when:%Y-%m-%d %H:%M:%S}Z"

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time, dt.timezone.utc)


class AuditEntry(models.Model):
    """One management change: who did what to which certificate, user or organisation."""

    actor = models.TextField()
    action = models.CharField(max_length=64, db_index=True)
    target = models.TextField()
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    time = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "mtls_audit"
        ordering = ("-id",)
        verbose_name = "audit entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.target}"


class StoreGeneration(models.Model):
    """One row: a counter every invalidating change raises in its own transaction, which each
    process's store polls to drop cached verdicts (see :mod:`.store`)."""

    value = models.BigIntegerField(default=0)

    class Meta:
        db_table = "mtls_generation"
        verbose_name = "store generation"
