"""MTLSConfig: the one, frozen, keyword-only configuration object, validated when it is built."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from cryptography import x509

from .certs import MAX_CHAIN_LENGTH
from .errors import ConfigurationError
from .history import HistorySink
from .identity import FingerprintMapper, IdentityMapper
from .metrics import MetricsHook
from .revocation.checker import RevocationPolicy
from .revocation.shared import check_url as shared_check_url
from .revocation.shared import require_redis
from .sources.proxies import ProxyProfile, get_profile
from .sources.trust import TrustedProxies
from .stores import Store, open_store

__all__ = ["CertificatesInput", "MTLSConfig"]

#: A PEM file path, PEM bytes, or certificates.
CertificatesInput = Union[str, "os.PathLike[str]", bytes, Sequence[x509.Certificate]]

Mode = Literal["required", "optional"]
RevocationMode = Literal["require", "soft-fail", "off"]
EkuPolicy = Literal["required", "if-present"]
RevocationScope = Literal["chain", "leaf"]


def _load_certificates(value: CertificatesInput, what: str) -> tuple[x509.Certificate, ...]:
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                detail=f"{what}: cannot read {str(path)!r} ({exc.strerror}); give a PEM file path"
            ) from None
        return _load_certificates(data, f"{what} ({path})")
    if isinstance(value, bytes):
        try:
            return tuple(x509.load_pem_x509_certificates(value))
        except ValueError:
            raise ConfigurationError(
                detail=f"{what}: no PEM certificate could be read; give PEM 'CERTIFICATE' blocks"
            ) from None
    certificates = tuple(value)
    for cert in certificates:
        if not isinstance(cert, x509.Certificate):
            raise ConfigurationError(
                detail=f"{what}: expected cryptography x509.Certificate objects, got {cert!r}"
            )
    return certificates


def _choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ConfigurationError(detail=f"{name}={value!r} is not one of {options}")


@dataclass(frozen=True, kw_only=True)
class MTLSConfig:
    """How requests are authenticated. Built once at start-up; every field is checked then.

    Args:
        trust_roots: the trust anchors: a PEM file path, PEM bytes, or certificates.
        store: a :class:`~mtls_middleware.stores.Store`, or a store URL (``"memory://"``).
        proxy: a header profile name (``"nginx"``, ``"apache"``, ``"envoy"``, ``"haproxy"``,
            ``"traefik"``, ``"caddy"``, ``"aws-alb"``, ``"aws-alb-passthrough"``, ``"cloudflare"``,
            ``"gcp"``, ``"azure"``, ``"kong"``, ``"rfc9440"``; see docs/proxies.md) or a
            :class:`ProxyProfile` to read the certificate from a reverse proxy's headers; None
            reads the server's TLS layer only.
        trusted_proxies: addresses / CIDR networks (IPv4, IPv6, or ``"unix"``) whose certificate
            headers are believed. Required, and only allowed, with ``proxy``.
        proxy_headers: other header names for the profile: keys ``cert``, ``chain`` (for a
            numbered chain, the prefix), ``verify``, ``present``, ``hash``, ``error``.
        mode: ``"required"`` refuses requests without a certificate; ``"optional"`` lets them
            through without an identity (a presented certificate must still be good).
        revocation: ``"require"`` (fail closed: a certificate whose status cannot be established
            is refused), ``"soft-fail"`` (refuse only what is known revoked; record the rest) or
            ``"off"``. OCSP is asked first; the CRL when OCSP fails, answers unknown or is not
            offered.
        revocation_scope: ``"chain"``: every certificate of the path but the trust anchor;
            ``"leaf"``: the client certificate only.
        crls: CRLs to consult besides the certificates' own distribution points: file paths
            (PEM or DER, re-read when they change) and ``http(s)://`` URLs.
        ocsp: ask OCSP responders at all (False: CRLs only).
        ocsp_responder: one responder URL used for every certificate instead of their AIA.
        ocsp_responder_certificates: pinned responder certificates, trusted to sign responses
            for any issuer.
        ocsp_nonce: send a nonce (and require it echoed); responses are then never shared.
        revocation_timeout: seconds allowed to connect to, and for each read from, a responder
            or CRL server.
        revocation_deadline: the most seconds of revocation I/O one request may wait for.
        revocation_clock_skew: seconds of clock difference tolerated on thisUpdate/nextUpdate.
        revocation_max_age: refuse OCSP responses and CRLs older than this many seconds
            (None: their nextUpdate alone decides).
        max_crl_bytes: the largest CRL fetched.
        revocation_cache: a Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS,
            ``unix:///path/redis.sock``) where every worker shares the OCSP responses and CRLs it
            fetched and verified, until their nextUpdate, with one fetch per URL in flight for
            the whole cluster (``pip install 'mtls_middleware[redis]'``). Every worker verifies
            again what it reads from Redis; Redis down means each worker fetches for itself.
            None (default): each process caches for itself.
        metrics: a :class:`~mtls_middleware.metrics.MetricsHook` counting attempts per outcome.
        intermediates: intermediate CA certificates known to the deployment, for proxies that
            forward only the leaf (nginx).
        eku: ``"required"``: the leaf must carry the Client Authentication EKU;
            ``"if-present"``: only checked when the leaf has an EKU extension.
        allow_dual_purpose_eku: accept leaves with both client- and server-auth EKUs.
        min_rsa_bits: the smallest RSA key accepted (2048 or more).
        max_chain_length: the most certificates a client may present (1 to 10).
        max_header_bytes: the largest certificate header(s) accepted from a proxy.
        exempt_paths: paths served without authentication; ``"/health"`` exempts that path
            and everything below it.
        identity_mapper: how a certificate finds its user (default: exact fingerprint).
        history: where login records go (default: the store).
        cache_size: entries of the verdict cache (0 disables it).
        negative_cache_seconds: how long a refusal is remembered for the same bytes.

    Raises:
        ConfigurationError: any field that cannot work safely, with what to fix.
    """

    trust_roots: CertificatesInput
    store: Store | str
    proxy: str | ProxyProfile | None = None
    trusted_proxies: Sequence[str] = ()
    proxy_headers: Mapping[str, str] = field(default_factory=dict)
    mode: Mode = "required"
    revocation: RevocationMode = "require"
    revocation_scope: RevocationScope = "chain"
    crls: Sequence[str | os.PathLike[str]] = ()
    ocsp: bool = True
    ocsp_responder: str | None = None
    ocsp_responder_certificates: CertificatesInput = ()
    ocsp_nonce: bool = False
    revocation_timeout: float = 3.0
    revocation_deadline: float = 10.0
    revocation_clock_skew: float = 300.0
    revocation_max_age: float | None = None
    max_crl_bytes: int = 128 * 1024 * 1024
    revocation_cache: str | None = None
    intermediates: CertificatesInput = ()
    eku: EkuPolicy = "required"
    allow_dual_purpose_eku: bool = False
    min_rsa_bits: int = 2048
    max_chain_length: int = MAX_CHAIN_LENGTH
    max_header_bytes: int = 64 * 1024
    exempt_paths: Sequence[str] = ()
    identity_mapper: IdentityMapper = field(default_factory=FingerprintMapper)
    history: HistorySink | None = None
    cache_size: int = 10_000
    negative_cache_seconds: float = 60.0
    metrics: MetricsHook | None = None

    # Normalised forms, derived once here so the request path reads them directly.
    roots: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    intermediate_certificates: tuple[x509.Certificate, ...] = field(init=False, repr=False)
    profile: ProxyProfile | None = field(init=False, repr=False)
    trusted: TrustedProxies = field(init=False, repr=False)
    resolved_store: Store = field(init=False, repr=False)
    history_sink: HistorySink = field(init=False, repr=False)
    revocation_policy: RevocationPolicy | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        roots = _load_certificates(self.trust_roots, "trust_roots")
        if not roots:
            raise ConfigurationError(detail="trust_roots is empty: name at least one trusted root")
        put("roots", roots)
        put("intermediate_certificates", _load_certificates(self.intermediates, "intermediates"))

        store = open_store(self.store) if isinstance(self.store, str) else self.store
        if not isinstance(store, Store):
            raise ConfigurationError(
                detail=f"store={self.store!r} is not a Store; give a store or a store URL"
            )
        put("resolved_store", store)

        if self.history is not None and not isinstance(self.history, HistorySink):
            raise ConfigurationError(detail="history must have a record(LoginRecord) method")
        put("history_sink", self.history if self.history is not None else store)

        if not isinstance(self.identity_mapper, IdentityMapper):
            raise ConfigurationError(
                detail="identity_mapper must have a map(leaf, fingerprint, store) method"
            )

        if self.trusted_proxies is None:
            raise ConfigurationError(detail="trusted_proxies must be a list (empty for none), not None")
        if isinstance(self.trusted_proxies, str):
            raise ConfigurationError(
                detail="trusted_proxies must be a list of addresses, not one string: "
                f"write [{self.trusted_proxies!r}]"
            )
        trusted = TrustedProxies(self.trusted_proxies)
        put("trusted", trusted)
        profile: ProxyProfile | None
        if self.proxy is None:
            profile = None
            if trusted:
                raise ConfigurationError(
                    detail="trusted_proxies is set but proxy is None: name the proxy's header "
                    "profile (e.g. proxy='nginx') or drop trusted_proxies"
                )
            if self.proxy_headers:
                raise ConfigurationError(detail="proxy_headers is set but proxy is None")
        else:
            profile = get_profile(self.proxy) if isinstance(self.proxy, str) else self.proxy
            if not isinstance(profile, ProxyProfile):
                raise ConfigurationError(detail=f"proxy={self.proxy!r} is not a profile name")
            if not trusted:
                raise ConfigurationError(
                    detail=f"proxy={profile.name!r} reads certificates from request headers, "
                    "but trusted_proxies is empty: list the proxy's addresses (e.g. "
                    "trusted_proxies=['127.0.0.1']), or anyone could forge the header"
                )
            if self.proxy_headers:
                profile = profile.with_headers(self.proxy_headers)
        put("profile", profile)

        _choice("mode", self.mode, ("required", "optional"))
        _choice("revocation", self.revocation, ("require", "soft-fail", "off"))
        put("revocation_policy", self._revocation_policy(roots))
        if self.metrics is not None and not isinstance(self.metrics, MetricsHook):
            raise ConfigurationError(detail="metrics must have an attempt(outcome, revocation) method")
        _choice("eku", self.eku, ("required", "if-present"))
        if not isinstance(self.min_rsa_bits, int) or self.min_rsa_bits < 2048:
            raise ConfigurationError(
                detail=f"min_rsa_bits={self.min_rsa_bits!r}: RSA keys under 2048 bits are weak; "
                "use 2048 or more"
            )
        if not isinstance(self.max_chain_length, int) or not 1 <= self.max_chain_length <= 10:
            raise ConfigurationError(
                detail=f"max_chain_length={self.max_chain_length!r}: use 1 to 10"
            )
        if not isinstance(self.max_header_bytes, int) or not 1024 <= self.max_header_bytes <= 1 << 20:
            raise ConfigurationError(
                detail=f"max_header_bytes={self.max_header_bytes!r}: use 1024 to 1048576"
            )
        if isinstance(self.exempt_paths, str):
            raise ConfigurationError(
                detail=f"exempt_paths must be a list of paths: write [{self.exempt_paths!r}]"
            )
        for path in self.exempt_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(
                    detail=f"exempt_paths entry {path!r} must be a path starting with '/'"
                )
        if not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ConfigurationError(detail=f"cache_size={self.cache_size!r}: use 0 or more")
        if (
            not isinstance(self.negative_cache_seconds, (int, float))
            or isinstance(self.negative_cache_seconds, bool)
            or self.negative_cache_seconds < 0
        ):
            raise ConfigurationError(detail="negative_cache_seconds must be 0 or more")

    def _revocation_policy(self, roots: tuple[x509.Certificate, ...]) -> RevocationPolicy | None:
        _choice("revocation_scope", self.revocation_scope, ("chain", "leaf"))
        if isinstance(self.crls, (str, bytes, os.PathLike)):
            raise ConfigurationError(detail=f"crls must be a list: write [{self.crls!r}]")
        files: list[str] = []
        urls: list[str] = []
        for entry in self.crls:
            text = os.fspath(entry)
            if not isinstance(text, str):
                raise ConfigurationError(detail=f"crls entry {entry!r} must be a path or a URL")
            if text.lower().startswith(("http://", "https://")):
                urls.append(text)
            elif "://" in text:
                raise ConfigurationError(
                    detail=f"crls entry {text!r}: only file paths and http(s):// URLs are supported"
                )
            else:
                if not os.access(text, os.R_OK):
                    raise ConfigurationError(detail=f"crls entry {text!r}: cannot read this file")
                files.append(text)
        if self.ocsp_responder is not None and not str(self.ocsp_responder).lower().startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError(
                detail=f"ocsp_responder={self.ocsp_responder!r} must be an http:// or https:// URL"
            )
        for name in ("revocation_timeout", "revocation_deadline", "revocation_clock_skew"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(detail=f"{name}={value!r} must be a number of seconds >= 0")
        if self.revocation_timeout <= 0 or self.revocation_deadline <= 0:
            raise ConfigurationError(detail="revocation_timeout and revocation_deadline must be above 0")
        if self.revocation_max_age is not None and (
            isinstance(self.revocation_max_age, bool)
            or not isinstance(self.revocation_max_age, (int, float))
            or self.revocation_max_age <= 0
        ):
            raise ConfigurationError(detail="revocation_max_age must be None or seconds above 0")
        if not isinstance(self.max_crl_bytes, int) or self.max_crl_bytes < 1024:
            raise ConfigurationError(detail=f"max_crl_bytes={self.max_crl_bytes!r}: use 1024 or more")
        pinned = _load_certificates(self.ocsp_responder_certificates, "ocsp_responder_certificates")
        if self.revocation_cache is not None:
            shared_check_url(self.revocation_cache)
            if self.revocation != "off":
                require_redis()
        if self.revocation == "off":
            return None
        return RevocationPolicy(
            mode=self.revocation,
            scope=self.revocation_scope,
            crl_files=tuple(files),
            crl_urls=tuple(urls),
            ocsp=bool(self.ocsp),
            ocsp_responder=self.ocsp_responder,
            ocsp_responder_certificates=pinned,
            ocsp_nonce=bool(self.ocsp_nonce),
            timeout=float(self.revocation_timeout),
            deadline=float(self.revocation_deadline),
            clock_skew=float(self.revocation_clock_skew),
            max_age=None if self.revocation_max_age is None else float(self.revocation_max_age),
            max_crl_bytes=self.max_crl_bytes,
            crl_signers=(*self.intermediate_certificates, *roots),
            shared_cache=self.revocation_cache,
        )

    def is_exempt(self, path: str) -> bool:
        """True when ``path`` is an exempt path or lies below one.

        A path with ``.`` or ``..`` segments is never exempt: ``/health/../admin`` must not pass
        for ``/health`` in an app that normalises paths itself.
        """
        if "/." in path and any(seg in (".", "..") for seg in path.split("/")):
            return False
        for prefix in self.exempt_paths:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return True
        return False
