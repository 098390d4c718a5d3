"""Views that echo what the middleware established: the certificate identity and the user."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse


def _describe(request: HttpRequest, user: Any) -> dict[str, Any]:
    identity = request.mtls_identity  # set by MTLSMiddleware on every request it lets through
    return {
        "user_id": identity.user_id if identity else None,
        "org": identity.org if identity else None,
        "fingerprint": identity.fingerprint if identity else None,
        "source": identity.source if identity else None,
        "revocation": identity.revocation if identity else None,
        "user": user.get_username() if user.is_authenticated else None,
    }


def whoami(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_describe(request, request.user))


async def whoami_async(request: HttpRequest) -> JsonResponse:
    # An async view reads the user without touching the database on the event loop.
    return JsonResponse(_describe(request, await request.auser()))


def health(request: HttpRequest) -> JsonResponse:
    # MTLS_EXEMPT_PATHS: served without a certificate (load balancer probes).
    return JsonResponse({"status": "ok"})
