"""NIST PKITS path-validation and CRL cases.

Each PKITS path (``cert`` + ``other_certs``, anchored at TrustAnchorRootCertificate) is validated
with ``eku="if-present"`` (PKITS certificates carry no EKU) at a fixed time inside the suite's
2010-2030 validity. A path that validates then has its revocation status checked the way a
deployment with local CRL files would: mode ``require``, scope ``chain``, OCSP off, the case's
CRLs plus the trust anchor's as ``crl_files`` and the case's other certificates as candidate CRL
signers. Skipped, with the reason: cases that set policy inputs (user-initial-policy-set,
initial-explicit-policy ...) and cases where requireExplicitPolicy takes effect, since certificate
policy processing is not implemented. Known deviations from PKITS are strict xfails, each with its
reason (docs/validation-profile.md; CRL features we refuse rather than implement).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mtls_middleware.errors import MTLSError, Reason, RevocationError, ValidationError
from mtls_middleware.revocation import RevocationChecker, RevocationPolicy
from mtls_middleware.validation import ValidationPolicy, Validator


def _pkits_dir() -> Path | None:
    candidates = [Path(__file__).parents[2] / "shared" / "conformance" / "pkits"]
    if os.environ.get("MTLS_PKITS_DIR"):
        candidates.append(Path(os.environ["MTLS_PKITS_DIR"]))
    return next((c for c in candidates if (c / "pkits.json").is_file()), None)


PKITS = _pkits_dir()
if PKITS is None:
    pytest.skip(
        "NIST PKITS data not found at ../shared/conformance/pkits (or $MTLS_PKITS_DIR)",
        allow_module_level=True,
    )
assert PKITS is not None

AT = dt.datetime(2020, 6, 1, tzinfo=dt.timezone.utc)
REVOCATION_OUTCOMES = {
    "RevokedError": {Reason.CERTIFICATE_REVOKED},
    "InsufficientRevinfoError": {Reason.REVOCATION_UNAVAILABLE, Reason.NO_REVOCATION_SOURCE},
    "StaleRevinfoError": {Reason.REVOCATION_UNAVAILABLE},
}
ANCHOR_CRL = "TrustAnchorRootCRL.crl"
# Refused, but at an earlier stage than PKITS expects: the reason we give instead.
EARLIER_REFUSAL = {
    # cryptography refuses a negative serial number during path validation (chain_invalid).
    "invalid_negative_serial_number_test15": Reason.CHAIN_INVALID,
    # Our profile refuses a CA certificate as the client certificate (LEAF_IS_CA below).
    "invalid_onlycontainsusercerts_crl_test11": Reason.CHAIN_INVALID,
}

# Where we knowingly differ from PKITS; docs/validation-profile.md gives the decisions.
DSA = "DSA signatures (dsa-with-SHA1) are refused as weak"
GENERALIZED_TIME = (
    "cryptography refuses validity dates before 2050 in GeneralizedTime (RFC 5280 4.1.2.5: CAs "
    "MUST use UTCTime)"
)
NAME_CHAINING = (
    "cryptography chains names only when byte-identical (no RFC 5280 7.1 case, space or string type folding)"
)
LEAF_IS_CA = "a CA certificate (cA=TRUE) is refused as a client certificate by our profile"
SELF_ISSUED_PATHLEN = "cryptography counts self-issued CA certificates against pathLenConstraint"
CRITICAL_DN_CONSTRAINTS = "cryptography refuses critical directoryName name constraints"
URI_CONSTRAINTS = "cryptography does not support URI name constraints"
INDIRECT_CRL = "indirect CRLs (cRLIssuer, indirectCRL) are refused as not supported: status not established"
NO_DELTAS = (
    "delta CRLs are not used: the complete CRL alone decides (RFC 5280 6.3.3 without use-deltas), "
    "so a revocation or removal published only in the delta is not seen"
)
DEVIATIONS = {
    "valid_dsa_signatures_test4": DSA,
    "valid_generalizedtime_notbefore_date_test4": GENERALIZED_TIME,
    "valid_name_chaining_whitespace_test3": NAME_CHAINING,
    "valid_name_chaining_whitespace_test4": NAME_CHAINING,
    "valid_name_chaining_capitalization_test5": NAME_CHAINING,
    "valid_rollover_from_printablestring_to_utf8string_test10": NAME_CHAINING,
    "valid_utf8string_case_insensitive_match_test11": NAME_CHAINING,
    "valid_pathlenconstraint_test8": LEAF_IS_CA,
    "valid_pathlenconstraint_test14": LEAF_IS_CA,
    "overlapping_policies_test6": LEAF_IS_CA,
    "valid_onlycontainscacerts_crl_test13": LEAF_IS_CA,
    "valid_self_issued_pathlenconstraint_test15": SELF_ISSUED_PATHLEN,
    "valid_self_issued_pathlenconstraint_test17": SELF_ISSUED_PATHLEN,
    **{f"valid_dn_nameconstraints_test{n}": CRITICAL_DN_CONSTRAINTS for n in (1, 4, 5, 6, 11, 14, 18)},
    "valid_self_issued_dn_nameconstraints_test19": CRITICAL_DN_CONSTRAINTS,
    "valid_dn_and_rfc822_nameconstraints_test27": CRITICAL_DN_CONSTRAINTS,
    "valid_uri_nameconstraints_test34": URI_CONSTRAINTS,
    "valid_uri_nameconstraints_test36": URI_CONSTRAINTS,
    **{
        name: INDIRECT_CRL
        for name in (
            "valid_idp_with_indirectcrl_test22",
            "invalid_idp_with_indirectcrl_test23",
            "valid_idp_with_indirectcrl_test24",
            "valid_idp_with_indirectcrl_test25",
            "valid_crlissuer_test28",
            "valid_crlissuer_test29",
            "valid_crlissuer_test30",
            "invalid_crlissuer_test31",
            "invalid_crlissuer_test32",
            "valid_crlissuer_test33",
            "invalid_crlissuer_test34",
        )
    },
    "invalid_deltacrl_test4": NO_DELTAS,
    "valid_deltacrl_test5": NO_DELTAS,
}


def _expected_reason(error: dict[str, str]) -> Reason:
    """Our reason for a PKITS PathValidationError, from the suite's expected message."""
    message = error.get("msg_regex", "")
    if re.search(r"\bexpired\b", message):
        return Reason.CERTIFICATE_EXPIRED
    if "is not valid until" in message:
        return Reason.CERTIFICATE_NOT_YET_VALID
    if "issuer name could not be matched" in message:
        return Reason.UNTRUSTED_ISSUER
    return Reason.CHAIN_INVALID


def _params() -> list[Any]:
    cases = json.loads((PKITS / "pkits.json").read_text())
    params = []
    for case in cases:
        marks: list[Any] = []
        if case.get("params"):
            marks.append(
                pytest.mark.skip(
                    reason="sets certificate policy inputs "
                    f"({', '.join(sorted(case['params']))}): policy processing is not implemented"
                )
            )
        elif case["name"] in DEVIATIONS:
            marks.append(pytest.mark.xfail(strict=True, reason=DEVIATIONS[case["name"]]))
        params.append(pytest.param(case, id=f"{case['id']}-{case['name']}", marks=marks))
    return params


def _load(filename: str) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few PKITS serial numbers are not positive
        return x509.load_der_x509_certificate((PKITS / "certs" / filename).read_bytes())


@pytest.fixture(scope="module")
def validator() -> Validator:
    anchor = _load("TrustAnchorRootCertificate.crt")
    return Validator(ValidationPolicy(roots=(anchor,), eku="if-present"))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("case", _params())
def test_pkits_path(validator: Validator, case: dict[str, Any]) -> None:
    try:
        leaf = _load(case["cert"])
        others = [_load(name) for name in case.get("other_certs", ())]
    except ValueError as exc:
        pytest.skip(f"cryptography cannot load this certificate: {exc}")
    error = case.get("error")
    refusal = _outcome(validator, leaf, others, case)
    if refusal is not None and refusal.context.get("rule") == "explicit-policy":
        pytest.skip(
            "requireExplicitPolicy takes effect on this path: policy processing is not "
            "implemented, so the path is refused whatever its policies"
        )
    if error is None:
        assert refusal is None, f"refused a valid path: {refusal.reason.value}: {refusal.detail}"
    else:
        assert refusal is not None, f"accepted an invalid path ({error['msg_regex']})"
        expected = (
            {EARLIER_REFUSAL[case["name"]]}
            if case["name"] in EARLIER_REFUSAL
            else REVOCATION_OUTCOMES.get(error["class"]) or {_expected_reason(error)}
        )
        assert refusal.reason in expected, f"{refusal.reason.value}: {refusal.detail}"


def _outcome(
    validator: Validator, leaf: x509.Certificate, others: list[x509.Certificate], case: dict[str, Any]
) -> MTLSError | None:
    try:
        path = validator.validate(leaf, others, at=AT)
    except ValidationError as exc:
        return exc
    crls = dict.fromkeys([*(case.get("crls") or ()), ANCHOR_CRL])
    checker = RevocationChecker(
        RevocationPolicy(
            mode="require",
            scope="chain",
            ocsp=False,
            crl_files=tuple(str(PKITS / "crls" / name) for name in crls),
            crl_signers=tuple(others),
        )
    )
    try:
        checker.check(path.chain, now=AT)
    except RevocationError as exc:
        return exc
    finally:
        checker.close()
    return None
