"""Real haproxy, Apache httpd and Caddy on loopback in front of the middleware under gunicorn.

Each proxy terminates TLS, asks for a client certificate and forwards it in its profile's headers,
set so that they replace any copy the client sent. One table per proxy says what it forwards and
what the middleware then answers; the same tests run for all three (the nginx tests predate these:
test_nginx.py).

**haproxy** (profile ``haproxy``): ``verify optional ca-ignore-err all crt-ignore-err all`` accepts
any certificate at the handshake and forwards the leaf (``%{+Q}[ssl_c_der,base64]``), the chain the
client sent (``%{+Q}[ssl_c_chain_der,base64]``) and OpenSSL's numeric verdict (``%[ssl_c_verify]``).
The app is given no intermediates: the chain header carries them. haproxy connects upstream from
127.0.0.2 (``source``), the app's only trusted proxy. ``ssl_c_verify``, as pinned here (haproxy
2.6, OpenSSL 3.0): 0 for a good chain and for no certificate, 10 expired, 26 Server Authentication
EKU only, 20 a foreign CA, 21 a leaf sent without its intermediate.

**Apache httpd** (profile ``apache``): ``SSLVerifyClient optional_no_ca`` with our root as
``SSLCACertificateFile``, ``SSLOptions +ExportCertData``, and ``RequestHeader set`` for
``SSL_CLIENT_CERT``, every ``SSL_CLIENT_CERT_CHAIN_n`` and ``SSL_CLIENT_VERIFY`` (an unset variable
is written as ``(null)``); no intermediates in the app; upstream from 127.0.0.2
(``ProxySourceAddress``). ``optional_no_ca`` forgives only an unknown issuer (``FAILED:unable to
get local issuer certificate`` / ``...verify the first certificate`` reach the app): an expired
certificate (error 10) or a Server-Authentication-only one (error 26) ends the TLS handshake, so the
middleware never sees it and nothing is recorded (httpd's error log says why).

**Caddy** (profile ``caddy``): ``client_auth { mode request }`` checks only that the client holds
its key, so every certificate reaches the middleware. It forwards the leaf only
(``{http.request.tls.client.certificate_der_base64}``; Caddy 2.6 has no chain placeholder and no
verdict: the app is given the intermediates). A placeholder without a value stays literal text, so
the header is first removed (with any copy the client sent) and set only when a certificate was
presented. Caddy 2.6 cannot bind the source address of its upstream connections, so it reaches
gunicorn over a UNIX socket and the app trusts only ``"unix"`` (a UNIX peer has no address: the
history's peer is empty); the tests' own requests to gunicorn come over TCP from 127.0.0.1. Caddy
answers 421 when the SNI differs from the Host, so the tests connect to 127.0.0.1 as ``localhost``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import LOOPBACK, PROXY_ADDRESS, Materials
from .proxies import ProxyFront, forged_headers, running

pytestmark = pytest.mark.services

KINDS = ("haproxy", "apache", "caddy")


@dataclass(frozen=True)
class Proxy:
    """What one proxy forwards, and so what the middleware answers behind it."""

    #: The history's peer for the proxy's requests.
    peer: str
    #: client stems accepted as alice, with the proxy's verdict header value.
    accepted: tuple[tuple[str, str | None], ...]
    #: (client stem or None, status, reason, the proxy's verdict header value)
    refused: tuple[tuple[str | None, int, str, str | None], ...]
    #: (client stem, what the proxy's error log says) for certificates it ends at the handshake.
    refused_at_handshake: tuple[tuple[str, str], ...] = ()
    #: Whether the proxy forwards the chain (then a forged chain header is tested too).
    forwards_chain: bool = True
    #: Whether the profile's documented configuration is run exactly (Caddy's needs its socket).
    documented_config: bool = True


PROXIES = {
    "haproxy": Proxy(
        peer=PROXY_ADDRESS,
        accepted=(("alice", "0"),),
        refused=(
            ("bob", 403, "unknown_certificate", "0"),
            ("carol", 403, "user_inactive", "0"),
            ("expired", 403, "certificate_expired", "10"),
            ("wrong_eku", 403, "missing_client_auth_eku", "26"),
            ("foreign", 403, "untrusted_issuer", "20"),
            ("alice_leaf", 403, "untrusted_issuer", "21"),  # only the chain header could carry it
            (None, 401, "no_certificate", "0"),  # X509_V_OK when nothing was verified
        ),
    ),
    "apache": Proxy(
        peer=PROXY_ADDRESS,
        accepted=(("alice", "SUCCESS"),),
        refused=(
            ("bob", 403, "unknown_certificate", "SUCCESS"),
            ("carol", 403, "user_inactive", "SUCCESS"),
            ("foreign", 403, "untrusted_issuer", "FAILED:unable to get local issuer certificate"),
            ("alice_leaf", 403, "untrusted_issuer", "FAILED:unable to verify the first certificate"),
            (None, 401, "no_certificate", "NONE"),
        ),
        refused_at_handshake=(
            ("expired", "Certificate Verification: Error (10): certificate has expired"),
            ("wrong_eku", "Certificate Verification: Error (26): unsuitable certificate purpose"),
        ),
    ),
    "caddy": Proxy(
        peer="",
        # Caddy forwards only the leaf anyway: the app's configured intermediates complete the path.
        accepted=(("alice", None), ("alice_leaf", None)),
        refused=(
            ("bob", 403, "unknown_certificate", None),
            ("carol", 403, "user_inactive", None),
            ("expired", 403, "certificate_expired", None),
            ("wrong_eku", 403, "missing_client_auth_eku", None),
            ("foreign", 403, "untrusted_issuer", None),
            (None, 401, "no_certificate", None),
        ),
        forwards_chain=False,
        documented_config=False,
    ),
}


def _cases(rows: Callable[[Proxy], Iterable[tuple[Any, ...]]]) -> list[Any]:
    """``(kind, *row)`` params for every proxy's rows, with ids ``<kind>-<client>``."""
    return [
        pytest.param(kind, *row, id=f"{kind}-{row[0] or 'no-certificate'}")
        for kind in KINDS
        for row in rows(PROXIES[kind])
    ]


class Fronts:
    """The running proxies: each started on first use, all stopped at the end of the module."""

    def __init__(self, stack: ExitStack, materials: Materials, factory: pytest.TempPathFactory) -> None:
        self._stack, self._materials, self._factory = stack, materials, factory
        self._started: dict[str, ProxyFront] = {}

    def __getitem__(self, kind: str) -> ProxyFront:
        if kind not in self._started:
            context = running(kind, self._materials, self._factory.mktemp(kind))
            self._started[kind] = self._stack.enter_context(context)
        return self._started[kind]


@pytest.fixture(scope="module")
def fronts(materials: Materials, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fronts]:
    with ExitStack() as stack:
        yield Fronts(stack, materials, tmp_path_factory)


@pytest.mark.parametrize(("kind", "client", "verify"), _cases(lambda p: p.accepted))
def test_registered_certificate_is_accepted_with_its_identity(
    fronts: Fronts, materials: Materials, kind: str, client: str, verify: str | None
) -> None:
    front = fronts[kind]
    alice = materials.clients[client]
    attempt = front.through(alice)
    assert attempt.answered.status == 200, (attempt.answered, front.log_text())
    assert attempt.answered.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": f"proxy:{kind}",
        "proxy_verify": verify,
    }
    assert attempt.proxy_verify == verify
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXIES[kind].peer)


@pytest.mark.parametrize("kind", [k for k in KINDS if PROXIES[k].documented_config])
def test_the_documented_configuration_is_the_one_tested(fronts: Fronts, kind: str) -> None:
    """Every line of the profile's configuration (docs/proxies.md's) is in the proxy's config."""
    front = fronts[kind]
    running_lines = {line.strip() for line in front.config.splitlines()}
    documented = [line.strip() for line in front.profile.config.splitlines() if line.strip()]
    assert documented
    assert [line for line in documented if line not in running_lines] == []


@pytest.mark.parametrize(("kind", "client", "status", "reason", "verify"), _cases(lambda p: p.refused))
def test_refusals_carry_the_reason_to_the_client_and_the_history(
    fronts: Fronts,
    materials: Materials,
    kind: str,
    client: str | None,
    status: int,
    reason: str,
    verify: str | None,
) -> None:
    front = fronts[kind]
    presented = materials.clients[client] if client else None
    attempt = front.through(presented)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    record = attempt.record
    assert (record["outcome"], record["source"], record["peer"]) == (reason, f"proxy:{kind}", PROXIES[kind].peer)
    assert record["fingerprint"] == (presented.fingerprint if presented else None)
    assert attempt.proxy_verify == verify


@pytest.mark.parametrize(
    ("kind", "client", "logged"), _cases(lambda p: p.refused_at_handshake)
)
def test_certificates_the_proxy_refuses_end_the_handshake(
    fronts: Fronts, materials: Materials, kind: str, client: str, logged: str
) -> None:
    """Apache's optional_no_ca forgives only an unknown issuer: the middleware never sees these."""
    front = fronts[kind]
    attempt = front.through(materials.clients[client])
    assert attempt.refused is not None, attempt.response
    assert attempt.records == []
    assert logged in front.log_text()


# -- forgeries -----------------------------------------------------------------------------------
# client presented over TLS, the client whose certificate the forged headers name (None: a forged
# chain header only, over alice's real bare leaf), status, reason.
FORGED = {
    "forged-headers-without-certificate": (None, "alice", 401, "no_certificate"),
    "forged-headers-over-another-certificate": ("bob", "alice", 403, "unknown_certificate"),
    "forged-chain-over-a-bare-leaf": ("alice_leaf", None, 403, "untrusted_issuer"),
}


@pytest.mark.parametrize(
    ("kind", "client", "named", "status", "reason"),
    [
        pytest.param(kind, *row, id=f"{kind}-{label}")
        for kind in KINDS
        for label, row in FORGED.items()
        if row[1] is not None or PROXIES[kind].forwards_chain
    ],
)
def test_the_proxy_replaces_the_clients_certificate_headers(
    fronts: Fronts,
    materials: Materials,
    kind: str,
    client: str | None,
    named: str | None,
    status: int,
    reason: str,
) -> None:
    """The app judges what the proxy saw at the handshake, never what the client wrote."""
    front = fronts[kind]
    presented = materials.clients[client] if client else None
    headers = forged_headers(front, materials.clients[named or "alice"].issued)
    if named is None:
        del headers[front.profile.cert_header]
    attempt = front.through(presented, headers)
    assert (attempt.answered.status, attempt.answered.error) == (status, reason)
    assert attempt.record["fingerprint"] == (presented.fingerprint if presented else None)


def test_a_forged_deeper_apache_chain_header_is_replaced(
    fronts: Fronts, materials: Materials
) -> None:
    """Every depth the profile reads is set by httpd (to ``(null)`` when the client sent no
    certificate at that depth), so a client cannot add one the chain does not have."""
    front = fronts["apache"]
    header = f"{front.profile.chain_header}5"
    forged = forged_headers(front, materials.clients["alice"].issued)
    chain_0 = forged[f"{front.profile.chain_header}0"]
    attempt = front.through(materials.clients["alice_leaf"], {header: chain_0})
    assert (attempt.answered.status, attempt.answered.error) == (403, "untrusted_issuer")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forwarding", [False, True], ids=["forged-headers", "forged-headers-and-forwarding-headers"])
def test_forged_headers_straight_to_the_app_are_refused_and_recorded(
    fronts: Fronts, materials: Materials, kind: str, forwarding: bool
) -> None:
    """Past the proxy, over TCP from 127.0.0.1: the headers are those the proxy would send for alice."""
    front = fronts[kind]
    extra = {"X-Forwarded-For": PROXY_ADDRESS, "Forwarded": f"for={PROXY_ADDRESS}"} if forwarding else {}
    if forwarding and kind == "caddy":
        extra["Forwarded"] = "for=unix"
    attempt = front.direct(forged_headers(front, materials.clients["alice"].issued) | extra)
    assert (attempt.answered.status, attempt.answered.error) == (401, "untrusted_proxy")
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("untrusted_proxy", LOOPBACK)


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_forged_headers_from_the_proxy_are_believed(
    fronts: Fronts, materials: Materials, kind: str
) -> None:
    """The control for the forgery tests: the forged values are what the proxy sends, and only
    the way in (or the proxy replacing them) made the difference."""
    front = fronts[kind]
    alice = materials.clients["alice"]
    attempt = front.as_proxy(forged_headers(front, alice.issued))
    assert attempt.answered.status == 200, attempt.answered
    assert attempt.answered.json()["fingerprint"] == alice.fingerprint
    assert (attempt.record["outcome"], attempt.record["peer"]) == ("accepted", PROXIES[kind].peer)
