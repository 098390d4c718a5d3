"""certs.py: the parse stage (PEM/DER, size and count limits) and fingerprints."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_middleware import CertificateError, Reason
from mtls_middleware.certs import (
    MAX_CHAIN_LENGTH,
    ParsedChain,
    count_certificates,
    fingerprint,
    parse_chain,
)
from mtls_middleware.testing import Issued, TestPKI


def der(issued: Issued) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in issued.chain]


def pem_blocks(issued: Issued) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.PEM) for c in issued.chain]


@pytest.fixture(scope="module")
def deep(pki: TestPKI) -> list[Issued]:
    """Clients below 9 and below 10 intermediates: 10 and 11 certificates presented."""
    out = []
    ca = pki.issuing
    for level in range(10):
        if level:
            ca = pki.issue_ca(f"certs deep CA {level}", parent=ca)
        out.append(pki.issue_client(f"certs deep {level + 1}", issuer=ca))
    return out  # out[n] presents n + 2 certificates


# -- accepted forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["one-pem-item", "pem-item-each", "der-item-each", "pem-leaf-der-intermediate"],
)
def test_parse_forms(form: str, alice: Issued, pki: TestPKI) -> None:
    items = {
        "one-pem-item": [alice.chain_pem],
        "pem-item-each": pem_blocks(alice),
        "der-item-each": der(alice),
        "pem-leaf-der-intermediate": [pem_blocks(alice)[0], der(alice)[1]],
    }[form]
    chain = parse_chain(items)
    assert isinstance(chain, ParsedChain)
    assert chain.leaf == alice.cert
    assert chain.intermediates == (pki.issuing.cert,)
    assert chain.certificates == (alice.cert, pki.issuing.cert)


def test_pem_with_surrounding_whitespace(alice: Issued) -> None:
    assert parse_chain([b"\n\n  " + alice.cert_pem + b"\n\n"]).leaf == alice.cert


def test_pem_with_explanatory_text_before_the_block(alice: Issued) -> None:
    # RFC 7468 section 2: data before the encapsulation boundary is permitted, and parsers must
    # not malfunction on it. `openssl pkcs12 -nokeys` and `openssl x509 -text` write such files.
    text = (
        b"Bag Attributes\n    localKeyID: 01 02 03 04 05 06 07 08\n"
        b"subject=O = mtls_middleware test, CN = alice\n"
        b"issuer=O = mtls_middleware test, CN = mtls_middleware test Issuing CA\n"
    )
    assert parse_chain([text + alice.cert_pem]).leaf == alice.cert


def test_ten_certificates_is_the_limit_and_allowed(deep: list[Issued]) -> None:
    ten = deep[8]
    assert len(ten.chain) == MAX_CHAIN_LENGTH == 10
    chain = parse_chain([ten.chain_pem])
    assert len(chain.certificates) == 10


# -- refused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "items",
    [
        pytest.param([], id="nothing"),
        pytest.param([b""], id="empty-item"),
        pytest.param([b"hello"], id="text"),
        pytest.param([b"\x30\x82\x01\x00garbage"], id="der-garbage"),
        pytest.param(
            [b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"],
            id="pem-garbage-body",
        ),
        pytest.param([b"-----BEGIN CERTIFICATE-----\nMIIB"], id="pem-truncated"),
        pytest.param(
            [b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"], id="pem-not-a-certificate"
        ),
    ],
)
def test_malformed(items: list[bytes]) -> None:
    with pytest.raises(CertificateError) as info:
        parse_chain(items)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_a_private_key_is_not_a_certificate(alice: Issued) -> None:
    with pytest.raises(CertificateError) as info:
        parse_chain([alice.key_pem])
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_a_good_leaf_then_a_bad_item_is_malformed(alice: Issued) -> None:
    with pytest.raises(CertificateError) as info:
        parse_chain([alice.cert_pem, b"garbage"])
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE
    assert info.value.context == {"index": 1}


@pytest.mark.parametrize("form", ["one-pem-item", "pem-item-each", "der-item-each"])
def test_eleven_certificates_is_chain_too_long(form: str, deep: list[Issued]) -> None:
    eleven = deep[9]
    assert len(eleven.chain) == 11
    items = {
        "one-pem-item": [eleven.chain_pem],
        "pem-item-each": pem_blocks(eleven),
        "der-item-each": der(eleven),
    }[form]
    with pytest.raises(CertificateError) as info:
        parse_chain(items)
    assert info.value.reason is Reason.CHAIN_TOO_LONG


def test_the_count_is_decided_before_anything_is_decoded() -> None:
    # Eleven undecodable blocks: too many is said before malformed would be.
    block = b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateError) as info:
        parse_chain([block * 11])
    assert info.value.reason is Reason.CHAIN_TOO_LONG


def test_a_lower_count_limit(alice: Issued) -> None:
    with pytest.raises(CertificateError) as info:
        parse_chain([alice.chain_pem], max_certificates=1)
    assert info.value.reason is Reason.CHAIN_TOO_LONG
    assert parse_chain([alice.cert_pem], max_certificates=1).leaf == alice.cert


@pytest.mark.parametrize(
    ("size", "limit", "reason"),
    [
        pytest.param(1001, 1000, Reason.CERTIFICATE_TOO_LARGE, id="one-byte-over"),
        pytest.param(2 << 20, 1 << 20, Reason.CERTIFICATE_TOO_LARGE, id="default-1MiB"),
        pytest.param(1000, 1000, Reason.MALFORMED_CERTIFICATE, id="at-the-limit-then-parsed"),
    ],
)
def test_size_limit(size: int, limit: int, reason: Reason) -> None:
    with pytest.raises(CertificateError) as info:
        parse_chain([b"A" * size], max_bytes=limit)
    assert info.value.reason is reason


def test_size_counts_every_item(alice: Issued) -> None:
    items = pem_blocks(alice)
    total = sum(len(i) for i in items)
    with pytest.raises(CertificateError) as info:
        parse_chain(items, max_bytes=total - 1)
    assert info.value.reason is Reason.CERTIFICATE_TOO_LARGE
    assert parse_chain(items, max_bytes=total).leaf == alice.cert


# -- helpers ----------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_der_in_lowercase_hex(alice: Issued) -> None:
    expected = hashlib.sha256(alice.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fingerprint(alice.cert) == expected
    assert fingerprint(alice.cert) == expected.lower()
    assert len(expected) == 64


@pytest.mark.parametrize(
    ("items", "count"),
    [
        pytest.param([], 0, id="none"),
        pytest.param([b"\x30\x82"], 1, id="one-der"),
        pytest.param([b"\x30", b"\x30"], 2, id="two-der"),
        pytest.param([b"-----BEGIN CERTIFICATE-----\n" * 3], 3, id="three-pem-blocks"),
        pytest.param([b"-----BEGIN PRIVATE KEY-----\n"], 0, id="pem-without-certificate"),
    ],
)
def test_count_certificates(items: list[bytes], count: int) -> None:
    assert count_certificates(items) == count
