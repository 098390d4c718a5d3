"""URLs of the middleware tests (``ROOT_URLCONF`` for them): views that echo what the middleware
established, the certificate identity and ``request.user``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

#: Paths of the views that ran, in order: a refused request must not reach any.
SEEN: list[str] = []


def _describe(request: HttpRequest, user: Any) -> dict[str, Any]:
    identity = request.mtls_identity
    return {
        "user_id": identity.user_id if identity else None,
        "org": identity.org if identity else None,
        "fingerprint": identity.fingerprint if identity else None,
        "source": identity.source if identity else None,
        "meta_identity": request.META.get("mtls_middleware.identity") is identity,
        "user": user.get_username() if user is not None and user.is_authenticated else None,
        "cert_header": "HTTP_X_SSL_CLIENT_CERT" in request.META,
    }


def whoami(request: HttpRequest) -> JsonResponse:
    SEEN.append(request.path)
    return JsonResponse(_describe(request, getattr(request, "user", None)))


async def whoami_async(request: HttpRequest) -> JsonResponse:
    SEEN.append(request.path)
    auser = getattr(request, "auser", None)
    return JsonResponse(_describe(request, await auser() if auser else None))


urlpatterns = [
    path("whoami", whoami),
    path("whoami-async", whoami_async),
    path("health", whoami),
    path("health/deep", whoami),
]
