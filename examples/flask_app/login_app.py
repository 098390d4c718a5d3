"""The example with a browser login page: "Log in with certificate", then an ordinary session.

People use the site at https://localhost:8444, where nginx asks for no certificate, so the
browser never shows its certificate prompt there. The login page's button posts to
https://localhost:8443/login/certificate, the one path of the listener that asks for a client
certificate (``ssl_verify_client optional_no_ca``); ``CertificateLogin`` judges the certificate
(the same pipeline, the same login history), logs the user in with Flask-Login and sends the
browser back to the site. Deleting the certificate (``mtls-admin cert delete``) or deactivating
the user ends the session on its next request. Start it with
``APP='login_app:create_app()' NGINX_CONF=nginx-login.conf ./run.sh``; see README.md.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from flask import Flask, Response, redirect, render_template_string, url_for
from flask_login import LoginManager, UserMixin, current_user, login_required, logout_user

from mtls_middleware import ManagementError
from mtls_middleware.contrib.flask import MTLS, CertificateLogin, get_certificate_session

#: Where make_demo.py writes the demo PKI, the CRLs, the store and the session key.
DEMO = Path(__file__).resolve().parent / "demo"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font:16px system-ui;margin:3em auto;max-width:36em}
.mtls-login-error{color:#a00}button{font-size:1em;padding:.5em 1em}</style></head>
<body><h1>{{ title }}</h1>{{ body|safe }}</body></html>"""

LOGIN = """<p>Log in with the client certificate in your browser or on your smart card.</p>
{{ certificate_login_button() }}"""

HOME = """<p id="who">Signed in as <b>{{ user.id }}</b> of <b>{{ user.org }}</b>.</p>
{% if binding %}<p>Certificate <code>{{ binding.fingerprint[:16] }}…</code>,
valid until {{ until }}.</p>{% endif %}
<form method="post" action="{{ url_for('logout') }}"><button id="logout">Log out</button></form>"""


class User(UserMixin):
    """The app's user: here simply the store's user (your app would have its own table)."""

    def __init__(self, user_id: str, org: str, active: bool) -> None:
        self.id = user_id
        self.org = org
        self.active = active

    @property
    def is_active(self) -> bool:
        return self.active


def create_app() -> Flask:
    """The app factory (``gunicorn 'login_app:create_app()'``)."""
    app = Flask(__name__)
    app.config.from_mapping(
        # Every worker must sign sessions with the same key: make_demo.py wrote one.
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY") or (DEMO / "secret_key").read_text().strip(),
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # the login form posts same-site (another port)
        MTLS_TRUST_ROOTS=str(DEMO / "root.pem"),
        MTLS_INTERMEDIATES=str(DEMO / "intermediates.pem"),
        MTLS_STORE=f"sqlite:///{DEMO / 'mtls.db'}",
        MTLS_PROXY="nginx",
        MTLS_TRUSTED_PROXIES=["127.0.0.1"],
        MTLS_CRLS=[str(DEMO / "root.crl"), str(DEMO / "issuing.crl")],
        # The site asks for no certificate: requests without one are served (as anonymous, or
        # as the session's user). The login view judges its certificate itself.
        MTLS_MODE="optional",
        MTLS_EXEMPT_PATHS=["/health", "/login/certificate"],
        MTLS_LOGIN_SITE_URL="https://localhost:8444",
        MTLS_LOGIN_URL="https://localhost:8443/login/certificate",
    )
    app.config.from_prefixed_env()  # FLASK_MTLS_LOGIN_SITE_URL=... etc. override
    mtls = MTLS(app)
    store = mtls.middleware(app).config.resolved_store

    def find_user(user_id: str) -> User | None:
        try:
            record = store.get_user(user_id)
        except ManagementError:
            return None
        return User(record.user_id, record.org, record.active)

    login_manager = LoginManager(app)
    login_manager.login_view = "login"
    login_manager.user_loader(find_user)
    CertificateLogin(app, load_user=lambda identity: find_user(identity.user_id))

    def page(title: str, body: str, **context: object) -> str:
        inner = render_template_string(body, **context)  # escaped here; |safe in PAGE
        return render_template_string(PAGE, title=title, body=inner)

    @app.get("/")
    @login_required
    def home() -> str:
        binding = get_certificate_session()  # every session here comes from a certificate login
        until = dt.datetime.fromtimestamp(binding.not_after, dt.timezone.utc).date() if binding else None
        return page("Welcome", HOME, user=current_user, binding=binding, until=until)

    @app.get("/login")
    def login() -> str:
        return page("Log in", LOGIN)

    @app.post("/logout")
    def logout() -> Response:
        logout_user()
        return redirect(url_for("login"), 303)  # type: ignore[return-value]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
