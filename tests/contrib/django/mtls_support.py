"""Helpers of the Django middleware, backend and check tests: settings, and one request driven
through Django's WSGI handler (the test ``Client``) or its real ASGI handler (through httpx).

Each request builds its handler anew, so that it loads the middleware under the settings of the
moment (``override_settings``). Importing this module sets Django up (and migrates its database).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgiref.sync import async_to_sync

from mtls_middleware.testing import Issued, client_certificate_environ, with_client_certificate
from tests.contrib.django.setup import setup_django

setup_django()

from mtls_middleware.contrib.django.backends import CertificateBackend  # noqa: E402  # needs Django set up

MIDDLEWARE = "mtls_middleware.contrib.django.middleware.MTLSMiddleware"
BACKEND = "mtls_middleware.contrib.django.backends.CertificateBackend"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
SESSION = "django.contrib.sessions.middleware.SessionMiddleware"
COMMON = "django.middleware.common.CommonMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"

#: The peer the proxy-mode tests trust, and one they do not.
PROXY_PEER = "192.0.2.10"
STRANGER = "198.51.100.7"


def register_users(
    alice: Issued, certificates: Mapping[str, Issued], *, also: Sequence[str] = ()
) -> Any:
    """The emptied database's store with alice (acme), carol (deactivated in the store), dave,
    erin and ``also`` (acme), each with the certificate of that name; Django users: dave (inactive
    in Django) and pat (a password-only user). Callers add the Django users they need."""
    from django.contrib.auth import get_user_model

    from mtls_middleware.contrib.django.store import shared_store

    store = shared_store()
    store.add_user("alice", org="acme")
    store.upload_certificate(alice.chain_pem, user_id="alice")
    store.add_user("carol", org="acme", active=False)
    store.upload_certificate(certificates["carol"].chain_pem, user_id="carol")
    for user_id in ("dave", "erin", *also):
        store.add_user(user_id, org="acme")
        store.upload_certificate(certificates[user_id].chain_pem, user_id=user_id)
    users = get_user_model().objects
    users.create_user("dave", is_active=False)
    users.create_user("pat", password="pat-password")
    return store


def project_settings(root: Path, **extra: Any) -> dict[str, Any]:
    """A project with the middleware after AuthenticationMiddleware, the backend first, the
    test views, and certificates judged against ``root`` (revocation off: the core's tests cover it)."""
    values: dict[str, Any] = {
        "ROOT_URLCONF": "tests.contrib.django.mtls_urls",
        "MIDDLEWARE": [SESSION, COMMON, AUTHENTICATION, MIDDLEWARE],
        "AUTHENTICATION_BACKENDS": [BACKEND, MODEL_BACKEND],
        "MTLS_TRUST_ROOTS": str(root),
        "MTLS_REVOCATION": "off",
    }
    values.update(extra)
    return values


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def error(self) -> str:
        body = self.json()
        assert set(body) == {"error", "message"}, body
        return str(body["error"])


def wsgi_get(
    path: str,
    *,
    chain: Issued | None = None,
    headers: Mapping[str, str] | None = None,
    peer: str = "127.0.0.1",
    environ: Mapping[str, str] | None = None,
    client: Any = None,
) -> Answer:
    """GET through Django's WSGI handler (``django.test.Client``); ``chain`` as a TLS server
    would put it in the environ, ``headers`` as HTTP request headers from ``peer``."""
    from django.test import Client

    extra: dict[str, str] = {"REMOTE_ADDR": peer}
    if chain is not None:
        extra.update(client_certificate_environ(chain))
    extra.update(environ or {})
    client = client or Client()
    response = client.get(path, headers=dict(headers or {}), **extra)
    return Answer(
        response.status_code, {k.lower(): v for k, v in response.items()}, response.content
    )


def asgi_get(
    path: str,
    *,
    chain: Issued | None = None,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    peer: str = "127.0.0.1",
    cookies: Mapping[str, str] | None = None,
) -> Answer:
    """GET through Django's real ASGI handler; ``chain`` in the scope's TLS extension (as a
    TLS-terminating ASGI server sets it), ``headers`` sent as given (duplicates kept)."""
    from django.core.handlers.asgi import ASGIHandler

    app: Any = ASGIHandler()
    if chain is not None:
        app = with_client_certificate(app, chain)
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=dict(cookies or {})
        ) as http:
            return await http.get(path, headers=items)

    response = async_to_sync(send)()
    return Answer(
        response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
    )


def get(kind: str, path: str, **options: Any) -> Answer:
    """:func:`wsgi_get` or :func:`asgi_get` by ``kind`` (``"wsgi"`` / ``"asgi"``)."""
    if kind == "wsgi":
        return wsgi_get(path, **options)
    return asgi_get(path, **options)


#: Paths the :func:`sync_only` middleware saw.
SYNC_ONLY_CALLS: list[str] = []


def sync_only(get_response: Any) -> Any:
    """A sync-only middleware (a plain function factory: Django marks it sync_capable only)."""
    SYNC_ONLY_CALLS.clear()

    def middleware(request: Any) -> Any:
        SYNC_ONLY_CALLS.append(request.path)
        return get_response(request)

    return middleware


class BrokenBackend:
    """An authentication backend whose lookup fails (a database outage, a bug)."""

    def authenticate(self, request: Any, *, mtls_identity: Any = None) -> Any:
        raise RuntimeError("database is down")

    def get_user(self, user_id: Any) -> Any:
        return None


#: Calls :class:`SpyCertificateBackend` received.
SPY_CALLS: list[Any] = []


class SpyCertificateBackend(CertificateBackend):
    """CertificateBackend, with the same signature, recording every call it gets."""

    def authenticate(self, request: Any, *, mtls_identity: Any = None) -> Any:
        SPY_CALLS.append(mtls_identity)
        return super().authenticate(request, mtls_identity=mtls_identity)


class CreatingCertificateBackend(CertificateBackend):
    """CertificateBackend creating unknown users, naming them after the identity's organisation."""

    create_unknown_user = True

    def configure_user(self, request: Any, user: Any, identity: Any) -> Any:
        user.first_name = identity.org
        return super().configure_user(request, user, identity)


class LoopProbeMapper:
    """The default mapper, noting for each call whether an asyncio event loop was running in
    the calling thread (the ASGI middleware must never do blocking work on one)."""

    def __init__(self) -> None:
        from mtls_middleware import FingerprintMapper

        self.inner = FingerprintMapper()
        self.on_loop: list[bool] = []

    def map(self, leaf: Any, fingerprint: str, store: Any) -> Any:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.on_loop.append(False)
        else:
            self.on_loop.append(True)
        return self.inner.map(leaf, fingerprint, store)
