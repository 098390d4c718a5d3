"""Path validation of client certificate chains.

The path is built and checked by cryptography's ``x509.verification`` client verifier, with its
extension policies changed from the web-PKI (CA/B Forum) defaults to what RFC 5280 allows and real
client certificates carry, plus the checks the library cannot express (the EKU rules, RSA sizes
above 2048 bits, name constraints on the subject DN, explicit-policy paths). Every deviation from
the library's profile is listed, with its reason and its test, in ``docs/validation-profile.md``.

A refusal is a :class:`~mtls_middleware.errors.ValidationError` with one of six reasons, decided
from facts this module checks itself (validity windows, EKU, candidate paths built by name and key
identifier, signatures). The library's error message is only quoted in ``detail``: it describes
the last candidate issuer the library tried, which is often not the one that matters.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509 import verification as xv
from cryptography.x509.oid import (
    ExtendedKeyUsageOID,
    ExtensionOID,
    NameOID,
    PublicKeyAlgorithmOID,
    SignatureAlgorithmOID,
)

from .errors import ConfigurationError, Reason, ValidationError

__all__ = ["ValidatedPath", "ValidationPolicy", "Validator"]

_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
_RSA_KEYS = frozenset({PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5, PublicKeyAlgorithmOID.RSASSA_PSS})

# Refused because their hash is broken. Roots' self-signatures are never checked, so a root
# self-signed with SHA-1 stays usable.
_WEAK_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_MD5: "MD5",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID._RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "SHA-1",
    x509.ObjectIdentifier("1.2.840.113549.1.1.2"): "MD2",
    x509.ObjectIdentifier("1.2.840.113549.1.1.3"): "MD4",
}
# What the library's path builder accepts (CA/B Forum BR 7.1.3.2); it has no switch for others.
_SUPPORTED_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
        SignatureAlgorithmOID.RSASSA_PSS,
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_PSS_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_CA_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

# Extensions whose meaning is applied (by the library or here); other critical ones are refused.
_POLICY_EXTENSIONS = frozenset(
    {
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)
_PROFILE_EXTENSIONS = frozenset(
    {
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.EXTENDED_KEY_USAGE,
    }
)
_CA_KNOWN = _PROFILE_EXTENSIONS | _POLICY_EXTENSIONS
_EE_KNOWN = _PROFILE_EXTENSIONS | {ExtensionOID.CERTIFICATE_POLICIES}
_ANY_POLICY_DER = b"\x06\x04\x55\x1d\x20\x00"  # OBJECT IDENTIFIER 2.5.29.32.0

# Bounds on the diagnosis of a refused chain, which runs on attacker-chosen input.
_DIAGNOSIS_NODES = 256
_DIAGNOSIS_SIGNATURES = 64
_DIAGNOSIS_LENGTH = 64
# Presented intermediates whose facts are remembered (see Validator._presented_facts).
_SEEN_LIMIT = 512


@dataclass(frozen=True, kw_only=True)
class ValidationPolicy:
    """What a client certificate path must satisfy; checked when a :class:`Validator` is built.

    ``roots``: the trust anchors (a v1 root counts by its name, key and validity).
    ``intermediates``: untrusted CA certificates known to the deployment, tried along with those the
    client presents (a proxy such as nginx forwards only the leaf).
    ``eku``: ``"required"``: the leaf must list Client Authentication (or anyExtendedKeyUsage);
    ``"if-present"``: only a leaf that has an EKU extension must.
    ``allow_dual_purpose_eku``: accept leaves that also list serverAuth (Chrome Root Program policy
    1.7 has public CAs stop issuing them).
    ``min_rsa_bits``: the smallest RSA key accepted anywhere in the path (2048 or more).
    ``max_chain_depth``: the most intermediate CA certificates between leaf and trust anchor.
    """

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    eku: Literal["required", "if-present"] = "required"
    allow_dual_purpose_eku: bool = False
    min_rsa_bits: int = 2048
    max_chain_depth: int = 10


@dataclass(frozen=True)
class ValidatedPath:
    """An accepted certification path: the leaf first, the trust anchor last, as built.

    A leaf that is itself a configured root (a pinned self-signed certificate) is a path of one.
    """

    chain: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        """The client certificate."""
        return self.chain[0]

    @property
    def root(self) -> x509.Certificate:
        """The configured trust anchor the path ends at."""
        return self.chain[-1]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates between leaf and root, the leaf's issuer first."""
        return self.chain[1:-1]


# -- the extension profile handed to the library ---------------------------------------------------
class _PolicyMappings(x509.ExtensionType):
    """policyMappings (2.5.29.33), which cryptography does not model, for an ExtensionPolicy."""

    oid = ExtensionOID.POLICY_MAPPINGS


def _ca_key_usage_problem(ku: x509.KeyUsage | None) -> str:
    # RFC 5280 6.1.4 (n): only a keyUsage that is present must assert keyCertSign.
    if ku is not None and not ku.key_cert_sign:
        return "CA keyUsage does not assert keyCertSign"
    return ""


def _ca_eku_problem(eku: x509.ExtendedKeyUsage | None) -> str:
    # EKU chaining (a CA limited to other purposes issues no client certificates) is not RFC 5280,
    # but Windows, NSS, Go and the library all apply it; only its criticality rule is relaxed.
    if eku is not None and _CLIENT_AUTH not in eku and _ANY_EKU not in eku:
        return "CA extendedKeyUsage lists neither clientAuth nor anyExtendedKeyUsage"
    return ""


def _ca_key_usage(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    problem = _ca_key_usage_problem(ku)
    if problem:
        raise ValueError(problem)


def _ca_extended_key_usage(
    _policy: xv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    problem = _ca_eku_problem(eku)
    if problem:
        raise ValueError(problem)


def _ca_extension_policy(*, checked: bool = True) -> xv.ExtensionPolicy:
    """The CA profile; ``checked=False`` leaves out the keyUsage and EKU rules (see _CA_POLICY)."""
    agnostic = xv.Criticality.AGNOSTIC
    return (
        xv.ExtensionPolicy.webpki_defaults_ca()
        # RFC 5280 6.1.4 (k) needs cA=TRUE; criticality is a rule for CAs, not for verifiers.
        .require_present(x509.BasicConstraints, agnostic, None)
        .may_be_present(x509.KeyUsage, agnostic, _ca_key_usage if checked else None)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _ca_extended_key_usage if checked else None)
        # With initial-policy-set anyPolicy and no initial explicit policy, the policy tree decides
        # nothing unless requireExplicitPolicy takes effect, a case Validator refuses itself.
        .may_be_present(x509.CertificatePolicies, agnostic, None)
        .may_be_present(_PolicyMappings, agnostic, None)
        .may_be_present(x509.PolicyConstraints, agnostic, None)
        .may_be_present(x509.InhibitAnyPolicy, agnostic, None)
    )


# The reference profile: its verdicts are the validator's.
_CA_POLICY = _ca_extension_policy()
# The same without the keyUsage/EKU callbacks, which cost a Python call and an extension object
# for every CA the library tries, root included, on every request (about 5 us measured). It
# accepts a superset of _CA_POLICY's paths, and the library tries candidate issuers in the same
# order under both, so a path it builds whose CAs meet the two rules (_CAFacts.usage_ok, read once
# per CA) is the very path _CA_POLICY builds; a refusal when no candidate CA breaks them is
# _CA_POLICY's refusal too, library message included. Validator builds with this first and falls
# back to _CA_POLICY in every other case.
_CA_POLICY_UNCHECKED = _ca_extension_policy(checked=False)


def _ee_extension_policy(*, eku_required: bool, allow_dual: bool) -> xv.ExtensionPolicy:
    """The leaf profile. Its checks run inside the library so that the steady state parses no
    extension in Python; when one fails, Validator finds out which from the leaf's extensions."""

    def extended_key_usage(
        _policy: xv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
    ) -> None:
        if _eku_refusal(eku, eku_required=eku_required, allow_dual=allow_dual) is not None:
            raise ValueError("the leaf's extendedKeyUsage does not allow client authentication")

    def key_usage(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
        if ku is not None and _leaf_key_usage_problem(ku):
            raise ValueError("the leaf's keyUsage does not allow authentication")

    agnostic = xv.Criticality.AGNOSTIC
    return (
        xv.ExtensionPolicy.webpki_defaults_ee()
        # RFC 5280 asks CAs to include AKI, never verifiers to refuse a leaf without it.
        .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.NON_CRITICAL, None)
        # Client certificates often have no SAN (PIV/CAC, corporate CAs) or a critical one; the
        # empty-subject rule of RFC 5280 4.2.1.6 is checked by Validator.
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, extended_key_usage)
        .may_be_present(x509.KeyUsage, agnostic, key_usage)
        .may_be_present(x509.CertificatePolicies, agnostic, None)
        # A CA extension (RFC 5280 4.2.1.11); in a leaf, requireExplicitPolicy 0 would need the
        # policy tree (6.1.5 (b)), which we do not build.
        .require_not_present(x509.PolicyConstraints)
    )


def _eku_refusal(eku: x509.ExtendedKeyUsage | None, *, eku_required: bool, allow_dual: bool) -> Reason | None:
    """The EKU reason to refuse a leaf with this extendedKeyUsage (None: absent), if any."""
    if eku is None:
        return Reason.MISSING_CLIENT_AUTH_EKU if eku_required else None
    # RFC 5280 4.2.1.12: anyExtendedKeyUsage is how a CA leaves the key unrestricted.
    if _CLIENT_AUTH not in eku and _ANY_EKU not in eku:
        return Reason.MISSING_CLIENT_AUTH_EKU
    if _SERVER_AUTH in eku and not allow_dual:
        return Reason.DUAL_PURPOSE_EKU
    return None


def _leaf_key_usage_problem(ku: x509.KeyUsage) -> str:
    # keyCertSign is the library's own rule. For the rest, RFC 5280 4.2.1.3: entity authentication
    # is digitalSignature (keyAgreement: static-DH TLS client authentication), as in OpenSSL's
    # sslclient purpose; a nonRepudiation- or encipherment-only key is not for logging in.
    if ku.key_cert_sign:
        return "has a keyUsage with keyCertSign, which only a CA may assert"
    if not (ku.digital_signature or ku.key_agreement):
        return (
            "has a keyUsage that allows neither digitalSignature nor keyAgreement, so it is not "
            "meant for authentication"
        )
    return ""


# -- facts read from certificates ------------------------------------------------------------------
@dataclass(frozen=True)
class _LeafFacts:
    eku: x509.ExtendedKeyUsage | None
    san_critical: bool


@dataclass(frozen=True)
class _CAFacts:
    name_constraints: x509.NameConstraints | None
    require_explicit_policy: int | None
    maps_any_policy: bool
    rsa_bits: int | None
    # Its keyUsage and EKU meet the rules of the CA callbacks (see _CA_POLICY_UNCHECKED).
    usage_ok: bool
    # No extension here for the path checks to look at.
    plain: bool


def _leaf_facts(leaf: x509.Certificate) -> _LeafFacts:
    eku = None
    san_critical = False
    try:
        extensions = leaf.extensions
    except ValueError as exc:
        raise ValidationError(
            Reason.CHAIN_INVALID,
            f"client certificate {_subject(leaf)} has extensions that cannot be parsed: {exc}",
            subject=_subject(leaf),
            index=0,
            rule="extensions",
        ) from None
    for ext in extensions:
        oid = ext.oid
        if oid == ExtensionOID.EXTENDED_KEY_USAGE:
            eku = ext.value
        elif oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            san_critical = ext.critical
    return _LeafFacts(eku, san_critical)


def _ca_facts(cert: x509.Certificate) -> _CAFacts:
    nc = rep = ku = eku = None
    maps_any = False
    for ext in cert.extensions:
        if ext.oid == ExtensionOID.NAME_CONSTRAINTS:
            nc = ext.value
        elif ext.oid == ExtensionOID.POLICY_CONSTRAINTS:
            rep = ext.value.require_explicit_policy
        elif ext.oid == ExtensionOID.POLICY_MAPPINGS:
            maps_any = _maps_any_policy(ext.value.value)
        elif ext.oid == ExtensionOID.KEY_USAGE:
            ku = ext.value
        elif ext.oid == ExtensionOID.EXTENDED_KEY_USAGE:
            eku = ext.value
    usage_ok = not (_ca_key_usage_problem(ku) or _ca_eku_problem(eku))
    plain = nc is None and rep is None and not maps_any
    return _CAFacts(nc, rep, maps_any, _rsa_bits(cert), usage_ok, plain)


def _ca_callbacks_pass(cert: x509.Certificate) -> bool:
    """Whether _CA_POLICY's keyUsage/EKU callbacks would accept ``cert`` if the library tried it
    as an issuer. They run only once it has shown cA=TRUE; False if its extensions are unreadable
    (the callbacks' own parse may fail too)."""
    try:
        extensions = cert.extensions
    except Exception:
        return False
    ca = False
    ku = eku = None
    for ext in extensions:
        if ext.oid == ExtensionOID.BASIC_CONSTRAINTS:
            ca = ext.value.ca
        elif ext.oid == ExtensionOID.KEY_USAGE:
            ku = ext.value
        elif ext.oid == ExtensionOID.EXTENDED_KEY_USAGE:
            eku = ext.value
    return not ca or not (_ca_key_usage_problem(ku) or _ca_eku_problem(eku))


def _maps_any_policy(value: bytes) -> bool:
    """Whether a policyMappings value (SEQUENCE OF SEQUENCE {OID, OID}, left undecoded by
    cryptography) maps anyPolicy; an unreadable one counts as doing so."""
    try:
        return any(oid == _ANY_POLICY_DER for pair in _der_items(value) for oid in _der_items(pair))
    except ValueError:
        return True


def _der_items(der: bytes) -> list[bytes]:
    """The encoded elements of the DER SEQUENCE ``der``; ValueError if it is not one."""

    def element(at: int) -> int:  # the end of the element starting at ``at``
        if at + 2 > len(der):
            raise ValueError("truncated DER")
        size, at = der[at + 1], at + 2
        if size & 0x80:
            count = size & 0x7F
            if not 0 < count <= 4 or at + count > len(der):
                raise ValueError("bad DER length")
            size, at = int.from_bytes(der[at : at + count], "big"), at + count
        if at + size > len(der):
            raise ValueError("truncated DER")
        return at + size

    if not der or der[0] != 0x30 or element(0) != len(der):
        raise ValueError("not a DER SEQUENCE")
    start = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    items, at = [], start
    while at < len(der):
        end = element(at)
        items.append(der[at:end])
        at = end
    return items


def _rsa_bits(cert: x509.Certificate) -> int | None:
    if cert.public_key_algorithm_oid not in _RSA_KEYS:
        return None
    key = cert.public_key()
    return key.key_size if isinstance(key, rsa.RSAPublicKey) else None


def _key_ids(cert: x509.Certificate) -> tuple[bytes | None, bytes | None]:
    """(authorityKeyIdentifier keyIdentifier, subjectKeyIdentifier), where present and readable."""
    aki = ski = None
    try:
        for ext in cert.extensions:
            if ext.oid == ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
                aki = ext.value.key_identifier
            elif ext.oid == ExtensionOID.SUBJECT_KEY_IDENTIFIER:
                ski = ext.value.digest
    except ValueError:
        pass
    return aki, ski


_NameKey = tuple[tuple[tuple[str, Any], ...], ...]


def _name_key(name: x509.Name) -> _NameKey:
    """A comparison key close to RFC 5280 7.1 matching: case and runs of spaces folded."""
    return tuple(
        tuple(
            sorted(
                (
                    (a.oid.dotted_string, " ".join(a.value.split()).casefold())
                    if isinstance(a.value, str)
                    else (a.oid.dotted_string, a.value)
                    for a in rdn
                ),
                key=repr,
            )
        )
        for rdn in name.rdns
    )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key verifies ``cert``'s signature (any algorithm cryptography has)."""
    try:
        key = issuer.public_key()
        params = cert.signature_algorithm_parameters
        digest = cert.signature_hash_algorithm
        data, signature = cert.tbs_certificate_bytes, cert.signature
        if isinstance(key, rsa.RSAPublicKey) and isinstance(params, (padding.PKCS1v15, padding.PSS)):
            if digest is None:
                return False
            key.verify(signature, data, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(signature, data, params)
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        elif isinstance(key, dsa.DSAPublicKey) and digest is not None:
            key.verify(signature, data, digest)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _email_within(address: str, constraint: str) -> bool:
    """RFC 5280 4.2.1.10 rfc822Name matching: a mailbox, a host, or ``.domain`` (subdomains)."""
    local, at_sign, host = address.rpartition("@")
    if not at_sign:
        return False
    if "@" in constraint:
        c_local, _, c_host = constraint.rpartition("@")
        return local == c_local and host.casefold() == c_host.casefold()
    if constraint.startswith("."):
        return host.casefold().endswith(constraint.casefold())
    return host.casefold() == constraint.casefold()


def _subtrees(names: list[x509.GeneralName] | None) -> tuple[list[_NameKey], list[str]]:
    dirs = [_name_key(g.value) for g in names or () if isinstance(g, x509.DirectoryName)]
    mails = [g.value for g in names or () if isinstance(g, x509.RFC822Name)]
    return dirs, mails


# -- wording ---------------------------------------------------------------------------------------
def _subject(cert: x509.Certificate) -> str:
    try:
        text = cert.subject.rfc4514_string()
    except ValueError:
        return "(unreadable subject)"
    return text or "(empty subject)"


def _role(index: int, length: int) -> str:
    if index == 0:
        return "client certificate"
    return "root CA" if index == length - 1 else "intermediate CA"


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _rule_error(
    chain: Sequence[x509.Certificate], index: int, rule: str, why: str, **context: Any
) -> ValidationError:
    """A ``chain_invalid`` refusal; ``rule`` is a short stable name of the broken rule."""
    cert = chain[index]
    return ValidationError(
        Reason.CHAIN_INVALID,
        f"{_role(index, len(chain))} {_subject(cert)} {why}",
        subject=_subject(cert),
        index=index,
        rule=rule,
        path=[_subject(c) for c in chain],
        **context,
    )


def _time_problem(cert: x509.Certificate, when: dt.datetime) -> Reason | None:
    # Both bounds inclusive, as RFC 5280 4.1.2.5 and the library have them.
    if when > cert.not_valid_after_utc:
        return Reason.CERTIFICATE_EXPIRED
    if when < cert.not_valid_before_utc:
        return Reason.CERTIFICATE_NOT_YET_VALID
    return None


def _first_time_problem(certs: Sequence[x509.Certificate], when: dt.datetime) -> tuple[int, Reason] | None:
    for index, cert in enumerate(certs):
        problem = _time_problem(cert, when)
        if problem is not None:
            return index, problem
    return None


def _time_error(
    reason: Reason, certs: Sequence[x509.Certificate], index: int, when: dt.datetime
) -> ValidationError:
    cert = certs[index]
    if reason is Reason.CERTIFICATE_EXPIRED:
        what = f"expired at {_stamp(cert.not_valid_after_utc)}"
    else:
        what = f"is not valid before {_stamp(cert.not_valid_before_utc)}"
    return ValidationError(
        reason,
        f"{_role(index, len(certs))} {_subject(cert)} {what} (validation time {_stamp(when)})",
        subject=_subject(cert),
        index=index,
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        at=when.isoformat(),
    )


def _utc_seconds(at: dt.datetime) -> dt.datetime:
    # The library resolves time to whole seconds; the pre-checks must agree with it exactly.
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    return at.astimezone(dt.timezone.utc).replace(microsecond=0)


def _explicit_policy_index(chain: Sequence[x509.Certificate], facts: Sequence[_CAFacts]) -> int | None:
    """Where RFC 5280's explicit_policy reaches 0 on this path, or None if it never does.

    RFC 5280 6.1.2 (d), 6.1.4 (h) (i), 6.1.5 (a), with initial-explicit-policy unset (6.1.5 (b)
    cannot apply: the leaf profile refuses policyConstraints). The trust anchor is not part of
    the path, so its own policyConstraints do not count.
    """
    n = len(chain) - 1
    explicit_policy = n + 1
    for i in range(1, n + 1):
        index = n - i  # RFC 5280's certificate i, counted from the one the anchor issued
        cert = chain[index]
        if i < n:
            if explicit_policy and cert.issuer != cert.subject:
                explicit_policy -= 1
            rep = facts[index - 1].require_explicit_policy
            if rep is not None and rep < explicit_policy:
                explicit_policy = rep
        elif explicit_policy:
            explicit_policy -= 1
        if explicit_policy == 0:
            return index
    return None


def _signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, str] | None:
    """Why ``issuer`` cannot be the library's issuer of ``cert``, as (rule, phrase), if it can't."""
    oid = cert.signature_algorithm_oid
    weak = _WEAK_SIGNATURES.get(oid)
    if weak:
        return "weak-signature", f"is signed with {weak}, which is refused as weak"
    if oid not in _SUPPORTED_SIGNATURES:
        name = getattr(oid, "_name", "") or oid.dotted_string
        return "signature-algorithm", f"is signed with {name}, which the validator does not support"
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        digest = cert.signature_hash_algorithm
        if not isinstance(digest, _PSS_HASHES) or cert.signature_algorithm_parameters != (
            padding.PSS(padding.MGF1(digest), digest.digest_size)
        ):
            return "signature-algorithm", (
                "has an RSASSA-PSS signature with parameters the validator does not support "
                "(only SHA-256/384/512, MGF1 with the same hash, salt as long as the hash)"
            )
    if cert.issuer.public_bytes() != issuer.subject.public_bytes():
        return "name-chaining", (
            f"names its issuer {cert.issuer.rfc4514_string()!r}, which matches the subject of "
            f"{_subject(issuer)} only after RFC 5280 name normalisation (case, spaces or string "
            "type differ); the validator needs identical names"
        )
    if not _signed_by(cert, issuer):
        return (
            "signature",
            f"has a signature that does not verify with the key of {_subject(issuer)}",
        )
    return None


class _Path:
    """A candidate path found by the diagnosis, leaf first, and whether all signatures verify."""

    __slots__ = ("certs", "signatures_ok")

    def __init__(self, certs: tuple[x509.Certificate, ...], signatures_ok: bool) -> None:
        self.certs = certs
        self.signatures_ok = signatures_ok


class Validator:
    """Validates client certificate paths under one :class:`ValidationPolicy`.

    Thread-safe and reusable: the trust store, the extension policies and the facts about the
    configured CAs are built here, once; :meth:`validate` builds a verifier at most once per
    second of validation time.

    Raises:
        ConfigurationError: the policy cannot work (no roots, something that is not a certificate,
            min_rsa_bits below 2048, an unknown EKU mode, a chain depth outside 0..255, a v1 root
            whose key cannot be used); the message says what to fix.
    """

    def __init__(self, policy: ValidationPolicy) -> None:
        self.policy = policy
        roots = _certificates(policy.roots, "roots")
        if not roots:
            raise ConfigurationError(
                detail="ValidationPolicy.roots is empty: configure at least one trusted root CA"
            )
        self._intermediates = _certificates(policy.intermediates, "intermediates")
        if policy.eku not in ("required", "if-present"):
            raise ConfigurationError(
                detail=f"ValidationPolicy.eku={policy.eku!r}: use 'required' or 'if-present'"
            )
        bits = policy.min_rsa_bits
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < 2048:
            raise ConfigurationError(
                detail=f"ValidationPolicy.min_rsa_bits={bits!r}: RSA keys under 2048 bits are "
                "weak; use 2048 or more"
            )
        depth = policy.max_chain_depth
        if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 255:
            raise ConfigurationError(
                detail=f"ValidationPolicy.max_chain_depth={depth!r}: use a number of intermediate "
                "CAs from 0 to 255 (10 is usual)"
            )
        self._eku_required = policy.eku == "required"
        self._allow_dual = bool(policy.allow_dual_purpose_eku)
        self._min_rsa_bits = bits
        self._max_depth = depth
        self._roots = roots

        # The library refuses a v1 root (it wants v3 and basicConstraints), yet RFC 5280 6.1.1 (d)
        # uses a trust anchor only for its name, key and (here) validity. Such a root is stood in
        # for by a v3 copy with those; no root's own signature is ever checked, so the copy is
        # signed with a throwaway key.
        self._anchor_of: dict[int, x509.Certificate] = {}
        store: list[x509.Certificate] = []
        throwaway: ec.EllipticCurvePrivateKey | None = None
        for root in roots:
            if root.version is x509.Version.v3:
                store.append(root)
                continue
            throwaway = throwaway or ec.generate_private_key(ec.SECP256R1())
            stand_in = _v3_stand_in(root, throwaway)
            self._anchor_of[id(stand_in)] = root
            store.append(stand_in)
        self._store_certs = tuple(store)  # keeps the stand-ins, and so their ids, alive
        try:
            self._store = xv.Store(store)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                detail=f"ValidationPolicy.roots cannot form a trust store: {exc}"
            ) from exc

        # Keyed by identity: the verifier hands back the very objects it was given.
        self._facts: dict[int, _CAFacts] = {}
        for cert in (*store, *self._intermediates):
            try:
                self._facts[id(cert)] = _ca_facts(cert)
            except (ValueError, UnsupportedAlgorithm):
                continue  # unreadable: the library refuses every path through it anyway
        # Under 2048 bits the library has refused issuer keys already; above, it is ours to do.
        self._ca_min_rsa_bits = bits if bits > 2048 else 0
        # The configured CAs on which no rule of ours is left to check on any path: a path made of
        # them alone skips the path rules (the usual case, e.g. a leaf behind nginx).
        self._quiet = frozenset(
            key
            for key, fact in self._facts.items()
            if fact.usage_ok
            and fact.plain
            and (fact.rsa_bits is None or fact.rsa_bits >= self._ca_min_rsa_bits)
        )
        self._configured_callbacks_pass = all(
            _ca_callbacks_pass(cert) for cert in (*store, *self._intermediates)
        )
        self._ee_policy = _ee_extension_policy(eku_required=self._eku_required, allow_dual=self._allow_dual)
        self._verifier: tuple[int, dt.datetime, xv.ClientVerifier] | None = None  # _CA_POLICY_UNCHECKED
        self._checked_verifier: tuple[int, dt.datetime, xv.ClientVerifier] | None = None  # _CA_POLICY
        self._seen: dict[x509.Certificate, _CAFacts] = {}
        self._anchors_by_name: dict[_NameKey, list[x509.Certificate]] = {}
        for root in roots:
            self._anchors_by_name.setdefault(_name_key(root.subject), []).append(root)

    def validate(
        self,
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate] = (),
        *,
        at: dt.datetime | None = None,
        subject: str | None = None,
    ) -> ValidatedPath:
        """Build and check a path from ``leaf`` to a configured root.

        ``presented``: the other certificates the client sent, in any order (extra ones are
        ignored); the configured intermediates are tried as well. ``at``: the validation time
        (default now; a naive datetime is taken as UTC; resolution one second). ``subject``: the
        leaf's RFC 4514 subject, when the caller has already read it from a subject that parses
        (it saves parsing the subject again); None to let the validator read it.

        Returns the path, leaf first and trust anchor last.

        Raises:
            ValidationError: ``certificate_expired`` or ``certificate_not_yet_valid`` (for
                whichever certificate of the path; ``context["index"]`` says which, 0 = leaf),
                ``untrusted_issuer`` (no path to a configured root), ``missing_client_auth_eku``,
                ``dual_purpose_eku``, or ``chain_invalid`` (a path exists but breaks a rule named
                by ``context["rule"]``, or a certificate is malformed). Nothing else, whatever the
                certificates contain.
        """
        try:
            return self._validate(leaf, presented, at, subject)
        except ValidationError:
            raise
        except Exception as exc:
            # Fail closed on what we did not foresee, most likely a malformed certificate.
            raise ValidationError(
                Reason.CHAIN_INVALID,
                f"the chain could not be validated: {type(exc).__name__}: {exc}",
                rule="unexpected",
                error=repr(exc),
            ) from exc

    def _validate(
        self,
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate],
        at: dt.datetime | None,
        subject: str | None,
    ) -> ValidatedPath:
        when, verifier = self._verifier_at(at)
        candidates = [*presented, *self._intermediates]
        try:
            built = verifier.verify(leaf, candidates).chain
        except xv.VerificationError as exc:
            # Refused without the CA keyUsage/EKU rules, so refused with them. If no candidate
            # breaks them, both profiles tried the same issuers: the same refusal and message.
            if self._callbacks_pass(presented):
                raise self._diagnose(leaf, presented, when, str(exc)) from None
        else:
            facts = self._usable_facts(built)
            if facts is not None:
                return self._finish(built, facts, subject)
        return self._validate_checked(leaf, presented, candidates, when, subject)

    def _validate_checked(
        self,
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate],
        candidates: list[x509.Certificate],
        when: dt.datetime,
        subject: str | None,
    ) -> ValidatedPath:
        """The verdict under the whole profile (_CA_POLICY), for every chain the quick build did
        not settle: the same path, refusal and library message as without the quick build."""
        _, verifier = self._verifier_at(when, checked=True)
        try:
            built = verifier.verify(leaf, candidates).chain
        except xv.VerificationError as exc:
            raise self._diagnose(leaf, presented, when, str(exc)) from None
        return self._finish(built, None, subject)

    def _finish(
        self, built: Sequence[x509.Certificate], facts: Sequence[_CAFacts] | None, subject: str | None
    ) -> ValidatedPath:
        anchor_of = self._anchor_of
        chain = tuple(anchor_of.get(id(c), c) for c in built) if anchor_of else tuple(built)
        self._check_leaf_rules(chain, subject)
        if facts is None:
            facts = self._path_facts(built)  # after the leaf rules, as ever: which error wins stays
        if facts:
            self._check_path_rules(chain, facts)
        return ValidatedPath(chain)

    def _verifier_at(
        self, at: dt.datetime | None, *, checked: bool = False
    ) -> tuple[dt.datetime, xv.ClientVerifier]:
        # A verifier is bound to one validation time, in whole seconds. Building one costs about
        # as much as all the checks here together (~10 us measured in a request loop), so the last
        # one of each CA profile is kept for the rest of its second. Replacing a tuple is atomic;
        # verifiers are immutable.
        when = None if at is None else _utc_seconds(at)
        second = int(time.time()) if when is None else int(when.timestamp())
        cached = self._checked_verifier if checked else self._verifier
        if cached is not None and cached[0] == second:
            return cached[1], cached[2]
        if when is None:
            when = dt.datetime.fromtimestamp(second, dt.timezone.utc)
        verifier = (
            xv.PolicyBuilder()
            .store(self._store)
            .time(when)
            .max_chain_depth(self._max_depth)
            .extension_policies(
                ca_policy=_CA_POLICY if checked else _CA_POLICY_UNCHECKED, ee_policy=self._ee_policy
            )
            .build_client_verifier()
        )
        if checked:
            self._checked_verifier = (second, when, verifier)
        else:
            self._verifier = (second, when, verifier)
        return when, verifier

    # -- rules checked here rather than by the library ---------------------------------------------
    def _eku_error(self, leaf: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> ValidationError | None:
        reason = _eku_refusal(eku, eku_required=self._eku_required, allow_dual=self._allow_dual)
        if reason is None:
            return None
        subject = _subject(leaf)
        if eku is None:
            why = "has no extendedKeyUsage extension; the Client Authentication EKU is required"
        elif reason is Reason.DUAL_PURPOSE_EKU:
            why = (
                "is for both client and server authentication (serverAuth EKU too); "
                "dual-purpose certificates are not accepted"
            )
        else:
            listed = ", ".join(sorted(o.dotted_string for o in eku)) or "nothing"
            why = f"is not for client authentication: its extendedKeyUsage lists {listed}"
        return ValidationError(reason, f"client certificate {subject} {why}", subject=subject, index=0)

    def _check_leaf_rules(self, chain: tuple[x509.Certificate, ...], subject: str | None) -> None:
        leaf = chain[0]
        # Parsing the subject (which also refuses an unparseable one) costs ~20 us; a caller that
        # has already read it (the authenticator, from the DER) hands its string in. The cached
        # extensions are parsed here only for the rare empty subject.
        empty = subject == "" if subject is not None else not leaf.subject.rdns
        if empty and not _leaf_facts(leaf).san_critical:
            raise _rule_error(
                chain,
                0,
                "empty-subject",
                "has an empty subject and no critical subjectAltName (RFC 5280 4.2.1.6)",
            )
        bits = _rsa_bits(leaf)
        if bits is not None and bits < self._min_rsa_bits:
            raise _rule_error(
                chain,
                0,
                "key-size",
                f"has a {bits}-bit RSA key; at least {self._min_rsa_bits} bits are required",
            )

    def _path_facts(self, built: Sequence[x509.Certificate]) -> list[_CAFacts]:
        """The facts of the CAs of a built path, the trust anchor included (as the library sees
        it: a v1 root's stand-in), leaf's issuer first."""
        known = self._facts
        return [known.get(id(c)) or self._presented_facts(c) for c in built[1:]]

    def _usable_facts(self, built: Sequence[x509.Certificate]) -> Sequence[_CAFacts] | None:
        """The facts of a path built under _CA_POLICY_UNCHECKED if its CAs, anchor included, meet
        the CA keyUsage/EKU rules, which makes it the path _CA_POLICY builds; else None. Empty if
        its CAs are all quiet ones (nothing left to check)."""
        quiet = self._quiet
        for cert in built[1:]:
            if id(cert) not in quiet:
                break
        else:
            return ()
        try:
            facts = self._path_facts(built)
        except Exception:
            return None  # unreadable: _validate_checked meets it where it always did
        for fact in facts:
            if not fact.usage_ok:
                return None
        return facts

    def _callbacks_pass(self, presented: Sequence[x509.Certificate]) -> bool:
        """Whether the CA keyUsage/EKU callbacks pass on every certificate the library may try as
        an issuer of this chain (configured ones and the presented)."""
        if not self._configured_callbacks_pass:
            return False
        for cert in presented:
            known = self._facts.get(id(cert)) or self._seen.get(cert)
            if not (known.usage_ok if known is not None else _ca_callbacks_pass(cert)):
                return False
        return True

    def _check_path_rules(self, chain: tuple[x509.Certificate, ...], facts: Sequence[_CAFacts]) -> None:
        """The rules the library cannot express, over the path it built."""
        anchor = len(facts)  # the trust anchor's index: RFC 5280 does not process its extensions
        min_rsa_bits = self._ca_min_rsa_bits
        explicit = False
        for index, fact in enumerate(facts, start=1):
            if fact.rsa_bits is not None and fact.rsa_bits < min_rsa_bits:
                raise _rule_error(
                    chain,
                    index,
                    "key-size",
                    f"has a {fact.rsa_bits}-bit RSA key; at least {min_rsa_bits} bits are required",
                )
            if fact.plain:
                continue
            if fact.name_constraints is not None:
                self._check_subject_name_constraints(chain, index, fact.name_constraints)
            # RFC 5280 6.1.4 (a), which holds whatever the policy tree.
            if fact.maps_any_policy and index < anchor:
                raise _rule_error(
                    chain,
                    index,
                    "policy-mapping",
                    "maps anyPolicy in its policyMappings (or they are unreadable)",
                )
            explicit = explicit or (fact.require_explicit_policy is not None and index < anchor)
        # Without requireExplicitPolicy, explicit_policy never reaches 0 (RFC 5280 6.1). With
        # it, we would need the policy tree, which we do not build: such a path is refused.
        where = _explicit_policy_index(chain, facts) if explicit else None
        if where is not None:
            raise _rule_error(
                chain,
                where,
                "explicit-policy",
                "is in a path whose policyConstraints require an explicit certificate policy; "
                "certificate policy processing is not supported",
            )

    def _presented_facts(self, cert: x509.Certificate) -> _CAFacts:
        # Clients present the same few intermediates over and over, as new objects each time;
        # reading their extensions costs more than all other checks, so the facts are kept, keyed
        # by the DER (a dict lookup hashes it; no fingerprint is computed). Bounded: an attacker
        # cycling through intermediates only brings back the cost of reading them.
        facts = self._seen.get(cert)
        if facts is None:
            facts = _ca_facts(cert)
            if len(self._seen) >= _SEEN_LIMIT:
                self._seen.clear()
            self._seen[cert] = facts
        return facts

    def _check_subject_name_constraints(
        self, chain: tuple[x509.Certificate, ...], ca_index: int, nc: x509.NameConstraints
    ) -> None:
        """Apply directoryName and rfc822Name constraints to subject DNs (RFC 5280 4.2.1.10).

        The library applies name constraints to subjectAltName entries only and refuses critical
        directoryName constraints, so a non-critical one would not bind the subject DN, which is
        what names most client certificates. emailAddress attributes of the subject are held to
        rfc822Name constraints whether or not there is a SAN, as OpenSSL does.
        """
        permit_dirs, permit_mails = _subtrees(nc.permitted_subtrees)
        exclude_dirs, exclude_mails = _subtrees(nc.excluded_subtrees)
        if not (permit_dirs or permit_mails or exclude_dirs or exclude_mails):
            return
        ca = _subject(chain[ca_index])
        for index in range(ca_index):
            cert = chain[index]
            if index and cert.issuer == cert.subject:
                continue  # RFC 5280 6.1.3 (b): self-issued intermediates are exempt
            subject = cert.subject
            if subject.rdns and (permit_dirs or exclude_dirs):
                key = _name_key(subject)
                if permit_dirs and not any(key[: len(b)] == b for b in permit_dirs):
                    raise _rule_error(
                        chain,
                        index,
                        "name-constraints",
                        f"has a subject outside the directoryName subtrees that {ca} permits",
                    )
                if any(key[: len(b)] == b for b in exclude_dirs):
                    raise _rule_error(
                        chain,
                        index,
                        "name-constraints",
                        f"has a subject inside a directoryName subtree that {ca} excludes",
                    )
            for attr in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
                mail = attr.value if isinstance(attr.value, str) else ""
                if (permit_mails and not any(_email_within(mail, c) for c in permit_mails)) or any(
                    _email_within(mail, c) for c in exclude_mails
                ):
                    raise _rule_error(
                        chain,
                        index,
                        "name-constraints",
                        f"has subject emailAddress {mail!r}, which the rfc822Name constraints "
                        f"of {ca} do not allow",
                    )

    # -- diagnosis of a refused chain --------------------------------------------------------------
    def _diagnose(
        self,
        leaf: x509.Certificate,
        presented: Sequence[x509.Certificate],
        when: dt.datetime,
        library_message: str,
    ) -> ValidationError:
        """The refusal for a chain the library refused, decided from facts established here.

        In order: the leaf's validity window, its EKU, then whether a path to a root exists at all
        (``untrusted_issuer``), then that path's validity windows, then the rule it breaks.
        """
        problem = _time_problem(leaf, when)
        if problem is not None:
            err = _time_error(problem, (leaf,), 0, when)
            err.context["library_error"] = library_message
            return err
        facts = _leaf_facts(leaf)
        eku_error = self._eku_error(leaf, facts.eku)
        if eku_error is not None:
            eku_error.context["library_error"] = library_message
            return eku_error
        paths = list(self._candidate_paths(leaf, presented))
        if not paths:
            issuer = leaf.issuer.rfc4514_string()
            return ValidationError(
                Reason.UNTRUSTED_ISSUER,
                f"no path from client certificate {_subject(leaf)} (issued by "
                f"{issuer or '(empty name)'}) to a configured trusted root",
                subject=_subject(leaf),
                issuer=issuer,
                index=0,
                library_error=library_message,
            )
        # A path whose signatures verify is the real one. If each such path has a certificate out
        # of its validity window, that is the reason; otherwise some other rule failed.
        chosen = paths[0]
        sound = [p for p in paths if p.signatures_ok]
        if sound:
            problems = [_first_time_problem(p.certs, when) for p in sound]
            timely = [p for p, problem in zip(sound, problems, strict=True) if problem is None]
            first = problems[0]
            if not timely and first is not None:
                err = _time_error(first[1], sound[0].certs, first[0], when)
                err.context["library_error"] = library_message
                return err
            chosen = timely[0]
        found = self._explain(chosen.certs)
        if found is None:
            return _rule_error(
                chosen.certs,
                0,
                "unknown",
                f"has a path to a trusted root that breaks a validation rule ({library_message})",
                library_error=library_message,
            )
        index, rule, why = found
        return _rule_error(
            chosen.certs,
            index,
            rule,
            f"{why} (path validator: {library_message})",
            library_error=library_message,
        )

    def _candidate_paths(
        self, leaf: x509.Certificate, presented: Sequence[x509.Certificate]
    ) -> Iterator[_Path]:
        """Paths from the leaf to a configured root by issuer/subject name and key identifier.

        Names are compared as RFC 5280 7.1 would (case and spacing folded), so that a path the
        library refuses only for non-identical name encodings is still found, and reported as a
        broken rule. A hop whose key identifiers disagree counts only if its signature verifies.
        """
        if leaf in self._roots:
            yield _Path((leaf,), True)
            return
        pool: dict[_NameKey, list[x509.Certificate]] = {}
        for cert in (*presented, *self._intermediates):
            if cert not in self._roots:
                pool.setdefault(_name_key(cert.subject), []).append(cert)
        nodes, signatures = _DIAGNOSIS_NODES, _DIAGNOSIS_SIGNATURES

        def extend(path: tuple[x509.Certificate, ...], sound: bool) -> Iterator[_Path]:
            nonlocal nodes, signatures
            nodes -= 1
            cert = path[-1]
            if cert in self._roots and len(path) > 1:
                yield _Path(path, sound)
                return
            if nodes < 0 or len(path) > _DIAGNOSIS_LENGTH:
                return
            name = _name_key(cert.issuer)
            aki, _ = _key_ids(cert)
            for issuer in (*self._anchors_by_name.get(name, ()), *pool.get(name, ())):
                if issuer in path:
                    continue
                signatures -= 1
                verified = signatures >= 0 and _signed_by(cert, issuer)
                _, ski = _key_ids(issuer)
                if aki is not None and ski is not None and aki != ski and not verified:
                    continue
                yield from extend((*path, issuer), sound and verified)

        yield from extend((leaf,), True)

    def _explain(self, certs: tuple[x509.Certificate, ...]) -> tuple[int, str, str] | None:
        """The first rule a candidate path breaks, as (index, rule, phrase), if we can tell."""
        length = len(certs)
        if length - 2 > self._max_depth:
            return (
                length - 2,
                "depth",
                f"makes the path {length - 2} intermediate CAs long; at most {self._max_depth} are allowed",
            )
        for index, cert in enumerate(certs):
            is_anchor = index == length - 1
            if cert.version is not x509.Version.v3 and not is_anchor:
                return (
                    index,
                    "version",
                    f"is an X.509 {cert.version.name} certificate; v3 is needed",
                )
            serial = cert.serial_number
            if serial < 0 or serial.bit_length() // 8 + 1 > 21:
                return index, "serial", "has a negative or over-long (over 20 octets) serial number"
            if not is_anchor:
                found = _signature_problem(cert, certs[index + 1])
                if found is not None:
                    return index, *found
            try:
                extensions = list(cert.extensions)
            except ValueError as exc:
                return index, "extensions", f"has extensions that cannot be parsed ({exc})"
            known = _CA_KNOWN if index else _EE_KNOWN
            for ext in extensions:
                if ext.critical and ext.oid == ExtensionOID.NAME_CONSTRAINTS:
                    dirs, _ = _subtrees(ext.value.permitted_subtrees)
                    excluded, _ = _subtrees(ext.value.excluded_subtrees)
                    if dirs or excluded:
                        return (
                            index,
                            "directory-name-constraints",
                            (
                                "has critical directoryName name constraints, which the path "
                                "validator does not apply"
                            ),
                        )
                if ext.critical and ext.oid not in known:
                    oid = ext.oid.dotted_string
                    return (
                        index,
                        "critical-extension",
                        f"has a critical extension {oid} we do not process",
                    )
            bits = _rsa_bits(cert)
            if bits is not None and bits < self._min_rsa_bits:
                return (
                    index,
                    "key-size",
                    f"has a {bits}-bit RSA key; {self._min_rsa_bits} are needed",
                )
            values = {ext.oid: ext.value for ext in extensions}
            bc = values.get(ExtensionOID.BASIC_CONSTRAINTS)
            if index == 0:
                if isinstance(bc, x509.BasicConstraints) and bc.ca and length > 1:
                    return 0, "leaf-is-ca", "is a CA certificate (cA=TRUE), not an end entity"
                ku = values.get(ExtensionOID.KEY_USAGE)
                problem = _leaf_key_usage_problem(ku) if isinstance(ku, x509.KeyUsage) else ""
                if problem:
                    return 0, "leaf-key-usage", problem
                if ExtensionOID.POLICY_CONSTRAINTS in values:
                    return (
                        0,
                        "leaf-policy-constraints",
                        ("has a policyConstraints extension, which belongs in CA certificates"),
                    )
                continue
            if cert.version is not x509.Version.v3:
                continue  # a v1 trust anchor: its name and key are all that is used
            found = _ca_problem(cert, index, values)
            if found is not None:
                return index, *found
        return None


def _ca_problem(
    cert: x509.Certificate, index: int, values: dict[x509.ObjectIdentifier, Any]
) -> tuple[str, str] | None:
    bc = values.get(ExtensionOID.BASIC_CONSTRAINTS)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        return "not-a-ca", "is not a CA certificate (no basicConstraints with cA=TRUE)"
    # The library counts self-issued CAs too (RFC 5280 6.1.4 (l) would not).
    if bc.path_length is not None and bc.path_length < index - 1:
        return "path-length", (
            f"allows {bc.path_length} intermediate CAs below it (pathLenConstraint) but the path "
            f"has {index - 1}"
        )
    ku = values.get(ExtensionOID.KEY_USAGE)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        return "ca-key-usage", "has a keyUsage without keyCertSign"
    eku = values.get(ExtensionOID.EXTENDED_KEY_USAGE)
    if isinstance(eku, x509.ExtendedKeyUsage) and _CLIENT_AUTH not in eku and _ANY_EKU not in eku:
        return "ca-eku", "has an extendedKeyUsage that does not allow client authentication"
    if cert.public_key_algorithm_oid not in _RSA_KEYS:
        key = cert.public_key()
        if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CA_CURVES)):
            return "key-algorithm", (
                f"has a {type(key).__name__} key; the validator accepts only RSA, P-256, P-384 "
                "and P-521 keys on CAs"
            )
    return None


def _certificates(value: object, field_name: str) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(c, x509.Certificate) for c in value):
        raise ConfigurationError(
            detail=f"ValidationPolicy.{field_name} must be a tuple of x509.Certificate (load PEM "
            "with x509.load_pem_x509_certificates)"
        )
    return tuple(value)


def _v3_stand_in(root: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    try:
        return (
            x509.CertificateBuilder()
            .subject_name(root.subject)
            .issuer_name(root.issuer)
            .public_key(root.public_key())
            .serial_number(1)
            .not_valid_before(root.not_valid_before_utc)
            .not_valid_after(root.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            detail=f"root {_subject(root)} is an X.509 {root.version.name} certificate whose key "
            f"cannot serve as a trust anchor ({exc}); configure a v3 root instead"
        ) from exc
