"""Decoders from one header value to certificate encodings, one per wire format proxies use.

Every decoder takes the header text and returns the certificates it carries (PEM or DER bytes,
leaf first), or raises :class:`~mtls_middleware.errors.CertificateError` with
``malformed_certificate``. Hostile input never raises anything else: malformed base64, percent
escapes, DER lengths or structured-field syntax all end as that one refusal.

WSGI servers join a repeated header with ``,`` or ``, ``; where a format cannot contain a comma
(or a comma followed by a space), a decoder treats one as two headers folded together and refuses.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from urllib.parse import unquote_to_bytes

from ...errors import CertificateError, Reason

__all__ = [
    "apache_verdict",
    "b64_der",
    "boolean_verdict",
    "concatenated_der",
    "envoy_xfcc",
    "haproxy_verdict",
    "has_comma",
    "leaf_der",
    "malformed",
    "openssl_verdict",
    "openssl_verdict_joined",
    "parse_xfcc",
    "pem_with_spaces",
    "quoted_b64_der",
    "quoted_concatenated_der",
    "sf_byte_sequence",
    "sf_byte_sequence_list",
    "sha256_matches",
    "traefik_certs",
    "url_escaped_pem",
]


_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def malformed(detail: str) -> CertificateError:
    """The one refusal a decoder raises."""
    return CertificateError(Reason.MALFORMED_CERTIFICATE, detail)


def _b64(text: str | bytes, what: str) -> bytes:
    # Strict: no characters outside the alphabet, no data after padding. A missing "=" is
    # restored first (RFC 8941 asks parsers to tolerate it).
    try:
        data = text.encode("ascii") if isinstance(text, str) else text
    except UnicodeError:
        raise malformed(f"{what}: non-ASCII text") from None
    if not data:
        raise malformed(f"{what}: empty base64")
    data += b"=" * (-len(data) % 4)
    if not _BASE64.fullmatch(data):
        raise malformed(f"{what}: not base64")
    try:
        return binascii.a2b_base64(data)
    except binascii.Error as exc:
        raise malformed(f"{what}: not base64 ({exc})") from None


def _one_value(value: str, what: str) -> str:
    if "," in value:
        raise malformed(f"{what} holds a comma: duplicated header")
    return value.strip()


# -- PEM ---------------------------------------------------------------------------------------


def _unescape(value: str, what: str) -> bytes:
    try:
        return unquote_to_bytes(value)
    except UnicodeError:  # a lone surrogate: no header can carry one
        raise malformed(f"{what}: not URL-escaped text") from None


def url_escaped_pem(value: str) -> list[bytes]:
    """PEM percent-encoded as a URI component (nginx, Kong, AWS ALB, Envoy values).

    ``+`` stays ``+`` (ALB leaves ``+=/`` unescaped; a ``+`` in base64 is not a space).
    """
    # The PEM alphabet has no comma and the escaping leaves none: one means two headers folded.
    raw = _unescape(_one_value(value, "certificate header"), "certificate header")
    if not raw.lstrip().startswith(b"-----BEGIN"):
        raise malformed("certificate header is not a URL-escaped PEM")
    return [raw]


_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----(?P<body>[A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----"
)


def pem_with_spaces(value: str) -> list[bytes]:
    """One or more PEM certificates whose line breaks may have become spaces (Apache mod_headers).

    Returns DER. Anything outside the PEM blocks but whitespace is refused.
    """
    text = _one_value(value, "certificate header")
    items: list[bytes] = []
    end = 0
    for match in _PEM_BLOCK.finditer(text):
        if text[end : match.start()].strip():
            raise malformed("certificate header holds text outside the PEM blocks")
        items.append(_b64("".join(match.group("body").split()), "PEM body"))
        end = match.end()
    if not items or text[end:].strip():
        raise malformed("certificate header is not a PEM certificate")
    return items


def leaf_der(item: bytes) -> bytes:
    """The DER of a decoded item (PEM or DER bytes): the first certificate only.

    Raises:
        CertificateError: a PEM item without a certificate block.
    """
    if not item.lstrip().startswith(b"-----BEGIN"):
        return item
    match = _PEM_BLOCK.search(item.decode("latin-1"))
    if match is None:
        raise malformed("PEM item holds no certificate block")
    return _b64("".join(match.group("body").split()), "PEM body")


def sha256_matches(reported: str, der: bytes) -> bool:
    """True when ``reported`` (hex, with or without colons, or base64) is the SHA-256 of ``der``."""
    digest = hashlib.sha256(der).digest()
    text = reported.strip().strip('"')
    hexed = text.replace(":", "")
    if len(hexed) == 64:
        try:
            return bytes.fromhex(hexed) == digest
        except ValueError:
            pass
    try:
        return _b64(text, "fingerprint") == digest
    except CertificateError:
        return False


# -- base64 DER --------------------------------------------------------------------------------


def b64_der(value: str) -> list[bytes]:
    """One DER certificate in standard base64 (Caddy, Azure App Service)."""
    return [_b64(_one_value(value, "certificate header"), "certificate header")]


def _unquote(value: str, what: str) -> str:
    # HAProxy's %{+Q} wraps the value in double quotes; a joined duplicate has more than two.
    text = value.strip()
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise malformed(f"{what}: unbalanced quotes")
        text = text[1:-1]
    if '"' in text or "," in text:
        raise malformed(f"{what}: duplicated header")
    return text.strip()


def quoted_b64_der(value: str) -> list[bytes]:
    """One DER certificate in base64, optionally double-quoted (HAProxy ``%{+Q}[ssl_c_der,base64]``)."""
    return [_b64(_unquote(value, "certificate header"), "certificate header")]


def concatenated_der(data: bytes) -> list[bytes]:
    """Split DER certificates written one after another (HAProxy ``ssl_c_chain_der``).

    Raises:
        CertificateError: not a sequence of complete DER SEQUENCEs.
    """
    items: list[bytes] = []
    offset, size = 0, len(data)
    while offset < size:
        if data[offset] != 0x30 or offset + 2 > size:
            raise malformed("chain is not concatenated DER certificates")
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or offset + 2 + count > size:
                raise malformed("chain holds a bad DER length")
            header = 2 + count
            length = int.from_bytes(data[offset + 2 : offset + header], "big")
        end = offset + header + length
        if end > size:
            raise malformed("chain ends inside a certificate")
        items.append(data[offset:end])
        offset = end
    return items


def quoted_concatenated_der(value: str) -> list[bytes]:
    """Concatenated DER certificates in base64, optionally double-quoted (HAProxy chain)."""
    return concatenated_der(_b64(_unquote(value, "chain header"), "chain header"))


def traefik_certs(value: str) -> list[bytes]:
    """Traefik's X-Forwarded-Tls-Client-Cert: base64 DER certificates joined with ``,``.

    Also the older form, the same URL-escaped (Go's ``url.QueryEscape``), and PEM bodies that still
    carry their markers. Traefik joins with a bare comma: ``", "`` is a folded duplicate header.
    """
    if ", " in value:
        raise malformed("certificate header holds ', ': duplicated header")
    try:
        text = _unescape(value.strip(), "certificate header").decode("ascii")
    except UnicodeError:
        raise malformed("certificate header: not base64 certificates") from None
    items: list[bytes] = []
    for part in text.split(","):
        part = part.strip()
        if "-----BEGIN" in part:
            items.extend(pem_with_spaces(part))
        else:
            items.append(_b64("".join(part.split()), "certificate header"))
    return items


# -- RFC 8941 structured fields (RFC 9440) -------------------------------------------------------

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")
_B64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")


class _SF:
    """A small strict RFC 8941 parser: enough for Items and Lists of byte sequences."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise malformed("structured field holds non-ASCII text")
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> CertificateError:
        return malformed(f"structured field: {what} at offset {self.pos}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.pos += 1

    def byte_sequence(self) -> bytes:
        if self.peek() != ":":
            raise self.fail("expected a byte sequence")
        end = self.text.find(":", self.pos + 1)
        if end < 0:
            raise self.fail("unterminated byte sequence")
        body = self.text[self.pos + 1 : end]
        if not _B64_CHARS.fullmatch(body):
            raise self.fail("byte sequence holds a non-base64 character")
        self.pos = end + 1
        return _b64(body, "byte sequence")

    def bare_item(self) -> None:
        # Parameter values: parsed for syntax, then ignored (RFC 9440 defines none).
        char = self.peek()
        if char == ":":
            self.byte_sequence()
        elif char == '"':
            self.pos += 1
            while True:
                char = self.peek()
                if not char or not " " <= char <= "~":
                    raise self.fail("bad string")
                self.pos += 1
                if char == "\\":
                    if self.peek() not in ('"', "\\"):
                        raise self.fail("bad escape")
                    self.pos += 1
                elif char == '"':
                    return
        elif char == "?":
            if self.text[self.pos + 1 : self.pos + 2] not in ("0", "1"):
                raise self.fail("bad boolean")
            self.pos += 2
        else:
            match = (_NUMBER if char == "-" or char.isdigit() else _TOKEN).match(self.text, self.pos)
            if match is None:
                raise self.fail("bad bare item")
            self.pos = match.end()

    def parameters(self) -> None:
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            match = _KEY.match(self.text, self.pos)
            if match is None:
                raise self.fail("bad parameter key")
            self.pos = match.end()
            if self.peek() == "=":
                self.pos += 1
                self.bare_item()

    def item(self) -> bytes:
        value = self.byte_sequence()
        self.parameters()
        return value

    def end(self) -> None:
        self.skip(" ")
        if self.pos != len(self.text):
            raise self.fail("trailing characters (a list where one item belongs, or a duplicate)")


def sf_byte_sequence(value: str) -> list[bytes]:
    """An RFC 9440 ``Client-Cert`` value: one Structured Field Item, a Byte Sequence of DER."""
    parser = _SF(value)
    parser.skip(" ")
    item = parser.item()
    parser.end()
    return [item]


def sf_byte_sequence_list(value: str) -> list[bytes]:
    """An RFC 9440 ``Client-Cert-Chain`` value: a Structured Field List of Byte Sequences."""
    parser = _SF(value)
    parser.skip(" ")
    items: list[bytes] = []
    while True:
        items.append(parser.item())
        parser.skip(" \t")
        if not parser.peek():
            return items
        if parser.peek() != ",":
            raise parser.fail("expected ','")
        parser.pos += 1
        parser.skip(" \t")
        if not parser.peek():
            raise parser.fail("trailing comma")


# -- Envoy's x-forwarded-client-cert --------------------------------------------------------------

_XFCC_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_XFCC_HASH = re.compile(r"[0-9a-f]{64}")
_SINGLE_KEYS = frozenset({"by", "hash", "cert", "chain", "subject", "uri"})


def parse_xfcc(value: str) -> list[dict[str, list[str]]]:
    """Envoy's XFCC grammar: elements split by ``,``, ``key=value`` pairs by ``;``.

    A value may be double-quoted (``\\"`` escapes a quote, ``\\\\`` a backslash) and then hold
    ``,``, ``;`` and ``=``. Keys are case-insensitive; each element maps a lower-case key to its
    values (``DNS`` may repeat; the others may not).

    Raises:
        CertificateError: the value does not follow the grammar.
    """
    elements: list[dict[str, list[str]]] = []
    pairs: dict[str, list[str]] = {}
    text, pos, size = value, 0, len(value)
    while True:
        while pos < size and text[pos] == " ":
            pos += 1
        match = _XFCC_KEY.match(text, pos)
        if match is None or match.end() >= size or text[match.end()] != "=":
            raise malformed(f"x-forwarded-client-cert: expected key= at offset {pos}")
        key = match.group().lower()
        pos = match.end() + 1
        if pos < size and text[pos] == '"':
            chars: list[str] = []
            pos += 1
            while True:
                if pos >= size:
                    raise malformed("x-forwarded-client-cert: unterminated quoted value")
                char = text[pos]
                if char == "\\":
                    if pos + 1 >= size:
                        raise malformed("x-forwarded-client-cert: dangling escape")
                    chars.append(text[pos + 1])
                    pos += 2
                    continue
                pos += 1
                if char == '"':
                    break
                chars.append(char)
            item = "".join(chars)
        else:
            start = pos
            while pos < size and text[pos] not in ";,":
                if text[pos] == '"':
                    raise malformed("x-forwarded-client-cert: quote inside an unquoted value")
                pos += 1
            item = text[start:pos].strip()
        values = pairs.setdefault(key, [])
        if values and key in _SINGLE_KEYS:
            raise malformed(f"x-forwarded-client-cert: {key} appears twice in one element")
        values.append(item)
        while pos < size and text[pos] == " ":
            pos += 1
        if pos >= size:
            elements.append(pairs)
            return elements
        if text[pos] == ",":
            elements.append(pairs)
            pairs = {}
        elif text[pos] != ";":
            raise malformed(f"x-forwarded-client-cert: unexpected {text[pos]!r} at offset {pos}")
        pos += 1


def envoy_xfcc(value: str) -> list[bytes]:
    """The client certificate of the LAST XFCC element: the one the nearest proxy (ours) appended.

    ``Chain`` (the whole chain, leaf first) is used when present, else ``Cert``; both are
    URL-encoded PEM. ``Hash`` (hex SHA-256 of the leaf's DER), when present, must match.
    """
    element = parse_xfcc(value)[-1]
    cert = element.get("cert", [""])[0]
    chain = element.get("chain", [""])[0]
    if not cert and not chain:
        raise malformed(
            "x-forwarded-client-cert carries no Cert or Chain: set "
            "set_current_client_cert_details {cert: true, chain: true} in Envoy"
        )
    items = [_unescape(chain or cert, "x-forwarded-client-cert")]
    if not items[0].lstrip().startswith(b"-----BEGIN"):
        raise malformed("x-forwarded-client-cert: Cert/Chain is not URL-encoded PEM")
    leaf = leaf_der(items[0])
    if cert and chain and leaf_der(_unescape(cert, "x-forwarded-client-cert")) != leaf:
        raise malformed("x-forwarded-client-cert: Cert is not the first certificate of Chain")
    reported = element.get("hash")
    if reported is not None:
        digest = reported[0].strip().lower()
        if not _XFCC_HASH.fullmatch(digest) or bytes.fromhex(digest) != hashlib.sha256(leaf).digest():
            raise malformed("x-forwarded-client-cert: Hash does not match the certificate")
    return items


# -- verification headers ----------------------------------------------------------------------

# OpenSSL's words for "could not find the issuer": with nginx's `optional_no_ca` (or Apache's
# `optional_no_ca`) these are reported as FAILED but are no verdict on the certificate (a client
# that sends only its leaf gets one). The middleware builds and checks the path itself.
_ISSUER_UNKNOWN = frozenset(
    {
        "unable to get local issuer certificate",
        "unable to get issuer certificate",
        "unable to verify the first certificate",
        "self signed certificate",
        "self-signed certificate",
        "self signed certificate in certificate chain",
        "self-signed certificate in certificate chain",
    }
)


def openssl_verdict(value: str) -> bool | None:
    """nginx ``$ssl_client_verify``: SUCCESS, NONE or FAILED:reason.

    The issuer-unknown FAILEDs are no verdict (None); anything else but SUCCESS is a failure.
    """
    if value == "SUCCESS":
        return True
    if value == "NONE":
        return None
    if value.startswith("FAILED:") and value[7:].strip().lower() in _ISSUER_UNKNOWN:
        return None
    return False


def apache_verdict(value: str) -> bool | None:
    """Apache ``SSL_CLIENT_VERIFY``: as nginx's, and ``GENEROUS`` (``optional_no_ca`` let an
    unverified certificate through) is no verdict either."""
    return None if value == "GENEROUS" else openssl_verdict(value)


_VERDICT_WORDS = ("SUCCESS", "NONE", "GENEROUS", "FAILED:")


def openssl_verdict_joined(value: str) -> bool:
    """True when two verdicts were folded into one value (``SUCCESS, FAILED:...``)."""
    _, comma, rest = value.partition(",")
    return bool(comma) and any(
        part.strip().startswith(_VERDICT_WORDS) for part in rest.split(",")
    )


# X509_V_OK, and the X509_V_ERR_* codes that only say "issuer not found" (2, 18, 19, 20, 21).
_HAPROXY_ISSUER_UNKNOWN = frozenset({"2", "18", "19", "20", "21"})


def haproxy_verdict(value: str) -> bool | None:
    """HAProxy ``%[ssl_c_verify]``: the OpenSSL verify code, 0 for success."""
    text = value.strip()
    if text == "0":
        return True
    if text in _HAPROXY_ISSUER_UNKNOWN:
        return None
    return False


def boolean_verdict(value: str) -> bool | None:
    """``true`` / ``false`` (Google Cloud, Cloudflare); anything else is not a success."""
    return value.strip().lower() == "true"


def has_comma(value: str) -> bool:
    """True when a value that never holds a comma holds one: two headers folded together."""
    return "," in value
