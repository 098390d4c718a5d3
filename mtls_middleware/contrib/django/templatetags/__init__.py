"""Template tag libraries of the Django integration (``{% load mtls %}``)."""
