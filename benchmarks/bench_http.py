"""Over HTTP under gunicorn: requests/s of the bare app against the same app behind the middleware.

Two gunicorn servers (sync worker, 1 worker, 127.0.0.1, free ports) serve benchmarks/apps.py:
``apps:bare_app()`` and ``apps:mtls_app()`` (proxy mode, nginx profile, revocation off). The load
generator plays nginx: every request carries X-SSL-Client-Cert (the URL-escaped leaf PEM) and
X-SSL-Client-Verify: SUCCESS from 127.0.0.1, to both servers alike, so after the first request
every middleware request is a verdict-cache hit. Runs alternate bare/middleware ``--runs`` times
each after a short warm-up of both; the medians are compared.

Load comes from wrk (``apt-get install wrk``) when it is installed, else from a small asyncio
client in this process (``--loadgen python`` forces it; its own cost makes the ratio less
sensitive, so prefer wrk). The sync worker closes every connection, so each request is a new TCP
connection for both servers.

Target (from the issue): middleware requests/s >= 0.97 x bare. Measured, not asserted.
Every server started here is stopped at the end (also on Ctrl-C); certificates go to a temporary
directory that is removed; no private key is written.

    python benchmarks/bench_http.py [--runs 3] [--duration 8] [--threads 2] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import Setup, header, make_setup, verdict
from apps import STATS_PATH

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 0.97
HOST = "127.0.0.1"


def _control_socket_off() -> list[str]:
    """gunicorn 24+ opens a control socket at one fixed path per user; two servers would share it."""
    try:
        from gunicorn.config import Config
    except ImportError:
        return []
    return ["--no-control-socket"] if "control_socket_disable" in Config().settings else []


CONTROL_SOCKET_OFF = _control_socket_off()


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(
    name: str,
    app: str,
    env: dict[str, str],
    workdir: Path,
    *,
    workers: int = 1,
    options: Sequence[str] = (),
    timeout: float = 20.0,
) -> Server:
    """gunicorn, sync workers (one unless told), on a free loopback port; waits until it answers.

    ``options`` go to gunicorn as they are; ``timeout`` is how long it may take to answer.
    """
    for _attempt in range(3):  # a free port may be taken between asking and binding
        port = free_port()
        log = workdir / f"{name}.log"
        command = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "sync", "--workers", str(workers),
            "--bind", f"{HOST}:{port}",
            "--chdir", str(HERE),
            "--log-level", "warning",
            *options,
            *CONTROL_SOCKET_OFF,
            "--error-logfile", str(log),
            app,
        ]
        with open(os.devnull, "wb") as devnull:
            process = subprocess.Popen(command, env=env, stdout=devnull, stderr=subprocess.STDOUT)
        server = Server(name, port, process, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return server
            except OSError:
                time.sleep(0.1)
        stop_server(server)
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Address already in use" not in text:
            raise SystemExit(f"gunicorn ({name}) did not start:\n{text[-2000:]}")
    raise SystemExit(f"gunicorn ({name}): no free port after 3 attempts")



def server_env(setup: Setup, workdir: Path) -> dict[str, str]:
    """The environment of the benchmark apps' gunicorn: the PKI and alice's certificate, written
    to ``workdir``, and this checkout importable."""
    (workdir / "root.pem").write_bytes(setup.pki.root_pem)
    (workdir / "intermediates.pem").write_bytes(setup.pki.issuing.cert_pem)
    (workdir / "alice.pem").write_bytes(setup.leaf.cert_pem)
    env = dict(os.environ)
    env.update(
        MTLS_BENCH_ROOT=str(workdir / "root.pem"),
        MTLS_BENCH_INTERMEDIATES=str(workdir / "intermediates.pem"),
        MTLS_BENCH_CERT=str(workdir / "alice.pem"),
        MTLS_BENCH_TRUSTED_PROXY=HOST,
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p),
    )
    return env

def stop_server(server: Server) -> None:
    """SIGTERM to the gunicorn master we started (it stops its worker), then wait; kill if stuck."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of ``master`` (Linux /proc; empty elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == master:
            pids.append(int(entry.parent.name))
    return pids


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds consumed so far by ``pids`` (Linux /proc), or None."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK") if pids else None


def get(port: int, headers: dict[str, str], path: str = "/") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (loopback URL)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- load generators --------------------------------------------------------------------------------
@dataclass
class Load:
    rps: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    detail: str = ""
    cpu_per_request: float | None = None  # the server worker's CPU seconds per request


def run_wrk(wrk: str, port: int, headers: dict[str, str], *, threads: int, connections: int,
            duration: float) -> Load:
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(f"http://{HOST}:{port}/")
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    text = out.stdout + out.stderr
    match = re.search(r"Requests/sec:\s*([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if out.returncode != 0 or not match or not total:
        raise SystemExit(f"wrk failed (exit {out.returncode}):\n{text}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return Load(float(match.group(1)), int(total.group(1)), errors, "wrk")


def run_python(port: int, headers: dict[str, str], *, connections: int, duration: float) -> Load:
    """A minimal HTTP/1.1 load generator: ``connections`` asyncio clients, one request per TCP
    connection (the sync worker closes each one anyway)."""
    lines = [f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: bench\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    request = ("".join(lines) + "\r\n").encode("latin-1")

    async def client(stop: float, counts: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < stop:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(request)
                data = await reader.read()  # until the server closes
                writer.close()
                if data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    counts[0] += 1
                else:
                    counts[1] += 1
            except OSError:
                counts[1] += 1

    async def main() -> tuple[int, int, float]:
        counts = [0, 0]
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(client(start + duration, counts) for _ in range(connections)))
        return counts[0], counts[1], loop.time() - start

    ok, bad, elapsed = asyncio.run(main())
    return Load((ok + bad) / elapsed, ok + bad, bad, "python")



def load_generator(
    args: argparse.Namespace, headers: dict[str, str]
) -> tuple[bool, Callable[[int, float], Load]]:
    """The load of ``--loadgen`` (wrk when it is installed, unless ``python``; ``wrk`` without it
    is an error), ``--threads`` and ``--connections``, every request with ``headers``: whether
    wrk makes it, and a function that puts it on a port for some seconds."""
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    use_wrk = wrk is not None and args.loadgen != "python"

    def load(port: int, seconds: float) -> Load:
        if wrk is not None and use_wrk:
            return run_wrk(wrk, port, headers, threads=args.threads, connections=args.connections,
                           duration=seconds)  # fmt: skip
        return run_python(port, headers, connections=args.connections, duration=seconds)

    return use_wrk, load

def sequential_pairs(
    ports: tuple[int, int], headers: dict[str, str], pairs: int
) -> list[tuple[float, float]]:
    """One request at a time, alternating between the two servers: (first, second) seconds per pair.

    Each request is a new TCP connection, read until the server closes it. Slow to load a server,
    but adjacent requests see the same machine, so the paired differences shrug off load from
    other processes that makes requests/s figures drift.
    """
    lines = [f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bench\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
    request = ("".join(lines) + "\r\n").encode("latin-1")
    counter = time.perf_counter

    def one(port: int) -> float:
        t0 = counter()
        with socket.create_connection((HOST, port), timeout=10) as conn:
            conn.sendall(request)
            first = conn.recv(65536)
            while conn.recv(65536):
                pass
        elapsed = counter() - t0
        if not first.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"sequential run: unexpected answer {first[:60]!r}")
        return elapsed

    out: list[tuple[float, float]] = []
    for index in range(pairs):
        if index % 2 == 0:
            a = one(ports[0])
            b = one(ports[1])
        else:
            b = one(ports[1])
            a = one(ports[0])
        out.append((a, b))
    return out


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="timed runs per server (alternating)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=2000,
                        help="sequential request pairs for the latency comparison (0: skip)")
    parser.add_argument("--no-in-worker", dest="in_worker", action="store_false",
                        help="skip timing the middleware's share inside a loaded gunicorn worker")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)

    header("over HTTP: gunicorn (sync, 1 worker) serving the bare app vs the app behind the middleware")
    setup = make_setup("ec")
    proxy_headers = {"X-SSL-Client-Cert": setup.escaped_leaf, "X-SSL-Client-Verify": "SUCCESS"}
    use_wrk, load = load_generator(args, proxy_headers)
    gen = "wrk" if use_wrk else "python asyncio client"
    print(f"# load: {gen}, {args.connections} connections"
          f"{f', {args.threads} threads' if use_wrk else ''}, {args.duration:g} s per run, "
          f"{args.runs} runs per server, alternating", flush=True)

    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="mtls-bench-") as tmp:
        workdir = Path(tmp)
        env = server_env(setup, workdir)
        try:
            bare = start_server("bare", "apps:bare_app()", env, workdir)
            servers.append(bare)
            mtls = start_server("mtls", "apps:mtls_app()", env, workdir)
            servers.append(mtls)

            # The middleware really authenticates: accepted with the headers, refused without.
            status_ok, _ = get(mtls.port, proxy_headers)
            status_none, body_none = get(mtls.port, {})
            status_bare, _ = get(bare.port, proxy_headers)
            if (status_ok, status_none, status_bare) != (200, 401, 200):
                raise SystemExit(
                    f"setup error: middleware answered {status_ok} with the headers and "
                    f"{status_none} ({body_none[:80]!r}) without; bare answered {status_bare}"
                )
            print(f"# check: middleware 200 with the nginx headers, 401 without; ports bare={bare.port} "
                  f"mtls={mtls.port}", flush=True)

            if args.warmup > 0:
                load(bare.port, args.warmup)
                load(mtls.port, args.warmup)
            results: dict[str, list[Load]] = {"bare": [], "mtls": []}
            latencies: list[tuple[float, float]] = []
            for index in range(args.runs):
                order = (bare, mtls) if index % 2 == 0 else (mtls, bare)
                for server in order:
                    workers = worker_pids(server.process.pid)
                    before = cpu_seconds(workers)
                    result = load(server.port, args.duration)
                    after = cpu_seconds(workers)
                    if before is not None and after is not None and result.requests:
                        result.cpu_per_request = (after - before) / result.requests
                    results[server.name].append(result)
                    cpu = (f", worker CPU {result.cpu_per_request * 1e6:.0f} us/request"
                           if result.cpu_per_request else "")
                    print(f"  run {index + 1}/{args.runs} {server.name:4s}: {result.rps:9.1f} req/s "
                          f"({result.requests} requests, {result.errors} errors{cpu})", flush=True)
            latencies = sequential_pairs((bare.port, mtls.port), proxy_headers, args.pairs)

            in_worker: dict[str, float] | None = None
            if args.in_worker:
                timed = start_server("timed", "apps:timed_mtls_app()", env, workdir)
                servers.append(timed)
                load(timed.port, max(1.0, args.warmup))
                load(timed.port, args.duration)
                in_worker = json.loads(get(timed.port, {}, path=STATS_PATH)[1])
                stop_server(timed)
        finally:
            for server in servers:
                stop_server(server)
            for server in servers:
                text = server.log.read_text(errors="replace") if server.log.exists() else ""
                if "Traceback" in text:
                    print(f"# {server.name} server log has a traceback:\n{text[-1500:]}")

    bare_rps = [r.rps for r in results["bare"]]
    mtls_rps = [r.rps for r in results["mtls"]]
    errors = sum(r.errors for rs in results.values() for r in rs)
    ratio = statistics.median(mtls_rps) / statistics.median(bare_rps)
    print(
        f"\nhttp.gunicorn_sync: bare median {statistics.median(bare_rps):.1f} req/s "
        f"(runs {', '.join(f'{x:.0f}' for x in bare_rps)}), middleware median "
        f"{statistics.median(mtls_rps):.1f} req/s (runs {', '.join(f'{x:.0f}' for x in mtls_rps)}), "
        f"ratio={ratio:.3f} target>={TARGET_RATIO}; bare run-to-run spread "
        f"{(max(bare_rps) - min(bare_rps)) / statistics.median(bare_rps) * 100:.1f}%, errors {errors}"
    )
    pair_ratios = [
        m.rps / b.rps for b, m in zip(results["bare"], results["mtls"], strict=True)
    ]
    print(f"  per-run pairs (middleware/bare, in run order): "
          f"{', '.join(f'{r:.3f}' for r in pair_ratios)}")
    cpu_bare = [r.cpu_per_request for r in results["bare"] if r.cpu_per_request]
    cpu_mtls = [r.cpu_per_request for r in results["mtls"] if r.cpu_per_request]
    cpu_ratio = None
    if cpu_bare and cpu_mtls:
        cpu_ratio = statistics.median(cpu_bare) / statistics.median(cpu_mtls)
        print(
            f"http.worker_cpu: the gunicorn worker's own CPU time per request (from /proc; what "
            f"load from other processes does not inflate): bare {statistics.median(cpu_bare) * 1e6:.1f}"
            f" us, middleware {statistics.median(cpu_mtls) * 1e6:.1f} us, i.e. {cpu_ratio:.3f}x the "
            "bare app's requests/s for a CPU-bound worker"
        )
    if latencies:
        warm = latencies[len(latencies) // 10:]  # the first tenth warms both up
        bare_lat = statistics.median(a for a, _ in warm)
        mtls_lat = statistics.median(b for _, b in warm)
        added = statistics.median(b - a for a, b in warm)
        print(
            f"http.sequential_latency: {len(warm)} alternating single requests per server: median "
            f"bare {bare_lat * 1e6:.0f} us, middleware {mtls_lat * 1e6:.0f} us, median paired "
            f"difference {added * 1e6:+.1f} us, i.e. {bare_lat / (bare_lat + added):.3f}x the bare "
            "app's requests/s for a one-request-at-a-time server"
        )
    if in_worker and in_worker.get("median_us") is not None:
        print(
            f"http.in_worker: inside the loaded gunicorn worker, the middleware call adds "
            f"median {in_worker['median_us']:.2f} us, mean {in_worker['mean_us']:.2f} us per request "
            f"(over {int(in_worker['count'])} requests incl. warm-up); compare "
            "bench_cached_path.py's hot-loop figure"
        )
    print("\n# summary")
    note = "" if errors == 0 else f" ({errors} errors: numbers suspect)"
    print(
        f"http.gunicorn_sync: middleware {ratio:.3f}x the bare app's requests/s "
        f"(target >= {TARGET_RATIO}) {verdict(ratio >= TARGET_RATIO and errors == 0)}{note}"
    )
    if cpu_ratio is not None:
        print(
            f"http.gunicorn_sync.worker_cpu: middleware {cpu_ratio:.3f}x the bare app's requests/s "
            f"by worker CPU per request (target >= {TARGET_RATIO}) {verdict(cpu_ratio >= TARGET_RATIO)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
