"""ASGI adapter: a thin layer over :class:`~mtls_middleware.authenticator.Authenticator`.

HTTP and WebSocket connections are authenticated; lifespan (and anything else) passes through.
Work that may block (parsing and validating a new chain, the store, revocation I/O) runs on a
thread pool, never on the event loop; a verdict-cache hit is answered on the loop directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .authenticator import MISS, Authenticator, asgi_peer
from .config import MTLSConfig
from .errors import MTLSError, Reason
from .identity import ENVIRON_KEY
from .wsgi import error_response

__all__ = ["WEBSOCKET_POLICY_VIOLATION", "MTLSMiddleware"]

log = logging.getLogger("mtls_middleware")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The WebSocket close code a refused connection gets (RFC 6455: policy violation).
WEBSOCKET_POLICY_VIOLATION = 1008


class MTLSMiddleware:
    """Authenticates every HTTP request and WebSocket connection by client certificate.

    An accepted connection carries its :class:`~mtls_middleware.identity.Identity` in
    ``scope["mtls_middleware.identity"]``. A refused HTTP request gets the reason's status and
    JSON body; a refused WebSocket is accepted and at once closed with code 1008 and the reason code
    as close reason (closing before accepting would reach the client as a bare HTTP 403).

    Raises:
        ConfigurationError: at construction, if ``config`` cannot work.
    """

    def __init__(
        self, app: ASGIApp, config: MTLSConfig, *, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.app = app
        self.config = config
        self.authenticator = Authenticator(config)
        self._exempt = bool(config.exempt_paths)
        self._executor = executor or ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="mtls_middleware"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._exempt and self.config.is_exempt(scope.get("path", "")):
            await self.app(self.authenticator.strip_untrusted_asgi(scope), receive, send)  # type: ignore[arg-type]
            return
        auth = self.authenticator
        try:
            identity = auth.hit_asgi(scope)
            if identity is None:
                identity = await self._authenticate(auth, scope)
        except MTLSError as exc:
            await self._refuse(kind, exc, receive, send)
            return
        except Exception:  # fail closed without a trace to the client
            log.exception("mtls_middleware: unexpected error in the ASGI adapter")
            await self._refuse(kind, MTLSError(Reason.INTERNAL_ERROR), receive, send)
            return
        if identity is not None:
            # A copy, as the ASGI spec asks of middleware that changes the scope: a change in
            # place would leak upstream.
            scope = dict(scope)
            scope[ENVIRON_KEY] = identity
        await self.app(scope, receive, send)

    async def _authenticate(self, auth: Authenticator, scope: Scope) -> Any:
        peer = asgi_peer(scope)
        presented = auth.extract_asgi(scope)
        identity = auth.authenticate_cached(presented, peer=peer)
        if identity is MISS:
            # Parsing, validation, the store and (later) revocation I/O may block: off the loop.
            loop = asyncio.get_running_loop()
            identity = await loop.run_in_executor(
                self._executor, lambda: auth.authenticate(presented, peer=peer)
            )
        return identity

    @staticmethod
    async def _refuse(kind: str, error: MTLSError, receive: Receive, send: Send) -> None:
        if kind == "websocket":
            # Closing before accepting turns into a bare HTTP 403 on most servers, and the client
            # never learns why; accepting and closing at once delivers code 1008 and the reason.
            message = await receive()
            if message.get("type") == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send(
                    {
                        "type": "websocket.close",
                        "code": WEBSOCKET_POLICY_VIOLATION,
                        "reason": error.reason.value,
                    }
                )
            return
        _status, headers, body = error_response(error)
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
