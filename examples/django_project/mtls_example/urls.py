"""The example's URLs: who am I (a sync and an async view), and an exempt health check."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("whoami-async", views.whoami_async),
    path("health", views.health),
]
