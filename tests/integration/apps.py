"""Apps the integration tests start under real servers (gunicorn, uvicorn).

A server imports these by name, in a process of its own, so everything they need comes from
environment variables rather than from pytest fixtures:

``MTLS_IT_ROOTS``
    path of the trusted root PEM (required).
``MTLS_IT_INTERMEDIATES``
    path of a PEM of intermediate CAs the deployment knows (nginx and the stdlib TLS layer hand
    over only the leaf).
``MTLS_IT_USERS``
    path of a JSON list ``[{"user_id", "org", "active", "certificates": [PEM, ...]}]``
    registered into a fresh :class:`~mtls_middleware.MemoryStore`.
``MTLS_IT_PROXY``
    a header profile name (``nginx``); empty or unset reads the server's own TLS layer.
``MTLS_IT_TRUSTED``
    comma-separated trusted proxy addresses (with ``MTLS_IT_PROXY``).
``MTLS_IT_MODE``
    ``required`` (default) or ``optional``.

The WSGI app also answers :data:`HISTORY_PATH` itself, outside the middleware: the login history
of its store as JSON, newest first, so that tests can see what a server process recorded.

Start them with ``gunicorn 'tests.integration.apps:wsgi_app()'`` or
``uvicorn tests.integration.apps:asgi_app --factory``, from the repository root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from mtls_middleware import ENVIRON_KEY, MemoryStore, MTLSConfig
from mtls_middleware.admin.rest import serve_lifespan
from mtls_middleware.asgi import MTLSMiddleware as ASGIMiddleware
from mtls_middleware.sources.proxies import get_profile
from mtls_middleware.stores.base import Store
from mtls_middleware.wsgi import MTLSMiddleware as WSGIMiddleware

#: The request header through which nginx's own verdict reaches the app; echoed for the tests.
_VERIFY_KEY = "HTTP_X_SSL_CLIENT_VERIFY"
#: Served by :func:`wsgi_app` without authentication: the store's login history (tests only).
HISTORY_PATH = "/.history"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _users(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of users")
    return data


def build_store(users: Iterable[dict[str, Any]]) -> MemoryStore:
    """A MemoryStore holding ``users`` and their certificates."""
    store = MemoryStore()
    for user in users:
        user_id = user["user_id"]
        store.add_user(user_id, org=user.get("org", "default"), active=user.get("active", True))
        for pem in user.get("certificates", ()):
            store.upload_certificate(pem.encode(), user_id=user_id)
    return store


def config_from_env(environ: MutableMapping[str, str] | None = None) -> MTLSConfig:
    """The MTLSConfig the ``MTLS_IT_*`` variables describe."""
    env = os.environ if environ is None else environ
    proxy = env.get("MTLS_IT_PROXY") or None
    trusted = [a for a in env.get("MTLS_IT_TRUSTED", "").split(",") if a]
    mode = env.get("MTLS_IT_MODE", "required")
    return MTLSConfig(
        trust_roots=env["MTLS_IT_ROOTS"],
        intermediates=env.get("MTLS_IT_INTERMEDIATES") or (),
        store=build_store(_users(env.get("MTLS_IT_USERS"))),
        proxy=proxy,
        trusted_proxies=trusted,
        mode=mode,  # type: ignore[arg-type]  # checked by MTLSConfig
        revocation="off",
    )


def identity_json(identity: Any, verify: str | None) -> bytes:
    """What the echo apps answer: the identity's user and fingerprint, and nginx's verdict."""
    body: dict[str, Any] = {"user_id": None, "fingerprint": None, "proxy_verify": verify}
    if identity is not None:
        body.update(
            user_id=identity.user_id,
            org=identity.org,
            fingerprint=identity.fingerprint,
            source=identity.source,
        )
    return json.dumps(body).encode()


def _json_answer(start_response: Callable[..., Any], body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def make_echo_wsgi(verify_key: str = _VERIFY_KEY) -> WSGIApp:
    """A WSGI app answering 200 with :func:`identity_json`; the proxy's verdict read from
    ``verify_key`` (the environ key of the profile's verify header)."""

    def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        return _json_answer(start_response, identity_json(environ.get(ENVIRON_KEY), environ.get(verify_key)))

    return echo


#: The echo app of the nginx profile (and of the TLS layer, which has no verify header).
echo_wsgi = make_echo_wsgi()


def _verify_key(env: MutableMapping[str, str]) -> str:
    """The environ key of the configured profile's verify header (nginx's without a profile)."""
    proxy = env.get("MTLS_IT_PROXY")
    header = get_profile(proxy).verify_header if proxy else None
    return "HTTP_" + header.upper().replace("-", "_") if header else _VERIFY_KEY


def history_json(store: Store) -> bytes:
    """Every login record of ``store``, newest first, as a JSON list of objects."""
    return json.dumps([record._asdict() for record in store.login_history(limit=None)]).encode()


def wsgi_app() -> WSGIApp:
    """gunicorn factory: the middleware, configured from the environment, around the echo app;
    :data:`HISTORY_PATH` answered beside it."""
    config = config_from_env()
    protected = WSGIMiddleware(make_echo_wsgi(_verify_key(os.environ)), config)
    store = config.resolved_store

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HISTORY_PATH:
            return _json_answer(start_response, history_json(store))
        return protected(environ, start_response)

    return app


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def echo_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app answering HTTP with :func:`identity_json` (and accepting websockets)."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    headers = dict(scope.get("headers") or ())
    raw_verify = headers.get(b"x-ssl-client-verify")
    verify = raw_verify.decode("latin-1") if raw_verify is not None else None
    body = identity_json(scope.get(ENVIRON_KEY), verify)
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": body.decode()})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def asgi_app() -> ASGIMiddleware:
    """uvicorn factory (``--factory``): the ASGI middleware around the echo app."""
    return ASGIMiddleware(echo_asgi, config_from_env())
