"""Administration: the ``mtls-admin`` command line."""
