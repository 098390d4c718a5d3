"""Framework integrations: thin adapters over the core, with no policy of their own.

Each module imports its framework, so import the one you use: ``mtls_middleware.contrib.flask``,
``mtls_middleware.contrib.starlette``, ``mtls_middleware.contrib.fastapi`` or the Django app
``mtls_middleware.contrib.django``.
"""
