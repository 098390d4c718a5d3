"""Parse stage: presented bytes to X.509 certificates, with size and count limits.

The count limit is decided before anything is decoded, so an 11-certificate chain costs a byte
count, not eleven parses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .errors import CertificateError, Reason

__all__ = [
    "MAX_CHAIN_LENGTH",
    "ParsedChain",
    "count_certificates",
    "fingerprint",
    "fingerprint_der",
    "parse_chain",
]

#: The most certificates a client may present (leaf included); DESIGN.md fixes it at 10.
MAX_CHAIN_LENGTH = 10

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True)
class ParsedChain:
    """The presented chain, leaf first, in the order the client sent it.

    ``leaf_der`` is the leaf's DER exactly as presented (its SHA-256 is the fingerprint).
    """

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    leaf_der: bytes = b""

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return (self.leaf, *self.intermediates)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex (the store's key)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def fingerprint_der(der: bytes) -> str:
    """:func:`fingerprint` from DER bytes that cryptography has parsed.

    cryptography accepts only strict DER and re-encodes it to the same bytes, so this equals
    ``fingerprint(load_der_x509_certificate(der))`` without the re-encoding.
    """
    return hashlib.sha256(der).hexdigest()


def _pem_blocks(item: bytes) -> list[bytes]:
    """The DER of each CERTIFICATE block, explanatory text around them ignored (RFC 7468)."""
    blocks: list[bytes] = []
    at = item.find(_PEM_BEGIN)
    while at != -1:
        start = at + len(_PEM_BEGIN)
        end = item.find(_PEM_END, start)
        if end == -1:
            raise ValueError("a CERTIFICATE block without its END line")
        body = item[start:end].translate(None, b" \t\r\n")
        # validate=True: a character outside the base64 alphabet is an error, not skipped.
        blocks.append(base64.b64decode(body, validate=True))
        at = item.find(_PEM_BEGIN, end + len(_PEM_END))
    return blocks


def _is_pem(item: bytes) -> bool:
    # A DER certificate is a SEQUENCE and starts with 0x30; PEM may carry explanatory text before
    # its first block (RFC 7468 section 2; "Bag Attributes" from openssl pkcs12), so anything else
    # is read as PEM.
    return item[:1] != b"\x30"


def count_certificates(items: Sequence[bytes]) -> int:
    """How many certificates the items hold: PEM blocks counted, each DER item is one."""
    return sum(item.count(_PEM_BEGIN) if _is_pem(item) else 1 for item in items)


def parse_chain(
    items: Sequence[bytes], *, max_certificates: int = MAX_CHAIN_LENGTH, max_bytes: int = 1 << 20
) -> ParsedChain:
    """Decode PEM or DER items into a :class:`ParsedChain`.

    Each item is either DER (one certificate) or PEM text holding one or more ``CERTIFICATE``
    blocks; the first certificate overall is the leaf.

    Raises:
        CertificateError: ``certificate_too_large`` when the items exceed ``max_bytes``,
            ``chain_too_long`` when they hold more than ``max_certificates`` certificates,
            ``malformed_certificate`` when anything fails to decode or nothing is there.
    """
    total = sum(len(item) for item in items)
    if total > max_bytes:
        raise CertificateError(
            Reason.CERTIFICATE_TOO_LARGE,
            f"{total} bytes of certificates presented; the limit is {max_bytes}",
            size=total,
        )
    count = count_certificates(items)
    if count > max_certificates:
        raise CertificateError(
            Reason.CHAIN_TOO_LONG,
            f"{count} certificates presented; the limit is {max_certificates}",
            count=count,
        )
    ders: list[bytes] = []
    certificates: list[x509.Certificate] = []
    for index, item in enumerate(items):
        try:
            if _is_pem(item):
                blocks = _pem_blocks(item)
                if not blocks:
                    raise ValueError("PEM text without a CERTIFICATE block")
            else:
                blocks = [item]
            for der in blocks:
                certificates.append(x509.load_der_x509_certificate(der))
                ders.append(der)
        except (ValueError, binascii.Error) as exc:
            raise CertificateError(
                Reason.MALFORMED_CERTIFICATE,
                f"presented item {index} is not a PEM or DER X.509 certificate: {exc}",
                index=index,
            ) from None
    if not certificates:
        raise CertificateError(Reason.MALFORMED_CERTIFICATE, "no certificate in what was presented")
    return ParsedChain(certificates[0], tuple(certificates[1:]), bytes(ders[0]))
