"""errors.py: the reason codes, their HTTP status, and what a client may be shown of an error."""

from __future__ import annotations

import pytest

from mtls_middleware.errors import (
    AuthorizationError,
    CertificateError,
    ConfigurationError,
    ManagementError,
    MTLSError,
    NoCertificateError,
    ProxyError,
    Reason,
    RevocationError,
    ValidationError,
)

#: DESIGN.md's table, written out: the codes are stable, and so is the status each one gets.
STATUS = {
    "no_certificate": 401,
    "untrusted_proxy": 401,
    "proxy_verification_failed": 403,
    "malformed_certificate": 400,
    "certificate_too_large": 400,
    "chain_too_long": 403,
    "certificate_expired": 403,
    "certificate_not_yet_valid": 403,
    "untrusted_issuer": 403,
    "chain_invalid": 403,
    "missing_client_auth_eku": 403,
    "dual_purpose_eku": 403,
    "certificate_revoked": 403,
    "no_revocation_source": 403,
    "revocation_unavailable": 503,
    "unknown_certificate": 403,
    "user_inactive": 403,
    "certificate_auth_disabled": 403,
    "duplicate_certificate": 409,
    "unknown_user": 404,
    "not_found": 404,
    "configuration_error": 500,
    "internal_error": 500,
    "store_unavailable": 503,
    "invalid_request": 400,
    "permission_denied": 403,
    "method_not_allowed": 405,
    "duplicate_user": 409,
    "request_too_large": 413,
    "unsupported_media_type": 415,
}


@pytest.mark.parametrize(("code", "status"), STATUS.items(), ids=list(STATUS))
def test_reason_code_and_status(code: str, status: int) -> None:
    reason = Reason(code)
    assert reason.value == code
    assert reason.status == status


def test_every_reason_has_a_status_and_a_message() -> None:
    for reason in Reason:
        assert isinstance(reason.status, int)
        assert 400 <= reason.status <= 599
        assert isinstance(reason.message, str)
        assert reason.message


def test_no_reason_beyond_the_known_codes() -> None:
    # A new code must be added to DESIGN.md (and this table) deliberately.
    assert {r.value for r in Reason} == set(STATUS)


def test_reason_is_a_string_that_prints_as_its_code() -> None:
    assert Reason.CHAIN_TOO_LONG == "chain_too_long"
    assert str(Reason.CHAIN_TOO_LONG) == "chain_too_long"
    assert f"{Reason.UNTRUSTED_ISSUER}" == "untrusted_issuer"


def test_messages_are_distinct() -> None:
    messages = [r.message for r in Reason]
    assert len(set(messages)) == len(messages)


@pytest.mark.parametrize(
    ("cls", "default"),
    [
        (MTLSError, Reason.INTERNAL_ERROR),
        (ConfigurationError, Reason.CONFIGURATION_ERROR),
        (NoCertificateError, Reason.NO_CERTIFICATE),
        (ProxyError, Reason.UNTRUSTED_PROXY),
        (CertificateError, Reason.MALFORMED_CERTIFICATE),
        (ValidationError, Reason.CHAIN_INVALID),
        (RevocationError, Reason.REVOCATION_UNAVAILABLE),
        (AuthorizationError, Reason.UNKNOWN_CERTIFICATE),
        (ManagementError, Reason.NOT_FOUND),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v.value,
)
def test_default_reason_of_each_error_class(cls: type[MTLSError], default: Reason) -> None:
    error = cls()
    assert error.reason is default
    assert error.status == default.status
    assert isinstance(error, MTLSError)


def test_explicit_reason_wins_over_the_default() -> None:
    error = CertificateError(Reason.CHAIN_TOO_LONG, "11 certificates", count=11)
    assert error.reason is Reason.CHAIN_TOO_LONG
    assert error.status == 403
    assert error.context == {"count": 11}


def test_configuration_error_is_a_value_error() -> None:
    # Frameworks that catch ValueError at start-up treat a bad config as such.
    error = ConfigurationError(detail="bad")
    assert isinstance(error, ValueError)
    assert error.reason is Reason.CONFIGURATION_ERROR


def test_detail_defaults_to_the_fixed_message() -> None:
    assert NoCertificateError().detail == Reason.NO_CERTIFICATE.message


def test_to_json_shows_code_and_fixed_sentence_only() -> None:
    secret = "chain CN=internal-ca,O=Secret Corp; responder http://10.1.2.3/ocsp"
    error = ValidationError(Reason.UNTRUSTED_ISSUER, secret, subject="CN=internal-ca")
    body = error.to_json()
    assert body == {"error": "untrusted_issuer", "message": Reason.UNTRUSTED_ISSUER.message}
    assert secret not in repr(body)
    assert "internal-ca" not in repr(body)
