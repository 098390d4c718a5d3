"""Real Caddy on loopback in front of the middleware under gunicorn (profile ``caddy``).

Caddy terminates TLS with ``client_auth { mode request }``: it asks for a certificate and checks
only that the client holds its key, so every certificate reaches the middleware, which judges it.
It forwards the leaf, ``{http.request.tls.client.certificate_der_base64}`` (Caddy 2.6 has no
placeholder for the chain and no verdict: the app is given the intermediates). A placeholder
without a value stays literal text in a header, so the header is first removed (with any copy the
client sent) and set only when a certificate was presented.

Caddy 2.6 cannot bind the source address of its upstream connections, so it reaches gunicorn over
a UNIX socket, and the app trusts only ``"unix"``; the tests' own requests to gunicorn come over TCP
from 127.0.0.1 and are untrusted. Caddy answers 421 to a request whose SNI differs from its Host
(it enforces that wherever client certificates are asked for), so the tests connect to
127.0.0.1 as ``localhost``, as a real client sends a host name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import LOOPBACK, PROXY_ADDRESS, Materials
from .proxies import ProxyFront, forged_headers, running

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def front(materials: Materials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFront]:
    with running("caddy", materials, tmp_path_factory.mktemp("caddy")) as started:
        yield started


# client (a stem of materials.clients): both are accepted as alice.
ACCEPTED = [
    pytest.param("alice", id="leaf-and-intermediate"),
    # Caddy forwards only the leaf anyway: the app's configured intermediates complete the path.
    pytest.param("alice_leaf", id="leaf-only"),
]


@pytest.mark.parametrize("client", ACCEPTED)
def test_registered_certificate_is_accepted_with_its_identity(
    front: ProxyFront, materials: Materials, client: str
) -> None:
    alice = materials.clients[client]
    attempt = front.through(alice)
    assert attempt.answered.status == 200, (attempt.answered, front.log_text())
    assert attempt.answered.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": "proxy:caddy",
        "proxy_verify": None,
    }
    # A UNIX-socket peer has no address: REMOTE_ADDR is empty.
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", "")


# client (a stem of materials.clients, or None), status, reason code. Caddy verifies nothing, so
# every verdict is the middleware's.
REFUSED_BY_THE_MIDDLEWARE = [
    pytest.param("bob", 403, "unknown_certificate", id="unregistered"),
    pytest.param("carol", 403, "user_inactive", id="user-deactivated"),
    pytest.param("expired", 403, "certificate_expired", id="expired"),
    pytest.param("wrong_eku", 403, "missing_client_auth_eku", id="server-auth-eku-only"),
    pytest.param("foreign", 403, "untrusted_issuer", id="foreign-ca"),
    pytest.param(None, 401, "no_certificate", id="no-certificate"),
]


@pytest.mark.parametrize(("client", "status", "reason"), REFUSED_BY_THE_MIDDLEWARE)
def test_refusals_carry_the_reason_to_the_client_and_the_history(
    front: ProxyFront, materials: Materials, client: str | None, status: int, reason: str
) -> None:
    presented = materials.clients[client] if client else None
    attempt = front.through(presented)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    record = attempt.record
    assert (record["outcome"], record["source"], record["peer"]) == (reason, "proxy:caddy", "")
    assert record["fingerprint"] == (presented.fingerprint if presented else None)


# -- forgeries -----------------------------------------------------------------------------------
# client presented over TLS, status, reason: the forged header names alice each time.
FORGED_THROUGH_CADDY = [
    pytest.param(None, 401, "no_certificate", id="forged-header-without-certificate"),
    pytest.param("bob", 403, "unknown_certificate", id="forged-header-over-another-certificate"),
]


@pytest.mark.parametrize(("client", "status", "reason"), FORGED_THROUGH_CADDY)
def test_caddy_replaces_the_clients_certificate_header(
    front: ProxyFront, materials: Materials, client: str | None, status: int, reason: str
) -> None:
    """The app judges what Caddy saw at the handshake, never what the client wrote."""
    presented = materials.clients[client] if client else None
    attempt = front.through(presented, forged_headers(front, materials.clients["alice"].issued))
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    assert attempt.record["fingerprint"] == (presented.fingerprint if presented else None)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="forged-header"),
        pytest.param(
            {"X-Forwarded-For": PROXY_ADDRESS, "Forwarded": "for=unix"},
            id="forged-header-and-forwarding-headers",
        ),
    ],
)
def test_forged_header_straight_to_the_app_over_tcp_is_refused_and_recorded(
    front: ProxyFront, materials: Materials, extra: dict[str, str]
) -> None:
    """Past Caddy, over TCP from 127.0.0.1: the header is the one Caddy would send for alice."""
    headers = forged_headers(front, materials.clients["alice"].issued) | extra
    attempt = front.direct(headers)
    assert (attempt.answered.status, attempt.answered.error) == (401, "untrusted_proxy")
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("untrusted_proxy", LOOPBACK)


def test_the_same_forged_header_over_the_unix_socket_is_believed(
    front: ProxyFront, materials: Materials
) -> None:
    """The control for the forgery tests: the forged value is what Caddy sends, and only the
    way in (or Caddy replacing it) made the difference."""
    alice = materials.clients["alice"]
    attempt = front.as_proxy(forged_headers(front, alice.issued))
    assert attempt.answered.status == 200, attempt.answered
    assert attempt.answered.json()["fingerprint"] == alice.fingerprint
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", "")
