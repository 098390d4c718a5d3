"""Cold path, in process: parse + validate + map with the verdict cache off, against the raw
``cryptography`` calls that work needs, timed alternately in the same run.

The raw baseline does, per request, only what authenticating the chain cannot do without:

  decode    the header value URL-unquoted (proxy), or the environ's PEM strings as bytes (TLS)
  parse     x509.load_pem_x509_certificate for each presented certificate
  validate  PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()
            .verify(leaf, intermediates)   (the Store is built once, as the middleware does)
  map       SHA-256 fingerprint of the leaf and a dict lookup

The candidate is the middleware with ``cache_size=0`` and ``revocation="off"``:

  authenticate  Authenticator.extract_wsgi(environ) then .authenticate(presented, peer=...)
  wsgi          the whole mtls_middleware.wsgi.MTLSMiddleware call over a bare app (its baseline
                is the raw calls followed by the same bare app)

for a 2-certificate chain (leaf + issuing CA, the root as trust anchor), with P-256 and with
RSA-2048 keys, and two sources:

  proxy  nginx headers: X-SSL-Client-Cert is the URL-escaped leaf (what $ssl_client_escaped_cert
         holds); the issuing CA is configured as a known intermediate (nginx forwards only the leaf)
  tls    SSL_CLIENT_CERT (leaf) + SSL_CLIENT_CERT_CHAIN_0 (issuing CA): both parsed per request

Target (from the issue): candidate / baseline <= 1.25. Measured, not asserted.

    python benchmarks/bench_cold_path.py [--rounds 5] [--calls 1500] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from _common import (
    PEER,
    USER_ID,
    Comparison,
    Setup,
    header,
    interleave,
    key_label,
    make_setup,
    spread,
    verdict,
)
from bench_cached_path import bare_wsgi, base_environ, start_response
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import PolicyBuilder, Store

from mtls_middleware import ENVIRON_KEY, MTLSConfig
from mtls_middleware.certs import fingerprint, parse_chain
from mtls_middleware.wsgi import MTLSMiddleware

TARGET_RATIO = 1.25
UTC = dt.timezone.utc


def env_factory(setup: Setup, mode: str) -> Callable[[], dict[str, Any]]:
    base = base_environ()
    if mode == "proxy":
        base["HTTP_X_SSL_CLIENT_CERT"] = setup.escaped_leaf
        base["HTTP_X_SSL_CLIENT_VERIFY"] = "SUCCESS"
    else:
        base["SSL_CLIENT_CERT"] = setup.leaf_pem
        base["SSL_CLIENT_CERT_CHAIN_0"] = setup.intermediate_pem
        base["wsgi.url_scheme"] = "https"
    return base.copy


def config_for(setup: Setup, mode: str) -> MTLSConfig:
    common: dict[str, Any] = {
        "trust_roots": [setup.pki.root.cert],
        "store": setup.store,
        "revocation": "off",
        "cache_size": 0,
    }
    if mode == "proxy":
        return MTLSConfig(
            proxy="nginx", trusted_proxies=[PEER], intermediates=[setup.pki.issuing.cert], **common
        )
    return MTLSConfig(**common)


def raw_runner(setup: Setup, mode: str, make_env: Callable[[], dict[str, Any]], *, with_app: bool
               ) -> Callable[[int], float]:
    """The raw cryptography calls (optionally followed by the bare app), ``n`` times."""
    store = Store([setup.pki.root.cert])
    users = {setup.leaf.fingerprint: USER_ID}
    known_intermediates = [setup.pki.issuing.cert]
    load = x509.load_pem_x509_certificate
    sha256 = hashes.SHA256

    def one(env: dict[str, Any]) -> str:
        if mode == "proxy":
            leaf = load(unquote_to_bytes(env["HTTP_X_SSL_CLIENT_CERT"]))
            intermediates = known_intermediates
        else:
            leaf = load(env["SSL_CLIENT_CERT"].encode())
            intermediates = [load(env["SSL_CLIENT_CERT_CHAIN_0"].encode())]
        verifier = PolicyBuilder().store(store).time(dt.datetime.now(UTC)).build_client_verifier()
        verifier.verify(leaf, intermediates)
        return users[leaf.fingerprint(sha256()).hex()]

    if one(make_env()) != USER_ID:
        raise SystemExit("setup error: the raw baseline did not find the user")

    def run(n: int) -> float:
        counter = time.perf_counter
        t0 = counter()
        if with_app:
            for _ in range(n):
                env = make_env()
                one(env)
                bare_wsgi(env, start_response)
        else:
            for _ in range(n):
                one(make_env())
        return counter() - t0

    return run


def authenticate_runner(middleware: MTLSMiddleware, make_env: Callable[[], dict[str, Any]]
                        ) -> Callable[[int], float]:
    auth = middleware.authenticator
    identity = auth.authenticate(auth.extract_wsgi(make_env()), peer=PEER)
    if identity is None or identity.user_id != USER_ID:
        raise SystemExit(f"setup error: the authenticator did not accept the chain: {identity}")

    def run(n: int) -> float:
        counter = time.perf_counter
        t0 = counter()
        for _ in range(n):
            auth.authenticate(auth.extract_wsgi(make_env()), peer=PEER)
        return counter() - t0

    return run


def wsgi_runner(middleware: MTLSMiddleware, make_env: Callable[[], dict[str, Any]]) -> Callable[[int], float]:
    env = make_env()
    seen: list[str] = []
    middleware(env, lambda status, headers, exc_info=None: seen.append(status))
    if seen != ["200 OK"] or env.get(ENVIRON_KEY) is None:
        raise SystemExit(f"setup error: the middleware did not accept the request: {seen}")

    def run(n: int) -> float:
        counter = time.perf_counter
        t0 = counter()
        for _ in range(n):
            middleware(make_env(), start_response)
        return counter() - t0

    return run


def breakdown(setup: Setup, mode: str, middleware: MTLSMiddleware, *, rounds: int, calls: int,
              block: int) -> list[Comparison]:
    """Stage by stage: each of the middleware's stages against its raw counterpart."""
    auth = middleware.authenticator
    validator = auth.validator
    make_env = env_factory(setup, mode)
    presented = auth.extract_wsgi(make_env())
    if presented is None:
        raise SystemExit("setup error: nothing presented")
    items = presented.items
    pem = b"".join(items)
    leaf_pem = items[0]
    inter_pem = setup.pki.issuing.cert_pem
    load = x509.load_pem_x509_certificate
    store = Store([setup.pki.root.cert])
    configured = [setup.pki.issuing.cert]
    label = f"{key_label(setup.key_type)}.{mode}"

    def presented_intermediates() -> list[x509.Certificate]:
        return [] if mode == "proxy" else [load(inter_pem)]

    def timed(body: Callable[[], object]) -> Callable[[int], float]:
        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                body()
            return time.perf_counter() - t0
        return run

    def raw_verify() -> object:
        leaf = load(leaf_pem)
        verifier = PolicyBuilder().store(store).time(dt.datetime.now(UTC)).build_client_verifier()
        return verifier.verify(leaf, [*presented_intermediates(), *configured])

    stages: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("parse (parse_chain vs load_pem_x509_certificates)",
         lambda: x509.load_pem_x509_certificates(pem),
         lambda: parse_chain(items, max_certificates=10)),
        ("validate (Validator.validate vs raw verify)",
         raw_verify,
         lambda: validator.validate(load(leaf_pem), presented_intermediates())),
        ("leaf facts (fingerprint, subject, issuer, serial vs fingerprint)",
         lambda: load(leaf_pem).fingerprint(hashes.SHA256()).hex(),
         lambda: _leaf_facts_like_authenticator(load(leaf_pem))),
    ]
    # The validator's own extension policies, if the module (still in flux) exposes them.
    from mtls_middleware import validation

    ca_policy = getattr(validation, "_CA_POLICY", None)
    ee_policy = getattr(validation, "_EE_POLICY", None)
    if ca_policy is not None and ee_policy is not None:
        def policy_verify() -> object:
            leaf = load(leaf_pem)
            verifier = (
                PolicyBuilder().store(store).time(dt.datetime.now(UTC))
                .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
                .build_client_verifier()
            )
            return verifier.verify(leaf, [*presented_intermediates(), *configured])

        stages.insert(2, ("  of which: library verify with the validator's extension policies",
                          raw_verify, policy_verify))
    out = []
    for title, base, cand in stages:
        out.append(interleave(f"breakdown.{label}: {title}", timed(base), timed(cand),
                              rounds=rounds, calls=calls, block=block, warmup=min(50, calls),
                              verbose=False))
    return out


def _leaf_facts_like_authenticator(leaf: x509.Certificate) -> tuple[str, ...]:
    # What Authenticator._judge derives from the leaf before and after validation.
    return (
        fingerprint(leaf),
        leaf.subject.rfc4514_string(),
        leaf.issuer.rfc4514_string(),
        format(leaf.serial_number, "x"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1500, help="calls per side and round")
    parser.add_argument("--block", type=int, default=20, help="calls per alternating block")
    parser.add_argument("--profile", action="store_true", help="cProfile the authenticate path")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage against its raw counterpart (about a minute)")
    args = parser.parse_args(argv)

    header("cold path in process: cache off, against the raw cryptography calls it needs")
    results: list[Comparison] = []
    stages: list[Comparison] = []
    remainders: list[tuple[str, float, float]] = []
    for key_type in ("ec", "rsa2048"):
        setup = make_setup(key_type)  # type: ignore[arg-type]
        label = key_label(key_type)
        for mode in ("proxy", "tls"):
            make_env = env_factory(setup, mode)
            middleware = MTLSMiddleware(bare_wsgi, config_for(setup, mode))
            raw = raw_runner(setup, mode, make_env, with_app=False)
            raw_app = raw_runner(setup, mode, make_env, with_app=True)
            auth_run = authenticate_runner(middleware, make_env)
            wsgi_run = wsgi_runner(middleware, make_env)
            warmup = min(100, args.calls)
            results.append(interleave(f"cold_path.{label}.{mode}.authenticate", raw, auth_run,
                                      rounds=args.rounds, calls=args.calls, block=args.block,
                                      warmup=warmup))
            results.append(interleave(f"cold_path.{label}.{mode}.wsgi", raw_app, wsgi_run,
                                      rounds=args.rounds, calls=args.calls, block=args.block,
                                      warmup=warmup))
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                auth_run(args.calls)
                profiler.disable()
                print(f"\n## cProfile, {label}.{mode}.authenticate, {args.calls} calls")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(16)
            if args.breakdown:
                found = breakdown(setup, mode, middleware, rounds=3, calls=max(200, args.calls // 3),
                                  block=args.block)
                stages += found
                whole = results[-2]  # this chain's authenticate comparison
                parts = sum(r.median_added for r in found if "of which" not in r.name)
                remainders.append((f"breakdown.{label}.{mode}", whole.median_added, parts))

    print(
        "\n# medians over all block pairs; 'rounds' = min..max of the per-round median ratios;"
        " 'totals' = ratio of whole-round sums (outliers kept)"
    )
    for r in results:
        totals = statistics.median(c / b for b, c in r.round_totals())
        print(
            f"{r.name}: ratio={r.median_ratio:.3f}x target<={TARGET_RATIO} "
            f"(raw {r.median_base * 1e6:.1f} us, middleware {r.median_cand * 1e6:.1f} us, "
            f"added {r.median_added * 1e6:.1f} us; rounds {spread(r.round_medians('ratio'))}; "
            f"totals {totals:.3f}x{r.load_note})"
        )
    if stages:
        print("\n# stage breakdown: added us per request (median of 3 rounds), candidate vs raw")
        for r in stages:
            print(f"{r.name}: added {r.median_added * 1e6:6.1f} us (raw {r.median_base * 1e6:.1f} us, "
                  f"ours {r.median_cand * 1e6:.1f} us)")
        for name, whole, parts in remainders:
            print(f"{name}: remainder (extract, map, Identity, history record ...): about "
                  f"{(whole - parts) * 1e6:.1f} us of the {whole * 1e6:.1f} us added by authenticate")
    print("\n# summary")
    for r in results:
        ratio = r.median_ratio
        print(
            f"{r.name}: {ratio:.3f}x the raw cryptography calls, added "
            f"{r.median_added * 1e6:.1f} us/request (target <= {TARGET_RATIO}x) "
            f"{verdict(ratio <= TARGET_RATIO)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
