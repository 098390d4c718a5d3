"""Header profiles: how each reverse proxy forwards the client certificate.

A profile is one small declarative unit: the header names, a decoder from one header value to
certificate encodings, and how the proxy reports its own verification. Adding a proxy means adding
one :class:`ProxyProfile` to :data:`PROFILES`. Profiles never decide whether to believe a header:
the trusted-proxy gate (:mod:`.trust`) does, before a profile is consulted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote_to_bytes

from ..errors import CertificateError, ConfigurationError, Reason
from .base import Presented

__all__ = ["PROFILES", "ProxyProfile", "get_profile"]

#: Decodes one header value into certificate encodings (PEM or DER), leaf first.
Decoder = Callable[[str], list[bytes]]
#: Reads the proxy's verification header: True (verified), False (failed), None (no certificate).
VerifyReader = Callable[[str], "bool | None"]


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


@dataclass(frozen=True, kw_only=True)
class ProxyProfile:
    """How one proxy carries the client certificate in request headers.

    ``cert_header`` carries the leaf (or the whole chain, if the proxy does so); ``chain_header``
    the intermediates, where the proxy sends them apart; ``verify_header`` the proxy's own verdict.
    ``config`` is the proxy configuration that produces these headers, for the documentation.
    """

    name: str
    cert_header: str
    decode: Decoder
    chain_header: str | None = None
    verify_header: str | None = None
    read_verify: VerifyReader | None = None
    config: str = ""
    _source: str = field(init=False, repr=False, compare=False)
    _cert_key: str = field(init=False, repr=False, compare=False)
    _chain_key: str | None = field(init=False, repr=False, compare=False)
    _verify_key: str | None = field(init=False, repr=False, compare=False)
    _wanted: dict[bytes, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Precomputed so the per-request path does no string work.
        object.__setattr__(self, "_source", f"proxy:{self.name}")
        object.__setattr__(
            self, "_wanted", {h.lower().encode("latin-1"): h for h in self.header_names}
        )
        object.__setattr__(self, "_cert_key", _environ_key(self.cert_header))
        object.__setattr__(
            self, "_chain_key", _environ_key(self.chain_header) if self.chain_header else None
        )
        object.__setattr__(
            self, "_verify_key", _environ_key(self.verify_header) if self.verify_header else None
        )

    def with_headers(self, overrides: Mapping[str, str]) -> ProxyProfile:
        """A copy with other header names: keys ``cert``, ``chain``, ``verify``.

        Raises:
            ConfigurationError: an unknown key, or a header this profile does not use.
        """
        fields = {"cert": "cert_header", "chain": "chain_header", "verify": "verify_header"}
        changes: dict[str, str] = {}
        for role, header in overrides.items():
            if role not in fields:
                raise ConfigurationError(
                    detail=f"proxy_headers key {role!r} is unknown; use 'cert', 'chain' or 'verify'"
                )
            if role != "cert" and getattr(self, fields[role]) is None:
                raise ConfigurationError(
                    detail=f"the {self.name!r} profile has no {role} header to rename"
                )
            if not header or not all(c.isalnum() or c in "-_" for c in header):
                raise ConfigurationError(
                    detail=f"proxy_headers[{role!r}] = {header!r} is not a valid header name"
                )
            changes[fields[role]] = header
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def header_names(self) -> tuple[str, ...]:
        """Every header this profile reads (all are stripped from untrusted requests)."""
        return tuple(h for h in (self.cert_header, self.chain_header, self.verify_header) if h)

    @property
    def environ_keys(self) -> tuple[str, ...]:
        """The WSGI environ keys of :attr:`header_names`."""
        return tuple(k for k in (self._cert_key, self._chain_key, self._verify_key) if k)

    def carries_certificate_wsgi(self, environ: Mapping[str, object]) -> bool:
        """True when any of this profile's headers is present (used on untrusted peers)."""
        return any(key in environ for key in self.environ_keys)

    def carries_certificate_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """True when any ASGI header pair is one of this profile's (used on untrusted peers)."""
        wanted = self._wanted
        return any(name in wanted for name, _ in headers)

    def extract_wsgi(self, environ: Mapping[str, str], *, max_bytes: int) -> Presented | None:
        """Read the certificate headers from a WSGI environ (a trusted peer's request).

        Nothing is decoded here: :attr:`Presented.items` decodes on first use, which a
        verdict-cache hit never makes.

        Raises:
            CertificateError: oversize header values.
        """
        cert = environ.get(self._cert_key)
        verify_key = self._verify_key
        verify = environ.get(verify_key, "") if verify_key else ""
        chain_key = self._chain_key
        chain = environ.get(chain_key) if chain_key else None
        return self._presented(cert, chain, verify, max_bytes)

    def extract_headers(
        self, headers: Iterable[tuple[bytes, bytes]], *, max_bytes: int
    ) -> Presented | None:
        """Read the certificate headers from ASGI ``(name, value)`` pairs (lower-case names).

        Raises:
            CertificateError: a duplicated header, oversize values.
        """
        wanted = self._wanted
        found: dict[str, str] = {}
        for raw_name, raw_value in headers:
            header = wanted.get(raw_name)
            if header is None:
                continue
            if header in found:
                raise CertificateError(
                    Reason.MALFORMED_CERTIFICATE,
                    f"header {header} appears more than once; a proxy sends it once",
                    header=header,
                )
            found[header] = raw_value.decode("latin-1")
        if not found:
            return None
        verify = found.get(self.verify_header, "") if self.verify_header else ""
        chain = found.get(self.chain_header) if self.chain_header else None
        return self._presented(found.get(self.cert_header), chain, verify, max_bytes)

    def _presented(
        self, cert: str | None, chain: str | None, verify: str, max_bytes: int
    ) -> Presented | None:
        read_verify = self.read_verify
        verified = read_verify(verify) if (read_verify is not None and verify) else None
        if not cert:
            if verified is False:
                # The proxy ran verification and refused: no header, but not "no certificate".
                return Presented(self._source, None, None, None, None, False, verify)
            return None
        size = len(cert) + (len(chain) if chain else 0)
        if size > max_bytes:
            raise CertificateError(
                Reason.CERTIFICATE_TOO_LARGE,
                f"certificate headers of {size} bytes; the limit is {max_bytes}",
                size=size,
            )
        # The key is the raw header text: one profile per authenticator, and a TLS-layer key is a
        # tuple that starts with a certificate, so the two cannot collide.
        return Presented(
            self._source,
            cert if chain is None else (self._source, cert, chain),
            None,
            (cert, chain),
            self._decode_pair,
            verified,
            verify,
        )

    def _decode_pair(self, raw: tuple[str, str | None]) -> tuple[bytes, ...]:
        cert, chain = raw
        items = self._decode(cert)
        if chain:
            items += self._decode(chain)
        return tuple(items)

    def _decode(self, value: str) -> list[bytes]:
        try:
            return self.decode(value)
        except CertificateError:
            raise
        except (ValueError, UnicodeError) as exc:
            raise CertificateError(
                Reason.MALFORMED_CERTIFICATE,
                f"{self.name} certificate header could not be decoded: {exc}",
            ) from None


def _decode_url_escaped_pem(value: str) -> list[bytes]:
    # nginx's $ssl_client_escaped_cert is the PEM, percent-encoded as a URI component: a literal
    # comma cannot occur, so one means two headers were folded together.
    if "," in value:
        raise CertificateError(
            Reason.MALFORMED_CERTIFICATE,
            "certificate header holds a comma: duplicated header or not URL-escaped PEM",
        )
    raw = unquote_to_bytes(value.strip())
    if not raw.lstrip().startswith(b"-----BEGIN"):
        raise CertificateError(
            Reason.MALFORMED_CERTIFICATE, "certificate header is not a URL-escaped PEM"
        )
    return [raw]


# With `ssl_verify_client optional_no_ca` nginx lets these through and reports them as FAILED:
# they all mean "nginx could not find the issuer", which is not a verdict on the certificate (a
# client that sends only its leaf gets one). The middleware builds and checks the path itself.
_NGINX_ISSUER_UNKNOWN = frozenset(
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


def _read_nginx_verify(value: str) -> bool | None:
    # $ssl_client_verify: "SUCCESS", "FAILED:<reason>" or "NONE"; anything else is not a success.
    if value == "SUCCESS":
        return True
    if value == "NONE":
        return None
    if value.startswith("FAILED:") and value[7:].strip().lower() in _NGINX_ISSUER_UNKNOWN:
        return None
    return False


NGINX = ProxyProfile(
    name="nginx",
    cert_header="X-SSL-Client-Cert",
    verify_header="X-SSL-Client-Verify",
    decode=_decode_url_escaped_pem,
    read_verify=_read_nginx_verify,
    config=(
        "proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;\n"
        "proxy_set_header X-SSL-Client-Verify $ssl_client_verify;"
    ),
)

#: Every built-in profile, by the name ``MTLSConfig.proxy`` accepts.
PROFILES: Mapping[str, ProxyProfile] = MappingProxyType({p.name: p for p in (NGINX,)})


def get_profile(name: str) -> ProxyProfile:
    """The built-in profile called ``name``.

    Raises:
        ConfigurationError: no such profile (the message lists the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigurationError(
            detail=f"proxy={name!r} is not a known header profile; use one of: {known}, "
            "or None to read the certificate from the TLS layer"
        ) from None
