"""The server's own TLS layer: WSGI environ keys, the connection's socket, the ASGI tls extension."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from ..certs import MAX_CHAIN_LENGTH
from .base import Presented

__all__ = ["asgi_chain_values", "from_asgi_scope", "from_wsgi_environ", "wsgi_environ_values"]

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
    raw = wsgi_environ_values(environ)
    if raw is not None:
        return Presented("tls:environ", raw, None, raw, _encode_all)
    uwsgi = environ.get("HTTPS_CLIENT_CERTIFICATE")
    if uwsgi:
        raw = (uwsgi,)
        return Presented("tls:environ", raw, None, raw, _encode_all)
    for key in _SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, ssl.SSLSocket):
            return _from_ssl_object(sock)
    return None


def wsgi_environ_values(environ: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """``SSL_CLIENT_CERT`` and the ``SSL_CLIENT_CERT_CHAIN_n`` after it, raw; None without a leaf.

    This tuple is also the verdict-cache key of the chain, so a repeat costs no decoding.
    """
    leaf = environ.get("SSL_CLIENT_CERT")
    if not leaf:
        return None
    first = environ.get("SSL_CLIENT_CERT_CHAIN_0")
    if not first:
        return (leaf,)
    # One past the limit is enough for the parse stage to say chain_too_long.
    values = [leaf, first]
    for key in _CHAIN_KEYS[1:]:
        value = environ.get(key)
        if not value:
            break
        values.append(value)
    return tuple(values)


def asgi_chain_values(scope: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The ASGI ``tls`` extension's ``client_cert_chain``, raw (the cache key); None if absent.

    Any subset of the extension's fields is tolerated: a server that sets ``tls`` without a chain
    (or sets it to None, or to something odd) simply presents no certificate.
    """
    extensions = scope.get("extensions")
    if not extensions:
        return None
    try:
        tls = extensions.get("tls")
        chain = tls.get("client_cert_chain") if tls else None
    except AttributeError:
        return None
    if not chain or not isinstance(chain, (list, tuple)):
        return None
    raw = tuple(chain) if len(chain) <= MAX_CHAIN_LENGTH else tuple(chain[: MAX_CHAIN_LENGTH + 1])
    for item in raw:
        if type(item) is not str and type(item) is not bytes:
            # Rare and odd (bytearray is not even hashable): normalise, dropping what is not text.
            fixed = tuple(bytes(c) if isinstance(c, bytearray) else c for c in raw)
            raw = tuple(c for c in fixed if isinstance(c, (str, bytes)))
            break
    return raw or None


def _encode_all(values: tuple[str | bytes, ...]) -> tuple[bytes, ...]:
    # Environ values are native strings (PEP 3333: latin-1); some servers hand bytes.
    return tuple(v.encode("latin-1") if isinstance(v, str) else bytes(v) for v in values)


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
    return Presented("tls:socket", items, items)


def from_asgi_scope(scope: Mapping[str, Any]) -> Presented | None:
    """The chain of the ASGI ``tls`` extension (``client_cert_chain``, PEM strings), or None."""
    raw = asgi_chain_values(scope)
    if raw is None:
        return None
    return Presented("tls:asgi", raw, None, raw, _encode_all)
