"""Revocation data shared by every worker through Redis: one fetch per URL for the whole cluster.

A worker that fetched and *verified* an OCSP response or a CRL stores its raw DER bytes in Redis
until the data's nextUpdate (bounded by ``revocation_max_age``); the other workers, on every node,
read it from there instead of asking the responder or the CRL server again. While one worker
fetches, a lock with an expiry (``SET NX PX``) tells the others to wait briefly for its result
rather than fetch the same thing.

**Redis is not trusted to vouch for anything.** It only saves a round trip: every worker parses
and verifies what it reads from Redis exactly as if it had fetched it (signature, issuer, CertID,
thisUpdate/nextUpdate, max_age). Data that does not verify is refused, deleted, counted in
``rejected``, and fetched from its source instead. Whoever can write to Redis can therefore make
workers fetch more often, never accept a forged or stale status.

Redis down, slow or unreachable: every operation has a socket timeout and never runs past the
request's revocation deadline; a failure is counted in ``errors`` and the workers behave as if
there were no shared cache (each fetches for itself) for ``retry_after`` seconds, then try Redis
again (redis-py reconnects). Whether a request is refused then depends only on the revocation
policy and on the OCSP responders and CRL servers themselves, never on Redis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import redis

__all__ = ["Claim", "SharedCache", "SharedKind", "check_url", "require_redis"]

log = logging.getLogger("mtls_middleware")

#: What is shared: OCSP responses (keyed by CertID) and CRLs (keyed by URL).
SharedKind = Literal["ocsp", "crl"]

_SCHEMES = ("redis", "rediss", "unix")
#: Deletes a key only while it holds the given value: a lock only while it is still ours (never
#: another worker's, taken after ours expired), refused data only if nobody replaced it meanwhile.
_DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
#: How often a waiter looks whether the lock holder has stored its result.
_POLL = 0.02


@dataclass
class Claim:
    """What :meth:`SharedCache.claim` found: ``data`` from Redis (to be verified before use), or
    the right to fetch (``token``: this caller holds the cluster-wide lock; None: it fetches
    without it, Redis being unavailable or the holder too slow)."""

    data: bytes | None = None
    token: str | None = None


class SharedCache:
    """Raw, already verified revocation data in Redis, and a cluster-wide lock per key.

    Thread-safe and fork-safe (redis-py's pool reconnects in a child). Never raises on a Redis
    failure: reads answer "nothing there", writes are skipped, both counted in ``errors``.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/redis.sock``.
        prefix: prepended to every key (several deployments can share one Redis).
        timeout: seconds allowed to connect to Redis and for each reply.
        retry_after: after a failure, seconds during which Redis is not asked at all.
        lock_ttl: the longest a fetch lock is held (its expiry, if the holder dies).
        wait: the longest a worker waits for another worker's fetch before fetching itself.
        client: a ready ``redis.Redis`` (tests, custom pools); ``url`` is then only a label.

    Raises:
        ConfigurationError: a URL that is not a Redis URL, redis-py missing, bad numbers.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mtls_middleware:revocation:",
        timeout: float = 0.5,
        retry_after: float = 1.0,
        lock_ttl: float = 10.0,
        wait: float = 3.0,
        client: redis.Redis | None = None,
    ) -> None:
        check_url(url)
        for name, value in (("timeout", timeout), ("lock_ttl", lock_ttl), ("wait", wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(detail=f"revocation cache {name}={value!r}: use seconds above 0")
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or retry_after < 0:
            raise ConfigurationError(detail=f"revocation cache retry_after={retry_after!r}: use 0 or more")
        self.url = url
        self.prefix = prefix
        self.timeout = float(timeout)
        self.retry_after = float(retry_after)
        self.lock_ttl = float(lock_ttl)
        self.wait = float(wait)
        self._client = client if client is not None else _connect(url, self.timeout)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._down_until = 0.0
        self._failing = False
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"SharedCache({_redacted(self.url)!r}, prefix={self.prefix!r})"

    # -- what callers use -------------------------------------------------------------------------
    def claim(self, kind: SharedKind, key: str, *, deadline: float) -> Claim:
        """The data stored under ``key``, else the lock to fetch it, else (after waiting for the
        holder at most ``wait`` seconds and never past ``deadline``) permission to fetch anyway.

        Counts ``hits``, ``misses``, ``waits`` (the key was being fetched elsewhere) and
        ``errors``.
        """
        name = self._key(kind, key)
        data = self._get(name, deadline)
        if data is not None:
            self._count("hits")
            return Claim(data=data)
        if not self.available(deadline):
            self._count("misses")
            return Claim()
        token = secrets.token_hex(16)
        give_up = min(deadline, time.monotonic() + self.wait)
        waited = False
        while True:
            got = self._call(
                # set(nx=True) answers None when the key exists: made False, None is a failure.
                lambda: bool(self._client.set(name + ":lock", token, nx=True, px=int(self.lock_ttl * 1000))),
                deadline,
            )
            if got:
                # The holder may have stored its result and let go between our first look and now.
                data = self._get(name, deadline)
                if data is not None:
                    self.release(kind, key, token)
                    self._count("hits")
                    return Claim(data=data)
                self._count("misses")
                return Claim(token=token)
            if got is None:  # Redis failed: fetch without the lock
                self._count("misses")
                return Claim()
            if not waited:
                waited = True
                self._count("waits")
            # Another worker holds the lock: its result, once stored, is what we want.
            if time.monotonic() + _POLL >= give_up:
                self._count("misses")
                return Claim()
            time.sleep(_POLL)
            data = self._get(name, deadline)
            if data is not None:
                self._count("hits")
                return Claim(data=data)

    def try_lock(self, kind: SharedKind, key: str) -> tuple[bool, str | None]:
        """One attempt at the fetch lock of ``key``: (whether Redis answered, the token if taken)."""
        token = secrets.token_hex(16)
        name = self._key(kind, key) + ":lock"
        got = self._call(
            lambda: bool(self._client.set(name, token, nx=True, px=int(self.lock_ttl * 1000))),
            time.monotonic() + 1,
        )
        return got is not None, token if got else None

    def publish(self, kind: SharedKind, key: str, data: bytes, *, ttl: float, token: str | None) -> None:
        """Store verified ``data`` for ``ttl`` seconds (skipped when not positive), then release
        the lock held with ``token``. Call it only with data this process has verified."""
        name = self._key(kind, key)
        milliseconds = int(ttl * 1000)
        if milliseconds > 0:
            stored = self._call(lambda: self._client.set(name, data, px=milliseconds), time.monotonic() + 1)
            if stored:
                self._count("published")
        self.release(kind, key, token)

    def release(self, kind: SharedKind, key: str, token: str | None) -> None:
        """Release the fetch lock held with ``token`` (nothing when None or no longer ours)."""
        if token is None:
            return
        name = self._key(kind, key) + ":lock"
        self._call(lambda: self._client.eval(_DELETE_IF, 1, name, token), time.monotonic() + 1)

    def reject(self, kind: SharedKind, key: str, data: bytes) -> None:
        """``data`` read from Redis did not verify: count it, and delete it if it is still there."""
        self._count("rejected")
        name = self._key(kind, key)
        self._call(lambda: self._client.eval(_DELETE_IF, 1, name, data), time.monotonic() + 1)

    def available(self, deadline: float | None = None) -> bool:
        """Whether Redis may be asked now (not within ``retry_after`` of a failure, and time left
        before ``deadline`` for one round trip)."""
        moment = time.monotonic()
        if moment < self._down_until:
            return False
        return deadline is None or deadline - moment > min(self.timeout, 0.05)

    def stats(self) -> dict[str, int]:
        """Counts so far: ``hits``, ``misses``, ``waits``, ``published``, ``rejected``, ``errors``."""
        with self._lock:
            return {
                name: self._counts[name]
                for name in ("hits", "misses", "waits", "published", "rejected", "errors")
            }

    def close(self) -> None:
        """Close the connections to Redis (a later call reconnects)."""
        with contextlib.suppress(Exception):  # closing a broken connection must not fail a shutdown
            self._client.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _key(self, kind: SharedKind, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def _get(self, name: str, deadline: float) -> bytes | None:
        value = self._call(lambda: self._client.get(name), deadline)
        return value if isinstance(value, bytes) else None

    def _call(self, fn: Any, deadline: float) -> Any:
        """``fn()`` against Redis, or None when Redis is marked down, time is short, or it fails."""
        if not self.available(deadline):
            return None
        try:
            result = fn()
        except Exception as exc:  # redis.RedisError, OSError ...: the cache is an optimisation
            with self._lock:
                self._counts["errors"] += 1
                self._down_until = time.monotonic() + self.retry_after
                first = not self._failing
                self._failing = True
            self.last_error = f"{type(exc).__name__}: {exc}"
            if first:
                log.warning(
                    "mtls_middleware: the revocation cache %s is unavailable (%s); each worker fetches "
                    "for itself until it answers again",
                    _redacted(self.url),
                    self.last_error,
                )
            return None
        if self._failing:
            with self._lock:
                back, self._failing = self._failing, False
            if back:
                log.warning("mtls_middleware: the revocation cache %s is back", _redacted(self.url))
        return result

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def check_url(url: object) -> str:
    """``url`` when it is a Redis URL this module can use.

    Raises:
        ConfigurationError: not a string, another scheme, or no host (socket path for unix).
    """
    if not isinstance(url, str):
        raise ConfigurationError(detail=f"revocation_cache={url!r} must be a redis:// URL (a string)")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigurationError(detail=f"revocation_cache={_redacted(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            detail=f"revocation_cache={_redacted(url)!r}: use redis://host:port/db, rediss:// (TLS) "
            "or unix:///path/to/redis.sock"
        )
    if scheme == "unix" and not parts.path:
        raise ConfigurationError(detail=f"revocation_cache={_redacted(url)!r}: name the socket path")
    if scheme != "unix" and not parts.hostname:
        raise ConfigurationError(detail=f"revocation_cache={_redacted(url)!r}: name the Redis host")
    return url


def require_redis() -> None:
    """Raise ConfigurationError, saying what to install, when redis-py is missing."""
    if importlib.util.find_spec("redis") is None:
        raise ConfigurationError(
            detail="revocation_cache needs redis-py: pip install 'mtls_middleware[redis]'"
        )


def _connect(url: str, timeout: float) -> redis.Redis:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigurationError(
            detail="revocation_cache needs redis-py: pip install 'mtls_middleware[redis]'"
        ) from None
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # No retries inside redis-py: a failure must cost one timeout at most, then the
            # worker fetches for itself; we try Redis again after retry_after.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(detail=f"revocation_cache={_redacted(url)!r}: {exc}") from None


def _redacted(url: str) -> str:
    """``url`` without its password (URLs end up in logs and error messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
