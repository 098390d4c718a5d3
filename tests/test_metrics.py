"""metrics.py: one count per attempt, per outcome and revocation method; the Prometheus adapter."""

from __future__ import annotations

import pipeline_cases as pc
import pytest
from werkzeug.test import Client

from mtls_middleware import LoginRecord, MemoryStore
from mtls_middleware.metrics import Counters, MeteredSink, PrometheusMetrics, revocation_method
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware


def _ok(environ: object, start_response: object) -> list[bytes]:
    start_response("200 OK", [])  # type: ignore[operator]
    return [b"ok"]


@pytest.mark.parametrize(
    ("summary", "method"),
    [
        pytest.param("ocsp:good", "ocsp", id="ocsp"),
        pytest.param("crl:good", "crl", id="crl"),
        pytest.param("ocsp:good,crl:good", "ocsp", id="chain-leaf-method"),
        pytest.param("soft-fail:revocation_unavailable", "soft-fail", id="soft-fail"),
        pytest.param("off", "off", id="off"),
        pytest.param(None, "none", id="before-revocation"),
        pytest.param("", "none", id="empty"),
    ],
)
def test_revocation_method_label(summary: str | None, method: str) -> None:
    assert revocation_method(LoginRecord("accepted", "tls", revocation=summary)) == method


def test_every_attempt_counted_once_per_outcome(pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued) -> None:
    counters = Counters()
    app = MTLSMiddleware(_ok, pc.tls_config(pki, store, metrics=counters))
    client = Client(app)
    for _ in range(3):  # the first a miss, then verdict-cache hits: all counted
        assert client.get("/", environ_overrides=pc.alice_tls(alice).environ).status_code == 200
    assert client.get("/", environ_overrides=pc.alice_tls(bob).environ).status_code == 403
    assert client.get("/").status_code == 401
    assert counters.snapshot() == {
        ("accepted", "off"): 3,
        ("unknown_certificate", "off"): 1,  # refused after the revocation stage (off here)
        ("no_certificate", "none"): 1,
    }
    # The counts and the login history agree.
    assert len(store.login_history(limit=100)) == counters.total() == 5


def test_a_failing_history_sink_is_still_counted() -> None:
    class Broken:
        def record(self, record: LoginRecord) -> None:
            raise OSError("disk full")

    counters = Counters()
    sink = MeteredSink(Broken(), counters)
    with pytest.raises(OSError, match="disk full"):
        sink.record(LoginRecord("accepted", "tls"))
    assert counters.total("accepted") == 1


def test_prometheus_adapter_exports_the_counter() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.attempt("accepted", "ocsp")
    metrics.attempt("accepted", "ocsp")
    metrics.attempt("certificate_revoked", "crl")
    value = registry.get_sample_value
    assert value("mtls_middleware_attempts_total", {"outcome": "accepted", "revocation": "ocsp"}) == 2
    assert value("mtls_middleware_attempts_total", {"outcome": "certificate_revoked", "revocation": "crl"}) == 1
    text = prometheus_client.generate_latest(registry).decode()
    assert 'mtls_middleware_attempts_total{outcome="accepted",revocation="ocsp"} 2.0' in text


def test_config_refuses_a_metrics_object_without_the_hook(pki: TestPKI) -> None:
    from mtls_middleware import ConfigurationError, MTLSConfig

    with pytest.raises(ConfigurationError):
        MTLSConfig(trust_roots=[pki.root.cert], store="memory://", revocation="off", metrics=object())  # type: ignore[arg-type]


def test_a_failing_hook_does_not_cost_the_login_record() -> None:
    from mtls_middleware import MemoryHistory

    class Broken:
        def attempt(self, outcome: str, revocation: str) -> None:
            raise RuntimeError("statsd is down")

    history = MemoryHistory()
    MeteredSink(history, Broken()).record(LoginRecord("accepted", "tls"))
    assert len(history) == 1
