"""contrib/flask.py: the Flask extension, in process with Flask's test client.

The client certificate reaches the app where a TLS server puts it (``SSL_CLIENT_CERT`` and
``SSL_CLIENT_CERT_CHAIN_n`` in the WSGI environ, via ``client_certificate_environ``); the real
middleware judges it. The same app behind real nginx is in tests/integration/test_example_flask.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask_login
import pytest
from flask import Flask, g
from werkzeug.test import TestResponse

from mtls_middleware import ConfigurationError, Identity, MemoryStore, MTLSConfig, Reason
from mtls_middleware.contrib.flask import (
    MTLS,
    certificate_request_loader,
    current_identity,
    get_identity,
    mtls_required,
)
from mtls_middleware.testing import Issued, TestPKI, client_certificate_environ
from mtls_middleware.wsgi import MTLSMiddleware


def settings(pki: TestPKI, store: MemoryStore, **more: Any) -> dict[str, Any]:
    return {"MTLS_TRUST_ROOTS": pki.root_pem, "MTLS_STORE": store, "MTLS_REVOCATION": "off", **more}


def make_app(config: dict[str, Any] | None = None, *, extension: MTLS | None = None) -> Flask:
    """An app with views reading the identity each way the extension offers; ``calls`` counts
    the views that ran."""
    app = Flask(__name__)
    app.config.update(config or {})
    app.config["calls"] = []
    if extension is None:
        MTLS(app)
    else:
        extension.init_app(app)

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        app.config["calls"].append("whoami")
        identity = g.mtls_identity
        return {
            "user_id": identity.user_id if identity else None,
            "proxy_user_id": current_identity.user_id if current_identity else None,
            "same_object": get_identity() is identity,
            "source": identity.source if identity else None,
            "fingerprint": identity.fingerprint if identity else None,
        }

    @app.get("/private")
    @mtls_required
    def private() -> dict[str, Any]:
        app.config["calls"].append("private")
        return {"user_id": current_identity.user_id}

    @app.get("/reports")
    @mtls_required("reports")
    def reports() -> dict[str, Any]:
        app.config["calls"].append("reports")
        return {"user_id": current_identity.user_id}

    @app.get("/async-private")
    @mtls_required
    async def async_private() -> dict[str, Any]:
        app.config["calls"].append("async-private")
        return {"user_id": current_identity.user_id}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"identity": g.mtls_identity}

    return app


def get(app: Flask, path: str, chain: Issued | dict[str, str] | None = None) -> TestResponse:
    environ = chain if isinstance(chain, dict) else client_certificate_environ(chain) if chain else {}
    return app.test_client().get(path, environ_base=environ)


def refusal(response: TestResponse) -> tuple[int, str]:
    body = response.get_json()
    assert set(body) == {"error", "message"}, body
    assert body["message"] == Reason(body["error"]).message
    return response.status_code, body["error"]


@pytest.fixture
def app(pki: TestPKI, store: MemoryStore) -> Flask:
    return make_app(settings(pki, store))


@pytest.fixture
def optional_app(pki: TestPKI, store: MemoryStore) -> Flask:
    return make_app(settings(pki, store, MTLS_MODE="optional", MTLS_EXEMPT_PATHS=["/health"]))


# -- required mode (the default) -------------------------------------------------------------
def test_accepted_request_carries_its_identity(app: Flask, alice: Issued) -> None:
    response = get(app, "/whoami", alice)
    assert response.status_code == 200
    assert response.get_json() == {
        "user_id": "alice",
        "proxy_user_id": "alice",
        "same_object": True,
        "source": "tls:environ",
        "fingerprint": alice.fingerprint,
    }


@pytest.fixture(scope="module")
def foreign(other_pki: TestPKI) -> Issued:
    return other_pki.issue_client("mallory")


REFUSED = [
    pytest.param("bob", 403, "unknown_certificate", id="unregistered"),
    pytest.param("foreign", 403, "untrusted_issuer", id="other-ca"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
    pytest.param({"SSL_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"},
                 400, "malformed_certificate", id="garbage-pem"),
]  # fmt: skip


@pytest.mark.parametrize(("client", "status", "reason"), REFUSED)
def test_refused_request_gets_its_reason_and_never_reaches_the_view(
    app: Flask,
    request: pytest.FixtureRequest,
    client: str | dict[str, str] | None,
    status: int,
    reason: str,
) -> None:
    chain = request.getfixturevalue(client) if isinstance(client, str) else client
    response = get(app, "/whoami", chain)
    assert refusal(response) == (status, reason)
    assert response.headers["Content-Type"] == "application/json"
    assert app.config["calls"] == []


def test_the_middleware_is_the_core_wsgi_middleware(app: Flask) -> None:
    """Thin: the app is wrapped in mtls_middleware.wsgi.MTLSMiddleware, which decides."""
    assert isinstance(app.wsgi_app, MTLSMiddleware)
    extension = app.extensions["mtls"]
    assert isinstance(extension, MTLS)
    assert extension.middleware(app) is app.wsgi_app
    with app.app_context():
        assert extension.middleware() is app.wsgi_app


# -- optional mode and mtls_required ---------------------------------------------------------
def test_optional_mode_lets_a_request_without_certificate_through_without_identity(
    optional_app: Flask,
) -> None:
    response = get(optional_app, "/whoami")
    assert response.status_code == 200
    assert response.get_json()["user_id"] is None
    assert response.get_json()["proxy_user_id"] is None


@pytest.mark.parametrize("path", ["/private", "/reports", "/async-private"])
def test_mtls_required_refuses_a_request_without_identity(optional_app: Flask, path: str) -> None:
    response = get(optional_app, path)
    assert refusal(response) == (401, "no_certificate")
    assert optional_app.config["calls"] == []


@pytest.mark.parametrize("path", ["/private", "/async-private"])
def test_mtls_required_passes_a_request_with_identity(optional_app: Flask, alice: Issued, path: str) -> None:
    response = get(optional_app, path, alice)
    assert response.status_code == 200
    assert response.get_json() == {"user_id": "alice"}


def test_optional_mode_still_refuses_a_bad_certificate(optional_app: Flask, bob: Issued) -> None:
    assert refusal(get(optional_app, "/private", bob)) == (403, "unknown_certificate")


def test_mtls_required_with_permission(optional_app: Flask, store: MemoryStore, alice: Issued) -> None:
    calls: list[str] = optional_app.config["calls"]
    assert refusal(get(optional_app, "/reports", alice)) == (403, "permission_denied")
    assert calls == []

    store.set_user_permissions("alice", ["reports"])
    response = get(optional_app, "/reports", alice)
    assert response.status_code == 200
    assert response.get_json() == {"user_id": "alice"}
    assert calls == ["reports"]


@pytest.mark.parametrize("permission", ["", 42], ids=["empty", "not-a-string"])
def test_mtls_required_refuses_a_bad_permission_name(permission: Any) -> None:
    with pytest.raises(ConfigurationError):
        mtls_required(permission)


def test_exempt_path_is_served_without_identity(pki: TestPKI, store: MemoryStore) -> None:
    """Required mode, no certificate: an exempt path still reaches its view, g.mtls_identity None."""
    app = make_app(settings(pki, store, MTLS_EXEMPT_PATHS=["/health"]))
    response = get(app, "/health")
    assert (response.status_code, response.get_json()) == (200, {"identity": None})
    assert refusal(get(app, "/whoami")) == (401, "no_certificate")


def test_current_identity_outside_a_request_is_falsy() -> None:
    assert not current_identity
    assert get_identity() is None


# -- configuration ---------------------------------------------------------------------------
def test_config_comes_from_app_config(pki: TestPKI, store: MemoryStore) -> None:
    app = make_app(settings(pki, store, MTLS_MODE="optional", MTLS_CACHE_SIZE=3))
    config = app.extensions["mtls"].middleware(app).config
    assert (config.mode, config.cache_size, config.resolved_store) == ("optional", 3, store)


TYPOS = [
    pytest.param({"MTLS_TRUSTED_PROXY": ["127.0.0.1"]}, "MTLS_TRUSTED_PROXIES", id="singular-trusted-proxy"),
    pytest.param({"MTLS_MODES": "optional"}, "MTLS_MODE", id="plural-mode"),
]


@pytest.mark.parametrize(("extra", "suggested"), TYPOS)
def test_typo_in_app_config_fails_at_init(
    pki: TestPKI, store: MemoryStore, extra: dict[str, Any], suggested: str
) -> None:
    app = Flask(__name__)
    app.config.update(settings(pki, store, **extra))
    with pytest.raises(ConfigurationError) as info:
        MTLS(app)
    assert suggested in info.value.detail
    assert "mtls" not in app.extensions


def test_missing_setting_fails_at_init(pki: TestPKI) -> None:
    app = Flask(__name__)
    app.config["MTLS_TRUST_ROOTS"] = pki.root_pem
    with pytest.raises(ConfigurationError) as info:
        MTLS(app)
    assert "MTLS_STORE" in info.value.detail


def test_bad_value_in_app_config_fails_at_init(pki: TestPKI, store: MemoryStore) -> None:
    app = Flask(__name__)
    app.config.update(settings(pki, store, MTLS_PROXY="nginx"))  # no MTLS_TRUSTED_PROXIES
    with pytest.raises(ConfigurationError) as info:
        MTLS(app)
    assert "trusted_proxies" in info.value.detail


def test_explicit_config_wins_and_app_config_is_not_read(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    config = MTLSConfig(trust_roots=pki.root_pem, store=store, revocation="off", mode="optional")
    # A typo in app.config does not matter: with an explicit config app.config is not read.
    app = Flask(__name__)
    app.config["MTLS_MODES"] = "required"
    MTLS(app, config=config)
    assert app.extensions["mtls"].middleware(app).config is config


def test_config_must_be_an_mtlsconfig() -> None:
    with pytest.raises(ConfigurationError):
        MTLS(config={"trust_roots": "roots.pem"})  # type: ignore[arg-type]


def test_init_app_twice_is_refused(app: Flask) -> None:
    with pytest.raises(ConfigurationError):
        MTLS(app)
    with pytest.raises(ConfigurationError):
        app.extensions["mtls"].init_app(app)


def test_middleware_of_an_app_not_set_up_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        MTLS().middleware(Flask(__name__))


# -- factories and several apps --------------------------------------------------------------
def test_factory_pattern_two_apps_one_extension(pki: TestPKI, alice: Issued, bob: Issued) -> None:
    """One MTLS() and init_app per app: each app keeps its own configuration and store."""
    mtls = MTLS()

    def create_app(user: Issued, user_id: str) -> Flask:
        store = MemoryStore()
        store.add_user(user_id)
        store.upload_certificate(user.chain_pem, user_id=user_id)
        return make_app(settings(pki, store), extension=mtls)

    first, second = create_app(alice, "alice"), create_app(bob, "bob")
    assert first.extensions["mtls"] is second.extensions["mtls"] is mtls
    assert mtls.middleware(first) is not mtls.middleware(second)

    assert get(first, "/whoami", alice).get_json()["user_id"] == "alice"
    assert get(second, "/whoami", bob).get_json()["user_id"] == "bob"
    assert refusal(get(first, "/whoami", bob)) == (403, "unknown_certificate")
    assert refusal(get(second, "/whoami", alice)) == (403, "unknown_certificate")


def test_two_apps_with_own_extensions_in_one_process(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    required = make_app(settings(pki, store))
    optional = make_app(settings(pki, store, MTLS_MODE="optional"))
    assert refusal(get(required, "/whoami")) == (401, "no_certificate")
    assert get(optional, "/whoami").status_code == 200
    assert get(required, "/whoami", alice).get_json()["user_id"] == "alice"


# -- Flask-Login -----------------------------------------------------------------------------
class User(flask_login.UserMixin):  # type: ignore[misc]
    def __init__(self, user_id: str, org: str) -> None:
        self.id = user_id
        self.org = org


def login_app(pki: TestPKI, store: MemoryStore, load: Callable[[Identity], User | None]) -> Flask:
    app = make_app(settings(pki, store, MTLS_MODE="optional"))
    app.config["SECRET_KEY"] = "test"
    manager = flask_login.LoginManager(app)
    manager.request_loader(certificate_request_loader(load))

    @app.get("/account")
    @flask_login.login_required
    def account() -> dict[str, Any]:
        user = flask_login.current_user
        return {"id": user.id, "org": user.org}

    return app


def test_flask_login_request_loader_logs_in_the_certificates_user(
    pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    app = login_app(pki, store, lambda identity: User(identity.user_id, identity.org))
    response = get(app, "/account", alice)
    assert response.status_code == 200
    assert response.get_json() == {"id": "alice", "org": "acme"}


def test_flask_login_without_certificate_is_anonymous(pki: TestPKI, store: MemoryStore) -> None:
    app = login_app(pki, store, lambda identity: User(identity.user_id, identity.org))
    assert get(app, "/account").status_code == 401  # Flask-Login's unauthorized()


def test_flask_login_loader_may_refuse_a_user(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    app = login_app(pki, store, lambda identity: None)
    assert get(app, "/account", alice).status_code == 401


def test_flask_login_user_is_not_kept_in_the_session(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    """The certificate logs in each request: the next request without it is anonymous."""
    app = login_app(pki, store, lambda identity: User(identity.user_id, identity.org))
    client = app.test_client()
    assert client.get("/account", environ_base=client_certificate_environ(alice)).status_code == 200
    assert client.get("/account").status_code == 401
