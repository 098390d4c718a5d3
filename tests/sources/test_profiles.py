"""Every header profile through the WSGI and ASGI middleware: accepted, spoofed, verify, duplicates.

Header values are built in ``profile_cases`` exactly as each proxy's documentation specifies (the
document is cited beside each builder).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterable
from typing import Any

import profile_cases as cases
import pytest
from werkzeug.test import EnvironBuilder

from mtls_middleware import ENVIRON_KEY, MemoryHistory, MemoryStore, MTLSConfig, Reason
from mtls_middleware.asgi import MTLSMiddleware as ASGIMiddleware
from mtls_middleware.certs import parse_chain
from mtls_middleware.errors import CertificateError
from mtls_middleware.sources import PROFILES, Presented
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware as WSGIMiddleware

PROXY = "10.0.0.1"
STRANGER = "192.0.2.66"
LIMIT = 64 * 1024

CASES = [pytest.param(c, id=c.name) for c in cases.CASES]
VERIFYING = [pytest.param(c, id=c.name) for c in cases.CASES if c.failed_verify is not None]
VIA = pytest.mark.parametrize("via", ["wsgi", "asgi"])


def test_every_profile_has_a_case() -> None:
    assert sorted(c.name for c in cases.CASES) == sorted(PROFILES)


def test_every_profile_documents_itself() -> None:
    for profile in PROFILES.values():
        assert profile.config, profile.name
        assert profile.reference.startswith("https://"), profile.name


# -- driving the middleware ------------------------------------------------------------------------


class Seen:
    """The protected app, WSGI and ASGI: remembers what it was called with."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []
        self.scopes: list[dict[str, Any]] = []

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def config(pki: TestPKI, store: MemoryStore, name: str, **options: Any) -> MTLSConfig:
    settings: dict[str, Any] = {
        "trust_roots": [pki.root.cert],
        "store": store,
        "revocation": "off",
        "proxy": name,
        "trusted_proxies": [PROXY],
        # Leaf-only proxies need the deployment's intermediates; the chain-carrying ones are
        # checked to decode their chain in test_decodes_leaf_and_chain.
        "intermediates": [pki.issuing.cert],
    }
    settings.update(options)
    return MTLSConfig(**settings)


def wsgi_environ(headers: dict[str, str] | list[tuple[str, str]], peer: str) -> dict[str, Any]:
    environ: dict[str, Any] = EnvironBuilder(path="/").get_environ()
    environ["REMOTE_ADDR"] = peer
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        key = "HTTP_" + name.upper().replace("-", "_")
        # As WSGI servers do with a repeated header: joined with ", ".
        environ[key] = f"{environ[key]}, {value}" if key in environ else value
    return environ


def call_wsgi(cfg: MTLSConfig, environ: dict[str, Any]) -> tuple[int, Seen]:
    seen = Seen()
    app = WSGIMiddleware(seen.wsgi, cfg)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))  # type: ignore[arg-type]
    assert body
    return int(status[0].split()[0]), seen


def call_asgi(
    cfg: MTLSConfig, headers: dict[str, str] | list[tuple[str, str]], peer: str
) -> tuple[int, Seen]:
    seen = Seen()
    app = ASGIMiddleware(seen.asgi, cfg)
    pairs = headers.items() if isinstance(headers, dict) else headers
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"app"), *((k.lower().encode(), v.encode("latin-1")) for k, v in pairs)],
        "client": (peer, 50000),
        "server": ("app", 443),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], seen


def request(
    via: str, cfg: MTLSConfig, headers: dict[str, str] | list[tuple[str, str]], peer: str = PROXY
) -> tuple[int, Seen]:
    if via == "wsgi":
        return call_wsgi(cfg, wsgi_environ(headers, peer))
    return call_asgi(cfg, headers, peer)


def identity_of(via: str, seen: Seen) -> Any:
    holder = seen.environs[-1] if via == "wsgi" else seen.scopes[-1]
    return holder[ENVIRON_KEY]


# -- accepted --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@VIA
def test_documented_headers_are_accepted(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    history = MemoryHistory()
    cfg = config(pki, store, case.name, history=history)
    for _ in range(2):  # the second time through the verdict cache
        status, seen = request(via, cfg, case.build(alice))
        assert status == 200
        identity = identity_of(via, seen)
        assert identity.user_id == "alice"
        assert identity.source == f"proxy:{case.name}"
        assert identity.fingerprint == hashlib.sha256(alice.cert_der).hexdigest()
    assert [r.outcome for r in history] == ["accepted", "accepted"]


def presented(via: str, name: str, headers: dict[str, str] | list[tuple[str, str]]) -> Presented | None:
    profile = PROFILES[name]
    if via == "wsgi":
        return profile.extract_wsgi(wsgi_environ(headers, PROXY), max_bytes=LIMIT)
    pairs = headers.items() if isinstance(headers, dict) else headers
    return profile.extract_headers(
        [(k.lower().encode(), v.encode("latin-1")) for k, v in pairs], max_bytes=LIMIT
    )


@pytest.mark.parametrize("case", CASES)
@VIA
def test_decodes_leaf_and_chain(via: str, case: cases.ProfileCase, alice: Issued) -> None:
    found = presented(via, case.name, case.build(alice))
    assert found is not None
    chain = parse_chain(found.items)
    expected = alice.chain if case.carries_chain else (alice.cert,)
    assert chain.certificates == expected


def test_traefik_older_escaped_form(alice: Issued) -> None:
    found = presented("wsgi", "traefik", cases.traefik_escaped(alice))
    assert found is not None
    assert parse_chain(found.items).certificates == alice.chain


def test_aws_alb_plus_is_not_a_space(pki: TestPKI) -> None:
    # Find a certificate whose PEM holds a '+': ALB leaves it literal, and it must stay one.
    for attempt in range(64):
        issued = pki.issue_client(f"plus {attempt}")
        if "+" in cases.pem(issued.cert):
            break
    else:
        pytest.skip("no certificate with a '+' in its base64 in 64 tries")
    value = cases.aws_alb(issued)["X-Amzn-Mtls-Clientcert-Leaf"]
    assert "+" in value
    found = presented("wsgi", "aws-alb", {"X-Amzn-Mtls-Clientcert-Leaf": value})
    assert found is not None
    assert parse_chain(found.items).leaf == issued.cert


# -- the spoof matrix -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "via"),
    [pytest.param(c, v, id=f"{c.name}-{v}") for c in cases.CASES for v in ("wsgi", "asgi")],
)
def test_untrusted_peer_is_refused_and_recorded(
    case: cases.ProfileCase, via: str, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    history = MemoryHistory()
    cfg = config(pki, store, case.name, history=history)
    headers = case.build(alice)
    if via == "wsgi":
        environ = wsgi_environ(headers, STRANGER)
        status, seen = call_wsgi(cfg, environ)
        # The headers are gone from the environ, whoever looks at it later.
        assert not set(environ) & set(PROFILES[case.name].environ_keys)
        assert seen.environs == []
    else:
        status, seen = call_asgi(cfg, headers, STRANGER)
        assert seen.scopes == []
    assert status == 401
    (record,) = list(history)
    assert record.outcome == Reason.UNTRUSTED_PROXY.value
    assert record.peer == STRANGER
    assert record.source == f"proxy:{case.name}"


@pytest.mark.parametrize("case", CASES)
@VIA
def test_each_header_alone_from_an_untrusted_peer_is_refused(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    # Not only the certificate header: any header of the profile is a spoofing attempt.
    cfg = config(pki, store, case.name)
    for header in PROFILES[case.name].header_names:
        status, seen = request(via, cfg, {header: "x"}, peer=STRANGER)
        assert status == 401, header
        assert seen.environs == []
        assert seen.scopes == []


# -- the proxy's verdict ------------------------------------------------------------------------


def with_verify(case: cases.ProfileCase, alice: Issued, value: str) -> dict[str, str]:
    headers = case.build(alice)
    assert case.verify_header is not None
    headers[case.verify_header] = value
    return headers


@pytest.mark.parametrize("case", VERIFYING)
@VIA
def test_failed_verification_is_refused(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    history = MemoryHistory()
    cfg = config(pki, store, case.name, history=history)
    assert case.failed_verify is not None
    good, _ = request(via, cfg, case.build(alice))  # cache the good verdict first
    assert good == 200
    status, _ = request(via, cfg, with_verify(case, alice, case.failed_verify))
    assert status == 403
    assert [r.outcome for r in history][-1] == Reason.PROXY_VERIFICATION_FAILED.value


@pytest.mark.parametrize("case", VERIFYING)
@VIA
def test_failed_verification_without_a_certificate(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore
) -> None:
    assert case.failed_verify is not None
    assert case.verify_header is not None
    status, _ = request(via, config(pki, store, case.name), {case.verify_header: case.failed_verify})
    assert status == 403


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        pytest.param("nginx", {"X-SSL-Client-Verify": "NONE"}, id="nginx-NONE"),
        pytest.param("apache", {"X-SSL-Client-Cert": "(null)", "X-SSL-Client-Verify": "NONE"}, id="apache-null"),
        pytest.param("haproxy", {"X-SSL-Client-Cert": '""', "X-SSL-Client-Verify": "0"}, id="haproxy-empty"),
        pytest.param("haproxy", {"X-SSL-Client-Cert": '"-"', "X-SSL-Client-Chain": '""'}, id="haproxy-dash"),
        pytest.param(
            "gcp",
            {"X-Client-Cert-Present": "false", "X-Client-Cert-Chain-Verified": "false",
             "X-Client-Cert-Error": "client_cert_not_provided"},
            id="gcp-not-present",
        ),
        pytest.param("envoy", {}, id="envoy-nothing"),
        # Caddy 2.6 sends a placeholder's own text when the client presented no certificate.
        pytest.param(
            "caddy", {"X-Client-Cert": "{http.request.tls.client.certificate_der_base64}"},
            id="caddy-unreplaced-placeholder",
        ),
    ],
)
@VIA
def test_no_certificate_reported(
    via: str, name: str, headers: dict[str, str], pki: TestPKI, store: MemoryStore
) -> None:
    status, _ = request(via, config(pki, store, name), headers)
    assert status == 401
    history = MemoryHistory()
    request(via, config(pki, store, name, history=history), headers)
    assert [r.outcome for r in history] == [Reason.NO_CERTIFICATE.value]


@pytest.mark.parametrize(
    ("name", "verify", "verified"),
    [
        ("apache", "SUCCESS", True),
        ("apache", "GENEROUS", None),
        ("apache", "NONE", None),
        ("apache", "FAILED:unable to get local issuer certificate", None),
        ("apache", "FAILED:certificate revoked", False),
        ("haproxy", "0", True),
        ("haproxy", "20", None),  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        ("haproxy", "10", False),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("haproxy", "x", False),
        ("cloudflare", "true", True),
        ("cloudflare", "false", False),
        ("gcp", "true", True),
        ("gcp", "false", False),
        ("gcp", "TRUE", True),
        ("gcp", "yes", False),
    ],
    ids=repr,
)
def test_verify_words(name: str, verify: str, verified: bool | None, alice: Issued) -> None:
    case = next(c for c in cases.CASES if c.name == name)
    found = presented("wsgi", name, with_verify(case, alice, verify))
    assert found is not None
    assert found.proxy_verified is verified


def test_gcp_error_goes_to_the_history(pki: TestPKI, store: MemoryStore, alice: Issued) -> None:
    history = MemoryHistory()
    case = next(c for c in cases.CASES if c.name == "gcp")
    headers = with_verify(case, alice, "false")
    headers["X-Client-Cert-Error"] = "client_cert_chain_invalid_eku"
    status, _ = request("wsgi", config(pki, store, "gcp", history=history), headers)
    assert status == 403
    assert "client_cert_chain_invalid_eku" in list(history)[-1].detail


def test_gcp_present_false_with_a_certificate_is_malformed(alice: Issued) -> None:
    headers = cases.gcp(alice)
    headers["X-Client-Cert-Present"] = "false"
    with pytest.raises(CertificateError) as info:
        presented("wsgi", "gcp", headers)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


# -- fingerprints that must match ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["envoy", "gcp"])
@VIA
def test_a_hash_of_another_certificate_is_malformed(
    via: str, name: str, pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued
) -> None:
    headers = cases.envoy(alice) if name == "envoy" else cases.gcp(alice)
    if name == "envoy":
        good = hashlib.sha256(alice.cert_der).hexdigest()
        headers["X-Forwarded-Client-Cert"] = headers["X-Forwarded-Client-Cert"].replace(
            good, hashlib.sha256(bob.cert_der).hexdigest()
        )
    else:
        headers["X-Client-Cert-Hash"] = base64.b64encode(hashlib.sha256(bob.cert_der).digest()).decode()
    history = MemoryHistory()
    status, _ = request(via, config(pki, store, name, history=history), headers)
    assert status == 400
    assert [r.outcome for r in history] == [Reason.MALFORMED_CERTIFICATE.value]


def test_gcp_hash_in_hex_is_accepted(alice: Issued) -> None:
    headers = cases.gcp(alice)
    headers["X-Client-Cert-Hash"] = hashlib.sha256(alice.cert_der).hexdigest().upper()
    found = presented("wsgi", "gcp", headers)
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert


# -- envoy: several hops -------------------------------------------------------------------------


def test_envoy_uses_the_last_element(alice: Issued, bob: Issued) -> None:
    # The element of the nearest (trusted) hop is appended last; earlier ones are other hops'.
    value = cases.envoy(bob)["X-Forwarded-Client-Cert"] + "," + cases.envoy(alice)["X-Forwarded-Client-Cert"]
    found = presented("wsgi", "envoy", {"X-Forwarded-Client-Cert": value})
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('Hash=abc;Subject="CN=x"', id="no-cert"),
        pytest.param('Cert="-----BEGIN%20CERTIFICATE', id="unterminated-quote"),
        pytest.param("Cert=a;Cert=b", id="cert-twice"),
        pytest.param("Cert", id="no-equals"),
        pytest.param("Cert=x,,Cert=y", id="empty-element"),
        pytest.param('Cert=ab"c', id="quote-inside"),
        pytest.param("Cert=hello", id="not-pem"),
        pytest.param('Subject="a\\', id="dangling-escape"),
    ],
)
def test_envoy_malformed(value: str) -> None:
    found = presented("wsgi", "envoy", {"X-Forwarded-Client-Cert": value})
    assert found is not None
    with pytest.raises(CertificateError) as info:
        _ = found.items
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_envoy_quoted_values_hold_separators(alice: Issued) -> None:
    subject = 'CN=a\\"b;c=d,e'
    value = cases.envoy(alice)["X-Forwarded-Client-Cert"] + f';Subject2="{subject}"'
    found = presented("wsgi", "envoy", {"X-Forwarded-Client-Cert": value})
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert


# -- duplicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_repeated_certificate_header_is_refused_asgi(
    case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued
) -> None:
    history = MemoryHistory()
    headers = [*case.build(alice).items(), (case.cert_header, case.build(bob)[case.cert_header])]
    status, seen = call_asgi(config(pki, store, case.name, history=history), headers, PROXY)
    assert status == 400
    assert seen.scopes == []
    assert [r.outcome for r in history] == [Reason.MALFORMED_CERTIFICATE.value]


# Envoy's grammar is a list of hops: a folded duplicate is indistinguishable from two hops (the
# last is used, see test_envoy_uses_the_last_element); so is Traefik's when a server folds with a
# bare ",", as Traefik itself joins certificates.
JOIN_DETECTED = [pytest.param(c, id=c.name) for c in cases.CASES if c.name != "envoy"]


@pytest.mark.parametrize("case", JOIN_DETECTED)
def test_folded_certificate_header_is_refused_wsgi(
    case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued, bob: Issued
) -> None:
    history = MemoryHistory()
    headers = [*case.build(alice).items(), (case.cert_header, case.build(bob)[case.cert_header])]
    status, seen = call_wsgi(config(pki, store, case.name, history=history), wsgi_environ(headers, PROXY))
    assert status == 400
    assert seen.environs == []
    assert [r.outcome for r in history] == [Reason.MALFORMED_CERTIFICATE.value]


@pytest.mark.parametrize("case", VERIFYING)
@VIA
def test_repeated_verify_header_is_refused(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    assert case.verify_header is not None
    assert case.failed_verify is not None
    headers = [*case.build(alice).items(), (case.verify_header, case.failed_verify)]
    status, _ = request(via, config(pki, store, case.name), headers)
    assert status == 400


# -- header-name overrides ------------------------------------------------------------------------


def _renamed(header: str) -> str:
    return "X-Renamed-" + hashlib.sha256(header.encode()).hexdigest()[:8]


@pytest.mark.parametrize("case", CASES)
@VIA
def test_every_role_can_be_renamed(
    via: str, case: cases.ProfileCase, pki: TestPKI, store: MemoryStore, alice: Issued
) -> None:
    profile = PROFILES[case.name]
    roles = {
        "cert": profile.cert_header,
        "chain": profile.chain_header,
        "verify": profile.verify_header,
        "present": profile.present_header,
        "hash": profile.hash_header,
        "error": profile.error_header,
    }
    overrides = {role: _renamed(header) for role, header in roles.items() if header}
    renamed_profile = profile.with_headers(overrides)
    mapping = dict(zip(profile.header_names, renamed_profile.header_names, strict=True))
    original = case.build(alice)
    headers = {mapping.get(name, name): value for name, value in original.items()}
    history = MemoryHistory()
    cfg = config(pki, store, case.name, proxy_headers=overrides, history=history)
    status, seen = request(via, cfg, headers)
    assert status == 200
    assert identity_of(via, seen).user_id == "alice"
    # The default names now mean nothing: from the proxy they are ignored (no certificate).
    status, _ = request(via, cfg, original)
    assert status == 401
    # ... and from a stranger the renamed ones are the spoofing attempt.
    status, _ = request(via, cfg, headers, peer=STRANGER)
    assert status == 401
    assert [r.outcome for r in history] == ["accepted", "no_certificate", "untrusted_proxy"]


def test_renaming_an_absent_role_is_refused() -> None:
    from mtls_middleware import ConfigurationError

    with pytest.raises(ConfigurationError):
        PROFILES["caddy"].with_headers({"verify": "X-Verify"})
    with pytest.raises(ConfigurationError):
        PROFILES["gcp"].with_headers({"fingerprint": "X-Hash"})


# -- odd but valid shapes -------------------------------------------------------------------------


def test_rfc9440_parameters_are_tolerated(alice: Issued) -> None:
    value = cases.sf(alice.cert) + ';a=1;b="x";c=?1;d=tok;e=:AA==:;f'
    found = presented("wsgi", "rfc9440", {"Client-Cert": value})
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert


def test_haproxy_unquoted_value(alice: Issued) -> None:
    found = presented("wsgi", "haproxy", {"X-SSL-Client-Cert": cases.b64(alice.cert)})
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert


def test_haproxy_chain_repeating_the_leaf(alice: Issued) -> None:
    chain = b"".join(cases.der(c) for c in alice.chain)
    headers = {
        "X-SSL-Client-Cert": f'"{cases.b64(alice.cert)}"',
        "X-SSL-Client-Chain": f'"{base64.b64encode(chain).decode()}"',
    }
    found = presented("wsgi", "haproxy", headers)
    assert found is not None
    assert parse_chain(found.items).certificates == alice.chain


def test_apache_pem_with_real_newlines(alice: Issued) -> None:
    # A PEM that kept its line breaks (a server that passes them through) decodes too.
    found = presented("wsgi", "apache", {"X-SSL-Client-Cert": cases.pem(alice.cert)})
    assert found is not None
    assert parse_chain(found.items).leaf == alice.cert
