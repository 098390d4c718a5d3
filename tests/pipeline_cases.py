"""The refusal cases of the pipeline, shared by test_wsgi.py and test_asgi.py.

Imported as a plain module (``import pipeline_cases``): ``tests/`` has no ``__init__.py``, so the
rootdir conftest puts ``tests/`` on ``sys.path``, as it does for ``tests/integration``. Every
certificate is made here, now, with :mod:`mtls_middleware.testing`; nothing is checked in.

A :class:`Case` names the reason code it must produce and what one request presents: PEM strings
from the server's TLS layer (WSGI ``SSL_CLIENT_CERT`` + ``SSL_CLIENT_CERT_CHAIN_n``, ASGI ``tls``
extension) or nginx headers from a trusted (or untrusted) peer.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_middleware import MemoryStore, MTLSConfig, Reason
from mtls_middleware.testing import CLIENT_AUTH, SERVER_AUTH, Issued, TestPKI

#: The nginx in front of the app (trusted), and some other host (not trusted).
PROXY_PEER = "10.0.0.1"
STRANGER = "192.0.2.66"

GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
#: A verdict of nginx on the certificate (issuer-unknown FAILEDs are not one: optional_no_ca).
VERIFY_FAILED = "FAILED:certificate has expired"

#: Refusals decided after the leaf was parsed: the history record names the certificate.
LEAF_KNOWN = frozenset(
    {
        Reason.CERTIFICATE_EXPIRED,
        Reason.CERTIFICATE_NOT_YET_VALID,
        Reason.UNTRUSTED_ISSUER,
        Reason.CHAIN_INVALID,
        Reason.MISSING_CLIENT_AUTH_EKU,
        Reason.DUAL_PURPOSE_EKU,
        Reason.UNKNOWN_CERTIFICATE,
        Reason.USER_INACTIVE,
        Reason.CERTIFICATE_AUTH_DISABLED,
    }
)
#: Refusals decided after the owner was found: the record names the user too.
USER_KNOWN = frozenset({Reason.USER_INACTIVE, Reason.CERTIFICATE_AUTH_DISABLED})


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pems(issued: Issued) -> tuple[str, ...]:
    """The chain a client presents (leaf, then intermediates), one PEM string each."""
    return tuple(pem(c) for c in issued.chain)


def escaped(issued: Issued) -> str:
    """The leaf as nginx's ``$ssl_client_escaped_cert`` puts it into X-SSL-Client-Cert."""
    return quote(pem(issued.cert))


@dataclass(frozen=True)
class Certs:
    """Every certificate the cases present."""

    alice: Issued  # registered to user alice (org acme) in the ``store`` fixture
    bob: Issued  # valid, registered to nobody
    expired: Issued
    not_yet_valid: Issued
    foreign: Issued  # issued by an unrelated PKI
    weak_key: Issued  # a 1024-bit RSA key
    server_only: Issued  # serverAuth EKU, no clientAuth
    dual_purpose: Issued  # clientAuth and serverAuth
    ten: Issued  # leaf + 9 intermediates: 10 certificates presented, the most allowed
    eleven: Issued  # leaf + 10 intermediates: 11 certificates presented


def deep_client(pki: TestPKI, intermediates: int, common_name: str) -> Issued:
    """A client certificate below ``intermediates`` CAs (the PKI's issuing CA the first)."""
    ca = pki.issuing
    for level in range(intermediates - 1):
        ca = pki.issue_ca(f"{common_name} CA {level}", parent=ca)
    issued = pki.issue_client(common_name, issuer=ca)
    assert len(issued.chain) == intermediates + 1
    return issued


def make_certs(pki: TestPKI, other_pki: TestPKI, alice: Issued, bob: Issued) -> Certs:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    day = dt.timedelta(days=1)
    return Certs(
        alice=alice,
        bob=bob,
        expired=pki.issue_client("expired", not_before=now - 10 * day, not_after=now - day),
        not_yet_valid=pki.issue_client("future", not_before=now + day, not_after=now + 30 * day),
        foreign=other_pki.issue_client("mallory"),
        weak_key=pki.issue_client("weak", key_type="rsa1024"),
        server_only=pki.issue_client("server only", eku=(SERVER_AUTH,)),
        dual_purpose=pki.issue_client("dual purpose", eku=(CLIENT_AUTH, SERVER_AUTH)),
        ten=deep_client(pki, 9, "ten"),
        eleven=deep_client(pki, 10, "eleven"),
    )


@dataclass(frozen=True)
class Presentation:
    """What one request presents, and from which peer."""

    tls: tuple[str, ...] = ()  # PEM strings from the server's TLS layer, leaf first
    cert_header: str | None = None  # X-SSL-Client-Cert (nginx profile)
    verify_header: str | None = None  # X-SSL-Client-Verify
    peer: str = PROXY_PEER
    duplicate_cert_header: bool = False  # the cert header sent twice (ASGI only)

    @property
    def via_proxy(self) -> bool:
        return self.cert_header is not None or self.verify_header is not None

    @property
    def headers(self) -> dict[str, str]:
        out = {}
        if self.cert_header is not None:
            out["X-SSL-Client-Cert"] = self.cert_header
        if self.verify_header is not None:
            out["X-SSL-Client-Verify"] = self.verify_header
        return out

    @property
    def environ(self) -> dict[str, str]:
        """The WSGI server's own keys: the peer and the TLS layer's certificates."""
        out = {"REMOTE_ADDR": self.peer}
        if self.tls:
            out["SSL_CLIENT_CERT"] = self.tls[0]
            for index, item in enumerate(self.tls[1:]):
                out[f"SSL_CLIENT_CERT_CHAIN_{index}"] = item
        return out

    @property
    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        out = [(k.lower().encode(), v.encode("latin-1")) for k, v in self.headers.items()]
        if self.duplicate_cert_header and self.cert_header is not None:
            out.append((b"x-ssl-client-cert", self.cert_header.encode("latin-1")))
        return out

    def asgi_scope(self, kind: str = "http", path: str = "/") -> dict[str, Any]:
        scope: dict[str, Any] = {
            "type": kind,
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "https" if kind == "http" else "wss",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), *self.asgi_headers],
            "client": (self.peer, 50000),
            "server": ("testserver", 443),
        }
        if kind == "http":
            scope["method"] = "GET"
        if self.tls:
            scope["extensions"] = {"tls": {"client_cert_chain": list(self.tls)}}
        return scope


@dataclass(frozen=True)
class Case:
    id: str
    reason: Reason
    present: Callable[[Certs], Presentation]
    mutate: Callable[[MemoryStore], object] | None = field(default=None)
    asgi_only: bool = False

    def __str__(self) -> str:
        return self.id


def tls(name: str) -> Callable[[Certs], Presentation]:
    return lambda c: Presentation(tls=pems(getattr(c, name)))


#: Every reason code the core can produce (revocation aside: it is off in this version).
REASON_CASES = [
    Case("no_certificate", Reason.NO_CERTIFICATE, lambda c: Presentation()),
    Case(
        "untrusted_proxy",
        Reason.UNTRUSTED_PROXY,
        lambda c: Presentation(cert_header=escaped(c.alice), peer=STRANGER),
    ),
    Case(
        "proxy_verification_failed",
        Reason.PROXY_VERIFICATION_FAILED,
        lambda c: Presentation(verify_header=VERIFY_FAILED),
    ),
    Case(
        "malformed_certificate",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(tls=(GARBAGE_PEM,)),
    ),
    Case(
        "certificate_too_large",
        Reason.CERTIFICATE_TOO_LARGE,
        lambda c: Presentation(cert_header=escaped(c.alice) + "%0A" + "A" * 70_000),
    ),
    Case("chain_too_long", Reason.CHAIN_TOO_LONG, tls("eleven")),
    Case("certificate_expired", Reason.CERTIFICATE_EXPIRED, tls("expired")),
    Case("certificate_not_yet_valid", Reason.CERTIFICATE_NOT_YET_VALID, tls("not_yet_valid")),
    Case("untrusted_issuer", Reason.UNTRUSTED_ISSUER, tls("foreign")),
    Case("chain_invalid", Reason.CHAIN_INVALID, tls("weak_key")),
    Case("missing_client_auth_eku", Reason.MISSING_CLIENT_AUTH_EKU, tls("server_only")),
    Case("dual_purpose_eku", Reason.DUAL_PURPOSE_EKU, tls("dual_purpose")),
    Case("unknown_certificate", Reason.UNKNOWN_CERTIFICATE, tls("bob")),
    Case(
        "user_inactive",
        Reason.USER_INACTIVE,
        tls("alice"),
        mutate=lambda s: s.set_user_active("alice", False),
    ),
    Case(
        "certificate_auth_disabled",
        Reason.CERTIFICATE_AUTH_DISABLED,
        tls("alice"),
        mutate=lambda s: s.set_org("acme", cert_auth=False),
    ),
]


def _bad_percent_encoding(c: Certs) -> Presentation:
    # A broken escape inside the base64 body: "%ZZ" is no percent-escape at all.
    value = escaped(c.alice)
    head, sep, tail = value.partition("%0A")
    return Presentation(cert_header=head + sep + "%ZZ" + tail)


#: Hostile input: each gets its own reason code and a 4xx, never a 500.
HOSTILE_CASES = [
    Case(
        "garbage_pem_tls_layer",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(tls=(GARBAGE_PEM,)),
    ),
    Case(
        "garbage_pem_header",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(cert_header=quote(GARBAGE_PEM)),
    ),
    Case(
        "der_garbage_tls_layer",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(tls=("\x30\x82junk",)),
    ),
    Case(
        "header_not_pem",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(cert_header="hello"),
    ),
    Case("bad_percent_encoding", Reason.MALFORMED_CERTIFICATE, _bad_percent_encoding),
    Case(
        "header_with_comma",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(cert_header=escaped(c.alice) + "," + escaped(c.bob)),
    ),
    Case(
        "oversize_header",
        Reason.CERTIFICATE_TOO_LARGE,
        lambda c: Presentation(cert_header="A" * (64 * 1024 + 1)),
    ),
    Case(
        "eleven_certificates_in_header",
        Reason.CHAIN_TOO_LONG,
        lambda c: Presentation(cert_header=quote("".join(pems(c.eleven)))),
    ),
    Case("eleven_certificates_tls_layer", Reason.CHAIN_TOO_LONG, tls("eleven")),
    Case(
        "forged_header_untrusted_peer",
        Reason.UNTRUSTED_PROXY,
        lambda c: Presentation(cert_header=escaped(c.alice), peer=STRANGER),
    ),
    Case(
        "forged_verify_header_untrusted_peer",
        Reason.UNTRUSTED_PROXY,
        lambda c: Presentation(verify_header="SUCCESS", peer=STRANGER),
    ),
    Case(
        "proxy_verify_failed_without_cert",
        Reason.PROXY_VERIFICATION_FAILED,
        lambda c: Presentation(verify_header=VERIFY_FAILED),
    ),
    Case(
        "proxy_verify_failed_with_good_cert",
        Reason.PROXY_VERIFICATION_FAILED,
        lambda c: Presentation(cert_header=escaped(c.alice), verify_header=VERIFY_FAILED),
    ),
    Case(
        "duplicated_cert_header",
        Reason.MALFORMED_CERTIFICATE,
        lambda c: Presentation(cert_header=escaped(c.alice), duplicate_cert_header=True),
        asgi_only=True,
    ),
]


def config_for(pki: TestPKI, store: MemoryStore, presentation: Presentation, **options: Any) -> MTLSConfig:
    """The config a presentation needs: nginx behind PROXY_PEER for header cases, else TLS."""
    settings: dict[str, Any] = {"trust_roots": [pki.root.cert], "store": store, "revocation": "off"}
    if presentation.via_proxy:
        settings.update(proxy="nginx", trusted_proxies=[PROXY_PEER])
    settings.update(options)
    return MTLSConfig(**settings)


def assert_refusal_json(body: bytes, reason: Reason) -> dict[str, str]:
    """The body is exactly ``{"error": code, "message": sentence}``, with nothing of the exception."""
    text = body.decode()
    data = json.loads(text)
    assert set(data) == {"error", "message"}, data
    assert data["error"] == reason.value
    assert data["message"] == reason.message
    for leak in ("Traceback", "detail", 'File "', "Error:", "Exception"):
        assert leak not in text
    return data  # type: ignore[no-any-return]


def tls_config(pki: TestPKI, store: MemoryStore, **options: Any) -> MTLSConfig:
    """The TLS-layer configuration both adapters' tests use."""
    return config_for(pki, store, Presentation(), **options)


def alice_tls(alice: Issued) -> Presentation:
    """alice's chain as the TLS layer presents it."""
    return Presentation(tls=pems(alice))
