"""Path validation: the profile decisions of docs/validation-profile.md, one table per kind.

- ``RFC_ALLOWS_WEBPKI_REFUSES``: RFC 5280 allows it, cryptography's default (web-PKI) client
  verifier refuses it, we accept it. Each case first shows the default verifier refusing it.
- ``ACCEPTED_AS_IS``: accepted by both; here so that no future override starts refusing them.
- ``MUST_REFUSE``: refused, with the reason code a client gets (asserted on ``exc.reason`` and the
  structured context, never on message text). Rows marked ``webpki_accepts`` are refused only
  by our own checks: the default verifier lets them through.
- ``LIBRARY_LIMITS``: RFC 5280 would allow them, but the library has no switch for them: refused
  as ``chain_invalid`` (documented limitations).

Every certificate is made here, now, with :mod:`mtls_middleware.testing`; a few are DER-patched
(weak signature hashes, serial numbers, v1) because cryptography will not produce them.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, ObjectIdentifier
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mtls_middleware.errors import ConfigurationError, Reason, ValidationError
from mtls_middleware.testing import (
    CLIENT_AUTH,
    SERVER_AUTH,
    Issued,
    KeyType,
    TestPKI,
    generate_key,
    make_certificate,
    name,
)
from mtls_middleware.validation import ValidatedPath, ValidationPolicy, Validator

# Negative and zero serial numbers are made on purpose; cryptography warns when it reads them.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

UTC = dt.timezone.utc
ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
EMAIL_PROTECTION = ExtendedKeyUsageOID.EMAIL_PROTECTION
SMARTCARD_LOGON = ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
PKINIT_CLIENT = ObjectIdentifier("1.3.6.1.5.2.3.4")
MS_TEMPLATE = ObjectIdentifier("1.3.6.1.4.1.311.21.7")
MS_APPLICATION_POLICIES = ObjectIdentifier("1.3.6.1.4.1.311.21.10")
NETSCAPE_CERT_TYPE = ObjectIdentifier("2.16.840.1.113730.1.1")
SAN = ("client@example.org",)
MS_APP_POLICY_CLIENT_AUTH = bytes.fromhex("300c300a06082b06010505070302")


# -- certificates cryptography will not make: DER surgery ------------------------------------------
def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _children(der: bytes) -> list[bytes]:
    """The encoded elements of the DER SEQUENCE ``der``."""

    def header(at: int) -> tuple[int, int]:
        first = der[at + 1]
        if first < 0x80:
            return 2, first
        n = first & 0x7F
        return 2 + n, int.from_bytes(der[at + 2 : at + 2 + n], "big")

    head, size = header(0)
    out, at = [], head
    while at < head + size:
        h, n = header(at)
        out.append(der[at : at + h + n])
        at += h + n
    return out


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


_PKCS1 = {
    "sha256": ("06092a864886f70d01010b0500", hashes.SHA256()),
    "sha1": ("06092a864886f70d0101050500", hashes.SHA1()),  # noqa: S303 - weak on purpose
    "md5": ("06092a864886f70d0101040500", hashes.MD5()),  # noqa: S303 - weak on purpose
}


def _pss_algorithm_identifier(key: Any, salt: Any) -> bytes:
    """The AlgorithmIdentifier cryptography writes for RSASSA-PSS-SHA256 with this salt."""
    probe = make_certificate(subject=name("PSS probe"), key=key)
    resigned = (
        x509.CertificateBuilder()
        .subject_name(probe.subject)
        .issuer_name(probe.issuer)
        .public_key(probe.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(probe.not_valid_before_utc)
        .not_valid_after(probe.not_valid_after_utc)
        .sign(key, hashes.SHA256(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), salt))
    )
    return _children(_der(resigned))[1]


def resign(
    cert: x509.Certificate,
    issuer_key: Any,
    *,
    algorithm: str = "sha256",
    edit: Callable[[list[bytes]], list[bytes]] | None = None,
) -> x509.Certificate:
    """``cert`` with its TBSCertificate edited, then signed again with the RSA ``issuer_key``.

    ``algorithm``: ``sha256``, ``sha1`` or ``md5`` (PKCS#1 v1.5); ``pss-32`` (RSASSA-PSS SHA-256
    with a 32-byte salt, the web-PKI form) or ``pss-max`` (the longest salt).
    """
    parts = _children(_children(_der(cert))[0])
    if edit is not None:
        parts = edit(parts)
    scheme: Any
    if algorithm.startswith("pss-"):
        salt = padding.PSS.MAX_LENGTH if algorithm == "pss-max" else int(algorithm[4:])
        algid = _pss_algorithm_identifier(issuer_key, salt)
        scheme, digest = padding.PSS(padding.MGF1(hashes.SHA256()), salt), hashes.SHA256()
    else:
        oid, digest = _PKCS1[algorithm]
        algid, scheme = _tlv(0x30, bytes.fromhex(oid)), padding.PKCS1v15()
    parts[2 if parts[0][0] == 0xA0 else 1] = algid  # TBSCertificate.signature
    tbs = _tlv(0x30, b"".join(parts))
    signature = issuer_key.sign(tbs, scheme, digest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about non-positive serial numbers
        return x509.load_der_x509_certificate(_tlv(0x30, tbs + algid + _tlv(0x03, b"\x00" + signature)))


def with_serial(content: bytes) -> Callable[[list[bytes]], list[bytes]]:
    """An edit that sets the serial number's INTEGER content octets."""

    def edit(parts: list[bytes]) -> list[bytes]:
        parts[1] = _tlv(0x02, content)
        return parts

    return edit


def as_v1(parts: list[bytes]) -> list[bytes]:
    """An edit that drops version [0] and extensions [3]: an X.509 v1 TBSCertificate."""
    return [p for p in parts if p[0] not in (0xA0, 0xA3)]


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def policy_mappings(issuer_policy: str, subject_policy: str) -> x509.UnrecognizedExtension:
    """policyMappings (cryptography has no class for it) with one pair."""
    pair = _tlv(0x30, _oid_der(issuer_policy) + _oid_der(subject_policy))
    return x509.UnrecognizedExtension(ExtensionOID.POLICY_MAPPINGS, _tlv(0x30, pair))


def key_usage(**bits: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


# -- cases -----------------------------------------------------------------------------------------
@dataclass
class Case:
    leaf: x509.Certificate
    presented: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    policy: dict[str, Any] = field(default_factory=dict)

    def validator(self) -> Validator:
        return Validator(ValidationPolicy(roots=self.roots, **self.policy))

    def validate(self, **kwargs: Any) -> ValidatedPath:
        return self.validator().validate(self.leaf, self.presented, **kwargs)


@dataclass
class Kit:
    """The PKIs the case builders draw on, made once per run."""

    ec: TestPKI
    rsa: TestPKI
    twin: TestPKI  # same names as ``ec``, other keys
    other: TestPKI

    def client(
        self,
        pki: TestPKI | None = None,
        *,
        issuer: Issued | None = None,
        policy: dict[str, Any] | None = None,
        **options: Any,
    ) -> Case:
        pki = pki or self.ec
        options.setdefault("san_emails", SAN)
        issued = pki.issue_client("client", issuer=issuer, **options)
        return Case(issued.cert, issued.intermediates, (pki.root.cert,), policy or {})

    def under_ca(self, ca_options: dict[str, Any], **leaf_options: Any) -> Case:
        return self.client(issuer=self.ec.issue_ca("Odd CA", **ca_options), **leaf_options)

    def leaf(self, subject: x509.Name, **options: Any) -> Case:
        cert = make_certificate(
            subject=subject,
            key=generate_key(),
            issuer=self.ec.issuing.cert,
            issuer_key=self.ec.issuing.key,
            **options,
        )
        return Case(cert, (self.ec.issuing.cert,), (self.ec.root.cert,))

    def rsa_client(self, *, algorithm: str = "sha256", edit: Any = None, **options: Any) -> Case:
        case = self.client(self.rsa, **options)
        return replace(case, leaf=resign(case.leaf, self.rsa.issuing.key, algorithm=algorithm, edit=edit))

    def rsa_intermediate(self, *, algorithm: str = "sha256", edit: Any = None) -> Case:
        ca = self.rsa.issue_ca("Patched CA")
        patched = resign(ca.cert, self.rsa.root.key, algorithm=algorithm, edit=edit)
        case = self.client(self.rsa, issuer=Issued(patched, ca.key))
        return replace(case, presented=(patched,))

    def rsa_root(self, *, algorithm: str = "sha256", edit: Any = None) -> Case:
        root = resign(self.rsa.root.cert, self.rsa.root.key, algorithm=algorithm, edit=edit)
        return replace(self.client(self.rsa), roots=(root,))

    def issuer_with_key(self, key_type: KeyType, **policy: Any) -> Case:
        key = generate_key(key_type, reuse=0)
        ca = make_certificate(
            subject=name(f"{key_type} CA"),
            key=key,
            issuer=self.ec.root.cert,
            issuer_key=self.ec.root.key,
            ca=True,
            eku=None,
        )
        return replace(self.client(issuer=Issued(ca, key)), policy=policy)

    def ladder(self, depth: int, **policy: Any) -> Case:
        parent, ladder = self.ec.root, []
        for level in range(depth):
            parent = self.ec.issue_ca(f"Level {level} CA", parent=parent)
            ladder.insert(0, parent.cert)
        return replace(self.client(issuer=parent), presented=tuple(ladder), policy=policy)

    def root_valid(self, not_before: dt.datetime, not_after: dt.datetime) -> Case:
        key = generate_key()
        root = make_certificate(
            subject=name("Time Root"),
            key=key,
            ca=True,
            eku=None,
            not_before=not_before,
            not_after=not_after,
        )
        issuing = self.ec.issue_ca("Time Issuing CA", parent=Issued(root, key))
        return replace(self.client(issuer=issuing), roots=(root,))

    def constrained(
        self,
        constraints: x509.NameConstraints,
        *,
        critical: bool,
        subject: x509.Name | None = None,
        **leaf_options: Any,
    ) -> Case:
        ca = self.ec.issue_ca("Constrained CA", extra_extensions=[(constraints, critical)])
        cert = make_certificate(
            subject=subject or name("client"),
            key=generate_key(),
            issuer=ca.cert,
            issuer_key=ca.key,
            **leaf_options,
        )
        return Case(cert, (ca.cert,), (self.ec.root.cert,))


Builder = Callable[[Kit], Case]


def fresh_pki_client(key_type: KeyType) -> Case:
    pki = TestPKI(key_type=key_type)
    issued = pki.issue_client("client", san_emails=SAN)
    return Case(issued.cert, issued.intermediates, (pki.root.cert,))


def p521_root(_: Kit) -> Case:
    key = ec.generate_private_key(ec.SECP521R1())
    root = make_certificate(
        subject=name("P-521 Root"), key=key, ca=True, eku=None, hash_algorithm=hashes.SHA512()
    )
    leaf = make_certificate(
        subject=name("client"),
        key=generate_key(),
        issuer=root,
        issuer_key=key,
        san_emails=SAN,
        hash_algorithm=hashes.SHA512(),
    )
    return Case(leaf, (), (root,))


def two_issuers_same_name(kit: Kit) -> tuple[Case, Issued]:
    """A leaf from an expired issuing CA, next to its renewal (same name, new key)."""
    old = kit.ec.issue_ca("Renewed CA", not_before=_days(-400), not_after=_days(-1))
    new = kit.ec.issue_ca("Renewed CA")
    leaf = kit.ec.issue_client("client", issuer=old, san_emails=SAN, not_before=_days(-2))
    return Case(leaf.cert, (old.cert, new.cert), (kit.ec.root.cert,)), old


def issuer_not_a_ca(kit: Kit) -> Case:
    key = generate_key()
    cert = make_certificate(
        subject=name("Not a CA"),
        key=key,
        issuer=kit.ec.root.cert,
        issuer_key=kit.ec.root.key,
        eku=None,
    )
    return kit.client(issuer=Issued(cert, key))


def path_length_exceeded(kit: Kit) -> Case:
    top = kit.ec.issue_ca("Top CA", path_length=0)
    sub = kit.ec.issue_ca("Sub CA", parent=top)
    return replace(kit.client(issuer=sub), presented=(sub.cert, top.cert))


def leaf_is_a_ca(kit: Kit) -> Case:
    leaf = kit.ec.issue_ca("Leaf CA", eku=(CLIENT_AUTH, EMAIL_PROTECTION), san_emails=SAN)
    return Case(leaf.cert, (), (kit.ec.root.cert,))


def leaf_bad_signature(kit: Kit) -> Case:
    forged = make_certificate(
        subject=name("client"),
        key=generate_key(),
        issuer=kit.ec.issuing.cert,
        issuer_key=generate_key(),  # not the issuing CA's key; AKI still names it
        san_emails=SAN,
    )
    return replace(kit.client(), leaf=forged)


def self_signed_leaf(kit: Kit) -> Case:
    leaf = make_certificate(subject=name("self"), key=generate_key(), san_emails=SAN)
    return Case(leaf, (), (kit.ec.root.cert,))


def with_key_usage(**bits: bool) -> Builder:
    return lambda k: k.client(key_usage=False, extra_extensions=[(key_usage(**bits), True)])


def ca_with(*extensions: tuple[x509.ExtensionType, bool], **ca_options: Any) -> Builder:
    return lambda k: k.under_ca({"extra_extensions": list(extensions), **ca_options})


def directory(org: str) -> x509.DirectoryName:
    return x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]))


def mail_subject(address: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mtls_middleware test"),
            x509.NameAttribute(NameOID.COMMON_NAME, "client"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, address),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


def _days(n: float) -> dt.datetime:
    return _now() + dt.timedelta(days=n)


PERMIT_CORP_MAIL = x509.NameConstraints([x509.RFC822Name("corp.example")], None)
PERMIT_OUR_ORG = x509.NameConstraints([directory("mtls_middleware test")], None)
PERMIT_OTHER_ORG = x509.NameConstraints([directory("Other Org")], None)
EXCLUDE_OUR_ORG = x509.NameConstraints(None, [directory("MTLS_MIDDLEWARE  test")])
ANY_POLICY_OID = "2.5.29.32.0"
ANY_POLICY = x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier(ANY_POLICY_OID), None)])
SOME_POLICY = x509.CertificatePolicies(
    [x509.PolicyInformation(ObjectIdentifier("1.3.6.1.4.1.55555.1"), None)]
)
MS_TEMPLATE_EXT = x509.UnrecognizedExtension(MS_TEMPLATE, bytes.fromhex("3009060428060104020164"))


def unknown(oid: ObjectIdentifier, value: bytes) -> list[tuple[x509.ExtensionType, bool]]:
    """A non-critical extension cryptography has no class for."""
    return [(x509.UnrecognizedExtension(oid, value), False)]


Builder = Callable[[Kit], Case]

RFC_ALLOWS_WEBPKI_REFUSES = [
    pytest.param(lambda k: k.client(san_emails=()), id="leaf-without-san"),
    pytest.param(lambda k: k.client(san_critical=True), id="leaf-san-critical-subject-not-empty"),
    pytest.param(lambda k: k.client(aki=False), id="leaf-without-aki"),
    pytest.param(lambda k: k.client(eku_critical=True), id="leaf-eku-critical"),
    pytest.param(lambda k: k.client(eku=(ANY_EKU,)), id="leaf-eku-any-only"),
    pytest.param(
        lambda k: k.client(extra_extensions=[(SOME_POLICY, True)]),
        id="leaf-certificate-policies-critical",
    ),
    pytest.param(lambda k: k.under_ca({"key_usage": False}), id="ca-without-key-usage"),
    pytest.param(
        lambda k: k.under_ca({"basic_constraints_critical": False}),
        id="ca-basic-constraints-not-critical",
    ),
    pytest.param(
        lambda k: k.under_ca({"eku": (CLIENT_AUTH, EMAIL_PROTECTION), "eku_critical": True}),
        id="ca-eku-critical",
    ),
    pytest.param(ca_with((ANY_POLICY, True)), id="ca-certificate-policies-critical"),
    pytest.param(
        ca_with((x509.PolicyConstraints(None, 0), True)), id="ca-policy-constraints-inhibit-mapping"
    ),
    pytest.param(
        ca_with((x509.PolicyConstraints(5, None), True)),
        id="ca-require-explicit-policy-not-reached",
    ),
    pytest.param(ca_with((x509.InhibitAnyPolicy(0), True)), id="ca-inhibit-any-policy-critical"),
    pytest.param(ca_with((policy_mappings("1.2.3.4", "1.2.3.5"), True)), id="ca-policy-mappings-critical"),
    pytest.param(lambda k: k.rsa_root(edit=as_v1), id="root-x509-v1"),
]

ACCEPTED_AS_IS = [
    pytest.param(
        lambda k: k.client(san_emails=(), san_upns=("client@corp.example",)), id="leaf-san-upn-only"
    ),
    pytest.param(
        lambda k: k.leaf(x509.Name([]), san_emails=SAN, san_critical=True),
        id="leaf-empty-subject-san-critical",
    ),
    pytest.param(lambda k: k.client(eku=(CLIENT_AUTH, EMAIL_PROTECTION)), id="leaf-eku-client-and-email"),
    pytest.param(
        lambda k: k.client(eku=(CLIENT_AUTH, SMARTCARD_LOGON)),
        id="leaf-eku-client-and-smartcard-logon",
    ),
    pytest.param(lambda k: k.client(eku=(CLIENT_AUTH, PKINIT_CLIENT)), id="leaf-eku-client-and-pkinit"),
    pytest.param(
        lambda k: k.client(eku=(CLIENT_AUTH, SERVER_AUTH), policy={"allow_dual_purpose_eku": True}),
        id="leaf-dual-eku-when-allowed",
    ),
    pytest.param(
        lambda k: k.client(eku=None, policy={"eku": "if-present"}), id="leaf-without-eku-if-present"
    ),
    pytest.param(lambda k: k.client(key_usage=False), id="leaf-without-key-usage"),
    pytest.param(with_key_usage(key_agreement=True), id="leaf-key-usage-key-agreement"),
    pytest.param(
        with_key_usage(digital_signature=True, content_commitment=True, key_encipherment=True),
        id="leaf-key-usage-signature-and-more",
    ),
    pytest.param(lambda k: k.client(key_type="ed25519"), id="leaf-ed25519-key"),
    pytest.param(lambda k: k.client(key_type="p384"), id="leaf-p384-key"),
    pytest.param(lambda k: k.client(key_type="rsa3072"), id="leaf-rsa3072-key"),
    pytest.param(lambda k: k.client(hash_algorithm=hashes.SHA384()), id="leaf-ecdsa-sha384-signature"),
    pytest.param(lambda k: k.client(extra_extensions=[(SOME_POLICY, False)]), id="leaf-certificate-policies"),
    pytest.param(
        lambda k: k.client(extra_extensions=[(MS_TEMPLATE_EXT, False)]),
        id="leaf-ms-certificate-template",
    ),
    pytest.param(
        lambda k: k.client(extra_extensions=unknown(MS_APPLICATION_POLICIES, MS_APP_POLICY_CLIENT_AUTH)),
        id="leaf-ms-application-policies",
    ),
    pytest.param(
        lambda k: k.client(extra_extensions=unknown(NETSCAPE_CERT_TYPE, b"\x03\x02\x07\x80")),
        id="leaf-netscape-cert-type",
    ),
    pytest.param(
        lambda k: k.client(ocsp_url="http://ocsp.example/", crl_url="http://crl.example/ca.crl"),
        id="leaf-aia-and-crl-distribution-points",
    ),
    pytest.param(lambda k: k.rsa_client(edit=with_serial(b"\x00")), id="leaf-serial-zero"),
    pytest.param(
        lambda k: k.rsa_client(edit=with_serial(b"\x00\x80" + b"\x11" * 19)),
        id="leaf-serial-21-octets",
    ),
    pytest.param(lambda k: k.rsa_intermediate(algorithm="pss-32"), id="intermediate-rsa-pss-sha256"),
    pytest.param(lambda k: k.rsa_root(algorithm="sha1"), id="root-self-signed-with-sha1"),
    pytest.param(lambda k: k.under_ca({"aki": False}), id="intermediate-without-aki"),
    pytest.param(lambda k: k.under_ca({"ski": False}), id="ca-without-ski"),
    pytest.param(lambda k: k.under_ca({"eku": (CLIENT_AUTH, EMAIL_PROTECTION)}), id="ca-eku-client-auth"),
    pytest.param(lambda k: k.under_ca({"eku": (ANY_EKU,)}), id="ca-eku-any"),
    pytest.param(lambda k: k.under_ca({"path_length": 0}), id="ca-path-length-zero-issuing-leaf"),
    pytest.param(lambda k: k.issuer_with_key("rsa3072", min_rsa_bits=3072), id="ca-rsa3072-with-min-3072"),
    pytest.param(lambda k: k.issuer_with_key("rsa4096"), id="ca-rsa4096"),  # type: ignore[arg-type]
    pytest.param(lambda k: fresh_pki_client("p384"), id="cas-p384"),
    pytest.param(lambda k: fresh_pki_client("rsa2048"), id="cas-rsa2048"),
    pytest.param(p521_root, id="root-p521-ecdsa-sha512"),
    pytest.param(lambda k: k.ladder(10), id="ten-intermediates-max-depth-10"),
    pytest.param(
        lambda k: k.constrained(PERMIT_CORP_MAIL, critical=True, san_emails=("a@corp.example",)),
        id="name-constraints-rfc822-inside",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_CORP_MAIL, critical=True, subject=mail_subject("a@corp.example")),
        id="name-constraints-subject-email-inside",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_OUR_ORG, critical=False),
        id="name-constraints-directory-name-inside",
    ),
]


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    index: int = 0
    rule: str | None = None
    webpki_accepts: bool = False  # refused only by our own checks


def refuse(
    reason: Reason, index: int = 0, rule: str | None = None, *, webpki_accepts: bool = False
) -> Refusal:
    return Refusal(reason, index, rule, webpki_accepts)


UNTRUSTED = refuse(Reason.UNTRUSTED_ISSUER)
EXPIRED, EARLY = Reason.CERTIFICATE_EXPIRED, Reason.CERTIFICATE_NOT_YET_VALID
NO_EKU, DUAL = refuse(Reason.MISSING_CLIENT_AUTH_EKU), refuse(Reason.DUAL_PURPOSE_EKU)
INVALID = Reason.CHAIN_INVALID
LAST_WEEK = {"not_before": _days(-10), "not_after": _days(-1)}
NEXT_WEEK = {"not_before": _days(1), "not_after": _days(10)}

MUST_REFUSE = [
    pytest.param(
        lambda k: replace(k.client(k.other), roots=(k.ec.root.cert,)),
        UNTRUSTED,
        id="untrusted-other-pki",
    ),
    pytest.param(
        lambda k: replace(k.client(k.twin), roots=(k.ec.root.cert,)),
        UNTRUSTED,
        id="untrusted-same-names-other-keys",
    ),
    pytest.param(lambda k: replace(k.client(), presented=()), UNTRUSTED, id="untrusted-intermediate-missing"),
    pytest.param(self_signed_leaf, UNTRUSTED, id="untrusted-self-signed-leaf"),
    pytest.param(lambda k: k.client(**LAST_WEEK), refuse(EXPIRED, 0), id="leaf-expired"),
    pytest.param(lambda k: k.client(**NEXT_WEEK), refuse(EARLY, 0), id="leaf-not-yet-valid"),
    pytest.param(lambda k: k.under_ca(LAST_WEEK), refuse(EXPIRED, 1), id="intermediate-expired"),
    pytest.param(lambda k: k.under_ca(NEXT_WEEK), refuse(EARLY, 1), id="intermediate-not-yet-valid"),
    pytest.param(lambda k: k.root_valid(_days(-100), _days(-1)), refuse(EXPIRED, 2), id="root-expired"),
    pytest.param(lambda k: k.root_valid(_days(1), _days(100)), refuse(EARLY, 2), id="root-not-yet-valid"),
    pytest.param(lambda k: k.client(eku=None), NO_EKU, id="leaf-without-eku"),
    pytest.param(lambda k: k.client(eku=(SERVER_AUTH,)), NO_EKU, id="leaf-eku-server-auth-only"),
    pytest.param(lambda k: k.client(eku=(SMARTCARD_LOGON,)), NO_EKU, id="leaf-eku-smartcard-logon-only"),
    pytest.param(
        lambda k: k.client(eku=(EMAIL_PROTECTION,), policy={"eku": "if-present"}),
        NO_EKU,
        id="leaf-eku-email-only-if-present",
    ),
    pytest.param(lambda k: k.client(eku=(CLIENT_AUTH, SERVER_AUTH)), DUAL, id="leaf-eku-client-and-server"),
    pytest.param(lambda k: k.client(eku=(ANY_EKU, SERVER_AUTH)), DUAL, id="leaf-eku-any-and-server"),
    pytest.param(
        with_key_usage(content_commitment=True),
        refuse(INVALID, 0, "leaf-key-usage", webpki_accepts=True),
        id="leaf-key-usage-non-repudiation-only",
    ),
    pytest.param(
        with_key_usage(key_encipherment=True),
        refuse(INVALID, 0, "leaf-key-usage", webpki_accepts=True),
        id="leaf-key-usage-key-encipherment-only",
    ),
    pytest.param(
        with_key_usage(digital_signature=True, key_cert_sign=True),
        refuse(INVALID, 0, "leaf-key-usage"),
        id="leaf-key-usage-key-cert-sign",
    ),
    pytest.param(leaf_is_a_ca, refuse(INVALID, 0, "leaf-is-ca"), id="leaf-is-a-ca"),
    pytest.param(
        lambda k: k.leaf(x509.Name([])),
        refuse(INVALID, 0, "empty-subject"),
        id="leaf-empty-subject-without-san",
    ),
    pytest.param(
        lambda k: k.leaf(x509.Name([]), san_emails=SAN),
        refuse(INVALID, 0, "empty-subject"),
        id="leaf-empty-subject-san-not-critical",
    ),
    pytest.param(
        lambda k: k.client(extra_extensions=[(x509.PolicyConstraints(0, None), False)]),
        refuse(INVALID, 0, "leaf-policy-constraints", webpki_accepts=True),
        id="leaf-policy-constraints",
    ),
    pytest.param(leaf_bad_signature, refuse(INVALID, 0, "signature"), id="leaf-bad-signature"),
    pytest.param(
        lambda k: k.client(extra_extensions=[(MS_TEMPLATE_EXT, True)]),
        refuse(INVALID, 0, "critical-extension"),
        id="leaf-unknown-critical-extension",
    ),
    pytest.param(
        lambda k: k.client(key_type="rsa1024"),
        refuse(INVALID, 0, "key-size", webpki_accepts=True),
        id="leaf-rsa1024",
    ),
    pytest.param(
        lambda k: k.client(key_type="rsa2048", policy={"min_rsa_bits": 3072}),
        refuse(INVALID, 0, "key-size", webpki_accepts=True),
        id="leaf-rsa2048-below-min-3072",
    ),
    pytest.param(
        lambda k: k.rsa_client(algorithm="sha1"),
        refuse(INVALID, 0, "weak-signature"),
        id="leaf-signed-sha1",
    ),
    pytest.param(
        lambda k: k.rsa_client(algorithm="md5"),
        refuse(INVALID, 0, "weak-signature"),
        id="leaf-signed-md5",
    ),
    pytest.param(
        lambda k: k.rsa_client(edit=with_serial(b"\x00\x80" + b"\x11" * 20)),
        refuse(INVALID, 0, "serial"),
        id="leaf-serial-22-octets",
    ),
    pytest.param(
        lambda k: k.rsa_intermediate(algorithm="sha1"),
        refuse(INVALID, 1, "weak-signature"),
        id="intermediate-signed-sha1",
    ),
    pytest.param(
        lambda k: k.issuer_with_key("rsa1024"),
        refuse(INVALID, 1, "key-size"),
        id="intermediate-rsa1024",
    ),
    pytest.param(
        lambda k: k.issuer_with_key("rsa2048", min_rsa_bits=3072),
        refuse(INVALID, 1, "key-size", webpki_accepts=True),
        id="intermediate-rsa2048-below-min-3072",
    ),
    pytest.param(issuer_not_a_ca, refuse(INVALID, 1, "not-a-ca"), id="issuer-not-a-ca"),
    pytest.param(
        lambda k: k.under_ca({"basic_constraints": False}),
        refuse(INVALID, 1, "not-a-ca"),
        id="issuer-without-basic-constraints",
    ),
    pytest.param(
        ca_with((key_usage(digital_signature=True, crl_sign=True), True), key_usage=False),
        refuse(INVALID, 1, "ca-key-usage"),
        id="ca-key-usage-without-key-cert-sign",
    ),
    pytest.param(
        lambda k: k.under_ca({"eku": (SERVER_AUTH,)}),
        refuse(INVALID, 1, "ca-eku"),
        id="ca-eku-server-auth-only",
    ),
    pytest.param(
        ca_with((MS_TEMPLATE_EXT, True)),
        refuse(INVALID, 1, "critical-extension"),
        id="ca-unknown-critical-extension",
    ),
    pytest.param(
        path_length_exceeded,
        refuse(INVALID, 2, "path-length"),
        id="path-length-constraint-exceeded",
    ),
    pytest.param(
        lambda k: k.ladder(2, max_chain_depth=1),
        refuse(INVALID, 2, "depth"),
        id="deeper-than-max-chain-depth",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_CORP_MAIL, critical=True, san_emails=("a@evil.example",)),
        refuse(INVALID, 0),
        id="name-constraints-rfc822-san-outside",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_CORP_MAIL, critical=True, subject=mail_subject("a@evil.example")),
        refuse(INVALID, 0, "name-constraints"),
        id="name-constraints-subject-email-outside",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_OTHER_ORG, critical=False, san_emails=SAN),
        refuse(INVALID, 0, "name-constraints", webpki_accepts=True),
        id="name-constraints-directory-name-outside",
    ),
    pytest.param(
        lambda k: k.constrained(EXCLUDE_OUR_ORG, critical=False, san_emails=SAN),
        refuse(INVALID, 0, "name-constraints", webpki_accepts=True),
        id="name-constraints-directory-name-excluded",
    ),
    pytest.param(
        ca_with((x509.PolicyConstraints(0, None), True)),
        refuse(INVALID, 1, "explicit-policy"),
        id="explicit-policy-required",
    ),
    pytest.param(
        ca_with((policy_mappings(ANY_POLICY_OID, "1.2.3.4"), False)),
        refuse(INVALID, 1, "policy-mapping", webpki_accepts=True),
        id="policy-mapping-of-any-policy",
    ),
]

LIBRARY_LIMITS = [
    pytest.param(
        lambda k: fresh_pki_client("ed25519"),
        refuse(INVALID, 0, "signature-algorithm"),
        id="cas-ed25519",
    ),
    pytest.param(
        lambda k: k.rsa_intermediate(algorithm="pss-max"),
        refuse(INVALID, 1, "signature-algorithm"),
        id="intermediate-rsa-pss-longest-salt",
    ),
    pytest.param(
        lambda k: k.rsa_client(edit=with_serial(b"\xff\x01")),
        refuse(INVALID, 0, "serial"),
        id="leaf-serial-negative",
    ),
    pytest.param(
        lambda k: replace(k.rsa_client(edit=as_v1), policy={"eku": "if-present"}),
        refuse(INVALID, 0, "version"),
        id="leaf-x509-v1",
    ),
    pytest.param(
        lambda k: k.rsa_intermediate(edit=as_v1),
        refuse(INVALID, 1, "version"),
        id="intermediate-x509-v1",
    ),
    pytest.param(
        lambda k: k.constrained(PERMIT_OUR_ORG, critical=True, san_emails=SAN),
        refuse(INVALID, 1, "directory-name-constraints"),
        id="name-constraints-directory-name-critical",
    ),
]


# -- the tables ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kit(pki: TestPKI) -> Kit:
    return Kit(ec=pki, rsa=TestPKI(key_type="rsa2048"), twin=TestPKI(), other=TestPKI(org="Other PKI"))


@pytest.mark.parametrize("build", RFC_ALLOWS_WEBPKI_REFUSES)
def test_rfc5280_allows_webpki_refuses_we_accept(kit: Kit, build: Builder) -> None:
    case = build(kit)
    assert webpki_refuses(case), "the library's default profile accepts this: not a deviation"
    path = case.validate()
    assert path.leaf is case.leaf


@pytest.mark.parametrize("build", ACCEPTED_AS_IS)
def test_accepted_as_is(kit: Kit, build: Builder) -> None:
    case = build(kit)
    path = case.validate()
    assert path.leaf is case.leaf
    assert path.root in case.roots


@pytest.mark.parametrize(("build", "expected"), MUST_REFUSE)
def test_must_refuse(kit: Kit, build: Builder, expected: Refusal) -> None:
    case = build(kit)
    exc = refusal(case)
    assert exc.reason is expected.reason
    assert exc.context["index"] == expected.index
    if expected.rule is not None:
        assert exc.context["rule"] == expected.rule
    if expected.webpki_accepts:
        assert not webpki_refuses(case), "the default profile refuses it too: not our own check"


@pytest.mark.parametrize(("build", "expected"), LIBRARY_LIMITS)
def test_library_limits_refused_as_chain_invalid(kit: Kit, build: Builder, expected: Refusal) -> None:
    case = build(kit)
    assert webpki_refuses(case)
    exc = refusal(case)
    assert exc.reason is expected.reason
    assert exc.context["index"] == expected.index
    assert exc.context["rule"] == expected.rule


def refusal(case: Case, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        case.validate(**kwargs)
    return caught.value


def webpki_refuses(case: Case) -> bool:
    """Whether cryptography's default client verifier (the web-PKI profile) refuses ``case``."""
    verifier = xv.PolicyBuilder().store(xv.Store(list(case.roots))).build_client_verifier()
    try:
        verifier.verify(case.leaf, list(case.presented))
    except xv.VerificationError:
        return True
    return False


def library_message(case: Case) -> str:
    verifier = xv.PolicyBuilder().store(xv.Store(list(case.roots))).build_client_verifier()
    with pytest.raises(xv.VerificationError) as caught:
        verifier.verify(case.leaf, list(case.presented))
    return str(caught.value)


# -- the library's message misleads; our reason does not -------------------------------------------
def test_library_message_blames_the_wrong_candidate(kit: Kit) -> None:
    """Two issuing CAs share a name: the real, expired one and its renewal with a new key.

    The library tries the real one first (its key identifier matches), fails it for its validity,
    then fails the renewal on the signature, and reports only that last failure. A reader of the
    message would call it a bad signature; the certificate that broke the path is the expired CA.
    """
    case, expired_ca = two_issuers_same_name(kit)
    message = library_message(case)
    assert "signature does not match" in message
    assert "not valid" not in message

    exc = refusal(case)
    assert exc.reason is Reason.CERTIFICATE_EXPIRED
    assert exc.context["index"] == 1
    assert exc.context["subject"] == expired_ca.cert.subject.rfc4514_string()


def test_library_message_cannot_tell_expired_from_not_yet_valid(kit: Kit) -> None:
    expired = kit.under_ca({"not_before": _days(-10), "not_after": _days(-1)})
    early = kit.under_ca({"not_before": _days(1), "not_after": _days(10)})
    assert library_message(expired) == library_message(early)
    assert refusal(expired).reason is Reason.CERTIFICATE_EXPIRED
    assert refusal(early).reason is Reason.CERTIFICATE_NOT_YET_VALID


# -- time travel -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def window(kit: Kit) -> Case:
    """A leaf valid from tomorrow for a day, under an issuing CA valid for 30 days."""
    return kit.client(not_before=_days(1), not_after=_days(2))


def test_at_inside_the_window_accepts(window: Case) -> None:
    assert window.validate(at=window.leaf.not_valid_before_utc).leaf is window.leaf
    assert window.validate(at=window.leaf.not_valid_after_utc).leaf is window.leaf


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        pytest.param(-1, Reason.CERTIFICATE_NOT_YET_VALID, id="one-second-early"),
        pytest.param(+1, Reason.CERTIFICATE_EXPIRED, id="one-second-late"),
    ],
)
def test_at_outside_the_window_refuses(window: Case, offset: int, reason: Reason) -> None:
    edge = window.leaf.not_valid_before_utc if offset < 0 else window.leaf.not_valid_after_utc
    exc = refusal(window, at=edge + dt.timedelta(seconds=offset))
    assert exc.reason is reason
    assert exc.context["index"] == 0


def test_at_can_expire_the_intermediate_alone(kit: Kit) -> None:
    case = kit.under_ca({"not_after": _days(30)}, not_after=_days(60))
    assert case.validate(at=_days(20)).leaf is case.leaf
    exc = refusal(case, at=_days(45))
    assert (exc.reason, exc.context["index"]) == (Reason.CERTIFICATE_EXPIRED, 1)


def test_at_naive_is_utc_and_one_validator_serves_many_times(window: Case) -> None:
    validator = window.validator()
    inside = window.leaf.not_valid_before_utc + dt.timedelta(hours=1)
    after = window.leaf.not_valid_after_utc + dt.timedelta(seconds=1)
    for _ in range(2):  # alternating times must not reuse the other time's verifier
        assert validator.validate(window.leaf, window.presented, at=inside.replace(tzinfo=None))
        with pytest.raises(ValidationError) as caught:
            validator.validate(window.leaf, window.presented, at=after)
        assert caught.value.reason is Reason.CERTIFICATE_EXPIRED
    with pytest.raises(ValidationError) as caught:
        validator.validate(window.leaf, window.presented)  # now: before the window
    assert caught.value.reason is Reason.CERTIFICATE_NOT_YET_VALID


# -- the path --------------------------------------------------------------------------------------
def test_path_is_leaf_first_root_last(kit: Kit) -> None:
    case = kit.client()
    path = case.validate()
    assert path.chain == (case.leaf, kit.ec.issuing.cert, kit.ec.root.cert)
    assert path.intermediates == (kit.ec.issuing.cert,)
    assert path.root is kit.ec.root.cert


def test_v1_root_is_returned_as_configured(kit: Kit) -> None:
    case = kit.rsa_root(edit=as_v1)
    assert case.validate().root is case.roots[0]


def test_presented_order_and_extras_do_not_matter(kit: Kit) -> None:
    case = kit.ladder(3)
    junk = (kit.other.issuing.cert, kit.ec.root.cert, case.presented[0])
    path = case.validator().validate(case.leaf, (*junk, *reversed(case.presented)))
    assert path.intermediates == case.presented


def test_configured_intermediates_complete_a_leaf_only_chain(kit: Kit) -> None:
    case = kit.client()
    validator = Validator(ValidationPolicy(roots=case.roots, intermediates=(kit.ec.issuing.cert,)))
    assert validator.validate(case.leaf).intermediates == (kit.ec.issuing.cert,)


def test_pinned_self_signed_leaf_is_a_path_of_one(kit: Kit) -> None:
    leaf = make_certificate(subject=name("pinned"), key=generate_key(), san_emails=SAN)
    path = Validator(ValidationPolicy(roots=(leaf,))).validate(leaf)
    assert path.chain == (leaf,)
    assert path.leaf is path.root


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"roots": ()}, id="no-roots"),
        pytest.param({"roots": (b"-----BEGIN CERTIFICATE-----",)}, id="root-not-a-certificate"),
        pytest.param({"intermediates": "issuing.pem"}, id="intermediates-not-certificates"),
        pytest.param({"eku": "optional"}, id="unknown-eku-mode"),
        pytest.param({"min_rsa_bits": 1024}, id="min-rsa-bits-below-2048"),
        pytest.param({"min_rsa_bits": True}, id="min-rsa-bits-not-a-number"),
        pytest.param({"max_chain_depth": -1}, id="max-chain-depth-negative"),
        pytest.param({"max_chain_depth": 256}, id="max-chain-depth-too-large"),
    ],
)
def test_bad_policy_is_a_configuration_error(kit: Kit, options: dict[str, Any]) -> None:
    options.setdefault("roots", (kit.ec.root.cert,))
    with pytest.raises(ConfigurationError) as caught:
        Validator(ValidationPolicy(**options))
    assert caught.value.reason is Reason.CONFIGURATION_ERROR


# -- hostile input ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_target(kit: Kit) -> tuple[Validator, bytes, bytes]:
    case = kit.client()
    return case.validator(), _der(case.leaf), _der(case.presented[0])


@settings(max_examples=1000, deadline=None)
@given(data=st.data())
def test_mutated_der_raises_only_validation_error(
    fuzz_target: tuple[Validator, bytes, bytes], data: st.DataObject
) -> None:
    validator, leaf_der, issuing_der = fuzz_target
    which = data.draw(st.sampled_from(["leaf", "intermediate"]), label="mutated")
    der = bytearray(leaf_der if which == "leaf" else issuing_der)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, len(der) - 1), label="offset")
        der[at] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        der = der[: data.draw(st.integers(1, len(der)), label="length")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mutated = x509.load_der_x509_certificate(bytes(der))
    except (ValueError, x509.InvalidVersion):
        event("not loadable")
        return  # the parse stage's concern
    event("loadable")
    if which == "leaf":
        leaf, presented = mutated, (x509.load_der_x509_certificate(issuing_der),)
    else:
        leaf, presented = x509.load_der_x509_certificate(leaf_der), (mutated,)
    try:
        validator.validate(leaf, presented)
    except ValidationError as exc:
        event(f"refused: {exc.reason.value}")
    else:
        event("accepted")
