"""The SQLite store: fingerprint lookups in a big file, the generation read, history throughput.

Three measurements, each against a baseline timed in the same process and run:

  lookup       ``SQLiteStore.resolve_certificate`` in a file of ``--certificates`` certificates
               (1,000,000 by default; inserted directly with executemany: synthetic 64-hex
               fingerprints, not real certificates) against the same SELECT on a bare sqlite3
               connection. Hits on random fingerprints, and misses.
  generation   ``SQLiteStore.generation`` (the mmap'd counter shared by processes, read on every
               request by the verdict cache) against a plain attribute read and against
               ``MemoryStore.generation``. Target: well under 0.5 us (500 ns).
  history      ``record()`` per call against ``queue.Queue.put`` (what a plain bounded queue would
               cost on the request path), and the sustained rate of ``record()`` + ``flush()``:
               rows per second that reach the file.

    python benchmarks/bench_store.py [--quick] [--certificates N] [--records N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import header, interleave, spread, verdict

from mtls_middleware import LoginRecord, MemoryStore
from mtls_middleware.stores import SQLiteStore

GENERATION_TARGET_NS = 500.0
USERS = 1000

_RESOLVE_SQL = (
    "SELECT u.user_id, u.org, u.active, COALESCE(o.cert_auth, 1), u.permissions"
    " FROM certificates AS c JOIN users AS u ON u.user_id = c.user_id"
    " LEFT JOIN orgs AS o ON o.org = u.org WHERE c.fingerprint = ?"
)


def fingerprint(index: int) -> str:
    return hashlib.sha256(index.to_bytes(8, "big")).hexdigest()


def fill(path: Path, certificates: int) -> float:
    """Create the store's file with USERS users and ``certificates`` synthetic rows; seconds taken.

    Bulk-loaded the quick way: no journal, keys in order, the secondary indexes built afterwards.
    The store switches the file back to WAL when it opens it.
    """
    started = time.perf_counter()
    SQLiteStore(path).close()  # the schema, as the store makes it
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MB
    conn.execute("BEGIN")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.execute("INSERT INTO orgs (org, cert_auth) VALUES ('bench', 1)")
    conn.executemany(
        "INSERT INTO users (user_id, org, active, permissions) VALUES (?, 'bench', 1, ?)",
        ((f"user{n}", json.dumps(["api_only"])) for n in range(USERS)),
    )
    # About the size of a P-256 client certificate's PEM.
    pem = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 700 + b"\n-----END CERTIFICATE-----\n"
    keys = sorted((fingerprint(i), i) for i in range(certificates))
    conn.executemany(
        "INSERT INTO certificates (fingerprint, user_id, org, label, pem, subject, issuer, serial,"
        " not_before, not_after, uploaded_at, uploaded_by)"
        " VALUES (?, ?, 'bench', ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (
            (fp, f"user{i % USERS}", f"cert {i}", pem, f"CN=client{i}", "CN=Bench CA",
             format(i, "x"), 1_700_000_000, 1_900_000_000, 1_750_000_000)
            for fp, i in keys
        ),
    )
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return time.perf_counter() - started


def bench_lookup(path: Path, certificates: int, rounds: int, calls: int) -> list[tuple[str, float, float]]:
    store = SQLiteStore(path)
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    rng = random.Random(4)
    hits = [fingerprint(rng.randrange(certificates)) for _ in range(calls)]
    misses = [fingerprint(certificates + n) for n in range(calls)]
    assert store.resolve_certificate(hits[0]) is not None
    assert store.resolve_certificate(misses[0]) is None
    found: list[tuple[str, float, float]] = []
    for name, keys in (("hit", hits), ("miss", misses)):

        def base(n: int, keys: list[str] = keys) -> float:
            execute = raw.execute
            started = time.perf_counter()
            for index in range(n):
                execute(_RESOLVE_SQL, (keys[index % calls],)).fetchone()
            return time.perf_counter() - started

        def cand(n: int, keys: list[str] = keys) -> float:
            resolve = store.resolve_certificate
            started = time.perf_counter()
            for index in range(n):
                resolve(keys[index % calls])
            return time.perf_counter() - started

        result = interleave(f"store.lookup.{name}", base, cand, rounds=rounds, calls=calls,
                            block=max(1, calls // 20), warmup=min(1000, calls))
        found.append((name, result.median_base, result.median_cand))
        added = spread([v * 1e6 for v in result.round_medians()])
        print(f"  lookup {name}: per-round median added us {added}")
    raw.close()
    store.close()
    return found


class _Plain:
    def __init__(self) -> None:
        self.generation = 7


def _reader(obj: object) -> Callable[[int], float]:
    def run(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            obj.generation  # type: ignore[attr-defined]  # noqa: B018 - the read is what is timed
        return time.perf_counter() - started

    return run


def bench_generation(path: Path, rounds: int, calls: int) -> tuple[float, float, float]:
    store = SQLiteStore(path)
    try:
        plain = interleave("store.generation.vs_attribute", _reader(_Plain()), _reader(store),
                           rounds=rounds, calls=calls, block=max(1, calls // 50), verbose=False)
        memory = interleave("store.generation.vs_memory", _reader(MemoryStore()), _reader(store),
                            rounds=rounds, calls=calls, block=max(1, calls // 50), verbose=False)
    finally:
        store.close()
    return plain.median_base, memory.median_base, statistics.median(plain.cand + memory.cand)


def bench_history(path: Path, records: int, rounds: int) -> dict[str, float]:
    record = LoginRecord("accepted", "proxy:nginx", "ab" * 32, "CN=client", "CN=Bench CA", "1f",
                         "user1", "bench", "", "off", 0.0, "127.0.0.1")
    # Per call, while the writer drains: store.record against queue.Queue.put.
    store = SQLiteStore(path, history_queue=max(10_000, records))
    bounded: queue.Queue[LoginRecord] = queue.Queue(maxsize=max(10_000, records) * (rounds + 2))
    calls = min(records, 50_000)
    block = 1_000

    def base(n: int) -> float:
        put = bounded.put
        started = time.perf_counter()
        for _ in range(n):
            put(record)
        return time.perf_counter() - started

    def cand(n: int) -> float:
        # The writer idle at the start (it sleeps up to 50 ms when it finds nothing): this is
        # what a request pays; the writer's own work shows in the sustained rate below.
        store.flush()
        put = store.record
        started = time.perf_counter()
        for _ in range(n):
            put(record)
        return time.perf_counter() - started

    per_call = interleave("store.history.record", base, cand, rounds=rounds, calls=calls,
                          block=block, verbose=False)
    store.flush()
    store.close()

    # Sustained: everything recorded must reach the file; the buffer's default bound applies.
    path.unlink()
    rates = []
    waits = 0
    for _ in range(rounds):
        store = SQLiteStore(path)
        started = time.perf_counter()
        for _ in range(records):
            store.record(record)
        store.flush()
        elapsed = time.perf_counter() - started
        waits += store.history_writer.waits
        store.close()
        rates.append(records / elapsed)
    conn = sqlite3.connect(path)
    stored = conn.execute("SELECT count(*) FROM login_history").fetchone()[0]
    conn.close()
    assert stored == records * rounds, (stored, records * rounds)
    return {
        "queue_put": per_call.median_base,
        "record": per_call.median_cand,
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "waits": waits / rounds,
    }


def bench_middleware(path: Path, rounds: int, calls: int) -> dict[str, float]:
    """A request through the WSGI middleware with the 1M-certificate store: on the verdict cache
    (against the bare app) and off it (cache_size=0; against the same pipeline on a MemoryStore,
    so the difference is the store's lookup)."""
    from _common import make_setup
    from bench_cached_path import bare_wsgi, start_response, wsgi_env_factory

    from mtls_middleware import MTLSConfig
    from mtls_middleware.wsgi import MTLSMiddleware

    setup = make_setup("ec")
    store = SQLiteStore(path)
    try:
        store.add_user("bench-alice")
        store.upload_certificate(setup.leaf.cert_pem, user_id="bench-alice")
        make_env = wsgi_env_factory(setup, "tls", fresh=True)

        def runner(app: Callable[..., Any]) -> Callable[[int], float]:
            def run(n: int) -> float:
                started = time.perf_counter()
                for _ in range(n):
                    app(make_env(), start_response)
                return time.perf_counter() - started

            return run

        def app(store_: Any, cache_size: int) -> Callable[..., Any]:
            config = MTLSConfig(
                trust_roots=[setup.pki.root.cert], store=store_, revocation="off", cache_size=cache_size
            )
            return MTLSMiddleware(bare_wsgi, config)

        hit = interleave("middleware.sqlite.verdict_hit", runner(bare_wsgi), runner(app(store, 10_000)),
                         rounds=rounds, calls=calls, block=max(1, calls // 20), warmup=1000, verbose=False)
        cold = interleave("middleware.sqlite.no_verdict_cache", runner(app(setup.store, 0)),
                          runner(app(store, 0)), rounds=rounds, calls=max(200, calls // 100),
                          block=max(20, calls // 2000), warmup=100, verbose=False)
        store.flush()
    finally:
        store.close()
    return {
        "hit_added": hit.median_added,
        "cold_memory": cold.median_base,
        "cold_sqlite": cold.median_cand,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--certificates", type=int, default=None, help="rows in the lookup file")
    parser.add_argument("--records", type=int, default=None, help="login records per history round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    certificates = args.certificates or (20_000 if args.quick else 1_000_000)
    records = args.records or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (2 if args.quick else 5)
    lookups = 2_000 if args.quick else 20_000
    reads = 100_000 if args.quick else 1_000_000

    header("SQLite store: lookups, the generation read, login-history throughput")
    with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        big = Path(directory) / "big.db"
        seconds = fill(big, certificates)
        size_mb = big.stat().st_size / 1e6
        print(f"  filled {certificates:,} certificates in {seconds:.1f} s ({size_mb:.0f} MB)", flush=True)
        lookup = bench_lookup(big, certificates, rounds, lookups)
        middleware = bench_middleware(big, rounds, 20_000 if args.quick else 200_000)
        attribute, memory, generation = bench_generation(Path(directory) / "gen.db", rounds, reads)
        history = bench_history(Path(directory) / "history.db", records, rounds)

    print("\n# medians over all block pairs")
    for name, raw, store in lookup:
        print(
            f"store.lookup.{name}: {store * 1e6:.1f} us/lookup in {certificates:,} certificates "
            f"(bare sqlite3 SELECT {raw * 1e6:.1f} us, added {(store - raw) * 1e6:.1f} us)"
        )
    print(
        f"middleware.sqlite.verdict_hit: added {middleware['hit_added'] * 1e6:.2f} us/request over the bare "
        f"app (the store is not asked, only its generation read; but each request's history row is "
        f"inserted by the writer thread meanwhile, so this loop runs at the history's sustained rate)"
    )
    print(
        f"middleware.sqlite.no_verdict_cache: {middleware['cold_sqlite'] * 1e6:.0f} us/request with "
        f"{certificates:,} certificates in SQLite, {middleware['cold_memory'] * 1e6:.0f} us with a "
        f"one-certificate MemoryStore (the whole pipeline: parse, validate, map, record)"
    )
    print(
        f"store.generation: {generation * 1e9:.0f} ns/read (target <= {GENERATION_TARGET_NS:.0f}) "
        f"{verdict(generation * 1e9 <= GENERATION_TARGET_NS)} "
        f"(plain attribute {attribute * 1e9:.0f} ns, MemoryStore.generation {memory * 1e9:.0f} ns)"
    )
    print(
        f"store.history.record: {history['record'] * 1e9:.0f} ns/call "
        f"(queue.Queue.put {history['queue_put'] * 1e9:.0f} ns)"
    )
    print(
        f"store.history.sustained: {history['rate']:,.0f} records/s through record()+flush() "
        f"(rounds {history['rate_min']:,.0f}..{history['rate_max']:,.0f}; {records:,} per round; "
        f"record() waited {history['waits']:.0f} times per round)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
