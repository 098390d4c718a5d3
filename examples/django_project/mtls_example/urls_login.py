"""The URLs of the browser login (settings_login.py): served by both listeners.

The site (no certificate asked for) serves the pages; the certificate login listener is where the
button posts, ``/login/certificate/`` (``mtls_middleware.contrib.django.urls``).
"""

from __future__ import annotations

from django.contrib.auth.views import LogoutView
from django.urls import include, path

from . import views, views_login

urlpatterns = [
    path("", views_login.home, name="home"),
    path("login", views_login.login_page, name="login"),
    # POST only, with the form's CSRF token; then to LOGOUT_REDIRECT_URL.
    path("logout", LogoutView.as_view(), name="logout"),
    path("whoami", views.whoami),
    path("health", views.health),
    path("", include("mtls_middleware.contrib.django.urls")),
]
