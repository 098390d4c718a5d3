"""Real Apache httpd (mod_ssl, mod_proxy) on loopback in front of the middleware under gunicorn.

Profile ``apache``. httpd terminates TLS with ``SSLVerifyClient optional_no_ca`` and our root as
``SSLCACertificateFile``, exports the certificates (``SSLOptions +ExportCertData``) and forwards
``SSL_CLIENT_CERT``, every ``SSL_CLIENT_CERT_CHAIN_n`` and ``SSL_CLIENT_VERIFY`` with
``RequestHeader set``, which replaces any copy the client sent (an unset variable is written as
``(null)``). The app is given no intermediates: the chain headers carry them. httpd connects
upstream from 127.0.0.2 (``ProxySourceAddress``), the app's only trusted proxy. What mod_ssl does,
as these tests pin it down (Apache 2.4, OpenSSL 3.0):

=====================================  ===============================================  ==========
client presents                        ``SSL_CLIENT_VERIFY``                            result
=====================================  ===============================================  ==========
leaf + intermediate from our CA        ``SUCCESS``                                      the app
leaf + intermediate of a foreign CA    ``FAILED:unable to get local issuer certificate``  the app
leaf only (intermediate not sent)      ``FAILED:unable to verify the first certificate``  the app
no certificate                         ``NONE``                                         the app
an expired certificate                 (error 10)                                       handshake
only the Server Authentication EKU     (error 26)                                       handshake
=====================================  ===============================================  ==========

``optional_no_ca`` forgives only an unknown issuer: any other failure ends the TLS handshake, so
the request never reaches the middleware and nothing is recorded there (httpd's error log says why).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import LOOPBACK, PROXY_ADDRESS, Materials
from .proxies import ProxyFront, forged_headers, running

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def front(materials: Materials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFront]:
    with running("apache", materials, tmp_path_factory.mktemp("apache")) as started:
        yield started


def test_registered_certificate_is_accepted_with_its_identity(
    front: ProxyFront, materials: Materials
) -> None:
    alice = materials.clients["alice"]
    attempt = front.through(alice)
    assert attempt.answered.status == 200, (attempt.answered, front.log_text())
    assert attempt.answered.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": "proxy:apache",
        "proxy_verify": "SUCCESS",
    }
    assert attempt.proxy_verify == "SUCCESS"
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXY_ADDRESS)


def test_the_documented_configuration_is_the_one_tested(front: ProxyFront) -> None:
    """Every line of the profile's configuration (the README table's) is in the httpd config."""
    running_lines = {line.strip() for line in front.config.splitlines()}
    documented = [line.strip() for line in front.profile.config.splitlines() if line.strip()]
    assert documented
    assert [line for line in documented if line not in running_lines] == []


# client (a stem of materials.clients, or None), status, reason code, SSL_CLIENT_VERIFY.
REFUSED_BY_THE_MIDDLEWARE = [
    pytest.param("bob", 403, "unknown_certificate", "SUCCESS", id="unregistered"),
    pytest.param("carol", 403, "user_inactive", "SUCCESS", id="user-deactivated"),
    pytest.param(
        "foreign", 403, "untrusted_issuer", "FAILED:unable to get local issuer certificate",
        id="foreign-ca",
    ),
    # The app knows no intermediate: only the chain headers could have carried it.
    pytest.param(
        "alice_leaf", 403, "untrusted_issuer", "FAILED:unable to verify the first certificate",
        id="leaf-without-intermediate",
    ),
    pytest.param(None, 401, "no_certificate", "NONE", id="no-certificate"),
]  # fmt: skip


@pytest.mark.parametrize(("client", "status", "reason", "verify"), REFUSED_BY_THE_MIDDLEWARE)
def test_refusals_carry_the_reason_to_the_client_and_the_history(
    front: ProxyFront, materials: Materials, client: str | None, status: int, reason: str, verify: str
) -> None:
    presented = materials.clients[client] if client else None
    attempt = front.through(presented)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    record = attempt.record
    assert (record["outcome"], record["source"], record["peer"]) == (reason, "proxy:apache", PROXY_ADDRESS)
    assert record["fingerprint"] == (presented.fingerprint if presented else None)
    assert attempt.proxy_verify == verify


# client, what httpd's error log says.
REFUSED_BY_APACHE = [
    pytest.param("expired", "Certificate Verification: Error (10): certificate has expired", id="expired"),
    pytest.param(
        "wrong_eku", "Certificate Verification: Error (26): unsuitable certificate purpose",
        id="server-auth-eku-only",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("client", "logged"), REFUSED_BY_APACHE)
def test_certificates_mod_ssl_refuses_end_the_handshake(
    front: ProxyFront, materials: Materials, client: str, logged: str
) -> None:
    """optional_no_ca forgives only an unknown issuer: the middleware never sees these."""
    attempt = front.through(materials.clients[client])
    assert attempt.refused is not None, attempt.response
    assert attempt.records == []
    assert logged in front.log_text()


# -- forgeries -----------------------------------------------------------------------------------
# client presented over TLS, the client whose certificate the forged headers name, status, reason.
FORGED_THROUGH_APACHE = [
    pytest.param(None, "alice", 401, "no_certificate", id="forged-headers-without-certificate"),
    pytest.param("bob", "alice", 403, "unknown_certificate", id="forged-headers-over-another-certificate"),
    # Forged chain only: alice's real leaf with a forged chain header carrying her intermediate.
    pytest.param("alice_leaf", None, 403, "untrusted_issuer", id="forged-chain-over-a-bare-leaf"),
]


@pytest.mark.parametrize(("client", "named", "status", "reason"), FORGED_THROUGH_APACHE)
def test_apache_replaces_the_clients_certificate_headers(
    front: ProxyFront,
    materials: Materials,
    client: str | None,
    named: str | None,
    status: int,
    reason: str,
) -> None:
    """The app judges what httpd saw at the handshake, never what the client wrote."""
    presented = materials.clients[client] if client else None
    headers = forged_headers(front, materials.clients[named or "alice"].issued)
    if named is None:
        del headers[front.profile.cert_header]
    attempt = front.through(presented, headers)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    assert attempt.record["fingerprint"] == (presented.fingerprint if presented else None)


def test_a_forged_deeper_chain_header_is_replaced(front: ProxyFront, materials: Materials) -> None:
    """Every depth the profile reads is set by httpd (to ``(null)`` when the client sent no
    certificate at that depth), so a client cannot add one the chain does not have."""
    header = f"{front.profile.chain_header}5"
    forged = forged_headers(front, materials.clients["alice"].issued)
    chain_0 = forged[f"{front.profile.chain_header}0"]
    attempt = front.through(materials.clients["alice_leaf"], {header: chain_0})
    assert (attempt.answered.status, attempt.answered.error) == (403, "untrusted_issuer")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="forged-headers"),
        pytest.param(
            {"X-Forwarded-For": PROXY_ADDRESS, "Forwarded": f"for={PROXY_ADDRESS}"},
            id="forged-headers-and-forwarding-headers",
        ),
    ],
)
def test_forged_headers_straight_to_the_app_are_refused_and_recorded(
    front: ProxyFront, materials: Materials, extra: dict[str, str]
) -> None:
    """Past httpd, from 127.0.0.1: the headers are those httpd would send for alice."""
    headers = forged_headers(front, materials.clients["alice"].issued) | extra
    attempt = front.direct(headers)
    assert (attempt.answered.status, attempt.answered.error) == (401, "untrusted_proxy")
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("untrusted_proxy", LOOPBACK)


def test_the_same_forged_headers_from_the_proxy_address_are_believed(
    front: ProxyFront, materials: Materials
) -> None:
    """The control for the forgery tests: the forged values are what httpd sends, and only the
    peer (or httpd replacing them) made the difference."""
    alice = materials.clients["alice"]
    attempt = front.as_proxy(forged_headers(front, alice.issued))
    assert attempt.answered.status == 200, attempt.answered
    assert attempt.answered.json()["fingerprint"] == alice.fingerprint
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXY_ADDRESS)
