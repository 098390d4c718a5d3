"""The Authenticator runs the pipeline stages and keeps the verdict cache.

extract -> parse -> validate -> revocation -> map -> authorize -> attach, and every attempt is
recorded. The WSGI and ASGI middleware are thin adapters around one Authenticator.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography import x509

from .certs import fingerprint_der, parse_chain
from .config import MTLSConfig
from .der import NameCache, format_name, tbs_names
from .errors import (
    AuthorizationError,
    CertificateError,
    MTLSError,
    NoCertificateError,
    ProxyError,
    Reason,
)
from .history import ACCEPTED, HistoryWriter, LoginRecord, MemoryHistory
from .identity import Identity, authorize
from .metrics import MeteredSink
from .revocation.checker import RevocationChecker
from .sources.base import Presented
from .sources.tls import (
    asgi_chain_values,
    from_asgi_scope,
    from_wsgi_environ,
    wsgi_environ_values,
)
from .validation import ValidationPolicy, Validator

__all__ = ["MISS", "Authenticator", "asgi_peer"]

log = logging.getLogger("mtls_middleware")


class _Miss:
    """The verdict cache had nothing for this chain: the caller must run the full pipeline."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()

# A record's fields but time and peer, which change per request (see LoginRecord's field order).
_Facts = tuple[Any, ...]


class _Verdict:
    """A cached outcome for one presented chain."""

    __slots__ = ("error", "expires", "facts", "generation", "identity")

    def __init__(
        self,
        identity: Identity | None,
        error: MTLSError | None,
        facts: _Facts,
        expires: float,
        generation: int,
    ) -> None:
        self.identity = identity
        self.error = error
        self.facts = facts
        self.expires = expires
        self.generation = generation


# LoginRecord is a NamedTuple; tuple.__new__ skips its Python-level __new__ (0.2 us a request).
_new_record = tuple.__new__

# Refusals that may change without the bytes or the store changing are not remembered.
_UNCACHEABLE = frozenset(
    {Reason.CERTIFICATE_NOT_YET_VALID, Reason.INTERNAL_ERROR, Reason.STORE_UNAVAILABLE}
)

# A responder that is down is asked again soon, but not by every request of a burst: each would
# wait for the timeout while the first one already knows the answer.
_UNAVAILABLE_TTL = 5.0


class Authenticator:
    """Authenticates presented client certificates according to one :class:`MTLSConfig`.

    Thread-safe. The steady-state cost of an already-seen chain is a hash, a dictionary lookup,
    two comparisons (expiry, store generation) and one history record.
    """

    def __init__(self, config: MTLSConfig) -> None:
        self.config = config
        self.validator = Validator(
            ValidationPolicy(
                roots=config.roots,
                intermediates=config.intermediate_certificates,
                eku=config.eku,
                allow_dual_purpose_eku=config.allow_dual_purpose_eku,
                min_rsa_bits=config.min_rsa_bits,
                max_chain_depth=config.max_chain_length,
            )
        )
        self.store = config.resolved_store
        self.history = (
            config.history_sink
            if config.metrics is None
            else MeteredSink(config.history_sink, config.metrics)
        )
        policy = config.revocation_policy
        self.revocation: RevocationChecker | None = (
            RevocationChecker(policy) if policy is not None else None
        )
        self._mapper = config.identity_mapper
        self._profile = config.profile
        self._trusted = config.trusted
        self._required = config.mode == "required"
        self._max_bytes = config.max_header_bytes
        self._negative_ttl = config.negative_cache_seconds
        # A plain dict read without a lock: a hit is the hot path, and cachetools' per-call
        # overhead would be 7% of the whole per-request budget. Writes (misses) take the lock and
        # evict the oldest entry, which keeps the size bounded.
        self._cache: dict[object, _Verdict] | None = {} if config.cache_size else None
        self._cache_size = config.cache_size
        self._cache_lock = threading.Lock()
        self._names = NameCache()
        self._source_kind = f"proxy:{self._profile.name}" if self._profile else "tls"
        self.hit_wsgi: Callable[[Mapping[str, Any]], Identity | None] = self._make_hit_wsgi()
        self.hit_asgi: Callable[[Mapping[str, Any]], Identity | None] = self._make_hit_asgi()

    # -- the verdict-cache hit, in one frame ------------------------------------------------
    # The steady state of a busy app is the same few chains again and again. These two functions
    # answer exactly one case, an accepted verdict in the cache that is still good, with all they
    # need bound as closure variables; anything else (a miss, a refusal, a proxy that reports a
    # failure, a duplicated header) returns None and takes the general path, which decides it.
    # They compute the same keys as the sources (tests run every case through both).

    def _make_hit_wsgi(self) -> Callable[[Mapping[str, Any]], Identity | None]:
        cache = self._cache
        if cache is None:
            return _no_hit
        store, clock, emit = self.store, time.time, self._emit
        profile = self._profile
        if profile is None:
            tls_values = wsgi_environ_values

            def hit_tls(environ: Mapping[str, Any]) -> Identity | None:
                leaf = environ.get("SSL_CLIENT_CERT")
                if not leaf:
                    return None
                key = tls_values(environ) if "SSL_CLIENT_CERT_CHAIN_0" in environ else (leaf,)
                verdict = cache.get(key)
                if verdict is None or verdict.identity is None:
                    return None
                now = clock()
                if now >= verdict.expires or verdict.generation != store.generation:
                    return None
                peer = environ.get("REMOTE_ADDR")
                emit(_new_record(LoginRecord, (*verdict.facts, now, peer)))
                return verdict.identity

            return hit_tls
        if not profile.simple:
            return _no_hit  # the verdict rests on more than one header: the general path decides
        contains, cert_key = self._trusted.contains, profile._cert_key
        verify_key, read_verify = profile._verify_key, profile.read_verify

        def hit_proxy(environ: Mapping[str, Any]) -> Identity | None:
            cert = environ.get(cert_key)
            if not cert:
                return None
            verdict = cache.get(cert)
            if verdict is None or verdict.identity is None:
                return None
            peer = environ.get("REMOTE_ADDR")
            if not contains(peer):
                return None
            if verify_key is not None and read_verify is not None:
                verify = environ.get(verify_key)
                if verify and read_verify(verify) is False:
                    return None
            now = clock()
            if now >= verdict.expires or verdict.generation != store.generation:
                return None
            emit(_new_record(LoginRecord, (*verdict.facts, now, peer)))
            return verdict.identity

        return hit_proxy

    def _make_hit_asgi(self) -> Callable[[Mapping[str, Any]], Identity | None]:
        cache = self._cache
        if cache is None:
            return _no_hit
        store, clock, emit = self.store, time.time, self._emit
        profile = self._profile
        if profile is None:
            chain_values = asgi_chain_values

            def hit_tls(scope: Mapping[str, Any]) -> Identity | None:
                key = chain_values(scope)
                if key is None:
                    return None
                verdict = cache.get(key)
                if verdict is None or verdict.identity is None:
                    return None
                now = clock()
                if now >= verdict.expires or verdict.generation != store.generation:
                    return None
                client = scope.get("client")
                peer = str(client[0]) if client else None
                emit(_new_record(LoginRecord, (*verdict.facts, now, peer)))
                return verdict.identity

            return hit_tls
        if not profile.simple:
            return _no_hit
        contains, read_verify = self._trusted.contains, profile.read_verify
        cert_name = profile.cert_header.lower().encode("latin-1")
        verify_name = profile.verify_header.lower().encode("latin-1") if profile.verify_header else None

        def hit_proxy(scope: Mapping[str, Any]) -> Identity | None:
            cert = verify = None
            for name, value in scope.get("headers") or ():
                if name == cert_name:
                    if cert is not None:
                        return None  # duplicated: the general path refuses it
                    cert = value
                elif name == verify_name:
                    if verify is not None:
                        return None
                    verify = value
            if not cert:
                return None
            verdict = cache.get(cert.decode("latin-1"))
            if verdict is None or verdict.identity is None:
                return None
            client = scope.get("client")
            peer = str(client[0]) if client else None
            if not contains(peer):
                return None
            if verify and read_verify is not None and read_verify(verify.decode("latin-1")) is False:
                return None
            now = clock()
            if now >= verdict.expires or verdict.generation != store.generation:
                return None
            emit(_new_record(LoginRecord, (*verdict.facts, now, peer)))
            return verdict.identity

        return hit_proxy

    # -- exempt paths -------------------------------------------------------------------------
    def strip_untrusted_wsgi(self, environ: dict[str, Any]) -> None:
        """Remove certificate headers that did not come from a trusted proxy (for exempt paths,
        which skip authentication: the app must still never see a stranger's certificate header)."""
        profile = self._profile
        if profile is not None and not self._trusted.contains(environ.get("REMOTE_ADDR")):
            for key in profile.environ_keys:
                environ.pop(key, None)

    def strip_untrusted_asgi(self, scope: Mapping[str, Any]) -> Mapping[str, Any]:
        """``scope``, or a copy without certificate headers from an untrusted peer (exempt paths)."""
        profile = self._profile
        if profile is None or self._trusted.contains(asgi_peer(scope)):
            return scope
        headers = scope.get("headers") or ()
        if not profile.carries_certificate_headers(headers):
            return scope
        wanted = profile._wanted
        copy = dict(scope)
        copy["headers"] = [(name, value) for name, value in headers if name.lower() not in wanted]
        return copy

    # -- extract ----------------------------------------------------------------------------
    def extract_wsgi(self, environ: dict[str, Any]) -> Presented | None:
        """The presented chain of a WSGI request, behind the trusted-proxy gate.

        Certificate headers from a peer outside ``trusted_proxies`` are removed from ``environ``
        (the app never sees them) and refused. A refusal here is recorded.

        Raises:
            ProxyError: ``untrusted_proxy``.
            CertificateError: oversize or undecodable header values.
        """
        profile = self._profile
        try:
            if profile is None:
                return from_wsgi_environ(environ)
            peer = environ.get("REMOTE_ADDR")
            if self._trusted.contains(peer):
                return profile.extract_wsgi(environ, max_bytes=self._max_bytes)
            if profile.carries_certificate_wsgi(environ):
                for key in profile.environ_keys:
                    environ.pop(key, None)
                raise _untrusted_proxy(peer)
            return from_wsgi_environ(environ)
        except MTLSError as exc:
            self._record_refusal(exc, self._source_kind, environ.get("REMOTE_ADDR"), ())
            raise

    def extract_asgi(self, scope: Mapping[str, Any]) -> Presented | None:
        """The presented chain of an ASGI connection, behind the trusted-proxy gate.

        A refusal here is recorded.

        Raises:
            ProxyError: ``untrusted_proxy``.
            CertificateError: duplicated, oversize or undecodable header values.
        """
        profile = self._profile
        if profile is None:
            return from_asgi_scope(scope)
        peer = asgi_peer(scope)
        try:
            headers = scope.get("headers") or ()
            if self._trusted.contains(peer):
                return profile.extract_headers(headers, max_bytes=self._max_bytes)
            if profile.carries_certificate_headers(headers):
                raise _untrusted_proxy(peer)
            return from_asgi_scope(scope)
        except MTLSError as exc:
            self._record_refusal(exc, self._source_kind, peer, ())
            raise

    # -- the whole pipeline -----------------------------------------------------------------
    def authenticate_wsgi(self, environ: dict[str, Any]) -> Identity | None:
        """Extract and authenticate; record the attempt. None in optional mode without a cert.

        Raises:
            MTLSError: the refusal, with its reason (already recorded).
        """
        presented = self.extract_wsgi(environ)
        return self.authenticate(presented, peer=environ.get("REMOTE_ADDR"))

    def authenticate_asgi(self, scope: Mapping[str, Any]) -> Identity | None:
        """Every stage (the verdict cache first) for an ASGI connection; the peer is
        ``scope["client"]``. May block: call it off the event loop.

        Raises:
            MTLSError: the refusal, with its reason (already recorded).
        """
        return self.authenticate(self.extract_asgi(scope), peer=asgi_peer(scope))

    def authenticate_cached(self, presented: Presented | None, *, peer: str | None) -> Any:
        """Answer from what needs no I/O: no certificate, proxy refusal, or the verdict cache.

        Returns the Identity (or None in optional mode), or :data:`MISS` when the full pipeline
        must run (off the event loop, for ASGI).

        Raises:
            MTLSError: the refusal (already recorded).
        """
        if presented is None or presented.key is None:
            return self._no_certificate(presented, peer)
        cache = self._cache
        if cache is None:
            return MISS
        verdict = cache.get(presented.key)
        if verdict is None:
            return MISS
        now = time.time()
        if now >= verdict.expires or verdict.generation != self.store.generation:
            return MISS
        identity = verdict.identity
        if identity is None:
            self._record(_new_record(LoginRecord, (*verdict.facts, now, peer)))
            cached = verdict.error
            if cached is None:  # a verdict holds an identity or an error; never neither
                return MISS
            # A fresh exception each time: re-raising the cached one would chain every request's
            # traceback (and its environ) onto it for as long as the entry lives.
            raise type(cached)(cached.reason, cached.detail, **cached.context)
        if presented.proxy_verified is False:
            return self._proxy_refused(presented, peer, verdict.facts)
        self._record(_new_record(LoginRecord, (*verdict.facts, now, peer)))
        return identity

    def authenticate(
        self, presented: Presented | None, *, peer: str | None, at: dt.datetime | None = None
    ) -> Identity | None:
        """Run every stage for ``presented``; record the attempt.

        ``at`` judges the chain at another instant (the verdict cache is bypassed then).
        May block (store, and later revocation I/O): never call it on an event loop thread.

        Raises:
            MTLSError: the refusal, with its reason (already recorded).
        """
        if at is None:
            answer = self.authenticate_cached(presented, peer=peer)
            if answer is not MISS:
                return answer  # type: ignore[no-any-return]
        elif presented is None or presented.key is None:
            return self._no_certificate(presented, peer)
        return self._judge(presented, peer, at)  # type: ignore[arg-type]  # None handled above

    # -- stages -----------------------------------------------------------------------------
    def _judge(self, presented: Presented, peer: str | None, at: dt.datetime | None) -> Identity:
        generation = self.store.generation  # read first: a change during the work invalidates
        facts: _Facts = (ACCEPTED, presented.source)
        expires = 0.0
        revocation: str | None = None  # what the revocation stage found, once it has run
        try:
            chain = parse_chain(
                presented.items, max_certificates=self.config.max_chain_length
            )
            leaf = chain.leaf
            fp, subject, issuer, serial = self._leaf_facts(leaf, chain.leaf_der)
            facts = (ACCEPTED, presented.source, fp, subject, issuer, serial)
            path = self.validator.validate(leaf, chain.intermediates, at=at, subject=subject)
            # Never outlive any certificate of the validated path, nor the revocation data.
            expires = min(c.not_valid_after_utc for c in path.chain).timestamp()
            if self.revocation is not None:
                outcome = self.revocation.check(path.chain, now=at, leaf_subject=subject)
                revocation, checks, described = outcome.summary, outcome.checks, outcome.describe()
                expires = min(expires, outcome.expires)
            else:
                revocation, checks, described = "off", (), ""
            principal = self._mapper.map(leaf, fp, self.store)
            if principal is None:
                raise AuthorizationError(
                    Reason.UNKNOWN_CERTIFICATE, f"certificate {fp} is registered to no user"
                )
            facts = (*facts, principal.user_id, principal.org)
            authorize(principal)
            identity = Identity(
                user_id=principal.user_id,
                org=principal.org,
                fingerprint=fp,
                subject=subject,
                issuer=issuer,
                serial=serial,
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
                certificate=leaf,
                chain=path.chain,
                source=presented.source,
                revocation=revocation,
                revocation_checks=checks,
                permissions=principal.permissions,
            )
        except MTLSError as exc:
            return self._refuse(exc, presented, peer, facts, generation, at, revocation)
        except Exception as exc:  # a fault of ours or of a plug-in: fail closed, never a 500 trace
            log.exception("mtls_middleware: internal error while authenticating")
            error = MTLSError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return self._refuse(error, presented, peer, facts, generation, at, revocation)

        facts = (*facts, described, revocation)
        if at is None and self._cache is not None:
            # Later requests reuse this verdict: their records say so rather than repeating a
            # responder's timing that they did not spend.
            cached = (*facts[:8], f"{described} (verdict cached)" if described else "", revocation)
            self._remember(presented.key, _Verdict(identity, None, cached, expires, generation))
        if presented.proxy_verified is False:
            return self._proxy_refused(presented, peer, facts)
        self._record(_new_record(LoginRecord, (*facts, time.time(), peer)))
        return identity

    def _leaf_facts(self, leaf: x509.Certificate, der: bytes) -> tuple[str, str, str, str]:
        """Fingerprint, subject, issuer and serial (hex) of the leaf, from its DER when possible.

        Reading them through cryptography builds a Name object tree and re-encodes the DER:
        a third of the cold path's own cost. The strings are the same either way.
        """
        try:
            serial, issuer_der, subject_der = tbs_names(der)
            subject = format_name(subject_der)
            issuer = self._names.get(issuer_der)
        except (ValueError, IndexError):
            serial, subject, issuer = leaf.serial_number, None, None
        try:
            if subject is None:
                subject = leaf.subject.rfc4514_string()
            if issuer is None:
                issuer = leaf.issuer.rfc4514_string()
        except ValueError as exc:  # cryptography parses names lazily: a bad one fails only now
            raise CertificateError(
                Reason.MALFORMED_CERTIFICATE, f"the certificate's names cannot be parsed: {exc}"
            ) from None
        return fingerprint_der(der), subject, issuer, format(serial, "x")

    def _refuse(
        self,
        error: MTLSError,
        presented: Presented,
        peer: str | None,
        facts: _Facts,
        generation: int,
        at: dt.datetime | None,
        revocation: str | None = None,
    ) -> Identity:
        # A refusal after the revocation stage (unknown user, inactive ...) keeps what it found.
        full = (
            error.reason.value, *facts[1:], *(None,) * (8 - len(facts)), error.detail,
            _revocation_summary(error) or revocation,
        )
        if at is None and self._cache is not None and error.reason not in _UNCACHEABLE:
            ttl = self._negative_ttl
            if error.reason is Reason.REVOCATION_UNAVAILABLE:
                ttl = min(ttl, _UNAVAILABLE_TTL)
            expires = time.time() + ttl
            self._remember(presented.key, _Verdict(None, error, full, expires, generation))
        self._record(_new_record(LoginRecord, (*full, time.time(), peer)))
        log.info(
            "mtls_middleware refused: reason=%s source=%s peer=%s fingerprint=%s detail=%s",
            error.reason.value, presented.source, peer, facts[2] if len(facts) > 2 else None,
            error.detail,
        )
        raise error

    def _remember(self, key: object, verdict: _Verdict) -> None:
        cache = self._cache
        if cache is not None:
            with self._cache_lock:
                if key not in cache and len(cache) >= self._cache_size:
                    with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                        del cache[next(iter(cache))]
                cache[key] = verdict

    def _no_certificate(self, presented: Presented | None, peer: str | None) -> Identity | None:
        if presented is not None and presented.proxy_verified is False:
            return self._proxy_refused(presented, peer, ("", presented.source))
        if not self._required:
            return None
        error = NoCertificateError(Reason.NO_CERTIFICATE, "no client certificate was presented")
        self._record_refusal(error, self._source_kind, peer, ())
        raise error

    def _proxy_refused(self, presented: Presented, peer: str | None, facts: _Facts) -> Identity:
        error = ProxyError(
            Reason.PROXY_VERIFICATION_FAILED,
            f"the proxy reported failed verification: {presented.proxy_detail[:200]!r}",
        )
        self._record_refusal(error, presented.source, peer, facts[2:8])
        raise error

    def _record_refusal(
        self, error: MTLSError, source: str, peer: str | None, known: tuple[Any, ...]
    ) -> None:
        known = tuple(known[:6]) + (None,) * (6 - len(known[:6]))
        self._record(
            _new_record(
                LoginRecord, (error.reason.value, source, *known, error.detail, None, time.time(), peer)
            )
        )
        log.info(
            "mtls_middleware refused: reason=%s source=%s peer=%s detail=%s",
            error.reason.value, source, peer, error.detail,
        )

    def _record(self, record: LoginRecord) -> None:
        try:
            self.history.record(record)
        except Exception:  # history must never take a request down with it
            log.exception("mtls_middleware: could not record a login attempt")

    @property
    def _emit(self) -> Callable[[LoginRecord], None]:
        """The sink's own ``record`` when it cannot fail (in-memory, or the buffered writer of the
        SQL stores), else ours, which catches."""
        sink_record = self.history.record
        owner = getattr(sink_record, "__self__", None)
        return sink_record if isinstance(owner, (MemoryHistory, deque, HistoryWriter)) else self._record

    def clear_cache(self) -> None:
        """Forget every cached verdict."""
        if self._cache is not None:
            with self._cache_lock:
                self._cache.clear()

    def close(self) -> None:
        """Stop background work (CRL refreshers). The authenticator must not be used after."""
        if self.revocation is not None:
            self.revocation.close()


def _revocation_summary(error: MTLSError) -> str | None:
    """The revocation field of a refusal's record: what the revocation stage found, if it decided.

    Shaped like an accepted summary (``method:status``) so that metrics label both alike.
    """
    reason = error.reason
    if reason is Reason.CERTIFICATE_REVOKED:
        return f"{error.context.get('method') or 'unknown'}:revoked"
    if reason is Reason.REVOCATION_UNAVAILABLE:
        return "failed:unavailable"
    if reason is Reason.NO_REVOCATION_SOURCE:
        return "none:no-source"
    return None


def _untrusted_proxy(peer: str | None) -> ProxyError:
    return ProxyError(
        Reason.UNTRUSTED_PROXY,
        f"certificate headers from {peer or 'a UNIX socket'}, which is not a trusted proxy; "
        "headers ignored",
    )


def _no_hit(_: Mapping[str, Any]) -> Identity | None:
    return None


def asgi_peer(scope: Mapping[str, Any]) -> str | None:
    """The immediate peer's address of an ASGI connection, or None (UNIX socket, unknown)."""
    client = scope.get("client")
    if client:
        return str(client[0])
    return None
