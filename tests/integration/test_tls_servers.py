"""Real TLS straight to the WSGI layer: werkzeug's dev server and gunicorn, no proxy.

The server terminates TLS itself with a stdlib ``ssl`` context (CERT_OPTIONAL, our root loaded);
the middleware (``proxy=None``) reads the certificate from ``SSL_CLIENT_CERT`` (werkzeug) or from
the peer certificate of ``gunicorn.socket``. Each case is driven with curl and with Python's
``http.client``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .clients import HandshakeRefused, Response, curl, python_https
from .conftest import LOOPBACK, ClientCert, Endpoint, Materials

pytestmark = pytest.mark.services

Fetch = Callable[[Endpoint, Materials, "ClientCert | None"], Response]


def fetch_curl(endpoint: Endpoint, materials: Materials, client: ClientCert | None) -> Response:
    return curl(
        endpoint.url("/whoami"),
        cacert=materials.root,
        cert=client.cert if client else None,
        key=client.key if client else None,
    )


def fetch_python(endpoint: Endpoint, materials: Materials, client: ClientCert | None) -> Response:
    return python_https(
        LOOPBACK,
        endpoint.port,
        "/whoami",
        cacert=materials.root,
        cert=client.cert if client else None,
        key=client.key if client else None,
    )


FETCHERS = [pytest.param(fetch_curl, id="curl"), pytest.param(fetch_python, id="python-ssl")]


@pytest.fixture(scope="module", params=["werkzeug", "gunicorn"])
def tls_server(request: pytest.FixtureRequest) -> Endpoint:
    """Each server with its own TLS layer, started once per module."""
    endpoint: Endpoint = request.getfixturevalue(f"{request.param}_tls")
    return endpoint


@pytest.mark.parametrize("fetch", FETCHERS)
def test_registered_certificate_is_accepted_with_its_identity(
    tls_server: Endpoint, materials: Materials, fetch: Fetch
) -> None:
    alice = materials.clients["alice"]
    answer = fetch(tls_server, materials, alice)
    assert answer.status == 200, answer
    assert answer.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": tls_server.source,
        "proxy_verify": None,
    }


REFUSALS = [
    pytest.param("bob", 403, "unknown_certificate", id="unregistered"),
    pytest.param("carol", 403, "user_inactive", id="user-deactivated"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
]


@pytest.mark.parametrize("fetch", FETCHERS)
@pytest.mark.parametrize(("client", "status", "reason"), REFUSALS)
def test_refusals_carry_the_reason_code(
    tls_server: Endpoint,
    materials: Materials,
    fetch: Fetch,
    client: str | None,
    status: int,
    reason: str,
) -> None:
    answer = fetch(tls_server, materials, materials.clients[client] if client else None)
    assert (answer.status, answer.error) == (status, reason)
    assert answer.headers["content-type"] == "application/json"


# A stdlib (OpenSSL) TLS layer with CERT_OPTIONAL still verifies a certificate that is presented,
# and drops the handshake ("unknown ca", "certificate expired") before any request reaches the
# middleware: the client gets no HTTP answer, let alone a reason code. That is what the package's
# pyOpenSSL listener (server.py) fixes, by requesting the certificate without judging it.
@pytest.mark.parametrize("fetch", FETCHERS)
@pytest.mark.parametrize("client", ["foreign", "expired"])
def test_stdlib_tls_layer_drops_the_handshake_of_certificates_it_cannot_verify(
    tls_server: Endpoint, materials: Materials, fetch: Fetch, client: str
) -> None:
    with pytest.raises(HandshakeRefused):
        fetch(tls_server, materials, materials.clients[client])
    # ... and the server carries on serving.
    assert fetch(tls_server, materials, materials.clients["alice"]).status == 200
