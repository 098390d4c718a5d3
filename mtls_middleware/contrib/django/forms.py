"""The admin's forms: certificate upload and rename, users' certificate settings.

Every rule is the store's: a refusal becomes a form error whose ``code`` is the reason code
(``malformed_certificate``, ``certificate_expired``, ``duplicate_certificate``, ...) and whose
message is the reason's sentence followed by what exactly was wrong.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from django import forms
from django.core.files.uploadedfile import UploadedFile

from ...errors import MTLSError, Reason
from ...stores.base import MAX_UPLOAD_BYTES, CertificateRecord, check_permissions
from .models import Certificate, CertificateUser

__all__ = ["CertificateRenameForm", "CertificateUploadForm", "CertificateUserForm", "form_error"]


def form_error(exc: MTLSError) -> forms.ValidationError:
    """``exc`` as a form error for humans, coded with its reason code."""
    message = exc.reason.message
    if exc.detail:
        message = f"{message} ({exc.detail})"
    return forms.ValidationError(message, code=exc.reason.value)


class CertificateUploadForm(forms.ModelForm):
    """Upload a PEM certificate (or chain) for a user: a file or pasted text, never both.

    Validation *is* the upload: ``clean()`` hands the bytes to the store (its upload rules, and
    the database's unique constraint for duplicates, also against a racing upload), so every
    refusal is a form error. The admin's view wraps it in a transaction: nothing stays if a later
    step fails. Subclasses set ``store`` and ``uploaded_by`` (the admin does, per request).
    """

    store: ClassVar[Any] = None
    uploaded_by: ClassVar[str | None] = None

    label = forms.CharField(
        required=False, strip=False, help_text="Leave empty to use the certificate's subject."
    )
    pem_file = forms.FileField(
        label="PEM file", required=False,
        help_text=f"The certificate, optionally followed by its chain; at most {MAX_UPLOAD_BYTES:,} "
        "bytes and 10 certificates; never a private key.",
    )
    pem_text = forms.CharField(
        label="or paste the PEM", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 8})
    )

    class Meta:
        model = Certificate
        fields = ("user",)

    record: CertificateRecord | None = None

    def _pem(self) -> bytes:
        upload: UploadedFile | None = self.cleaned_data.get("pem_file")
        text: str = self.cleaned_data.get("pem_text") or ""
        if upload is not None and text.strip():
            raise forms.ValidationError(
                "Upload a file or paste the PEM, not both.", code=Reason.INVALID_REQUEST.value
            )
        if upload is not None:
            if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
                raise form_error(MTLSError(
                    Reason.CERTIFICATE_TOO_LARGE,
                    f"upload of {upload.size} bytes; the limit is {MAX_UPLOAD_BYTES}",
                ))
            return bytes(upload.read(MAX_UPLOAD_BYTES + 1))
        if text.strip():
            return text.encode("utf-8", "surrogateescape")
        raise forms.ValidationError(
            "Choose a PEM file or paste the certificate.", code=Reason.MALFORMED_CERTIFICATE.value
        )

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean()
        user: CertificateUser | None = cleaned.get("user")
        if user is None or self.errors:
            return cleaned
        pem = self._pem()
        label = cleaned.get("label") or None
        try:
            self.record = self.store.upload_certificate(
                pem, user_id=user.user_id, label=label, uploaded_by=self.uploaded_by
            )
        except MTLSError as exc:
            raise form_error(exc) from None
        self.instance = Certificate.objects.using(self.store.using).get(
            fingerprint=self.record.fingerprint
        )
        return cleaned

    def _post_clean(self) -> None:
        # The store validated and stored the certificate; the model's validation of the few
        # fields of this form would only repeat it (and write the form's empty label over the
        # stored subject).
        pass


class CertificateRenameForm(forms.ModelForm):
    """A certificate's only editable field: its label (the admin renames through the store)."""

    class Meta:
        model = Certificate
        fields = ("label",)
        widgets: ClassVar[dict[str, Any]] = {"label": forms.TextInput(attrs={"size": 80})}

    def clean_label(self) -> str:
        label: str = self.cleaned_data["label"]
        if "\x00" in label:
            raise forms.ValidationError("A label cannot contain NUL.", code=Reason.CONFIGURATION_ERROR.value)
        return label


_SEPARATORS = re.compile(r"[\s,]+")


class CertificateUserForm(forms.ModelForm):
    """A user's certificate settings; permissions as names separated by commas or spaces."""

    permissions = forms.CharField(
        required=False,
        help_text="Names separated by commas or spaces: enforce_mtls (certificate login is the only "
        "way in), api_only (a machine account), manage_certificates, or your app's own.",
    )

    class Meta:
        model = CertificateUser
        fields = ("user_id", "org", "active", "permissions")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None and not self.is_bound:
            self.initial["permissions"] = ", ".join(sorted(self.instance.permissions or ()))

    def clean_permissions(self) -> list[str]:
        text: str = self.cleaned_data.get("permissions") or ""
        names = [name for name in _SEPARATORS.split(text) if name]
        try:
            return sorted(check_permissions(names))
        except MTLSError as exc:
            raise form_error(exc) from None
