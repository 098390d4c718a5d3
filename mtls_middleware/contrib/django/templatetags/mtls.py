"""``{% load mtls %}``: the "Log in with certificate" button of a login page, and its messages.

``{% certificate_login_button %}`` renders (template
``mtls_middleware/certificate_login_button.html``, which a project may override):

- the messages of :func:`login_page_messages`, each a ``<p role="alert">`` with the class
  ``mtls-login-error`` (as the Flask button's; ``mtls-login-error mtls-session-ended`` for a
  session the middleware ended) and ``data-reason`` (the reason code, empty for a code this
  library does not know);
- a form posting to the certificate login view (``MTLS_LOGIN_URL``, or the view's own path),
  with the page's ``next`` parameter as a hidden field when the view would redirect to it,
  and the button ``<button id="mtls-certificate-login">``; ``label=`` replaces its text.

``{% certificate_login_message %}`` renders the messages alone (template
``mtls_middleware/certificate_login_message.html``), for pages that place them elsewhere: with
``{% certificate_login_button messages=False %}`` for the form alone. The messages are worked
out once per request, so both tags show the same ones.

Both need the ``request`` in the template context
(``django.template.context_processors.request``); without it they render the form without
``next`` and no messages. Everything is escaped by the template engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.urls import NoReverseMatch, reverse

from ....errors import Reason
from ....login import (
    ENDED_KEY,
    ERROR_PARAM,
    LOGIN_MESSAGES,
    SESSION_ENDED_MESSAGES,
    login_message,
    session_ended_message,
)
from .. import conf

__all__ = [
    "DEFAULT_LABEL",
    "LoginPageMessage",
    "certificate_login_button",
    "certificate_login_message",
    "certificate_login_url",
    "login_page_messages",
]

register = template.Library()

#: The button's text unless ``label=`` says otherwise.
DEFAULT_LABEL = "Log in with certificate"

_CACHE_ATTRIBUTE = "_mtls_login_page_messages"


@dataclass(frozen=True)
class LoginPageMessage:
    """One message of the login page: ``css_class`` (``mtls-login-error``, or
    ``mtls-login-error mtls-session-ended``), ``reason`` (the reason code, "" for an unknown
    code) and ``text`` (the sentence of :mod:`mtls_middleware.login`)."""

    css_class: str
    reason: str
    text: str


def _known(code: object, table: Any) -> str:
    try:
        reason = Reason(code)
    except ValueError:
        return ""
    return reason.value if reason in table else ""


def login_page_messages(request: Any) -> list[LoginPageMessage]:
    """The messages a login page shows for ``request``: the refused login's (``?mtls_error=``),
    then, once (it is taken out of the session), why the middleware ended the certificate
    session. Worked out once per request."""
    if request is None:
        return []
    cached = getattr(request, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return list(cached)
    messages: list[LoginPageMessage] = []
    code = request.GET.get(ERROR_PARAM)
    text = login_message(code)
    if text is not None:
        messages.append(LoginPageMessage("mtls-login-error", _known(code, LOGIN_MESSAGES), text))
    session = getattr(request, "session", None)
    ended = session.pop(ENDED_KEY, None) if session is not None else None
    text = session_ended_message(ended)
    if text is not None:
        messages.append(
            LoginPageMessage(
                "mtls-login-error mtls-session-ended", _known(ended, SESSION_ENDED_MESSAGES), text
            )
        )
    setattr(request, _CACHE_ATTRIBUTE, tuple(messages))
    return messages


def certificate_login_url() -> str:
    """Where the button posts: ``MTLS_LOGIN_URL``, else the path of ``mtls:certificate_login``.

    Raises:
        ImproperlyConfigured: neither is there.
        ConfigurationError: the ``MTLS_*`` settings cannot work.
    """
    configured = conf.get_login_settings().login_url
    if configured is not None:
        return configured
    try:
        return str(reverse("mtls:certificate_login"))
    except NoReverseMatch:
        raise ImproperlyConfigured(
            "certificate_login_button: set MTLS_LOGIN_URL to the certificate login view's URL, "
            "or include 'mtls_middleware.contrib.django.urls' in the URLconf"
        ) from None


def _next(request: Any) -> str | None:
    if request is None:
        return None
    return conf.get_login_settings().kept_next(request.GET.get("next"))


@register.inclusion_tag("mtls_middleware/certificate_login_button.html", takes_context=True)
def certificate_login_button(
    context: template.Context, label: str = DEFAULT_LABEL, messages: bool = True
) -> dict[str, Any]:
    """The form and button, and unless ``messages`` is False the messages (see the module docs)."""
    request = context.get("request")
    return {
        "mtls_login_url": certificate_login_url(),
        "mtls_next": _next(request),
        "mtls_label": label,
        "mtls_messages": login_page_messages(request) if messages else [],
    }


@register.inclusion_tag("mtls_middleware/certificate_login_message.html", takes_context=True)
def certificate_login_message(context: template.Context) -> dict[str, Any]:
    """The login page's messages alone (see the module docs)."""
    return {"mtls_messages": login_page_messages(context.get("request"))}
