"""Set Django up once per test process (no pytest-django: only tests that ask get Django)."""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()
_DONE = False

#: The settings module of every Django test.
SETTINGS_MODULE = "tests.contrib.django.settings"


def setup_django() -> None:
    """Configure Django from :data:`SETTINGS_MODULE` (unless something else configured it) and
    migrate its database, once."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        import django
        from django.conf import settings
        from django.core.management import call_command

        if not settings.configured:
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        _DONE = True


def empty_tables() -> None:
    """Delete every row of the app's tables (a new, empty store) and the auth users."""
    from django.contrib.auth import get_user_model

    from mtls_middleware.contrib.django import models as m
    from mtls_middleware.contrib.django.store import _OPEN

    # Records an earlier test left in a store's buffer must not land in this test's tables.
    for store in list(_OPEN):
        store.flush(30.0)

    for model in (m.Certificate, m.CertificateUser, m.Organisation, m.LoginAttempt, m.AuditEntry):
        model.objects.all()._raw_delete(model.objects.db)
    get_user_model().objects.all().delete()
