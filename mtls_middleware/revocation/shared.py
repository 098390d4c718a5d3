"""Revocation data shared by every worker through Redis: one fetch per URL for the whole cluster.

A worker that fetched and *verified* an OCSP response or a CRL stores its raw DER bytes in Redis
until the data's nextUpdate (bounded by ``revocation_max_age``); the other workers, on every node,
read it from there instead of asking the responder or the CRL server again. While one worker
fetches, a lock with an expiry (``SET NX PX``) tells the others to wait briefly for its result
rather than fetch the same thing.

**Redis is not trusted to vouch for anything.** It only saves a round trip: every worker parses
and verifies what it reads from Redis exactly as if it had fetched it (signature, issuer, CertID,
thisUpdate/nextUpdate, max_age). Data that does not verify, for whatever reason, is refused,
deleted, counted in ``rejected``, and fetched from its source instead. Whoever can write to Redis
can therefore make workers fetch more often, never accept a forged status nor one past its
nextUpdate or ``revocation_max_age``.

What such a writer *can* do is replay an older genuine copy that is still within that validity
though a newer one exists, e.g. the OCSP "good" of a certificate revoked since. A worker refuses
it when it has already accepted a newer answer for the same certificate (OCSP: the newest
thisUpdate is remembered per CertID; CRLs: a held copy is never replaced by an older one); a
worker that has seen none accepts it, as it would from a lagging responder or mirror. The window
is bounded by the copy's nextUpdate and ``max_age`` and is inherent to OCSP without a nonce and
to CRLs; ``ocsp_nonce=True`` (never shared) closes it for OCSP.

Data read from Redis is capped like fetched data (``max_bytes``): a larger value is refused,
deleted and counted in ``rejected`` without being read in full.

Redis down, slow or unreachable: an operation starts only while more than ``timeout`` is left
before the request's revocation deadline, and has a socket timeout of ``timeout``; a reply slower
than half of it counts as a failure. A failure is counted in ``errors`` and the workers behave as
if there were no shared cache (each fetches for itself) for ``retry_after`` seconds, then try
Redis again (redis-py reconnects). Storing a result and releasing a lock too close to the deadline
are left to a background thread. Whether a request is refused then depends only on the
revocation policy and on the OCSP responders and CRL servers themselves, never on Redis.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import queue
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
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
#: Deletes a value only while it is longer than ARGV[1] bytes (an oversize value, not read in full).
_DELETE_IF_LONGER = (
    "if redis.call('strlen', KEYS[1]) > tonumber(ARGV[1]) then return redis.call('del', KEYS[1]) end return 0"
)
#: Writes left to the background thread (deadline too close), at most this many queued.
_BACKLOG = 256
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

    Thread-safe and fork-safe (redis-py's pool reconnects in a child; the background writer is
    started again). Never raises on a Redis failure: reads answer "nothing there", writes are
    skipped, both counted in ``errors``.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/redis.sock``.
        prefix: prepended to every key (several deployments can share one Redis).
        timeout: seconds allowed to connect to Redis and for each reply; a reply slower than half
            of it counts as a failure, and no call starts with this little time left.
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
        self._backlog: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=_BACKLOG)
        self._writer: threading.Thread | None = None
        self._writer_pid = 0

    def __repr__(self) -> str:
        return f"SharedCache({_redacted(self.url)!r}, prefix={self.prefix!r})"

    # -- what callers use -------------------------------------------------------------------------
    def claim(
        self, kind: SharedKind, key: str, *, deadline: float, max_bytes: int, lock_ttl: float | None = None
    ) -> Claim:
        """The data stored under ``key``, else the lock to fetch it, else (after waiting for the
        holder at most ``wait`` seconds and never past ``deadline``) permission to fetch anyway.

        Data longer than ``max_bytes`` is refused (deleted, counted in ``rejected``). The lock, if
        taken, expires after ``lock_ttl`` seconds (default: the ``lock_ttl`` of the cache). A Redis
        call starts only while more than ``timeout`` is left before ``deadline``. Counts ``hits``,
        ``misses``, ``waits`` (the key was being fetched elsewhere) and ``errors``.
        """
        name = self._key(kind, key)
        give_up = min(deadline, time.monotonic() + self.wait)
        data = self._get(name, deadline, max_bytes)
        if data is not None:
            self._count("hits")
            return Claim(data=data)
        if not self.available(deadline):
            self._count("misses")
            return Claim()
        token = secrets.token_hex(16)
        milliseconds = int((self.lock_ttl if lock_ttl is None else lock_ttl) * 1000)
        waited = False
        while True:
            got = self._call(
                # set(nx=True) answers None when the key exists: made False, None is a failure.
                lambda: bool(self._client.set(name + ":lock", token, nx=True, px=milliseconds)),
                deadline,
            )
            if got:
                # The holder may have stored its result and let go between our first look and now.
                data = self._get(name, deadline, max_bytes)
                if data is not None:
                    self.release(kind, key, token, deadline=deadline)
                    self._count("hits")
                    return Claim(data=data)
                self._count("misses")
                return Claim(token=token)
            if got is None:  # Redis failed (or is slow, or time is short): fetch without the lock
                self._count("misses")
                return Claim()
            if not waited:
                waited = True
                self._count("waits")
            # Another worker holds the lock: its result, once stored, is what we want. The give-up
            # time is looked at after every Redis call, however long each one took.
            if time.monotonic() + _POLL >= give_up:
                self._count("misses")
                return Claim()
            time.sleep(_POLL)
            data = self._get(name, deadline, max_bytes)
            if data is not None:
                self._count("hits")
                return Claim(data=data)
            if time.monotonic() >= give_up:
                self._count("misses")
                return Claim()

    def try_lock(
        self, kind: SharedKind, key: str, *, deadline: float | None = None, lock_ttl: float | None = None
    ) -> tuple[bool, str | None]:
        """One attempt at the fetch lock of ``key``: (whether Redis answered, the token if taken).

        The lock expires after ``lock_ttl`` seconds (default: the cache's ``lock_ttl``).
        """
        token = secrets.token_hex(16)
        name = self._key(kind, key) + ":lock"
        milliseconds = int((self.lock_ttl if lock_ttl is None else lock_ttl) * 1000)
        got = self._call(lambda: bool(self._client.set(name, token, nx=True, px=milliseconds)), deadline)
        return got is not None, token if got else None

    def publish(
        self,
        kind: SharedKind,
        key: str,
        data: bytes,
        *,
        ttl: float,
        token: str | None,
        deadline: float | None = None,
    ) -> None:
        """Store verified ``data`` for ``ttl`` seconds (skipped when not positive), then release
        the lock held with ``token``. Call it only with data this process has verified.

        With ``timeout`` or less left before ``deadline``, both are left to a background thread.
        """
        name = self._key(kind, key)
        milliseconds = int(ttl * 1000)

        def store() -> None:
            if milliseconds > 0:
                stored = self._call(lambda: self._client.set(name, data, px=milliseconds))
                if stored:
                    self._count("published")
            if token is not None:
                self._call(lambda: self._client.eval(_DELETE_IF, 1, name + ":lock", token))

        self._write(store, deadline)

    def release(
        self, kind: SharedKind, key: str, token: str | None, *, deadline: float | None = None
    ) -> None:
        """Release the fetch lock held with ``token`` (nothing when None or no longer ours); in the
        background with ``timeout`` or less left before ``deadline``."""
        if token is None:
            return
        name = self._key(kind, key) + ":lock"
        self._write(lambda: self._call(lambda: self._client.eval(_DELETE_IF, 1, name, token)), deadline)

    def reject(self, kind: SharedKind, key: str, data: bytes, *, deadline: float | None = None) -> None:
        """``data`` read from Redis did not verify: count it, and delete it if it is still there (in
        the background with ``timeout`` or less left before ``deadline``)."""
        self._count("rejected")
        name = self._key(kind, key)
        self._write(lambda: self._call(lambda: self._client.eval(_DELETE_IF, 1, name, data)), deadline)

    def available(self, deadline: float | None = None) -> bool:
        """Whether Redis may be asked now: not within ``retry_after`` of a failure, and more than
        one ``timeout`` (the longest a reply may take) left before ``deadline``."""
        moment = time.monotonic()
        if moment < self._down_until:
            return False
        return deadline is None or deadline - moment > self.timeout

    def stats(self) -> dict[str, int]:
        """Counts so far: ``hits``, ``misses``, ``waits``, ``published``, ``rejected``, ``errors``."""
        with self._lock:
            return {
                name: self._counts[name]
                for name in ("hits", "misses", "waits", "published", "rejected", "errors")
            }

    def close(self) -> None:
        """Finish the queued background writes (briefly), close the connections to Redis (a later
        call reconnects)."""
        with self._lock:
            writer, backlog = self._writer, self._backlog
            self._writer = None
        if writer is not None and writer.is_alive() and self._writer_pid == os.getpid():
            with contextlib.suppress(queue.Full):
                backlog.put_nowait(None)
            writer.join(2 * self.timeout)
        with contextlib.suppress(Exception):  # closing a broken connection must not fail a shutdown
            self._client.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _key(self, kind: SharedKind, key: str) -> str:
        return f"{self.prefix}{kind}:{key}"

    def _get(self, name: str, deadline: float, max_bytes: int) -> bytes | None:
        # One byte more than allowed tells an oversize value apart without reading all of it.
        value = self._call(lambda: self._client.getrange(name, 0, max_bytes), deadline)
        if not isinstance(value, bytes) or not value:  # (a missing key reads as empty)
            return None
        if len(value) > max_bytes:
            self._count("rejected")
            self._write(
                lambda: self._call(lambda: self._client.eval(_DELETE_IF_LONGER, 1, name, max_bytes)), deadline
            )
            return None
        return value

    def _write(self, operation: Callable[[], object], deadline: float | None) -> None:
        """Run ``operation`` now, or in the background thread when ``deadline`` is too close."""
        if deadline is None or deadline - time.monotonic() > self.timeout:
            operation()
            return
        if time.monotonic() < self._down_until:
            return
        with self._lock:
            if self._writer is None or self._writer_pid != os.getpid() or not self._writer.is_alive():
                # (Re)started lazily: a forked child has the queue but not the thread.
                self._backlog = queue.Queue(maxsize=_BACKLOG)
                self._writer = threading.Thread(
                    target=self._drain, args=(self._backlog,), name="mtls-revocation-cache", daemon=True
                )
                self._writer_pid = os.getpid()
                self._writer.start()
            backlog = self._backlog
        # A full backlog means Redis is far behind: the lock then expires by itself.
        with contextlib.suppress(queue.Full):
            backlog.put_nowait(operation)

    def _drain(self, backlog: queue.Queue[Callable[[], object] | None]) -> None:
        while True:
            operation = backlog.get()
            if operation is None:
                return
            operation()

    def _call(self, fn: Any, deadline: float | None = None) -> Any:
        """``fn()`` against Redis, or None when Redis is marked down, time is short, or it fails.

        A reply slower than half the timeout is used but counts as a failure: a Redis that slow
        would cost every request a good part of its revocation deadline.
        """
        if not self.available(deadline):
            return None
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # redis.RedisError, OSError ...: the cache is an optimisation
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        took = time.monotonic() - started
        if took > self.timeout / 2:
            self._failed(f"a reply took {took:.3f} s (more than half of the {self.timeout} s timeout)")
            return result
        if self._failing:
            with self._lock:
                back, self._failing = self._failing, False
            if back:
                log.warning("mtls_middleware: the revocation cache %s is back", _redacted(self.url))
        return result

    def _failed(self, why: str) -> None:
        with self._lock:
            self._counts["errors"] += 1
            self._down_until = time.monotonic() + self.retry_after
            first = not self._failing
            self._failing = True
        self.last_error = why
        if first:
            log.warning(
                "mtls_middleware: the revocation cache %s is unavailable (%s); each worker fetches "
                "for itself until it answers again",
                _redacted(self.url),
                why,
            )

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
        import redis.driver_info  # redis-py 7.1+: lib_name and lib_version deprecated

        _NO_CLIENT_INFO: dict[str, None] = {"driver_info": None}
    except ImportError:
        _NO_CLIENT_INFO = {"lib_name": None, "lib_version": None}
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # No retries inside redis-py: a failure must cost one timeout at most, then the
            # worker fetches for itself; we try Redis again after retry_after.
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            # No HELLO, CLIENT MAINT_NOTIFICATIONS or CLIENT SETINFO when connecting (redis-py 8 sends
            # each, one round trip apiece): a new connection must cost no more than its first reply.
            protocol=2,
            **_NO_CLIENT_INFO,
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
