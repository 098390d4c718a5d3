"""A small Django project whose every request is authenticated by client certificate (see README.md)."""
