"""The Django app: ``INSTALLED_APPS += ["mtls_middleware.contrib.django"]``.

It keeps the store in your project's database (models for organisations, users' certificate
settings, certificates, the login history and the audit log, with migrations), offers
:class:`~mtls_middleware.contrib.django.store.DjangoStore` so the same management rules apply as
everywhere else, registers them in the Django admin, and adds ``manage.py mtls`` (the
``mtls-admin`` commands over this database).

Import the models and the store from their modules (``.models``, ``.store``) once Django is set
up; this package itself imports nothing of Django.
"""

from __future__ import annotations

__all__: list[str] = []
