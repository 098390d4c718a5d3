"""The REST API as the tests drive it: behind the real WSGI MTLSMiddleware, the caller presenting a
client certificate the way a TLS server hands it over (``SSL_CLIENT_CERT`` in the environ)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from werkzeug.test import Client

from mtls_middleware import MTLSConfig, Store
from mtls_middleware.admin.rest import RestAPI
from mtls_middleware.stores.base import MANAGE_CERTIFICATES
from mtls_middleware.testing import Issued, TestPKI, client_certificate_environ
from mtls_middleware.wsgi import MTLSMiddleware


class Presenting:
    """``app`` called with ``chain`` presented on every request (None: no certificate)."""

    def __init__(self, app: Any, chain: Issued | None) -> None:
        self.app = app
        self.environ = {} if chain is None else client_certificate_environ(chain)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ.update(self.environ)
        result: Iterable[bytes] = self.app(environ, start_response)
        return result


def protected(store: Store, pki: TestPKI, **options: Any) -> MTLSMiddleware:
    """The REST API behind the middleware, trusting ``pki``, revocation off."""
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    return MTLSMiddleware(RestAPI(store, **options), config)


def add_admin(store: Store, admin: Issued, user_id: str = "admin", org: str = "ops") -> None:
    store.add_user(user_id, org=org, permissions=[MANAGE_CERTIFICATES])
    store.upload_certificate(admin.chain_pem, user_id=user_id, label="admin card")


def client(store: Store, pki: TestPKI, chain: Issued | None, **options: Any) -> Client:
    return Client(Presenting(protected(store, pki, **options), chain))
