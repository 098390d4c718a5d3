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
from collections.abc import Mapping
from typing import Any, Final

from .certs import fingerprint, parse_chain
from .config import MTLSConfig
from .errors import AuthorizationError, MTLSError, NoCertificateError, ProxyError, Reason
from .history import ACCEPTED, LoginRecord
from .identity import Identity
from .sources.base import Presented
from .sources.tls import from_asgi_scope, from_wsgi_environ
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
_UNCACHEABLE = frozenset({Reason.CERTIFICATE_NOT_YET_VALID, Reason.INTERNAL_ERROR})


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
        self.history = config.history_sink
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
        self._source_kind = f"proxy:{self._profile.name}" if self._profile else "tls"

    # -- extract ----------------------------------------------------------------------------
    def extract_wsgi(self, environ: dict[str, Any]) -> Presented | None:
        """The presented chain of a WSGI request, behind the trusted-proxy gate.

        Certificate headers from a peer outside ``trusted_proxies`` are removed from ``environ``
        (the app never sees them) and refused. A refusal here is recorded.

        Raises:
            ProxyError: ``untrusted_proxy``.
            CertificateError: oversize or undecodable header values.
        """
        try:
            return self._extract_wsgi(environ)
        except MTLSError as exc:
            self._record_refusal(exc, self._source_kind, environ.get("REMOTE_ADDR"), ())
            raise

    def _extract_wsgi(self, environ: dict[str, Any]) -> Presented | None:
        profile = self._profile
        if profile is not None:
            peer = environ.get("REMOTE_ADDR")
            if self._trusted.contains(peer):
                return profile.extract_wsgi(environ, max_bytes=self._max_bytes)
            if profile.carries_certificate_wsgi(environ):
                for key in profile.environ_keys:
                    environ.pop(key, None)
                raise ProxyError(
                    Reason.UNTRUSTED_PROXY,
                    f"certificate headers from {peer or 'a UNIX socket'}, which is not a "
                    "trusted proxy; headers ignored",
                )
        return from_wsgi_environ(environ)

    def extract_asgi(self, scope: Mapping[str, Any]) -> Presented | None:
        """The presented chain of an ASGI connection, behind the trusted-proxy gate.

        A refusal here is recorded.

        Raises:
            ProxyError: ``untrusted_proxy``.
            CertificateError: duplicated, oversize or undecodable header values.
        """
        try:
            return self._extract_asgi(scope)
        except MTLSError as exc:
            self._record_refusal(exc, self._source_kind, asgi_peer(scope), ())
            raise

    def _extract_asgi(self, scope: Mapping[str, Any]) -> Presented | None:
        profile = self._profile
        if profile is not None:
            peer = asgi_peer(scope)
            headers = scope.get("headers") or ()
            if self._trusted.contains(peer):
                return profile.extract_headers(headers, max_bytes=self._max_bytes)
            names = {h.lower().encode("latin-1") for h in profile.header_names}
            if any(name in names for name, _ in headers):
                raise ProxyError(
                    Reason.UNTRUSTED_PROXY,
                    f"certificate headers from {peer or 'a UNIX socket'}, which is not a "
                    "trusted proxy; headers ignored",
                )
        return from_asgi_scope(scope)

    # -- the whole pipeline -----------------------------------------------------------------
    def authenticate_wsgi(self, environ: dict[str, Any]) -> Identity | None:
        """Extract and authenticate; record the attempt. None in optional mode without a cert.

        Raises:
            MTLSError: the refusal, with its reason (already recorded).
        """
        presented = self.extract_wsgi(environ)
        return self.authenticate(presented, peer=environ.get("REMOTE_ADDR"))

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
        try:
            chain = parse_chain(
                presented.items, max_certificates=self.config.max_chain_length
            )
            leaf = chain.leaf
            fp = fingerprint(leaf)
            subject = leaf.subject.rfc4514_string()
            issuer = leaf.issuer.rfc4514_string()
            serial = format(leaf.serial_number, "x")
            facts = (ACCEPTED, presented.source, fp, subject, issuer, serial)
            path = self.validator.validate(leaf, chain.intermediates, at=at)
            principal = self._mapper.map(leaf, fp, self.store)
            if principal is None:
                raise AuthorizationError(
                    Reason.UNKNOWN_CERTIFICATE, f"certificate {fp} is registered to no user"
                )
            facts = (*facts, principal.user_id, principal.org)
            if not principal.org_cert_auth:
                raise AuthorizationError(
                    Reason.CERTIFICATE_AUTH_DISABLED,
                    f"certificate login is disabled for organisation {principal.org!r}",
                )
            if not principal.active:
                raise AuthorizationError(
                    Reason.USER_INACTIVE, f"user {principal.user_id!r} is deactivated"
                )
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
                revocation="off",
                permissions=principal.permissions,
            )
            # Never outlive any certificate of the validated path.
            expires = min(c.not_valid_after_utc for c in path.chain).timestamp()
        except MTLSError as exc:
            return self._refuse(exc, presented, peer, facts, generation, at)
        except Exception as exc:  # a fault of ours or of a plug-in: fail closed, never a 500 trace
            log.exception("mtls_middleware: internal error while authenticating")
            error = MTLSError(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return self._refuse(error, presented, peer, facts, generation, at)

        facts = (*facts, "", identity.revocation)
        if at is None and self._cache is not None:
            self._remember(presented.key, _Verdict(identity, None, facts, expires, generation))
        if presented.proxy_verified is False:
            return self._proxy_refused(presented, peer, facts)
        self._record(_new_record(LoginRecord, (*facts, time.time(), peer)))
        return identity

    def _refuse(
        self,
        error: MTLSError,
        presented: Presented,
        peer: str | None,
        facts: _Facts,
        generation: int,
        at: dt.datetime | None,
    ) -> Identity:
        full = (error.reason.value, *facts[1:], *(None,) * (8 - len(facts)), error.detail, None)
        if at is None and self._cache is not None and error.reason not in _UNCACHEABLE:
            expires = time.time() + self._negative_ttl
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

    def clear_cache(self) -> None:
        """Forget every cached verdict."""
        if self._cache is not None:
            with self._cache_lock:
                self._cache.clear()


def asgi_peer(scope: Mapping[str, Any]) -> str | None:
    """The immediate peer's address of an ASGI connection, or None (UNIX socket, unknown)."""
    client = scope.get("client")
    if client:
        return str(client[0])
    return None
