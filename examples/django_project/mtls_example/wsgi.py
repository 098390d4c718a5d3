"""WSGI entry point: ``gunicorn mtls_example.wsgi:application`` (see run-gunicorn.sh)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtls_example.settings")

application = get_wsgi_application()
