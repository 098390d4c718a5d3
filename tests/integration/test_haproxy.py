"""Real haproxy on loopback in front of the middleware under gunicorn (profile ``haproxy``).

haproxy terminates TLS with ``verify optional ca-ignore-err all crt-ignore-err all``: it asks for
a certificate, accepts any at the handshake, and forwards the leaf (``%{+Q}[ssl_c_der,base64]``),
the chain the client sent (``%{+Q}[ssl_c_chain_der,base64]``) and OpenSSL's numeric verdict
(``%[ssl_c_verify]``) with ``http-request set-header``, which replaces any copy the client sent.
The app is given no intermediates: the chain header carries them. haproxy connects upstream from
127.0.0.2 (``source``), the app's only trusted proxy. What ``ssl_c_verify`` says, as these tests
pin it down (haproxy 2.6, OpenSSL 3.0):

=====================================  ==========  ===========================
client presents                        verify      the middleware says
=====================================  ==========  ===========================
leaf + intermediate from our CA        ``0``       accepted / store's verdict
no certificate                         ``0``       ``no_certificate``
an expired certificate                 ``10``      ``certificate_expired``
only the Server Authentication EKU     ``26``      ``missing_client_auth_eku``
leaf + intermediate of a foreign CA    ``20``      ``untrusted_issuer``
leaf only (intermediate not sent)      ``21``      ``untrusted_issuer``
=====================================  ==========  ===========================
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import LOOPBACK, PROXY_ADDRESS, Materials
from .proxies import ProxyFront, forged_headers, running

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def front(materials: Materials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFront]:
    with running("haproxy", materials, tmp_path_factory.mktemp("haproxy")) as started:
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
        "source": "proxy:haproxy",
        "proxy_verify": "0",
    }
    assert attempt.proxy_verify == "0"
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXY_ADDRESS)


def test_the_documented_configuration_is_the_one_tested(front: ProxyFront) -> None:
    """Every line of the profile's configuration (the README table's) is in the haproxy config."""
    running_lines = {line.strip() for line in front.config.splitlines()}
    documented = [line.strip() for line in front.profile.config.splitlines() if line.strip()]
    assert documented
    assert [line for line in documented if line not in running_lines] == []


# client (a stem of materials.clients, or None), status, reason code, ssl_c_verify.
REFUSED_BY_THE_MIDDLEWARE = [
    pytest.param("bob", 403, "unknown_certificate", "0", id="unregistered"),
    pytest.param("carol", 403, "user_inactive", "0", id="user-deactivated"),
    pytest.param("expired", 403, "certificate_expired", "10", id="expired"),
    pytest.param("wrong_eku", 403, "missing_client_auth_eku", "26", id="server-auth-eku-only"),
    pytest.param("foreign", 403, "untrusted_issuer", "20", id="foreign-ca"),
    # The app knows no intermediate: only the chain header could have carried it.
    pytest.param("alice_leaf", 403, "untrusted_issuer", "21", id="leaf-without-intermediate"),
    # ssl_c_verify is X509_V_OK when nothing was verified.
    pytest.param(None, 401, "no_certificate", "0", id="no-certificate"),
]


@pytest.mark.parametrize(("client", "status", "reason", "verify"), REFUSED_BY_THE_MIDDLEWARE)
def test_refusals_carry_the_reason_to_the_client_and_the_history(
    front: ProxyFront, materials: Materials, client: str | None, status: int, reason: str, verify: str
) -> None:
    presented = materials.clients[client] if client else None
    attempt = front.through(presented)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    record = attempt.record
    assert (record["outcome"], record["source"], record["peer"]) == (reason, "proxy:haproxy", PROXY_ADDRESS)
    assert record["fingerprint"] == (presented.fingerprint if presented else None)
    assert attempt.proxy_verify == verify


# -- forgeries -----------------------------------------------------------------------------------
# client presented over TLS, the client whose certificate the forged headers name, status, reason.
FORGED_THROUGH_HAPROXY = [
    pytest.param(None, "alice", 401, "no_certificate", id="forged-headers-without-certificate"),
    pytest.param("bob", "alice", 403, "unknown_certificate", id="forged-headers-over-another-certificate"),
    # Forged chain only: alice's real leaf with a forged chain header carrying her intermediate.
    pytest.param("alice_leaf", None, 403, "untrusted_issuer", id="forged-chain-over-a-bare-leaf"),
]


@pytest.mark.parametrize(("client", "named", "status", "reason"), FORGED_THROUGH_HAPROXY)
def test_haproxy_replaces_the_clients_certificate_headers(
    front: ProxyFront,
    materials: Materials,
    client: str | None,
    named: str | None,
    status: int,
    reason: str,
) -> None:
    """The app judges what haproxy saw at the handshake, never what the client wrote."""
    presented = materials.clients[client] if client else None
    headers = forged_headers(front, materials.clients[named or "alice"].issued)
    if named is None:
        del headers[front.profile.cert_header]
    attempt = front.through(presented, headers)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    assert attempt.record["fingerprint"] == (presented.fingerprint if presented else None)


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
    """Past haproxy, from 127.0.0.1: the headers are those haproxy would send for alice."""
    headers = forged_headers(front, materials.clients["alice"].issued) | extra
    attempt = front.direct(headers)
    assert (attempt.answered.status, attempt.answered.error) == (401, "untrusted_proxy")
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("untrusted_proxy", LOOPBACK)


def test_the_same_forged_headers_from_the_proxy_address_are_believed(
    front: ProxyFront, materials: Materials
) -> None:
    """The control for the forgery tests: the forged values are what haproxy sends, and only
    the peer (or haproxy replacing them) made the difference."""
    alice = materials.clients["alice"]
    attempt = front.as_proxy(forged_headers(front, alice.issued))
    assert attempt.answered.status == 200, attempt.answered
    assert attempt.answered.json()["fingerprint"] == alice.fingerprint
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXY_ADDRESS)
