"""URLs of the browser certificate login tests (``ROOT_URLCONF`` for them): the site's login
page (the button, templates in ``templates/``), a page that tells who is logged in, and the app's
certificate login view included as a project would."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import include, path


def login_page(request: HttpRequest) -> HttpResponse:
    return render(request, "login_page.html")


def login_page_custom(request: HttpRequest) -> HttpResponse:
    return render(request, "login_page_custom.html", {"label": request.GET.get("label", "Sign in")})


def private(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse({"user": user.get_username() if user.is_authenticated else None})


async def private_async(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({"user": user.get_username() if user.is_authenticated else None})


urlpatterns = [
    path("login", login_page),
    path("login-custom", login_page_custom),
    path("private", private),
    path("private-async", private_async),
    path("", include("mtls_middleware.contrib.django.urls")),
]
