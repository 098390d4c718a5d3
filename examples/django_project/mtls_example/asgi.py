"""ASGI entry point: ``uvicorn mtls_example.asgi:application --no-proxy-headers`` (see run-uvicorn.sh)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtls_example.settings")

application = get_asgi_application()
