"""ProxyProfile: how one proxy carries the client certificate in request headers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ...certs import MAX_CHAIN_LENGTH
from ...errors import CertificateError, ConfigurationError, Reason
from ..base import Presented
from .decoders import has_comma, leaf_der, malformed, sha256_matches

__all__ = ["Decoder", "ProxyProfile", "VerifyReader"]

#: Decodes one header value into certificate encodings (PEM or DER), leaf first.
Decoder = Callable[[str], list[bytes]]
#: Reads the proxy's verification header: True (verified), False (failed), None (no verdict).
VerifyReader = Callable[[str], "bool | None"]

#: The roles a header may play, and the ProxyProfile field naming it (``proxy_headers`` keys).
ROLES = {
    "cert": "cert_header",
    "chain": "chain_header",
    "verify": "verify_header",
    "present": "present_header",
    "hash": "hash_header",
    "error": "error_header",
}

#: A numbered chain (Apache) is read from this many headers: one past the limit, so the parse
#: stage can say chain_too_long.
_NUMBERED = MAX_CHAIN_LENGTH + 1


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


@dataclass(frozen=True, kw_only=True)
class ProxyProfile:
    """How one proxy carries the client certificate in request headers.

    Header roles: ``cert_header`` carries the leaf (or the whole chain, if the proxy does so);
    ``chain_header`` the intermediates where the proxy sends them apart (with ``chain_numbered``
    it is a prefix: ``<prefix>0``, ``<prefix>1``, ... one certificate each); ``verify_header`` the
    proxy's own verdict, read by ``read_verify``; ``present_header`` whether the client presented
    a certificate at all (``true``/``false``); ``hash_header`` a SHA-256 fingerprint of the leaf,
    which must match; ``error_header`` the proxy's words on a failure, for the history.

    ``absent`` lists certificate-header values that mean "no certificate" (``(null)`` from
    Apache, ``""`` from HAProxy's quoting). ``verify_joined`` tells a verify value folded from two
    headers. ``config`` is the proxy configuration producing these headers and ``reference`` the
    documentation it follows, both for the documentation.
    """

    name: str
    cert_header: str
    decode: Decoder
    chain_header: str | None = None
    chain_decode: Decoder | None = None
    chain_numbered: bool = False
    verify_header: str | None = None
    read_verify: VerifyReader | None = None
    verify_joined: Callable[[str], bool] = has_comma
    present_header: str | None = None
    hash_header: str | None = None
    error_header: str | None = None
    absent: frozenset[str] = frozenset()
    config: str = ""
    reference: str = ""
    notes: str = ""
    _source: str = field(init=False, repr=False, compare=False)
    _cert_key: str = field(init=False, repr=False, compare=False)
    _simple: bool = field(init=False, repr=False, compare=False)
    _verify_key: str | None = field(init=False, repr=False, compare=False)
    _roles: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    _env_roles: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    _wanted: dict[bytes, str] = field(init=False, repr=False, compare=False)
    _chain_roles: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        # Precomputed so the per-request path does no string work.
        roles: list[tuple[str, str]] = [("cert", self.cert_header)]
        chain_roles: list[str] = []
        if self.chain_header:
            if self.chain_numbered:
                for index in range(_NUMBERED):
                    roles.append((f"chain{index}", f"{self.chain_header}{index}"))
                    chain_roles.append(f"chain{index}")
            else:
                roles.append(("chain", self.chain_header))
                chain_roles.append("chain")
        for role in ("verify", "present", "hash", "error"):
            header = getattr(self, ROLES[role])
            if header:
                roles.append((role, header))
        put(self, "_roles", tuple(roles))
        put(self, "_chain_roles", tuple(chain_roles))
        put(self, "_env_roles", tuple((role, _environ_key(h)) for role, h in roles))
        put(self, "_wanted", {h.lower().encode("latin-1"): role for role, h in roles})
        put(self, "_source", f"proxy:{self.name}")
        put(self, "_cert_key", _environ_key(self.cert_header))
        put(self, "_simple", not (self.chain_header or self.hash_header or self.present_header))
        put(self, "_verify_key", _environ_key(self.verify_header) if self.verify_header else None)

    @property
    def simple(self) -> bool:
        """True when the verdict depends on the certificate header alone (plus the verify header).

        Only such a profile can be answered by the authenticator's one-frame cache hit, which
        reads just those two headers; every other takes the general path.
        """
        return self._simple

    def with_headers(self, overrides: Mapping[str, str]) -> ProxyProfile:
        """A copy with other header names: keys ``cert``, ``chain``, ``verify``, ``present``,
        ``hash``, ``error`` (for a numbered chain, ``chain`` is the prefix).

        Raises:
            ConfigurationError: an unknown key, or a header this profile does not use.
        """
        changes: dict[str, str] = {}
        for role, header in overrides.items():
            if role not in ROLES:
                known = ", ".join(repr(r) for r in ROLES)
                raise ConfigurationError(
                    detail=f"proxy_headers key {role!r} is unknown; use one of {known}"
                )
            if role != "cert" and getattr(self, ROLES[role]) is None:
                raise ConfigurationError(
                    detail=f"the {self.name!r} profile has no {role} header to rename"
                )
            if not isinstance(header, str) or not header or not all(
                c.isascii() and (c.isalnum() or c in "-_") for c in header
            ):
                raise ConfigurationError(
                    detail=f"proxy_headers[{role!r}] = {header!r} is not a valid header name"
                )
            changes[ROLES[role]] = header
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def header_names(self) -> tuple[str, ...]:
        """Every header this profile reads (all are stripped from untrusted requests)."""
        return tuple(h for _, h in self._roles)

    @property
    def environ_keys(self) -> tuple[str, ...]:
        """The WSGI environ keys of :attr:`header_names`."""
        return tuple(k for _, k in self._env_roles)

    def carries_certificate_wsgi(self, environ: Mapping[str, object]) -> bool:
        """True when any of this profile's headers is present (used on untrusted peers)."""
        return any(key in environ for _, key in self._env_roles)

    def carries_certificate_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """True when any ASGI header pair is one of this profile's (used on untrusted peers)."""
        wanted = self._wanted
        return any(name in wanted for name, _ in headers)

    def extract_wsgi(self, environ: Mapping[str, str], *, max_bytes: int) -> Presented | None:
        """Read the certificate headers from a WSGI environ (a trusted peer's request).

        Nothing is decoded here: :attr:`Presented.items` decodes on first use, which a
        verdict-cache hit never makes.

        Raises:
            CertificateError: oversize header values, a folded duplicate verify header.
        """
        found = {role: environ[key] for role, key in self._env_roles if key in environ}
        return self._presented(found, max_bytes) if found else None

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
            role = wanted.get(raw_name)
            if role is None:
                continue
            if role in found:
                header = raw_name.decode("latin-1")
                raise CertificateError(
                    Reason.MALFORMED_CERTIFICATE,
                    f"header {header} appears more than once; a proxy sends it once",
                    header=header,
                )
            found[role] = raw_value.decode("latin-1")
        return self._presented(found, max_bytes) if found else None

    def _presented(self, found: dict[str, str], max_bytes: int) -> Presented | None:
        verify = found.get("verify", "")
        if verify and self.verify_joined(verify):
            raise malformed(f"{self.verify_header} holds two verdicts: duplicated header")
        read_verify = self.read_verify
        verified = read_verify(verify) if (read_verify is not None and verify) else None
        error = found.get("error", "").strip()
        detail = f"{verify} ({error})" if error else verify
        absent = self.absent
        cert = found.get("cert")
        if cert is not None and (not cert.strip() or cert.strip() in absent):
            cert = None
        present = found.get("present")
        if present is not None:
            if "," in present:
                raise malformed(f"{self.present_header} appears twice: duplicated header")
            if present.strip().lower() == "false":
                if cert:
                    raise malformed(f"{self.present_header} says no certificate, yet one came")
                return None
        if not cert:
            if verified is False:
                # The proxy ran verification and refused: no header, but not "no certificate".
                return Presented(self._source, None, None, None, None, False, detail)
            return None
        if self._simple:
            chain: tuple[str, ...] = ()
            digest = None
            size = len(cert)
        else:
            chain = tuple(
                value
                for value in (found.get(role) for role in self._chain_roles)
                if value is not None and value.strip() and value.strip() not in absent
            )
            digest = found.get("hash")
            size = len(cert) + sum(len(v) for v in chain) + len(digest or "")
        if size > max_bytes:
            raise CertificateError(
                Reason.CERTIFICATE_TOO_LARGE,
                f"certificate headers of {size} bytes; the limit is {max_bytes}",
                size=size,
            )
        # The key is the raw header text: one profile per authenticator, and a TLS-layer key is a
        # tuple that starts with a certificate, so the two cannot collide. It holds every value
        # the decoding depends on (the verify header is read afresh on each request).
        key: object = cert if self._simple else (self._source, cert, chain, digest)
        return Presented(
            self._source, key, None, (cert, chain, digest), self._decode_all, verified, detail
        )

    def _decode_all(self, raw: tuple[str, tuple[str, ...], str | None]) -> tuple[bytes, ...]:
        cert, chain, digest = raw
        items = self._decode(self.decode, cert)
        if chain:
            decode_chain = self.chain_decode or self.decode
            rest: list[bytes] = []
            for value in chain:
                rest.extend(self._decode(decode_chain, value))
            # Some proxies' chain repeats the leaf first; a path needs it once.
            if rest and items and rest[0] == items[-1]:
                rest = rest[1:]
            items += rest
        if digest is not None:
            if "," in digest:
                raise malformed(f"{self.hash_header} appears twice: duplicated header")
            if not items or not sha256_matches(digest, leaf_der(items[0])):
                raise malformed(f"{self.hash_header} does not match the certificate")
        return tuple(items)

    def _decode(self, decode: Decoder, value: str) -> list[bytes]:
        try:
            items = decode(value)
        except CertificateError:
            raise
        except (ValueError, UnicodeError) as exc:
            raise CertificateError(
                Reason.MALFORMED_CERTIFICATE,
                f"{self.name} certificate header could not be decoded: {exc}",
            ) from None
        if not items:
            raise malformed(f"{self.name} certificate header holds no certificate")
        return items
