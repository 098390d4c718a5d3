"""FastAPI integration: the certificate identity as a dependency, and ``mutualTLS`` in OpenAPI.

Our ASGI :class:`~mtls_middleware.asgi.MTLSMiddleware` decides; these dependencies only hand its
verdict to your endpoints::

    from fastapi import FastAPI
    from mtls_middleware.asgi import MTLSMiddleware
    from mtls_middleware.contrib.fastapi import CertificateIdentity, install

    app = FastAPI()
    install(app)                                  # our JSON refusals; checks the OpenAPI version
    app.add_middleware(MTLSMiddleware, config=config)

    @app.get("/me")
    async def me(identity: CertificateIdentity):  # Annotated[Identity, Security(require_identity)]
        return {"user": identity.user_id, "org": identity.org}

- :data:`require_identity` (a :class:`MutualTLS` security scheme) returns the
  :class:`~mtls_middleware.identity.Identity` of the connection and refuses one without it:
  HTTP 401 with our body ``{"error": "no_certificate", "message": ...}`` (once :func:`install` is
  called; without it FastAPI's own handler still answers 401, as ``{"detail": "no_certificate"}``),
  a WebSocket closed with code 1008 and reason ``no_certificate``. Every operation that depends on
  it is documented in OpenAPI 3.1 with ``security: [{"mutualTLS": []}]`` and
  ``components.securitySchemes.mutualTLS = {"type": "mutualTLS"}`` (FastAPI's own models cannot
  express that type: :func:`install` rewrites a stand-in entry, and :func:`declare_mutual_tls`
  does it for a document you build yourself). To mark every operation,
  declare it once: ``FastAPI(dependencies=[Security(require_identity)])`` or on an ``APIRouter``
  (leave exempt paths such as ``/health`` outside it).
- :func:`optional_identity` returns the identity or None (``mode="optional"``); it declares no
  security requirement.
- :func:`install` registers one exception handler for our refusals and for any
  :class:`~mtls_middleware.errors.MTLSError` raised in an endpoint (for example by
  :func:`~mtls_middleware.identity.require_certificate_login`): the reason's status and our JSON
  body, or a WebSocket close 1008 with the reason code.

``request.user`` and ``@requires`` come from :mod:`mtls_middleware.contrib.starlette`
(``AuthenticationMiddleware`` with ``MTLSAuthBackend``, added *before* our middleware with
``add_middleware``, since the last one added is outermost).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Security
from fastapi.openapi.models import HTTPBase
from fastapi.security.base import SecurityBase
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from ..asgi import WEBSOCKET_POLICY_VIOLATION
from ..errors import ConfigurationError, MTLSError, NoCertificateError, Reason
from ..identity import Identity
from .starlette import get_identity, handle_mtls_error

__all__ = [
    "MUTUAL_TLS",
    "CertificateIdentity",
    "CertificateRefused",
    "MutualTLS",
    "OptionalCertificateIdentity",
    "WebSocketCertificateRefused",
    "declare_mutual_tls",
    "install",
    "optional_identity",
    "require_identity",
]

#: The OpenAPI 3.1 security scheme type (``components.securitySchemes.<name>.type``).
MUTUAL_TLS = "mutualTLS"

_PLACEHOLDER_SCHEME = "x-mtls-middleware-mutual-tls"

_DESCRIPTION = (
    "Mutual TLS: present a client certificate registered to your user. A refusal is answered "
    'with {"error": "<reason code>", "message": "<sentence>"}.'
)


def _placeholder(description: str | None) -> HTTPBase:
    # FastAPI's OpenAPI models predate OpenAPI 3.1's mutualTLS type and refuse it while the
    # document is built; this stand-in marks the entry, and install() rewrites it afterwards.
    return HTTPBase(scheme=_PLACEHOLDER_SCHEME, description=description)


def declare_mutual_tls(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn our stand-in entries of an OpenAPI document into ``{"type": "mutualTLS"}``; in place.

    :func:`install` does this for ``app.openapi()``; call it yourself on a document you build
    with ``fastapi.openapi.utils.get_openapi``. Returns ``schema``.
    """
    schemes = schema.get("components", {}).get("securitySchemes", {})
    for name, scheme in schemes.items():
        if scheme.get("type") == "http" and scheme.get("scheme") == _PLACEHOLDER_SCHEME:
            entry: dict[str, Any] = {"type": MUTUAL_TLS}
            if scheme.get("description"):
                entry["description"] = scheme["description"]
            schemes[name] = entry
    return schema


class CertificateRefused(HTTPException):
    """An HTTP request refused by a dependency; ``error`` is the :class:`MTLSError` to answer with.

    A ``starlette.exceptions.HTTPException``, so that without :func:`install` FastAPI's own handler
    still answers with the right status (and ``{"detail": "<reason code>"}``).
    """

    def __init__(self, error: MTLSError) -> None:
        super().__init__(status_code=error.status, detail=error.reason.value)
        self.error = error


class WebSocketCertificateRefused(WebSocketException):
    """A WebSocket refused by a dependency: close code 1008, the reason code as close reason.

    Without :func:`install`, Starlette closes it before accepting (clients see an HTTP 403);
    with it, the connection is accepted first so that code and reason reach the client.
    """

    def __init__(self, error: MTLSError) -> None:
        super().__init__(code=WEBSOCKET_POLICY_VIOLATION, reason=error.reason.value)
        self.error = error


def _refuse(conn: HTTPConnection, error: MTLSError) -> Exception:
    if isinstance(conn, WebSocket) or conn.scope.get("type") == "websocket":
        return WebSocketCertificateRefused(error)
    return CertificateRefused(error)


class MutualTLS(SecurityBase):
    """A FastAPI security scheme for client certificates: the dependency, and its OpenAPI entry.

    Calling it (FastAPI does, as a dependency) returns the connection's :class:`Identity`.

    Raises:
        CertificateRefused: (HTTP) no identity: ``no_certificate``, 401.
        WebSocketCertificateRefused: (WebSocket) no identity: close 1008, ``no_certificate``.
    """

    def __init__(self, *, scheme_name: str = MUTUAL_TLS, description: str | None = _DESCRIPTION) -> None:
        if not scheme_name:
            raise ConfigurationError(detail="MutualTLS: scheme_name must be a non-empty string")
        self.model = _placeholder(description)
        self.scheme_name = scheme_name

    async def __call__(self, conn: HTTPConnection) -> Identity:
        identity = get_identity(conn)
        if identity is None:
            raise _refuse(
                conn,
                NoCertificateError(
                    Reason.NO_CERTIFICATE, "no certificate identity on the connection (dependency)"
                ),
            )
        return identity


#: The dependency most endpoints want: the :class:`Identity`, or a ``no_certificate`` refusal.
require_identity = MutualTLS()


async def optional_identity(conn: HTTPConnection) -> Identity | None:
    """The connection's :class:`Identity`, or None when it has none (declares no security)."""
    return get_identity(conn)


#: ``identity: CertificateIdentity`` in an endpoint's signature.
CertificateIdentity = Annotated[Identity, Security(require_identity)]
#: ``identity: OptionalCertificateIdentity`` in an endpoint's signature.
OptionalCertificateIdentity = Annotated[Identity | None, Depends(optional_identity)]


async def _handler(conn: HTTPConnection, exc: Exception) -> Response | None:
    error = exc.error if isinstance(exc, (CertificateRefused, WebSocketCertificateRefused)) else exc
    return await handle_mtls_error(conn, error)


def install(app: FastAPI) -> None:
    """Our refusal bodies and the ``mutualTLS`` scheme in ``app``'s OpenAPI document.

    Registers one exception handler for :class:`CertificateRefused`,
    :class:`WebSocketCertificateRefused` and every :class:`MTLSError` an endpoint raises, and
    wraps ``app.openapi`` so that the document declares ``{"type": "mutualTLS"}`` (see
    :func:`declare_mutual_tls`). Idempotent.

    Raises:
        ConfigurationError: ``app.openapi_version`` is 3.0, which has no ``mutualTLS`` scheme.
    """
    version = str(getattr(app, "openapi_version", "3.1.0"))
    if version.startswith(("2.", "3.0")):
        raise ConfigurationError(
            detail=f"FastAPI openapi_version is {version}: the mutualTLS security scheme needs "
            "OpenAPI 3.1 (leave openapi_version at its default, 3.1.0)"
        )
    handler: Any = _handler
    for exc_class in (CertificateRefused, WebSocketCertificateRefused, MTLSError):
        app.add_exception_handler(exc_class, handler)
    if getattr(app.openapi, _INSTALLED, False):
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        return declare_mutual_tls(build())

    setattr(openapi, _INSTALLED, True)
    app.openapi = openapi  # type: ignore[method-assign]


_INSTALLED = "_mtls_middleware_installed"
