"""Several gunicorn workers: requests/s of the cached path against the bare app, and how fast a
deletion reaches every worker.

1. **Throughput.** For 1, 2 and 4 sync workers, gunicorn servers with that many workers serve
   ``workers_apps:bare_app()`` and ``workers_apps:mtls_app()``: the middleware in proxy mode
   (nginx profile, revocation off) over the memory store (each worker its own, history in
   memory), over a SQLite store file that every worker opens, and (``--postgresql URL``) over a
   PostgreSQL schema of its own. wrk plays nginx over plain HTTP on loopback (no TLS: the same
   for both sides, and wrk has no client certificates): every request carries
   ``X-SSL-Client-Cert`` (the URL-escaped leaf PEM) and ``X-SSL-Client-Verify: SUCCESS``, so after
   each worker's first request every middleware request is a verdict-cache hit (the cached path),
   which still writes one login-history row to the store. Runs alternate between the servers;
   medians are compared, by requests/s and by the workers' own CPU time per request (steadier on
   a shared machine).
2. **Propagation.** Against a 4-worker middleware server per shared store (SQLite, PostgreSQL):
   8 client threads send requests continuously while this process deletes the certificate from
   the store; measured per deletion: the time from ``delete_certificate`` returning until every
   worker has refused a request sent after it (this includes waiting for the load to reach each
   worker), and how many requests sent after it were still accepted. The certificate is uploaded
   again and every worker made to cache an accepting verdict before the next deletion.

Every server started here is stopped at the end; certificates and the SQLite store live in a
temporary directory that is removed, the PostgreSQL schema is dropped; no private key is written.

    python benchmarks/bench_workers.py [--workers 1,2,4] [--runs 3] [--duration 3] [--deletions 7]
                                       [--postgresql postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bench_http
from _common import OtherLoad, Setup, header, make_setup
from bench_http import (
    Load,
    Server,
    cpu_seconds,
    load_generator,
    server_env,
    stop_server,
    worker_pids,
)

from mtls_middleware.errors import MTLSError, Reason
from mtls_middleware.stores import open_store

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def start_server(name: str, app: str, workers: int, env: dict[str, str], workdir: Path) -> Server:
    """gunicorn with ``workers`` sync workers, on a free loopback port; waits until it answers."""
    return bench_http.start_server(
        name, app, env, workdir, workers=workers, options=("--graceful-timeout", "5"), timeout=30
    )


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    pid: str


def request(port: int, headers: dict[str, str]) -> Answer:
    sent = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        return Answer(sent, time.monotonic(), response.status, response.getheader("X-Worker-Pid") or "?")
    finally:
        conn.close()


def all_workers_answer(port: int, headers: dict[str, str], workers: int, status: int) -> set[str]:
    """Send requests (8 at a time) until ``workers`` distinct workers answered ``status``."""
    seen: set[str] = set()
    answers: list[Answer] = []

    def one() -> None:
        answers.append(request(port, headers))

    for _ in range(500):
        answers.clear()
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen |= {a.pid for a in answers if a.status == status}
        if len(seen) >= workers:
            return seen
    raise SystemExit(f"only {len(seen)} of {workers} workers answered {status}")


@dataclass
class Deletion:
    reach_all: float  # seconds from delete_certificate returning to every worker refusing
    stale_accepts: int  # requests sent after the deletion returned and still accepted
    requests: int
    first_refusal: dict[str, float] = field(default_factory=dict)


def measure_deletion(port: int, headers: dict[str, str], store: object, fingerprint: str, pem: bytes,
                     workers: int, threads: int) -> Deletion:
    try:
        store.upload_certificate(pem, user_id="alice")  # type: ignore[attr-defined]
    except MTLSError as exc:  # still there (the first round)
        if exc.reason is not Reason.DUPLICATE_CERTIFICATE:
            raise
    pids = all_workers_answer(port, headers, workers, 200)  # every worker caches an accepting verdict
    answers: list[Answer] = []
    lock = threading.Lock()
    stop = threading.Event()
    deleted_at: list[float] = []
    refused: dict[str, float] = {}

    def client() -> None:
        while not stop.is_set():
            answer = request(port, headers)
            with lock:
                answers.append(answer)
                if deleted_at and answer.sent > deleted_at[0] and answer.status == 403:
                    refused.setdefault(answer.pid, answer.received)
                    if set(refused) >= pids:
                        stop.set()

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    time.sleep(0.2)
    store.delete_certificate(fingerprint)  # type: ignore[attr-defined]
    with lock:
        deleted_at.append(time.monotonic())
    stop.wait(30)
    stop.set()
    for thread in pool:
        thread.join()
    if set(refused) < pids:
        raise SystemExit(f"after 30 s only {len(refused)} of {len(pids)} workers refused")
    after = [a for a in answers if a.sent > deleted_at[0]]
    return Deletion(
        reach_all=max(refused.values()) - deleted_at[0],
        stale_accepts=sum(1 for a in after if a.status == 200),
        requests=len(after),
        first_refusal={pid: t - deleted_at[0] for pid, t in refused.items()},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per server (alternating)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--deletions", type=int, default=7, help="deletions timed per shared store (0: skip)")
    parser.add_argument("--postgresql", metavar="URL", default=None,
                        help="also a PostgreSQL store, e.g. postgresql://postgres@127.0.0.1/test (a schema "
                             "of its own is created and dropped)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n]

    header("gunicorn with 1, 2, 4 sync workers: the bare app vs the middleware over each store; deletions")
    setup = make_setup("ec")
    proxy_headers = {"X-SSL-Client-Cert": setup.escaped_leaf, "X-SSL-Client-Verify": "SUCCESS"}
    use_wrk, load = load_generator(args, proxy_headers)
    print(f"# load: {'wrk' if use_wrk else 'python asyncio client'} over plain HTTP to gunicorn, playing "
          f"nginx; {args.connections} connections, {args.duration:g} s per run, {args.runs} runs per "
          "server, alternating", flush=True)

    summary: list[str] = []
    stores: dict[str, object] = {}
    pg_schema: str | None = None
    with tempfile.TemporaryDirectory(prefix="mtls-bench-workers-") as tmp:
        workdir = Path(tmp)
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{workdir / 'mtls.db'}"}
        if args.postgresql:
            pg_schema = f"mtls_bench_{os.getpid()}"
            joiner = "&" if "?" in args.postgresql else "?"
            urls["postgresql"] = f"{args.postgresql}{joiner}schema={pg_schema}"
        for kind in ("sqlite", "postgresql"):
            if kind in urls:
                stores[kind] = store = open_store(urls[kind])
                store.add_user("alice")
                store.upload_certificate(setup.leaf.cert_pem, user_id="alice")
        env = server_env(setup, workdir)
        try:
            for workers in counts:
                summary += measure_workers(workers, urls, env, workdir, load, args.runs, args.duration,
                                           args.warmup, proxy_headers)
                if workers == max(counts) and args.deletions > 0:
                    for kind, store in stores.items():
                        summary.append(deletions(kind, urls[kind], store, setup, env, workdir, workers,
                                                 args.deletions, proxy_headers))
        finally:
            for store in stores.values():
                close = getattr(store, "close", None)
                if callable(close):
                    close()
            if pg_schema is not None:
                import psycopg

                with psycopg.connect(args.postgresql, autocommit=True) as admin:
                    admin.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}" CASCADE')
    print("# summary")
    for line in summary:
        print(line)
    return 0


def measure_workers(workers: int, urls: dict[str, str], env: dict[str, str], workdir: Path,
                    load: Callable[[int, float], Load], runs: int, duration: float, warmup: float,
                    proxy_headers: dict[str, str]) -> list[str]:
    """Requests/s and workers' CPU per request of the bare app and of the middleware per store."""
    servers: dict[str, Server] = {}
    lines: list[str] = []
    try:
        servers["bare"] = start_server(f"bare{workers}", "workers_apps:bare_app()", workers, env, workdir)
        for kind, url in urls.items():
            servers[kind] = start_server(f"{kind}{workers}", "workers_apps:mtls_app()", workers,
                                         {**env, "MTLS_BENCH_STORE": url}, workdir)
            port = servers[kind].port
            statuses = (request(port, proxy_headers).status, request(port, {}).status)
            if statuses != (200, 401):
                raise SystemExit(f"setup error ({kind}): the middleware answered {statuses}, not 200 with "
                                 "the headers and 401 without")
        if warmup > 0:
            for server in servers.values():
                load(server.port, warmup)
        # Measured with nothing of ours running: wrk and the workers would count as "other".
        quiet = OtherLoad()
        time.sleep(1.0)
        cpus = quiet.cpus()
        results: dict[str, list[Load]] = {kind: [] for kind in servers}
        for index in range(runs):
            order = list(servers.items())
            for kind, server in order if index % 2 == 0 else reversed(order):
                pids = worker_pids(server.process.pid)
                before = cpu_seconds(pids)
                result = load(server.port, duration)
                after = cpu_seconds(pids)
                if before is not None and after is not None and result.requests:
                    result.cpu_per_request = (after - before) / result.requests
                results[kind].append(result)
                cpu = (f", workers' CPU {result.cpu_per_request * 1e6:.0f} us/request"
                       if result.cpu_per_request else "")
                print(f"  {workers} worker(s) run {index + 1}/{runs} {kind:10s}: {result.rps:9.1f} req/s "
                      f"({result.requests} requests, {result.errors} errors{cpu})", flush=True)
        errors = sum(r.errors for rs in results.values() for r in rs)
        rps = {kind: statistics.median(r.rps for r in rs) for kind, rs in results.items()}
        parts = [f"{kind} {rps[kind]:.0f} req/s -> {rps[kind] / rps['bare']:.3f}x" for kind in urls]
        lines.append(f"workers.{workers}: bare {rps['bare']:.0f} req/s; middleware + " + "; ".join(parts)
                     + f" ({errors} errors; before the runs other processes kept "
                     f"{'?' if cpus is None else f'{cpus:.2f}'} of {os.cpu_count()} CPUs busy)")
        cpu_runs = {k: [r.cpu_per_request for r in rs if r.cpu_per_request] for k, rs in results.items()}
        if all(cpu_runs.values()):
            cpu = {k: statistics.median(v) for k, v in cpu_runs.items()}
            parts = [f"{kind} {cpu[kind] * 1e6:.0f} us -> {cpu['bare'] / cpu[kind]:.3f}x" for kind in urls]
            lines.append(f"workers.{workers}.cpu: workers' CPU per request (requests per CPU-second against "
                         f"bare): bare {cpu['bare'] * 1e6:.0f} us; " + "; ".join(parts))
        for line in lines:
            print(line, flush=True)
    finally:
        for server in servers.values():
            stop_server(server)
    return lines


def deletions(kind: str, url: str, store: object, setup: Setup, env: dict[str, str], workdir: Path,
              workers: int, count: int, proxy_headers: dict[str, str]) -> str:
    """Time ``count`` deletions until all ``workers`` of a middleware server over ``url`` refuse."""
    server = start_server(f"delete-{kind}", "workers_apps:mtls_app()", workers,
                          {**env, "MTLS_BENCH_STORE": url}, workdir)
    try:
        runs = []
        for index in range(count):
            result = measure_deletion(server.port, proxy_headers, store, setup.leaf.fingerprint,
                                      setup.leaf.cert_pem, workers, threads=8)
            runs.append(result)
            spread = ", ".join(f"{t * 1000:.1f}" for t in sorted(result.first_refusal.values()))
            print(f"  {kind} deletion {index + 1}/{count}: all {workers} workers refusing after "
                  f"{result.reach_all * 1000:.1f} ms (per worker: {spread} ms); "
                  f"{result.stale_accepts} of {result.requests} later requests accepted", flush=True)
    finally:
        stop_server(server)
    reach = [r.reach_all * 1000 for r in runs]
    stale = sum(r.stale_accepts for r in runs)
    line = (f"deletion.{kind}.to_all_{workers}_workers: median {statistics.median(reach):.1f} ms, max "
            f"{max(reach):.1f} ms over {len(runs)} deletions; requests sent after the deletion returned "
            f"and still accepted: {stale} of {sum(r.requests for r in runs)}")
    print(line, flush=True)
    return line


if __name__ == "__main__":
    sys.exit(main())
