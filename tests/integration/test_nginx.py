"""Real nginx on loopback in front of the middleware under gunicorn (WSGI) and uvicorn (ASGI).

nginx terminates TLS with ``ssl_verify_client optional_no_ca`` and our root as
``ssl_client_certificate``, and forwards ``$ssl_client_escaped_cert`` (the leaf only) and
``$ssl_client_verify``; the app (``proxy="nginx"``) trusts only nginx's upstream address
(``proxy_bind 127.0.0.2``). What ``$ssl_client_verify`` says, as these tests pin it down
(nginx 1.22, OpenSSL 3.0):

=====================================  ================================================  =======
client presents                        ``$ssl_client_verify``                            result
=====================================  ================================================  =======
leaf + intermediate from our CA        ``SUCCESS``                                       the app
leaf only (intermediate not sent)      ``FAILED:unable to verify the first certificate``  the app*
leaf + intermediate of a foreign CA    ``FAILED:unable to get local issuer certificate``  the app
no certificate                         ``NONE``                                          the app
an expired certificate from our CA     ``FAILED:certificate has expired``                nginx: 400
=====================================  ================================================  =======

(*) The "issuer unknown" failures are no verdict on the certificate: the nginx profile reads them
as "not verified by the proxy", and the middleware builds and checks the path itself.

``optional_no_ca`` forgives only the "issuer unknown" errors: any other failure (expired, bad
signature) makes nginx answer 400 itself, and the request never reaches the middleware.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from .clients import curl
from .conftest import LOOPBACK, PROXY_ADDRESS, Materials, NginxFront

pytestmark = pytest.mark.services

VERIFY_HEADER = "x-test-nginx-client-verify"


def escaped(pem: bytes) -> str:
    """A PEM as nginx's ``$ssl_client_escaped_cert`` writes it (URL-encoded)."""
    return quote(pem.decode(), safe="")


def test_registered_certificate_is_accepted_with_its_identity(
    nginx_front: NginxFront, materials: Materials
) -> None:
    alice = materials.clients["alice"]
    answer = curl(nginx_front.nginx.url("/whoami"), cacert=materials.root, cert=alice.cert, key=alice.key)
    assert answer.status == 200, answer
    assert answer.headers[VERIFY_HEADER] == "SUCCESS"
    assert answer.json() == {
        "user_id": "alice",
        "org": "acme",
        "fingerprint": alice.fingerprint,
        "source": "proxy:nginx",
        "proxy_verify": "SUCCESS",
    }


# client (a stem of materials.clients, or None), extra request headers (a value naming a client
# stands for that client's escaped PEM), status, reason code, what nginx said ($ssl_client_verify).
THROUGH_NGINX = [
    pytest.param("bob", {}, 403, "unknown_certificate", "SUCCESS", id="unregistered"),
    pytest.param("carol", {}, 403, "user_inactive", "SUCCESS", id="user-deactivated"),
    # The validate stage runs before nginx's verdict is consulted (authenticator._judge), so a
    # chain to no configured root is refused for what it is, not as proxy_verification_failed.
    pytest.param(
        "foreign", {}, 403, "untrusted_issuer", "FAILED:unable to get local issuer certificate",
        id="foreign-ca",
    ),
    pytest.param(None, {}, 401, "no_certificate", "NONE", id="no-certificate"),
    # nginx replaces (or, when empty, drops) the client's own copies of the headers it sets.
    pytest.param(
        None, {"X-SSL-Client-Cert": "alice", "X-SSL-Client-Verify": "SUCCESS"},
        401, "no_certificate", "NONE",
        id="forged-header-without-certificate",
    ),
    pytest.param(
        "bob", {"X-SSL-Client-Cert": "alice", "X-SSL-Client-Verify": "SUCCESS"},
        403, "unknown_certificate", "SUCCESS",
        id="forged-header-over-another-certificate",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("client", "headers", "status", "reason", "verify"), THROUGH_NGINX)
def test_refusals_through_nginx(
    nginx_front: NginxFront,
    materials: Materials,
    client: str | None,
    headers: dict[str, str],
    status: int,
    reason: str,
    verify: str,
) -> None:
    presented = materials.clients[client] if client else None
    forged = {
        name: escaped(materials.clients[value].issued.cert_pem) if value in materials.clients else value
        for name, value in headers.items()
    }
    answer = curl(
        nginx_front.nginx.url("/whoami"),
        cacert=materials.root,
        cert=presented.cert if presented else None,
        key=presented.key if presented else None,
        headers=forged,
    )
    assert (answer.status, answer.error) == (status, reason)
    assert answer.headers[VERIFY_HEADER] == verify


def test_leaf_without_intermediate_is_judged_by_the_middleware(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """nginx cannot find the issuer of a bare leaf and says FAILED; that is no verdict on the
    certificate (optional_no_ca forgives it), so the middleware, which knows the intermediate,
    builds the path itself and accepts."""
    alice = materials.clients["alice_leaf"]
    answer = curl(nginx_front.nginx.url("/whoami"), cacert=materials.root, cert=alice.cert, key=alice.key)
    assert answer.headers[VERIFY_HEADER] == "FAILED:unable to verify the first certificate"
    assert answer.status == 200, answer
    assert answer.json()["user_id"] == "alice"


def test_expired_certificate_is_refused_by_nginx_itself(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """optional_no_ca does not forgive expiry: nginx answers 400 before the app sees anything."""
    expired = materials.clients["expired"]
    answer = curl(nginx_front.nginx.url("/whoami"), cacert=materials.root, cert=expired.cert, key=expired.key)
    assert answer.status == 400
    assert b"The SSL certificate error" in answer.body
    assert "client SSL certificate verify error: (10:certificate has expired)" in (
        nginx_front.error_log_text()
    )


# -- straight to the app port, past nginx ----------------------------------------------------
def test_forged_header_from_an_untrusted_peer_is_refused(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """A request from 127.0.0.1 (not the trusted 127.0.0.2) naming alice's certificate."""
    headers = {
        "X-SSL-Client-Cert": escaped(materials.clients["alice"].issued.cert_pem),
        "X-SSL-Client-Verify": "SUCCESS",
    }
    answer = curl(nginx_front.app.url("/whoami", scheme="http"), headers=headers, interface=LOOPBACK)
    assert (answer.status, answer.error) == (401, "untrusted_proxy")


def test_forged_header_with_forged_forwarding_headers_is_refused(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """Forwarding headers naming the trusted address do not make the peer trusted."""
    headers = {
        "X-SSL-Client-Cert": escaped(materials.clients["alice"].issued.cert_pem),
        "X-SSL-Client-Verify": "SUCCESS",
        "X-Forwarded-For": PROXY_ADDRESS,
        "X-Real-IP": PROXY_ADDRESS,
        "Forwarded": f"for={PROXY_ADDRESS}",
    }
    answer = curl(nginx_front.app.url("/whoami", scheme="http"), headers=headers, interface=LOOPBACK)
    assert (answer.status, answer.error) == (401, "untrusted_proxy")


def test_the_same_header_from_the_trusted_address_is_believed(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """The control for the forgery tests: only the peer address made the difference."""
    alice = materials.clients["alice"]
    headers = {"X-SSL-Client-Cert": escaped(alice.issued.cert_pem), "X-SSL-Client-Verify": "SUCCESS"}
    answer = curl(nginx_front.app.url("/whoami", scheme="http"), headers=headers, interface=PROXY_ADDRESS)
    assert answer.status == 200, answer
    assert answer.json()["fingerprint"] == alice.fingerprint


def test_expired_certificate_forwarded_by_a_trusted_proxy_is_refused_by_the_middleware(
    nginx_front: NginxFront, materials: Materials
) -> None:
    """What the app says when a proxy does forward an expired certificate (as nginx would not)."""
    headers = {
        "X-SSL-Client-Cert": escaped(materials.clients["expired"].issued.cert_pem),
        "X-SSL-Client-Verify": "SUCCESS",
    }
    answer = curl(nginx_front.app.url("/whoami", scheme="http"), headers=headers, interface=PROXY_ADDRESS)
    assert (answer.status, answer.error) == (403, "certificate_expired")
