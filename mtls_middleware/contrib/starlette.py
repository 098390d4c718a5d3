"""Starlette integration: ``request.user`` and ``@requires`` from the certificate identity.

Our ASGI :class:`~mtls_middleware.asgi.MTLSMiddleware` decides; this module only translates its
verdict into Starlette's authentication model. Stack the middleware with ours **outermost**, so
that it has put the identity into the scope before Starlette's ``AuthenticationMiddleware`` reads
it::

    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    from mtls_middleware import MTLSError
    from mtls_middleware.asgi import MTLSMiddleware
    from mtls_middleware.contrib.starlette import MTLSAuthBackend, mtls_exception_handler

    @requires("mtls")
    async def homepage(request):
        return JSONResponse({"user": request.user.display_name})

    app = Starlette(
        routes=[...],
        middleware=[
            Middleware(MTLSMiddleware, config=config),              # first listed = outermost
            Middleware(AuthenticationMiddleware, backend=MTLSAuthBackend()),
        ],
        exception_handlers={MTLSError: mtls_exception_handler},    # optional, see below
    )

An accepted connection's ``request.user`` is a :class:`CertificateUser` (the whole
:class:`~mtls_middleware.identity.Identity` is ``request.user.mtls_identity``; ``identity`` is the
user id, as Starlette's ``BaseUser`` defines it) and ``request.auth.scopes``
are ``"authenticated"``, ``"mtls"`` and the user's permissions (``"enforce_mtls"``, ``"api_only"``
...), so ``@requires("mtls")`` or ``@requires("api_only")`` work. A connection without an identity
(``mode="optional"`` without a certificate, an exempt path, or no ``MTLSMiddleware`` at all) gets
Starlette's ``UnauthenticatedUser`` and no scopes: ``@requires`` refuses it the Starlette way.

``mtls_exception_handler`` (:func:`handle_mtls_error`) answers an
:class:`~mtls_middleware.errors.MTLSError` raised in a view (for example by
:func:`~mtls_middleware.identity.require_certificate_login`) with our status and
``{"error": code, "message": sentence}`` body, and closes a WebSocket with code 1008 and the reason
code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from ..asgi import WEBSOCKET_POLICY_VIOLATION
from ..errors import MTLSError
from ..identity import ENVIRON_KEY, Identity
from ..wsgi import error_response

if TYPE_CHECKING:
    from starlette.types import HTTPExceptionHandler

__all__ = [
    "MTLS_SCOPE",
    "CertificateUser",
    "MTLSAuthBackend",
    "get_identity",
    "handle_mtls_error",
    "mtls_exception_handler",
    "refusal_response",
]

log = logging.getLogger("mtls_middleware")

#: The auth scope every certificate-authenticated connection has: ``@requires("mtls")``.
MTLS_SCOPE = "mtls"


def get_identity(conn: HTTPConnection) -> Identity | None:
    """The identity our ``MTLSMiddleware`` attached to this connection, or None.

    Only an :class:`Identity` object counts: the scope key is set by the middleware, never from a
    request.
    """
    identity = conn.scope.get(ENVIRON_KEY)
    return identity if isinstance(identity, Identity) else None


class CertificateUser(BaseUser):
    """A Starlette user authenticated by client certificate.

    ``identity`` and ``display_name`` are the user id (Starlette's contract: a string); the whole
    certificate identity (org, fingerprint, subject, chain, revocation ...) is ``mtls_identity``.
    """

    __slots__ = ("mtls_identity",)

    def __init__(self, identity: Identity) -> None:
        self.mtls_identity = identity

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.mtls_identity.user_id

    @property
    def identity(self) -> str:
        return self.mtls_identity.user_id

    @property
    def user_id(self) -> str:
        return self.mtls_identity.user_id

    @property
    def org(self) -> str:
        return self.mtls_identity.org

    @property
    def permissions(self) -> frozenset[str]:
        return self.mtls_identity.permissions

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CertificateUser) and other.mtls_identity == self.mtls_identity

    def __hash__(self) -> int:
        return hash(self.mtls_identity.fingerprint)

    def __repr__(self) -> str:
        return f"CertificateUser({self.mtls_identity.user_id!r}, org={self.mtls_identity.org!r})"


class MTLSAuthBackend(AuthenticationBackend):
    """Translates the identity our ``MTLSMiddleware`` attached into Starlette's user and scopes.

    It decides nothing: without an identity it returns None (Starlette then sets
    ``UnauthenticatedUser``), with one it returns scopes ``"authenticated"``, ``"mtls"`` and the
    identity's permissions, sorted. It never raises.
    """

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        identity = get_identity(conn)
        if identity is None:
            return None
        scopes = ["authenticated", MTLS_SCOPE, *sorted(identity.permissions)]
        return AuthCredentials(scopes), CertificateUser(identity)


def refusal_response(error: MTLSError) -> Response:
    """Our refusal as a Starlette response: the reason's status, ``{"error", "message"}`` JSON."""
    _status, headers, body = error_response(error)
    return Response(
        body,
        status_code=error.status,
        headers={k: v for k, v in headers if k != "Content-Length"},
    )


async def handle_mtls_error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """Answer an :class:`MTLSError` raised while handling ``conn`` (an HTTP request or WebSocket).

    HTTP: :func:`refusal_response`. WebSocket: accepted if still connecting (so that the close
    code reaches the client rather than a bare HTTP 403), then closed with 1008 and the reason
    code; nothing is returned.
    """
    if not isinstance(exc, MTLSError):  # registered for another class by mistake: do not hide it
        raise exc
    log.info(
        "mtls_middleware refused in the app: reason=%s path=%s detail=%s",
        exc.reason.value, conn.url.path, exc.detail,
    )
    if isinstance(conn, WebSocket):
        if conn.application_state == WebSocketState.CONNECTING:
            await conn.accept()
        if conn.application_state == WebSocketState.CONNECTED:
            await conn.close(WEBSOCKET_POLICY_VIOLATION, exc.reason.value)
        return None
    return refusal_response(exc)


#: :func:`handle_mtls_error`, typed as Starlette's ``exception_handlers`` mapping expects:
#: ``Starlette(exception_handlers={MTLSError: mtls_exception_handler})``.
mtls_exception_handler = cast("HTTPExceptionHandler", handle_mtls_error)
