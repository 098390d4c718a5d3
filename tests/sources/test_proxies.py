"""sources/proxies.py: header profiles, nginx's escaped PEM and its verification header."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls_middleware import CertificateError, ConfigurationError, Reason
from mtls_middleware.certs import ParsedChain, parse_chain
from mtls_middleware.sources import PROFILES, Presented, ProxyProfile, get_profile
from mtls_middleware.testing import Issued

NGINX = PROFILES["nginx"]
LIMIT = 64 * 1024


def escaped(issued: Issued) -> str:
    return quote(issued.cert_pem.decode())


def environ(**headers: str) -> dict[str, str]:
    names = {"cert": "HTTP_X_SSL_CLIENT_CERT", "verify": "HTTP_X_SSL_CLIENT_VERIFY"}
    return {names[k]: v for k, v in headers.items()}


def asgi(**headers: str) -> list[tuple[bytes, bytes]]:
    names = {"cert": b"x-ssl-client-cert", "verify": b"x-ssl-client-verify"}
    return [(b"host", b"example"), *((names[k], v.encode("latin-1")) for k, v in headers.items())]


def extract(via: str, **headers: str) -> Presented | None:
    if via == "wsgi":
        return NGINX.extract_wsgi(environ(**headers), max_bytes=LIMIT)
    return NGINX.extract_headers(asgi(**headers), max_bytes=LIMIT)


VIA = pytest.mark.parametrize("via", ["wsgi", "asgi"])


def test_the_nginx_profile() -> None:
    assert get_profile("nginx") is NGINX
    assert NGINX.cert_header == "X-SSL-Client-Cert"
    assert NGINX.verify_header == "X-SSL-Client-Verify"
    assert NGINX.chain_header is None
    assert NGINX.header_names == ("X-SSL-Client-Cert", "X-SSL-Client-Verify")
    assert NGINX.environ_keys == ("HTTP_X_SSL_CLIENT_CERT", "HTTP_X_SSL_CLIENT_VERIFY")
    assert "$ssl_client_escaped_cert" in NGINX.config


def test_unknown_profile() -> None:
    with pytest.raises(ConfigurationError) as info:
        get_profile("apache-2")
    assert info.value.reason is Reason.CONFIGURATION_ERROR


@VIA
def test_escaped_pem_decodes_to_the_pem(via: str, alice: Issued) -> None:
    presented = extract(via, cert=escaped(alice), verify="SUCCESS")
    assert presented is not None
    assert presented.source == "proxy:nginx"
    assert presented.proxy_verified is True
    assert presented.items == (alice.cert_pem,)


@VIA
def test_the_whole_chain_in_one_header(via: str, alice: Issued) -> None:
    presented = extract(via, cert=quote(alice.chain_pem.decode()))
    assert presented is not None
    assert presented.items == (alice.chain_pem,)


@VIA
def test_the_key_is_the_raw_header_text(via: str, alice: Issued) -> None:
    value = escaped(alice)
    presented = extract(via, cert=value)
    assert presented is not None
    assert presented.key == value


@pytest.mark.parametrize(
    ("verify", "verified"),
    [
        ("SUCCESS", True),
        ("NONE", None),
        ("FAILED:certificate has expired", False),
        ("FAILED:certificate revoked", False),
        ("FAILED:unsupported certificate purpose", False),
        ("FAILED:", False),
        # optional_no_ca: nginx could not find the issuer; the middleware builds the path itself.
        ("FAILED:unable to get local issuer certificate", None),
        ("FAILED:self signed certificate in certificate chain", None),
        ("FAILED:self-signed certificate", None),
        ("FAILED:unable to verify the first certificate", None),
        ("success", False),  # anything but the exact words is not a success
        ("GENEROUS", False),
    ],
    ids=repr,
)
@VIA
def test_verify_header(via: str, verify: str, verified: bool | None, alice: Issued) -> None:
    presented = extract(via, cert=escaped(alice), verify=verify)
    assert presented is not None
    assert presented.proxy_verified is verified
    assert presented.proxy_detail == verify


@VIA
def test_no_verify_header_is_not_a_verdict(via: str, alice: Issued) -> None:
    presented = extract(via, cert=escaped(alice))
    assert presented is not None
    assert presented.proxy_verified is None


@VIA
def test_failed_verification_without_a_certificate(via: str) -> None:
    presented = extract(via, verify="FAILED:certificate revoked")
    assert presented is not None
    assert presented.empty
    assert presented.proxy_verified is False
    assert presented.proxy_detail.startswith("FAILED:")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"verify": "NONE"},
        {"verify": "SUCCESS"},
        {"verify": "FAILED:unable to get local issuer certificate"},
        {"cert": ""},
        {"cert": "", "verify": "NONE"},
    ],
    ids=[
        "none",
        "verify-NONE",
        "verify-SUCCESS-no-cert",
        "verify-issuer-unknown-no-cert",
        "empty-cert",
        "empty-cert-NONE",
    ],
)
@VIA
def test_nothing_presented(via: str, headers: dict[str, str]) -> None:
    assert extract(via, **headers) is None


def extract_and_parse(via: str, value: str) -> ParsedChain:
    presented = extract(via, cert=value)
    assert presented is not None
    return parse_chain(presented.items)


def _broken_escape(value: str) -> str:
    head, sep, tail = value.partition("%0A")
    return head + sep + "%ZZ" + tail


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda v: v + "," + v, id="comma-two-headers-folded"),
        pytest.param(lambda v: "hello", id="not-pem"),
        pytest.param(_broken_escape, id="bad-percent-escape"),
        pytest.param(lambda v: v.replace("%0A", "%0", 1), id="truncated-escape"),
        pytest.param(lambda v: v[: len(v) // 2], id="truncated-pem"),
        pytest.param(lambda v: quote("-----BEGIN CERTIFICATE-----\n@@@\n"), id="garbage-body"),
        pytest.param(lambda v: quote("-----BEGIN PRIVATE KEY-----\nMIIB\n"), id="a-private-key"),
    ],
)
@VIA
def test_undecodable_header_is_malformed(via: str, mangle: Any, alice: Issued) -> None:
    # Decoding is deferred: the error comes when the items are parsed, if not before.
    with pytest.raises(CertificateError) as info:
        extract_and_parse(via, mangle(escaped(alice)))
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_decode_rejects_a_comma() -> None:
    with pytest.raises(CertificateError) as info:
        NGINX.decode("-----BEGIN%20CERTIFICATE-----%0A,")
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


@VIA
def test_oversize_header(via: str) -> None:
    with pytest.raises(CertificateError) as info:
        extract(via, cert="A" * (LIMIT + 1))
    assert info.value.reason is Reason.CERTIFICATE_TOO_LARGE


@VIA
def test_header_at_the_size_limit_is_not_too_large(via: str) -> None:
    presented = extract(via, cert="A" * LIMIT)
    assert presented is not None
    with pytest.raises(CertificateError) as info:
        _ = presented.items
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_duplicated_header_in_asgi(alice: Issued) -> None:
    headers = [*asgi(cert=escaped(alice)), (b"x-ssl-client-cert", escaped(alice).encode())]
    with pytest.raises(CertificateError) as info:
        NGINX.extract_headers(headers, max_bytes=LIMIT)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_duplicated_verify_header_in_asgi(alice: Issued) -> None:
    headers = [*asgi(cert=escaped(alice), verify="FAILED:x"), (b"x-ssl-client-verify", b"SUCCESS")]
    with pytest.raises(CertificateError) as info:
        NGINX.extract_headers(headers, max_bytes=LIMIT)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_decoding_waits_until_the_items_are_asked_for(alice: Issued) -> None:
    calls: list[str] = []

    def spy(value: str) -> list[bytes]:
        calls.append(value)
        return NGINX.decode(value)

    profile = ProxyProfile(name="spy", cert_header="X-SSL-Client-Cert", decode=spy, verify_header=None)
    presented = profile.extract_wsgi(environ(cert=escaped(alice)), max_bytes=LIMIT)
    assert presented is not None
    assert calls == []
    assert presented.items == (alice.cert_pem,)
    assert presented.items == (alice.cert_pem,)
    assert len(calls) == 1


def test_carries_certificate_wsgi() -> None:
    assert NGINX.carries_certificate_wsgi(environ(cert="x")) is True
    assert NGINX.carries_certificate_wsgi(environ(verify="SUCCESS")) is True
    assert NGINX.carries_certificate_wsgi({"HTTP_X_OTHER": "x"}) is False


# -- renamed headers --------------------------------------------------------------------------


def test_with_headers_renames(alice: Issued) -> None:
    profile = NGINX.with_headers({"cert": "X-Client-Cert", "verify": "X-Client-Verify"})
    assert profile.header_names == ("X-Client-Cert", "X-Client-Verify")
    assert profile.environ_keys == ("HTTP_X_CLIENT_CERT", "HTTP_X_CLIENT_VERIFY")
    presented = profile.extract_wsgi(
        {"HTTP_X_CLIENT_CERT": escaped(alice), "HTTP_X_CLIENT_VERIFY": "SUCCESS"}, max_bytes=LIMIT
    )
    assert presented is not None
    assert presented.items == (alice.cert_pem,)
    assert presented.proxy_verified is True
    # The old names mean nothing to the renamed profile.
    assert profile.extract_wsgi(environ(cert=escaped(alice)), max_bytes=LIMIT) is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"client": "X-Cert"},
        {"chain": "X-Chain"},  # nginx has no chain header to rename
        {"cert": ""},
        {"cert": "X Cert"},
        {"cert": "X-Cert:"},
        {"cert": "X-Cert\r\nX-Evil"},
    ],
    ids=repr,
)
def test_with_headers_refuses(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        NGINX.with_headers(overrides)
    assert info.value.reason is Reason.CONFIGURATION_ERROR


# -- decoders never fail open ------------------------------------------------------------------


def _decode_outcome(value: str) -> Reason | None:
    """None when the header decodes to bytes items, else the reason of the refusal."""
    try:
        presented = NGINX.extract_wsgi(environ(cert=value), max_bytes=LIMIT)
        items = presented.items if presented is not None else ()
    except CertificateError as exc:
        return exc.reason
    assert all(isinstance(i, bytes) for i in items)
    return None


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(), st.binary().map(quote)))
def test_decoder_only_ever_raises_certificate_error(value: str) -> None:
    assert _decode_outcome(value) in (
        None,
        Reason.MALFORMED_CERTIFICATE,
        Reason.CERTIFICATE_TOO_LARGE,
    )


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_escaped_pem_round_trips(data: st.DataObject, alice: Issued) -> None:
    safe = data.draw(st.sampled_from(["/", "", "/+=", "/="]))
    value = quote(alice.cert.public_bytes(serialization.Encoding.PEM).decode(), safe=safe)
    presented = NGINX.extract_wsgi(environ(cert=value), max_bytes=LIMIT)
    assert presented is not None
    assert presented.items == (alice.cert_pem,)
