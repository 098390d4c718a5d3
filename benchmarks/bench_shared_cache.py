"""The shared revocation cache: a worker's first check of a certificate, answered from Redis
instead of from the responder or the CRL server.

What a new worker (empty local caches) pays to establish a status, in process, alternating blocks:

- ``ocsp``: the responder on loopback (fetch, parse, verify) against the same response read from
  Redis (GET, parse, verify: Redis vouches for nothing, so the verification is the same).
- ``crl``: a CRL of ``--crl-entries`` revoked serials from a loopback HTTP server against the same
  bytes from Redis (both: parse, index, verify the signature).

A redis-server of its own is started on a free port (``--save "" --appendonly no``) and stopped
at the end. Loopback makes the fetch as cheap as it ever gets: across a network, the responder's
round trip (and its own signing, for a live responder) comes on top, Redis's too.

    python benchmarks/bench_shared_cache.py [--rounds 3] [--calls 200] [--crl-entries 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable

from _common import QuietHandler, header, interleave, make_setup, serve_in_background
from bench_revocation_cached import Responder

from mtls_middleware.revocation.crl import CRLSource
from mtls_middleware.revocation.fetch import Fetcher
from mtls_middleware.revocation.ocsp import OCSPSource
from mtls_middleware.revocation.shared import SharedCache
from mtls_middleware.testing import crl_bytes, make_crl


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


class Static:
    """Serves one body at every path (the CRL server)."""

    def __init__(self, body: bytes) -> None:
        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.send_body("application/pkix-crl", body)

        self.server = serve_in_background(Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


def timed(check: Callable[[], object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            check()
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--crl-entries", type=int, default=10_000)
    args = parser.parse_args()
    header("revocation data for a worker with empty caches: from the source vs from the shared cache")
    setup = make_setup("ec")
    issuer, leaf = setup.pki.issuing, setup.leaf
    now = dt.datetime.now(dt.timezone.utc)
    fetcher = Fetcher(timeout=3.0)
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mtls-bench-redis-") as tmp:
        redis_process, url = start_redis(tmp)
        try:
            shared = SharedCache(url, timeout=0.5)
            responder = Responder(issuer, leaf)

            def ocsp_check(source: Callable[[], OCSPSource]) -> Callable[[], object]:
                return lambda: source().status(leaf.cert, issuer.cert, deadline=time.monotonic() + 5, now=now)

            # A new source per check: a worker that has not seen the certificate yet.
            direct = ocsp_check(lambda: OCSPSource(fetcher, responder=responder.url, cache_size=0))
            via_redis = ocsp_check(
                lambda: OCSPSource(fetcher, responder=responder.url, cache_size=0, shared=shared)
            )
            via_redis()  # stores the response in Redis
            asked = responder.requests
            result = interleave("ocsp", timed(direct), timed(via_redis), rounds=args.rounds,
                                calls=args.calls, block=20, warmup=20, unit="ms")
            hits = shared.stats()["hits"]
            ratio = result.median_cand / result.median_base
            summary.append(
                f"shared.ocsp: {result.median_cand * 1e3:.2f} ms from Redis vs "
                f"{result.median_base * 1e3:.2f} ms from the loopback responder ({ratio:.2f}x; {hits} "
                f"Redis hits; the responder was asked {responder.requests - asked} times, all by the "
                "'direct' side)"
            )

            crl = make_crl(issuer, range(1, args.crl_entries + 1), this_update=now - dt.timedelta(minutes=1),
                           next_update=now + dt.timedelta(hours=1))
            body = crl_bytes(crl)
            server = Static(body)
            location = server.url("/issuing.crl")

            def crl_check(use_shared: bool) -> Callable[[], object]:
                def check() -> object:
                    source = CRLSource(fetcher, shared=shared if use_shared else None)
                    return source.status(leaf.cert, issuer.cert, deadline=time.monotonic() + 10, now=now,
                                         where=(location,))

                return check

            crl_check(True)()  # stores the CRL in Redis
            calls = max(20, args.calls // 4)
            result = interleave("crl", timed(crl_check(False)), timed(crl_check(True)), rounds=args.rounds,
                                calls=calls, block=5, warmup=5, unit="ms")
            summary.append(
                f"shared.crl ({args.crl_entries} entries, {len(body) / 1e6:.2f} MB): "
                f"{result.median_cand * 1e3:.2f} ms from Redis vs {result.median_base * 1e3:.2f} ms from the "
                f"loopback server ({result.median_cand / result.median_base:.2f}x)"
            )
            shared.close()
        finally:
            redis_process.kill()
            redis_process.wait(timeout=5)
    print("# summary")
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
