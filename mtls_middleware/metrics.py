"""Numbers for operators: a counter per outcome code and revocation method.

The authenticator calls a :class:`MetricsHook` once per attempt, with the record it also writes
to the login history. :class:`Counters` keeps the counts in process (for a health page or a
test); :class:`PrometheusMetrics` exports them with ``prometheus_client`` (the ``prometheus``
extra). Any object with the hook's one method will do (StatsD, OpenTelemetry ...).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .history import LoginRecord

__all__ = ["Counters", "MeteredSink", "MetricsHook", "PrometheusMetrics", "revocation_method"]

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("mtls_middleware")


@runtime_checkable
class MetricsHook(Protocol):
    """Receives one call per authentication attempt. Must be fast and must not raise."""

    def attempt(self, outcome: str, revocation: str) -> None:
        """Count one attempt: ``outcome`` is ``"accepted"`` or a reason code; ``revocation`` the
        method that established the status (``"ocsp"``, ``"crl"``, ``"soft-fail"``, ``"off"``,
        or ``"none"`` when the attempt ended before the revocation stage)."""


def revocation_method(record: LoginRecord) -> str:
    """The revocation method label of a record: the part of its revocation summary before ':'."""
    summary = record.revocation
    if not summary:
        return "none"
    return summary.split(":", 1)[0].split(" ", 1)[0] or "none"


class Counters:
    """In-process counts per (outcome, revocation method); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def attempt(self, outcome: str, revocation: str) -> None:
        with self._lock:
            self._counts[(outcome, revocation)] += 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts, keyed by (outcome, revocation method)."""
        with self._lock:
            return dict(self._counts)

    def total(self, outcome: str | None = None) -> int:
        """All attempts, or those with ``outcome``."""
        with self._lock:
            return sum(n for (o, _), n in self._counts.items() if outcome is None or o == outcome)


class PrometheusMetrics:
    """Exports ``mtls_middleware_attempts_total{outcome, revocation}`` through prometheus_client.

    Args:
        registry: the collector registry (default: prometheus_client's global one).
        namespace: the metric name prefix.

    Raises:
        ImportError: prometheus_client is not installed (``pip install mtls_middleware[prometheus]``).
    """

    def __init__(self, registry: Any = None, *, namespace: str = "mtls_middleware") -> None:
        try:
            from prometheus_client import REGISTRY
            from prometheus_client import Counter as PromCounter
        except ImportError:
            raise ImportError(
                "PrometheusMetrics needs prometheus_client: pip install 'mtls_middleware[prometheus]'"
            ) from None
        self._counter = PromCounter(
            "attempts",
            "Client-certificate authentication attempts by outcome and revocation method.",
            ["outcome", "revocation"],
            namespace=namespace,
            registry=registry if registry is not None else REGISTRY,
        )
        # Children are cached per label pair: labels() costs a dict lookup and a lock each call.
        self._children: dict[tuple[str, str], Callable[[], None]] = {}

    def attempt(self, outcome: str, revocation: str) -> None:
        key = (outcome, revocation)
        inc = self._children.get(key)
        if inc is None:
            inc = self._children[key] = self._counter.labels(outcome, revocation).inc
        inc()


class MeteredSink:
    """A history sink that also counts each record through a :class:`MetricsHook`."""

    def __init__(self, sink: Any, hook: MetricsHook) -> None:
        self.sink = sink
        self.hook = hook

    def record(self, record: LoginRecord) -> None:
        # Counted first, so that a failing sink does not make the numbers lie about traffic; a
        # failing hook, against its contract, must not cost the login record either.
        try:
            self.hook.attempt(record.outcome, revocation_method(record))
        except Exception:
            log.exception("mtls_middleware: the metrics hook failed")
        self.sink.record(record)
