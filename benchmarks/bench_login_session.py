"""The certificate session check of browser login: what it adds to every page of a logged-in user.

Each measurement is interleaved with a baseline run in the same process:

  flask_page      a Flask-Login ``@login_required`` page requested (WSGI call, no HTTP) with a
                  session cookie. Baseline: the same app (MTLS extension in optional mode,
                  LoginManager, CertificateLogin) with a session that has no certificate binding
                  (as after a password login): the session check then returns at once. Candidate:
                  a session opened by the certificate login view, checked by SessionGuard (the
                  store unchanged: a dictionary lookup). What it adds is the check and Flask
                  decoding a longer session cookie (the binding: ~140 more bytes) on every request.
  flask_vs_bare   the same certificate session page against a bare Flask-Login app (no
                  mtls_middleware at all): the whole cost of the extension on a browser page.
  guard_check     ``SessionGuard.check`` alone, per call, against a ``dict.get`` of the same key
                  (what remembering the verdict costs at the least); SQLite store. Target: at most
                  1 us per check (no store query: tests/test_login.py counts them).

    python benchmarks/bench_login_session.py [--quick] [--rounds 5]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from _common import header, interleave, make_setup, spread, verdict
from flask import Flask
from flask_login import LoginManager, UserMixin, login_required, login_user
from werkzeug.test import EnvironBuilder

from mtls_middleware.contrib.flask import MTLS, CertificateLogin
from mtls_middleware.login import SessionBinding, SessionGuard
from mtls_middleware.stores import open_store
from mtls_middleware.testing import client_certificate_environ

CHECK_TARGET_US = 1.0
SITE = "https://app.example"


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def _flask_app(store: Any, root_pem: bytes, *, mtls: bool) -> Flask:
    app = Flask(__name__)
    app.secret_key = secrets.token_hex(16)
    users = {"alice": User("alice")}
    if mtls:
        app.config.update(
            MTLS_TRUST_ROOTS=root_pem, MTLS_STORE=store, MTLS_REVOCATION="off", MTLS_MODE="optional",
            MTLS_EXEMPT_PATHS=["/login/certificate"], MTLS_LOGIN_SITE_URL=SITE,
        )  # fmt: skip
        MTLS(app)
    LoginManager(app).user_loader(users.get)
    if mtls:
        CertificateLogin(app, load_user=lambda identity: users.get(identity.user_id))

    @app.get("/home")
    @login_required
    def home() -> str:
        return "ok"

    @app.post("/password-login")
    def password_login() -> str:
        login_user(users["alice"])
        return "ok"

    return app


def _cookie(response: Any) -> str:
    jar = SimpleCookie()
    for value in response.headers.getlist("Set-Cookie"):
        jar.load(value)
    return "; ".join(f"{k}={v.value}" for k, v in jar.items())


def _page_runner(app: Flask, cookie: str, environ_base: dict[str, str]) -> Callable[[int], float]:
    # The address and User-Agent the session was made with: Flask-Login's session protection
    # would otherwise rewrite the session (and its cookie) on every request.
    template = EnvironBuilder(
        path="/home", headers={"Cookie": cookie}, base_url=SITE, environ_base=environ_base
    ).get_environ()
    wsgi = app.wsgi_app
    # A first call proves the steady state: 200 for this session, and no cookie rewritten. A
    # runner that measured a redirect to the login page would compare nothing.
    answers: list[tuple[str, Any]] = []
    body = wsgi(dict(template), lambda status, headers, exc_info=None: answers.append((status, headers)))
    b"".join(body)
    status, headers = answers[0]
    if not status.startswith("200") or any(name.lower() == "set-cookie" for name, _ in headers):
        raise SystemExit(f"the page answered {status} {headers}: not a steady logged-in session")

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            for _chunk in wsgi(dict(template), start_response):
                pass
        return time.perf_counter() - start

    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calls = 2000 if args.quick else 20_000
    header("certificate session check (browser login)")

    setup = make_setup()
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(f"sqlite:///{Path(directory) / 'bench.db'}")
        try:
            store.add_user("alice", org="acme")
            store.upload_certificate(setup.leaf.chain_pem, user_id="alice")
            root = setup.pki.root_pem
            app = _flask_app(store, root, mtls=True)
            bare = _flask_app(store, root, mtls=False)
            client = app.test_client()
            environ_base = dict(client.environ_base)
            certificate_session = _cookie(
                client.post("/login/certificate", headers={"Origin": SITE},
                            environ_base=client_certificate_environ(setup.leaf))
            )  # fmt: skip
            password_session = _cookie(app.test_client().post("/password-login"))
            bare_session = _cookie(bare.test_client().post("/password-login"))

            page = interleave(
                "flask_page", _page_runner(app, password_session, environ_base),
                _page_runner(app, certificate_session, environ_base),
                rounds=args.rounds, calls=calls, block=200, warmup=500,
            )  # fmt: skip
            whole = interleave(
                "flask_vs_bare", _page_runner(bare, bare_session, environ_base),
                _page_runner(app, certificate_session, environ_base),
                rounds=args.rounds, calls=calls, block=200, warmup=500,
            )  # fmt: skip

            guard = SessionGuard(app.extensions["mtls"].middleware(app).authenticator)
            binding = SessionBinding.for_identity(
                app.extensions["mtls"].middleware(app).authenticator.authenticate_wsgi(
                    client_certificate_environ(setup.leaf)
                ),
                "alice",
            )
            remembered = {(binding.fingerprint, binding.user_id, binding.org): None}
            key = (binding.fingerprint, binding.user_id, binding.org)

            def base(n: int) -> float:
                get = remembered.get
                start = time.perf_counter()
                for _ in range(n):
                    get(key)
                return time.perf_counter() - start

            def cand(n: int) -> float:
                check = guard.check
                start = time.perf_counter()
                for _ in range(n):
                    check(binding)
                return time.perf_counter() - start

            micro = interleave(
                "guard_check", base, cand, rounds=args.rounds, calls=calls * 10, block=2000, warmup=1000,
            )  # fmt: skip
        finally:
            store.close()

    print()
    print(f"flask_page:    certificate session / binding-less session: median {page.median_ratio:.3f}x "
          f"(rounds {spread(page.round_medians('ratio'))}), added {page.median_added * 1e6:.2f} us "
          f"per page{page.load_note}")
    print(f"flask_vs_bare: certificate session page / bare Flask-Login page: "
          f"median {whole.median_ratio:.3f}x, added {whole.median_added * 1e6:.2f} us "
          "(the extension's whole cost on a browser page)")
    check_us = micro.median_cand * 1e6
    print(f"guard_check:   {check_us * 1e3:.0f} ns per check against {micro.median_base * 1e9:.0f} ns "
          f"for a dict.get (store unchanged, SQLite generation); target <= {CHECK_TARGET_US:.1f} us: "
          f"{verdict(check_us <= CHECK_TARGET_US)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
