"""config.py: MTLSConfig is keyword-only, frozen, and refuses what cannot work when it is built."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mtls_middleware import (
    ConfigurationError,
    FingerprintMapper,
    MemoryHistory,
    MemoryStore,
    MTLSConfig,
    Reason,
)
from mtls_middleware.sources import PROFILES
from mtls_middleware.testing import TestPKI


@pytest.fixture
def base(pki: TestPKI) -> dict[str, Any]:
    """The smallest valid configuration (TLS layer, no revocation)."""
    return {"trust_roots": [pki.root.cert], "store": MemoryStore(), "revocation": "off"}


NGINX = {"proxy": "nginx", "trusted_proxies": ["10.0.0.1"]}

INVALID = [
    pytest.param({"proxy": "nginx"}, id="header-mode-with-empty-trusted_proxies"),
    pytest.param({"proxy": "nginx", "trusted_proxies": []}, id="header-mode-with-empty-list"),
    pytest.param({"trusted_proxies": ["10.0.0.1"]}, id="trusted_proxies-without-proxy"),
    pytest.param({"proxy_headers": {"cert": "X-Cert"}}, id="proxy_headers-without-proxy"),
    pytest.param({**NGINX, "trusted_proxies": ["10.0.0.0/33"]}, id="cidr-prefix-too-long"),
    pytest.param({**NGINX, "trusted_proxies": ["10.0.0.1/8"]}, id="cidr-host-bits-set"),
    pytest.param({**NGINX, "trusted_proxies": ["proxy.internal"]}, id="cidr-a-hostname"),
    pytest.param({**NGINX, "trusted_proxies": ["10.0.0.0/8,10.1.0.0/16"]}, id="cidr-comma-list"),
    pytest.param({**NGINX, "trusted_proxies": [""]}, id="cidr-empty"),
    pytest.param({**NGINX, "trusted_proxies": [10]}, id="cidr-not-a-string"),
    pytest.param({**NGINX, "trusted_proxies": "10.0.0.0/8"}, id="trusted_proxies-plain-string"),
    pytest.param({**NGINX, "trusted_proxies": None}, id="trusted_proxies-None"),
    pytest.param({**NGINX, "proxy": "haproxy-9000"}, id="unknown-proxy-name"),
    pytest.param({**NGINX, "proxy": 42}, id="proxy-not-a-name"),
    pytest.param({**NGINX, "proxy_headers": {"client": "X-Cert"}}, id="proxy_headers-unknown-key"),
    pytest.param({**NGINX, "proxy_headers": {"cert": "X Cert"}}, id="proxy_headers-bad-name"),
    pytest.param({**NGINX, "proxy_headers": {"chain": "X-Chain"}}, id="proxy_headers-no-such-role"),
    pytest.param({"revocation": "maybe"}, id="revocation-unknown"),
    pytest.param({"revocation": "require", "revocation_scope": "all"}, id="revocation_scope-unknown"),
    pytest.param({"revocation": "require", "crls": "/etc/ca.crl"}, id="crls-plain-string"),
    pytest.param({"revocation": "require", "crls": ["/nonexistent/ca.crl"]}, id="crls-missing-file"),
    pytest.param({"revocation": "require", "crls": ["ldap://dir/cn=ca"]}, id="crls-ldap-url"),
    pytest.param({"revocation": "require", "ocsp_responder": "ocsp.example"}, id="ocsp_responder-not-a-url"),
    pytest.param({"revocation": "require", "revocation_timeout": 0}, id="revocation_timeout-zero"),
    pytest.param({"revocation": "require", "revocation_deadline": -1}, id="revocation_deadline-negative"),
    pytest.param({"revocation": "require", "revocation_timeout": "3"}, id="revocation_timeout-a-string"),
    pytest.param({"revocation": "require", "revocation_max_age": 0}, id="revocation_max_age-zero"),
    pytest.param({"revocation": "require", "max_crl_bytes": 10}, id="max_crl_bytes-tiny"),
    pytest.param(
        {"revocation": "require", "ocsp_responder_certificates": b"garbage"}, id="pinned-responder-garbage"
    ),
    pytest.param({"mode": "sometimes"}, id="mode-unknown"),
    pytest.param({"eku": "never"}, id="eku-unknown"),
    pytest.param({"min_rsa_bits": 1024}, id="min_rsa_bits-1024"),
    pytest.param({"min_rsa_bits": "2048"}, id="min_rsa_bits-a-string"),
    pytest.param({"max_chain_length": 11}, id="max_chain_length-11"),
    pytest.param({"max_chain_length": 0}, id="max_chain_length-0"),
    pytest.param({"max_header_bytes": 100}, id="max_header_bytes-too-small"),
    pytest.param({"max_header_bytes": 2 << 20}, id="max_header_bytes-too-large"),
    pytest.param({"exempt_paths": ["health"]}, id="exempt-path-without-slash"),
    pytest.param({"exempt_paths": "/health"}, id="exempt-paths-plain-string"),
    pytest.param({"exempt_paths": [None]}, id="exempt-path-None"),
    pytest.param({"cache_size": -1}, id="cache_size-negative"),
    pytest.param({"cache_size": "100"}, id="cache_size-a-string"),
    pytest.param({"negative_cache_seconds": -1}, id="negative_cache_seconds-negative"),
    pytest.param({"negative_cache_seconds": "60"}, id="negative_cache_seconds-a-string"),
    pytest.param({"store": "bogus://nowhere"}, id="store-url-unknown-scheme"),
    pytest.param({"store": 42}, id="store-not-a-store"),
    pytest.param({"history": object()}, id="history-without-record"),
    pytest.param({"identity_mapper": object()}, id="identity_mapper-without-map"),
    pytest.param({"trust_roots": "/nonexistent/roots.pem"}, id="trust_roots-missing-file"),
    pytest.param({"trust_roots": []}, id="trust_roots-empty-list"),
    pytest.param({"trust_roots": b""}, id="trust_roots-empty-bytes"),
    pytest.param({"trust_roots": b"not a pem"}, id="trust_roots-garbage-bytes"),
    pytest.param({"trust_roots": ["not a certificate"]}, id="trust_roots-list-of-strings"),
    pytest.param({"intermediates": b"garbage"}, id="intermediates-garbage"),
]


@pytest.mark.parametrize("overrides", INVALID)
def test_invalid_setting_is_refused_at_construction(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        MTLSConfig(**{**base, **overrides})
    assert info.value.reason is Reason.CONFIGURATION_ERROR
    assert info.value.detail != Reason.CONFIGURATION_ERROR.message  # says what to fix


def test_revocation_defaults_to_require(pki: TestPKI) -> None:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=MemoryStore())
    assert config.revocation == "require"
    assert config.revocation_policy is not None
    assert config.revocation_policy.mode == "require"
    assert config.revocation_policy.scope == "chain"


def test_revocation_off_has_no_policy(base: dict[str, Any]) -> None:
    assert MTLSConfig(**base).revocation_policy is None


def test_crls_split_into_files_and_urls(base: dict[str, Any], tmp_path: Path) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(b"")  # read by the checker, not here
    config = MTLSConfig(
        **{**base, "revocation": "soft-fail", "crls": [crl, "http://127.0.0.1:9/ca.crl"]}
    )
    assert config.revocation_policy is not None
    assert config.revocation_policy.crl_files == (str(crl),)
    assert config.revocation_policy.crl_urls == ("http://127.0.0.1:9/ca.crl",)
    assert config.revocation_policy.mode == "soft-fail"


def test_empty_roots_file(tmp_path: Path, base: dict[str, Any]) -> None:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"")
    with pytest.raises(ConfigurationError) as info:
        MTLSConfig(**{**base, "trust_roots": str(path)})
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_roots_directory_is_not_a_file(tmp_path: Path, base: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        MTLSConfig(**{**base, "trust_roots": tmp_path})
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_positional_arguments_are_refused(pki: TestPKI) -> None:
    with pytest.raises(TypeError):
        MTLSConfig([pki.root.cert], MemoryStore())  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", "optional"), ("revocation", "require"), ("trusted_proxies", ["0.0.0.0/0"])],
    ids=["mode", "revocation", "trusted_proxies"],
)
def test_config_is_frozen(base: dict[str, Any], field: str, value: object) -> None:
    config = MTLSConfig(**base)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, value)
    assert getattr(config, field) != value


# -- valid ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form", ["path-str", "path-object", "pem-bytes", "certificate-list", "certificate-tuple"]
)
def test_roots_forms(form: str, pki: TestPKI, pki_dir: Path) -> None:
    roots: Any = {
        "path-str": str(pki_dir / "root.pem"),
        "path-object": pki_dir / "root.pem",
        "pem-bytes": pki.root_pem,
        "certificate-list": [pki.root.cert],
        "certificate-tuple": (pki.root.cert,),
    }[form]
    config = MTLSConfig(trust_roots=roots, store=MemoryStore(), revocation="off")
    assert config.roots == (pki.root.cert,)


def test_roots_file_with_several_roots(tmp_path: Path, pki: TestPKI, other_pki: TestPKI) -> None:
    path = tmp_path / "roots.pem"
    path.write_bytes(pki.root_pem + other_pki.root_pem)
    config = MTLSConfig(trust_roots=path, store=MemoryStore(), revocation="off")
    assert config.roots == (pki.root.cert, other_pki.root.cert)


def test_intermediates_forms(pki: TestPKI, base: dict[str, Any]) -> None:
    from_bytes = MTLSConfig(**{**base, "intermediates": pki.issuing.cert_pem})
    from_list = MTLSConfig(**{**base, "intermediates": [pki.issuing.cert]})
    assert from_bytes.intermediate_certificates == from_list.intermediate_certificates
    assert from_list.intermediate_certificates == (pki.issuing.cert,)


def test_defaults(base: dict[str, Any]) -> None:
    config = MTLSConfig(**base)
    assert config.mode == "required"
    assert config.proxy is None
    assert config.profile is None
    assert config.eku == "required"
    assert config.allow_dual_purpose_eku is False
    assert config.min_rsa_bits == 2048
    assert config.max_chain_length == 10
    assert isinstance(config.identity_mapper, FingerprintMapper)
    assert config.resolved_store is base["store"]
    assert config.history_sink is base["store"]  # history goes to the store unless told


def test_store_by_url(pki: TestPKI) -> None:
    config = MTLSConfig(trust_roots=[pki.root.cert], store="memory://", revocation="off")
    assert isinstance(config.resolved_store, MemoryStore)


def test_history_sink(base: dict[str, Any]) -> None:
    history = MemoryHistory()
    assert MTLSConfig(**{**base, "history": history}).history_sink is history


@pytest.mark.parametrize(
    "trusted",
    [
        ["10.0.0.1"],
        ["10.0.0.0/8", "192.168.0.0/16"],
        ["::1"],
        ["2001:db8::/32"],
        ["unix"],
        ("127.0.0.1",),
    ],
    ids=lambda t: ",".join(t),
)
def test_header_mode_with_trusted_proxies(base: dict[str, Any], trusted: list[str]) -> None:
    config = MTLSConfig(**{**base, "proxy": "nginx", "trusted_proxies": trusted})
    assert config.profile is PROFILES["nginx"]
    assert config.trusted


def test_proxy_headers_rename_the_profile_headers(base: dict[str, Any]) -> None:
    config = MTLSConfig(
        **{**base, **NGINX, "proxy_headers": {"cert": "X-Client-Cert", "verify": "X-Client-Verify"}}
    )
    assert config.profile is not None
    assert config.profile.header_names == ("X-Client-Cert", "X-Client-Verify")
    assert PROFILES["nginx"].cert_header == "X-SSL-Client-Cert"  # the built-in is untouched


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/health", True),
        ("/health/", True),
        ("/health/ready", True),
        ("/healthz", False),
        ("/", False),
        ("", False),
        ("/static/app.js", True),
        ("/staticfiles", False),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else str(v),
)
def test_is_exempt(base: dict[str, Any], path: str, exempt: bool) -> None:
    config = MTLSConfig(**{**base, "exempt_paths": ["/health", "/static/"]})
    assert config.is_exempt(path) is exempt
