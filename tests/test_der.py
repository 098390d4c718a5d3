"""der.py: the strings read straight from DER are exactly cryptography's."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtls_middleware.certs import fingerprint, fingerprint_der, parse_chain
from mtls_middleware.der import NameCache, format_name, tbs_names
from mtls_middleware.errors import Reason
from mtls_middleware.testing import TestPKI, generate_key, make_certificate

_ASN1 = x509.name._ASN1Type  # the string types a name attribute may be encoded with

OIDS = [
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.STREET_ADDRESS,
    NameOID.DOMAIN_COMPONENT,
    NameOID.USER_ID,
    NameOID.EMAIL_ADDRESS,
    NameOID.SERIAL_NUMBER,
    x509.ObjectIdentifier("1.3.6.1.4.1.311.60.2.1.1"),
    x509.ObjectIdentifier("2.999.1234567.8"),
]
# Text that exercises every escaping rule of RFC 4514 (leading '#' or space, trailing space, the
# specials, NUL) besides ordinary letters.
TEXT = st.text(
    alphabet=st.sampled_from(list('ab Zé#"+,;<>\\=\0 ')) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=12,
)
PRINTABLE = st.text(alphabet=st.sampled_from(list("aZ09 '()+,-./:=?")), min_size=1, max_size=12)


@st.composite
def names(draw: st.DrawFn) -> x509.Name:
    rdns = []
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.sampled_from([1, 1, 1, 2]))  # mostly single-valued, as in practice
        attributes = []
        for _ in range(count):
            oid = draw(st.sampled_from(OIDS))
            kind = draw(st.sampled_from(["utf8", "printable", "ia5"]))
            if kind == "printable":
                value, asn1 = draw(PRINTABLE), _ASN1.PrintableString
            elif kind == "ia5":
                value, asn1 = draw(PRINTABLE), _ASN1.IA5String
            else:
                value, asn1 = draw(TEXT), _ASN1.UTF8String
            attribute = x509.NameAttribute(oid, value, asn1, _validate=False)
            if attribute not in attributes:  # an RDN is a set: no duplicates
                attributes.append(attribute)
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


@pytest.fixture(scope="module")
def module_pki() -> TestPKI:
    return TestPKI()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=names(), serial=st.integers(1, 2**159 - 1))
def test_strings_from_der_equal_cryptographys(module_pki: TestPKI, subject: x509.Name, serial: int) -> None:
    cert = make_certificate(
        subject=subject,
        key=generate_key("ec", reuse=1),
        issuer=module_pki.issuing.cert,
        issuer_key=module_pki.issuing.key,
        serial=serial,
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    parsed = x509.load_der_x509_certificate(der)
    got_serial, issuer_der, subject_der = tbs_names(der)
    assert got_serial == parsed.serial_number
    formatted = format_name(subject_der)
    # None means "left to cryptography" (multi-valued RDNs); anything else must be identical.
    if formatted is not None:
        assert formatted == parsed.subject.rfc4514_string()
    else:
        assert any(len(rdn) > 1 for rdn in parsed.subject.rdns)
    assert format_name(issuer_der) == parsed.issuer.rfc4514_string()
    assert fingerprint_der(der) == fingerprint(parsed)


def test_other_string_types_are_left_to_cryptography(module_pki: TestPKI) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wide", _ASN1.BMPString)])
    cert = make_certificate(
        subject=subject, key=generate_key("ec", reuse=1), issuer=module_pki.issuing.cert,
        issuer_key=module_pki.issuing.key,
    )
    _, _, subject_der = tbs_names(cert.public_bytes(serialization.Encoding.DER))
    assert format_name(subject_der) is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30", id="truncated-header"),
        pytest.param(b"\x30\x84\xff\xff\xff\xff", id="length-overruns"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="no-issuer"),
    ],
)
def test_malformed_der_raises_value_error(data: bytes) -> None:
    with pytest.raises((ValueError, IndexError)):
        tbs_names(data)


def test_name_cache_formats_once_and_stays_bounded(module_pki: TestPKI) -> None:
    cache = NameCache(size=2)
    ders = []
    for index in range(3):
        cert = module_pki.issue_client(f"user{index}").cert
        ders.append(tbs_names(cert.public_bytes(serialization.Encoding.DER))[2])
    first = cache.get(ders[0])
    assert first == "CN=user0,O=mtls_middleware test"
    assert cache.get(ders[0]) is first  # served from the cache, not formatted again
    for der in ders:
        cache.get(der)
    assert len(cache._names) <= 2


@pytest.mark.parametrize(
    ("transform", "ok"),
    [
        pytest.param(lambda pem: b"Bag Attributes\n    friendlyName: alice\n" + pem, True, id="explanatory-text"),
        pytest.param(lambda pem: pem.replace(b"\n", b"\r\n"), True, id="crlf"),
        pytest.param(lambda pem: pem[:40] + b"!" + pem[41:], False, id="bad-base64-char"),
        pytest.param(lambda pem: pem.split(b"-----END")[0], False, id="no-end-line"),
    ],
)
def test_pem_blocks_are_read_strictly_but_allow_text(module_pki: TestPKI, transform, ok: bool) -> None:
    from mtls_middleware.errors import CertificateError, Reason

    issued = module_pki.issue_client("pem")
    data = transform(issued.cert_pem)
    if ok:
        chain = parse_chain([data])
        assert chain.leaf_der == issued.cert_der
    else:
        with pytest.raises(CertificateError) as info:
            parse_chain([data])
        assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def _patched_leaf(pki: TestPKI, marker: str, replacement: bytes, asn1: object) -> bytes:
    """A leaf whose subject CN bytes were replaced after signing (parsing comes before checks)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, marker, asn1, _validate=False)])
    cert = make_certificate(
        subject=subject, key=generate_key("ec", reuse=1), issuer=pki.issuing.cert,
        issuer_key=pki.issuing.key, san_emails=("x@example.org",),
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(marker.encode()) == 1
    return der.replace(marker.encode(), replacement)


@pytest.mark.parametrize(
    ("marker", "replacement", "asn1"),
    [
        pytest.param("ZZZZ", b"\xff\xfe\xfd\xfc", _ASN1.UTF8String, id="utf8-string-not-utf8"),
        pytest.param("ZZZZ", b"a@b*", _ASN1.PrintableString, id="printable-string-bad-characters"),
    ],
)
def test_unparseable_subject_is_malformed_never_a_500(module_pki: TestPKI, marker: str, replacement: bytes, asn1: object) -> None:
    import base64

    from werkzeug.test import Client

    from mtls_middleware import MemoryStore, MTLSConfig
    from mtls_middleware.wsgi import MTLSMiddleware

    der = _patched_leaf(module_pki, marker, replacement, asn1)
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() + "-----END CERTIFICATE-----\n"
    config = MTLSConfig(
        trust_roots=[module_pki.root.cert], intermediates=[module_pki.issuing.cert],
        store=MemoryStore(), revocation="off",
    )
    app = MTLSMiddleware(lambda environ, start_response: [], config)
    response = Client(app).get("/", environ_base={"SSL_CLIENT_CERT": pem, "REMOTE_ADDR": "192.0.2.1"})
    assert response.status_code == 400
    assert response.get_json()["error"] == Reason.MALFORMED_CERTIFICATE.value
