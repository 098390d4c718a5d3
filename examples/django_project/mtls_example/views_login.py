"""The pages of the browser login (settings_login.py): the login page and a page for the logged-in.

The login page's button (``{% certificate_login_button %}``) posts to the certificate login view
of ``mtls_middleware.contrib.django.urls``, on the listener that asks for a certificate. The view
opens the session, and MTLSMiddleware checks on every later request that the certificate still
opens it: deleting it (``manage.py mtls cert delete``) ends the session on the next page load.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from mtls_middleware.login import SESSION_KEY, SessionBinding


def login_page(request: HttpRequest) -> HttpResponse:
    return render(request, "login.html")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    # The certificate the session was opened with (every login of this site is one).
    binding = SessionBinding.from_session(request.session.get(SESSION_KEY))
    until = dt.datetime.fromtimestamp(binding.not_after, dt.timezone.utc).date() if binding else None
    return render(request, "home.html", {"binding": binding, "until": until})
