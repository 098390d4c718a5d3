"""The server's own TLS layer: WSGI environ keys, the connection's socket, the ASGI tls extension."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from ..certs import MAX_CHAIN_LENGTH
from .base import Presented

__all__ = ["from_asgi_scope", "from_wsgi_environ"]

#: Keys set by mod_wsgi/Apache (SSLOptions +ExportCertData), werkzeug's dev server, cheroot, and
#: our own TLS listener.
_CHAIN_KEYS = tuple(f"SSL_CLIENT_CERT_CHAIN_{i}" for i in range(MAX_CHAIN_LENGTH + 1))
#: The socket objects WSGI servers put into the environ.
_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def from_wsgi_environ(environ: Mapping[str, Any]) -> Presented | None:
    """The chain the WSGI server's TLS layer received, or None when it holds none.

    Looks at ``SSL_CLIENT_CERT`` + ``SSL_CLIENT_CERT_CHAIN_n``, then uWSGI's
    ``HTTPS_CLIENT_CERTIFICATE``, then the peer certificate of ``gunicorn.socket`` /
    ``werkzeug.socket``. Server-set environ keys cannot be forged by a client: a request header
    always arrives with an ``HTTP_`` prefix.
    """
    leaf = environ.get("SSL_CLIENT_CERT")
    if leaf:
        # One past the limit is enough for the parse stage to say chain_too_long.
        items = [leaf]
        for key in _CHAIN_KEYS:
            value = environ.get(key)
            if not value:
                break
            items.append(value)
        encoded = tuple(i.encode("latin-1") if isinstance(i, str) else bytes(i) for i in items)
        return Presented("tls:environ", ("tls", *items), items=encoded)
    uwsgi = environ.get("HTTPS_CLIENT_CERTIFICATE")
    if uwsgi:
        raw = uwsgi.encode("latin-1") if isinstance(uwsgi, str) else bytes(uwsgi)
        return Presented("tls:environ", ("tls", uwsgi), items=(raw,))
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, ssl.SSLSocket):
            return _from_ssl_object(sock)
    return None


def _from_ssl_object(sock: ssl.SSLSocket | ssl.SSLObject) -> Presented | None:
    chain: list[bytes] = []
    # Python 3.13+ exposes the whole presented chain; before it only the leaf is reachable.
    get_chain = getattr(sock, "get_unverified_chain", None)
    if get_chain is not None:
        try:
            chain = [bytes(c) for c in get_chain() or ()]
        except (ValueError, AttributeError):
            chain = []
    if not chain:
        try:
            leaf = sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None
        if not leaf:
            return None
        chain = [leaf]
    items = tuple(chain)
    return Presented("tls:socket", ("tls", *items), items=items)


def from_asgi_scope(scope: Mapping[str, Any]) -> Presented | None:
    """The chain of the ASGI ``tls`` extension (``client_cert_chain``, PEM strings), or None.

    Any subset of the extension's fields is tolerated: a server that sets ``tls`` without a chain
    (or sets it to None) simply presents no certificate.
    """
    extensions = scope.get("extensions")
    if not isinstance(extensions, Mapping):
        return None
    tls = extensions.get("tls")
    if not isinstance(tls, Mapping):
        return None
    chain = tls.get("client_cert_chain")
    if not chain or not isinstance(chain, (list, tuple)):
        return None
    items = tuple(
        c.encode("latin-1") if isinstance(c, str) else bytes(c)
        for c in chain[: MAX_CHAIN_LENGTH + 1]
        if isinstance(c, (str, bytes, bytearray))
    )
    if not items:
        return None
    return Presented("tls:asgi", ("tls", *items), items=items)
