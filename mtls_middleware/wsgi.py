"""WSGI adapter: a thin layer over :class:`~mtls_middleware.authenticator.Authenticator`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from .authenticator import Authenticator
from .config import MTLSConfig
from .errors import MTLSError, Reason
from .identity import ENVIRON_KEY

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MTLSMiddleware", "error_response"]

log = logging.getLogger("mtls_middleware")


def error_response(error: MTLSError) -> tuple[str, list[tuple[str, str]], bytes]:
    """The status line, headers and JSON body a refusal is answered with.

    Only the reason code and its fixed sentence are shown; never ``detail`` or a traceback.
    """
    body = json.dumps(error.to_json()).encode()
    status = f"{error.status} {HTTPStatus(error.status).phrase}"
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    return status, headers, body


class MTLSMiddleware:
    """Authenticates every request by client certificate before ``app`` sees it.

    An accepted request carries its :class:`~mtls_middleware.identity.Identity` in
    ``environ["mtls_middleware.identity"]``; a refused one is answered with the reason's status
    and ``{"error": code, "message": sentence}``. Exempt paths go straight to ``app``.

    Raises:
        ConfigurationError: at construction, if ``config`` cannot work.
    """

    def __init__(self, app: WSGIApplication, config: MTLSConfig) -> None:
        self.app = app
        self.config = config
        self.authenticator = Authenticator(config)
        self._exempt = bool(config.exempt_paths)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if self._exempt and self.config.is_exempt(environ.get("PATH_INFO", "")):
            self.authenticator.strip_untrusted_wsgi(environ)
            return self.app(environ, start_response)
        auth = self.authenticator
        try:
            identity = auth.hit_wsgi(environ)
            if identity is None:
                identity = auth.authenticate_wsgi(environ)
        except MTLSError as exc:
            return self._refuse(exc, start_response)
        except Exception:  # fail closed: a fault here must not reach the client as a trace
            log.exception("mtls_middleware: unexpected error in the WSGI adapter")
            return self._refuse(MTLSError(Reason.INTERNAL_ERROR), start_response)
        if identity is not None:
            environ[ENVIRON_KEY] = identity
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(error: MTLSError, start_response: StartResponse) -> list[bytes]:
        status, headers, body = error_response(error)
        start_response(status, headers)
        return [body]
