"""Just enough DER to read a certificate's serial, issuer and subject without building objects.

The cold path of a new client certificate pays for every Python object it creates: cryptography's
``Certificate.subject`` builds a ``Name`` of ``RelativeDistinguishedName`` of ``NameAttribute``
objects, and ``rfc4514_string()`` walks them again; ``fingerprint()`` re-encodes the DER first.
Here the original DER is hashed as it came, and a name is formatted straight from its DER, with
cryptography's own rules, for the common shapes (one attribute per RDN; UTF8String,
PrintableString or IA5String values). Anything else returns None and the caller falls back to
cryptography, so the strings are always the ones ``rfc4514_string()`` gives (a test compares them).

Nothing here judges a certificate: cryptography has already parsed the same bytes successfully
before these functions see them, and any surprise raises ``ValueError``.
"""

from __future__ import annotations

import threading

__all__ = ["NameCache", "format_name", "tbs_names"]

# RFC 4514 short names, exactly as cryptography's rfc4514_string() uses them (its _NAMEOID_TO_NAME).
_SHORT_NAMES = {
    bytes.fromhex("550403"): "CN",
    bytes.fromhex("550407"): "L",
    bytes.fromhex("550408"): "ST",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550406"): "C",
    bytes.fromhex("550409"): "STREET",
    bytes.fromhex("0992268993f22c640119"): "DC",
    bytes.fromhex("0992268993f22c640101"): "UID",
}
# UTF8String, PrintableString, IA5String: the value is the text itself. Each is decoded as
# strictly as cryptography parses it, so a name formatted here is one cryptography would parse.
_TEXT_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii"}
_PRINTABLE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
_SPECIAL = frozenset('\\"+,;<>\0#')


def _header(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at ``at``."""
    tag = data[at]
    length = data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    end = at + length
    if end > len(data):
        raise ValueError("DER element overruns its container")
    return tag, at, end


def tbs_names(der: bytes) -> tuple[int, bytes, bytes]:
    """The serial number, and the issuer and subject Names (whole DER elements) of a certificate.

    Raises:
        ValueError: the bytes are not a certificate of the expected shape.
    """
    _, at, _ = _header(der, 0)  # Certificate
    _, at, _ = _header(der, at)  # tbsCertificate
    tag, start, end = _header(der, at)
    if tag == 0xA0:  # [0] version
        tag, start, end = _header(der, end)
    if tag != 0x02:
        raise ValueError("no serial number where one belongs")
    serial = int.from_bytes(der[start:end], "big", signed=True)
    _, _, end = _header(der, end)  # signature AlgorithmIdentifier
    issuer_at = end
    tag, _, end = _header(der, issuer_at)
    if tag != 0x30:
        raise ValueError("no issuer Name where one belongs")
    issuer = der[issuer_at:end]
    _, _, end = _header(der, end)  # validity
    subject_at = end
    tag, _, end = _header(der, subject_at)
    if tag != 0x30:
        raise ValueError("no subject Name where one belongs")
    return serial, issuer, der[subject_at:end]


def _oid_string(body: bytes) -> str:
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or body[-1] & 0x80:
        raise ValueError("truncated OID")
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in (*head, *arcs[1:]))


def _escape(value: str) -> str:
    # cryptography's _escape_dn_value, step for step, skipped when nothing needs escaping.
    if not value:
        return ""
    if not _SPECIAL.intersection(value):
        if value[0] == " " and len(value) > 1:
            value = "\\" + value
        if value[-1] == " ":
            value = value[:-1] + "\\ "
        return value
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("+", "\\+")
    value = value.replace(",", "\\,").replace(";", "\\;").replace("<", "\\<").replace(">", "\\>")
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


def format_name(name: bytes) -> str | None:
    """RFC 4514 string of a DER Name, as cryptography formats it; None for shapes left to it."""
    tag, at, end = _header(name, 0)
    if tag != 0x30:
        raise ValueError("not a Name")
    parts: list[str] = []
    while at < end:
        tag, rdn_start, rdn_end = _header(name, at)
        if tag != 0x31:
            raise ValueError("not an RDN")
        tag, atv_start, atv_end = _header(name, rdn_start)
        if atv_end != rdn_end:
            return None  # a multi-valued RDN: rare, left to cryptography
        tag, oid_start, oid_end = _header(name, atv_start)
        if tag != 0x06:
            raise ValueError("not an attribute type")
        oid = name[oid_start:oid_end]
        value_tag, value_start, value_end = _header(name, oid_end)
        encoding = _TEXT_TAGS.get(value_tag)
        if encoding is None or value_end != atv_end:
            return None
        raw = name[value_start:value_end]
        if value_tag == 0x13 and not _PRINTABLE.issuperset(raw):
            return None  # not a PrintableString: cryptography decides what that is
        label = _SHORT_NAMES.get(oid) or _oid_string(oid)
        parts.append(f"{label}={_escape(raw.decode(encoding))}")
        at = rdn_end
    parts.reverse()  # RFC 4514 2.1: the last RDN first
    return ",".join(parts)


class NameCache:
    """Formatted names by their DER, bounded: issuers repeat on every certificate they sign."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._names: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def get(self, der: bytes) -> str | None:
        text = self._names.get(der)
        if text is None:
            text = format_name(der)
            if text is not None:
                with self._lock:
                    if len(self._names) >= self._size:
                        self._names.clear()  # crude, and only reached under churn of issuers
                    self._names[der] = text
        return text
