"""The app's configuration: its label, and the signals that keep the store's generation honest."""

from __future__ import annotations

import importlib.util

from django.apps import AppConfig

__all__ = ["MTLSAppConfig"]


class MTLSAppConfig(AppConfig):
    """``mtls_middleware.contrib.django`` under the label ``mtls_middleware``.

    ``ready()`` connects the model signals that bump the store's generation on every change made
    through the ORM or the admin (see :mod:`~mtls_middleware.contrib.django.store`) and registers
    the system checks when the app ships them.
    """

    name = "mtls_middleware.contrib.django"
    label = "mtls_middleware"
    verbose_name = "mTLS client certificates"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .signals import connect

        connect()
        if importlib.util.find_spec(f"{self.name}.checks") is not None:
            importlib.import_module(f"{self.name}.checks")
