"""contrib/settings.py: MTLS_* settings become MTLSConfig keywords, and a typo fails at start-up."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from mtls_middleware import ConfigurationError, MemoryStore, MTLSConfig, Reason
from mtls_middleware.contrib.settings import SETTING_NAMES, config_from_settings, setting_names
from mtls_middleware.testing import TestPKI


@pytest.fixture
def settings(pki: TestPKI) -> dict[str, Any]:
    return {"MTLS_TRUST_ROOTS": pki.root_pem, "MTLS_STORE": "memory://", "MTLS_REVOCATION": "off"}


def test_every_init_field_has_a_setting_name() -> None:
    init_fields = [f.name for f in dataclasses.fields(MTLSConfig) if f.init]
    assert list(SETTING_NAMES) == ["MTLS_" + name.upper() for name in init_fields]
    # Derived fields are not settings.
    assert "MTLS_ROOTS" not in SETTING_NAMES
    assert "MTLS_RESOLVED_STORE" not in SETTING_NAMES
    assert setting_names("X_")[0] == "X_TRUST_ROOTS"


def test_settings_map_to_config_fields(settings: dict[str, Any], pki: TestPKI) -> None:
    settings.update(
        MTLS_PROXY="nginx",
        MTLS_TRUSTED_PROXIES=["127.0.0.1"],
        MTLS_MODE="optional",
        MTLS_EXEMPT_PATHS=["/health"],
        MTLS_CACHE_SIZE=7,
    )
    config = config_from_settings(settings)
    assert config.roots == (pki.root.cert,)
    assert isinstance(config.resolved_store, MemoryStore)
    assert config.profile is not None
    assert config.profile.name == "nginx"
    assert config.mode == "optional"
    assert config.revocation == "off"
    assert config.exempt_paths == ["/health"]
    assert config.cache_size == 7


def test_keys_without_the_prefix_are_ignored(settings: dict[str, Any]) -> None:
    settings.update(SECRET_KEY="x", DEBUG=True, mtls_mode="optional", MTLSMODE="optional", **{"": 1})
    assert config_from_settings(settings).mode == "required"


def test_overrides_win(settings: dict[str, Any]) -> None:
    store = MemoryStore()
    settings["MTLS_MODE"] = "required"
    config = config_from_settings(settings, store=store, mode="optional")
    assert config.resolved_store is store
    assert config.mode == "optional"


def test_custom_prefix(settings: dict[str, Any]) -> None:
    values = {"CERTAUTH_" + key.removeprefix("MTLS_"): value for key, value in settings.items()}
    values["MTLS_GARBAGE"] = "ignored: not our prefix"
    assert config_from_settings(values, prefix="CERTAUTH_").revocation == "off"


TYPOS = [
    pytest.param("MTLS_TRUSTED_PROXY", ["MTLS_TRUSTED_PROXIES"], id="singular-trusted-proxy"),
    pytest.param("MTLS_TRUST_ROOT", ["MTLS_TRUST_ROOTS"], id="singular-trust-root"),
    pytest.param("MTLS_REVOKATION", ["MTLS_REVOCATION"], id="misspelt-revocation"),
    pytest.param("MTLS_EXEMPT_PATH", ["MTLS_EXEMPT_PATHS"], id="singular-exempt-path"),
    pytest.param("MTLS_ROOTS", [], id="derived-field-is-no-setting"),
    pytest.param("MTLS_", [], id="bare-prefix"),
]


@pytest.mark.parametrize(("key", "suggested"), TYPOS)
def test_unknown_prefixed_setting_is_refused_with_suggestions(
    settings: dict[str, Any], key: str, suggested: list[str]
) -> None:
    settings[key] = "x"
    with pytest.raises(ConfigurationError) as info:
        config_from_settings(settings)
    assert info.value.reason is Reason.CONFIGURATION_ERROR
    assert key in info.value.detail
    for name in suggested:
        assert name in info.value.detail


def test_unknown_override_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        config_from_settings(settings, trusted_proxy=["127.0.0.1"])
    assert "trusted_proxies" in info.value.detail


@pytest.mark.parametrize("missing", ["MTLS_TRUST_ROOTS", "MTLS_STORE"])
def test_missing_required_setting_is_named(settings: dict[str, Any], missing: str) -> None:
    del settings[missing]
    with pytest.raises(ConfigurationError) as info:
        config_from_settings(settings)
    assert missing in info.value.detail


def test_required_setting_may_come_from_an_override(settings: dict[str, Any]) -> None:
    del settings["MTLS_STORE"]
    store = MemoryStore()
    assert config_from_settings(settings, store=store).resolved_store is store


def test_invalid_value_is_refused_by_the_config(settings: dict[str, Any]) -> None:
    settings["MTLS_TRUSTED_PROXIES"] = ["127.0.0.1"]  # without MTLS_PROXY
    with pytest.raises(ConfigurationError) as info:
        config_from_settings(settings)
    assert "proxy" in info.value.detail


@pytest.mark.parametrize("prefix", ["", None], ids=["empty", "None"])
def test_empty_prefix_is_refused(settings: dict[str, Any], prefix: Any) -> None:
    with pytest.raises(ConfigurationError):
        config_from_settings(settings, prefix=prefix)
