"""OCSP with a cached response: what revocation checking adds per request, in process.

The same WSGI middleware and the same chain (SSL_CLIENT_CERT + SSL_CLIENT_CERT_CHAIN_0) are run
with ``revocation="off"`` (baseline) and with ``revocation="require"`` and an OCSP responder on
loopback (candidate), in alternating blocks. The responder is asked once, before timing starts;
every timed request is answered from cached data.

Scenarios:
  verdict_hit   the usual steady state: the verdict cache holds the accepted verdict (its lifetime
                bounded by the OCSP response's nextUpdate).
  no_verdict    cache_size=0 on both sides: every request runs the whole pipeline, and the
                candidate's revocation stage is answered by the OCSP source's response cache.

Target (from the issue): OCSP, cached response: per-request cost within 1 us of the cached path
without revocation (verdict_hit). Measured, not asserted.

    python benchmarks/bench_revocation_cached.py [--rounds 5] [--calls 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from _common import QuietHandler, header, interleave, make_setup, serve_in_background, verdict
from bench_cached_path import start_response, wsgi_env_factory
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from mtls_middleware import MTLSConfig
from mtls_middleware.testing import Issued
from mtls_middleware.wsgi import MTLSMiddleware

TARGET_US = 1.0


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


class Responder:
    """Answers every OCSP request 'good', signed by the issuing CA, valid for an hour."""

    def __init__(self, issuer: Issued, leaf: Issued) -> None:
        self.requests = 0
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                outer.requests += 1
                now = dt.datetime.now(dt.timezone.utc)
                body = (
                    ocsp.OCSPResponseBuilder()
                    .add_response(
                        cert=leaf.cert, issuer=issuer.cert, algorithm=hashes.SHA1(),  # noqa: S303 (OCSP CertIDs use SHA-1)
                        cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
                        next_update=now + dt.timedelta(hours=1), revocation_time=None,
                        revocation_reason=None,
                    )
                    .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
                    .sign(issuer.key, hashes.SHA256())  # type: ignore[arg-type]
                    .public_bytes(serialization.Encoding.DER)
                )
                self.send_body("application/ocsp-response", body)

        self.server = serve_in_background(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"


def _runner(app: MTLSMiddleware, make_env: Callable[[], dict[str, Any]]) -> Callable[[int], float]:
    def run(n: int) -> float:
        sr, counter = start_response, time.perf_counter
        t0 = counter()
        for _ in range(n):
            app(make_env(), sr)
        return counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()

    setup = make_setup("ec")
    responder = Responder(setup.pki.issuing, setup.leaf)
    header("OCSP, cached response: added per request against revocation='off'")
    results = {}
    for scenario, cache_size, calls in (
        ("verdict_hit", 10_000, args.calls),
        ("no_verdict", 0, max(1000, args.calls // 50)),
    ):
        common: dict[str, Any] = {
            "trust_roots": [setup.pki.root.cert], "store": setup.store, "cache_size": cache_size,
        }
        off = MTLSMiddleware(_app, MTLSConfig(**common, revocation="off"))
        # The responder is a configured URL, so both sides present the very same chain.
        on = MTLSMiddleware(
            _app,
            MTLSConfig(**common, revocation="require", revocation_scope="leaf", ocsp_responder=responder.url),
        )
        make_env = wsgi_env_factory(setup, "tls", fresh=True)
        on(make_env(), start_response)  # the one OCSP fetch, untimed
        fetched = responder.requests

        comparison = interleave(
            scenario, _runner(off, make_env), _runner(on, make_env), rounds=args.rounds, calls=calls,
            block=max(100, calls // 20), warmup=min(calls, 2000),
        )
        assert responder.requests == fetched, "a timed request went to the responder"
        results[scenario] = comparison
        print(
            f"  {scenario:12s} off {comparison.median_base * 1e6:8.2f} us"
            f"  require+OCSP {comparison.median_cand * 1e6:8.2f} us"
            f"  added {comparison.median_added * 1e6:+.2f} us"
        )
    added = results["verdict_hit"].median_added * 1e6
    ok = verdict(added <= TARGET_US)
    print(f"\nverdict_hit added {added:+.2f} us (target <= {TARGET_US:.1f} us): {ok}")
    no_verdict = results["no_verdict"].median_added * 1e6
    print(f"no_verdict added {no_verdict:+.2f} us (the OCSP response-cache lookup and the revocation stage")
    print("  on every request; informational)")
    print(f"OCSP requests to the responder: {responder.requests} (all before timing)")


if __name__ == "__main__":
    main()
