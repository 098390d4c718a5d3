"""URLs of the browser certificate login: include them on the listener that asks for a client
certificate (and, for ``reverse("mtls:certificate_login")``, in the site's own URLconf)::

    urlpatterns = [..., path("", include("mtls_middleware.contrib.django.urls"))]

and list the view's path in ``MTLS_EXEMPT_PATHS`` (``["/login/certificate/"]`` with this
include; system check ``mtls_middleware.E006``).
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "mtls"

urlpatterns = [
    path("login/certificate/", views.certificate_login, name="certificate_login"),
]
