"""Build an :class:`~mtls_middleware.MTLSConfig` from framework settings (``MTLS_*`` keys).

Flask's ``app.config`` and Django's ``settings`` both hold upper-case keys; this module maps
``MTLS_<FIELD>`` to the :class:`MTLSConfig` keyword ``<field>``. It decides nothing itself: every value
is handed to :class:`MTLSConfig` unchanged, which validates it. What it adds is a typo guard: an
``MTLS_`` key that names no field fails at start-up with the closest valid names, instead of being
ignored while the default silently applies::

    from mtls_middleware.contrib.settings import config_from_settings

    config = config_from_settings(app.config)   # MTLS_TRUST_ROOTS, MTLS_STORE, MTLS_PROXY, ...
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

from ..config import MTLSConfig
from ..errors import ConfigurationError
from ..login import LOGIN_SETTING_NAMES

__all__ = ["SETTING_NAMES", "config_from_settings", "setting_names"]


def _fields() -> tuple[dataclasses.Field[Any], ...]:
    # Read at call time, so a field added to MTLSConfig is a setting without a change here.
    return tuple(f for f in dataclasses.fields(MTLSConfig) if f.init)


def setting_names(prefix: str = "MTLS_") -> tuple[str, ...]:
    """The accepted setting names, ``prefix`` + each upper-cased :class:`MTLSConfig` init field."""
    return tuple(prefix + f.name.upper() for f in _fields())


#: The accepted setting names with the default ``MTLS_`` prefix, in MTLSConfig field order.
SETTING_NAMES: tuple[str, ...] = setting_names()


def _close(name: str, candidates: tuple[str, ...]) -> str:
    matches = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if matches:
        return "did you mean " + " or ".join(matches) + "?"
    return "valid names: " + ", ".join(candidates)


def config_from_settings(values: Mapping[str, Any], *, prefix: str = "MTLS_", **overrides: Any) -> MTLSConfig:
    """The :class:`MTLSConfig` described by the ``prefix``-ed keys of ``values``.

    ``values`` is any mapping of setting names to values (Flask's ``app.config``, a dict built from
    Django settings). Keys without ``prefix`` are ignored, and so are the certificate login's
    ``MTLS_LOGIN_*`` settings (:data:`mtls_middleware.login.LOGIN_SETTING_NAMES`, read by
    :func:`mtls_middleware.login.login_settings_from`); ``MTLS_TRUST_ROOTS`` becomes
    ``trust_roots=...`` and so on for every init field of :class:`MTLSConfig` (see
    :data:`SETTING_NAMES`). ``overrides`` are :class:`MTLSConfig` keywords that win over the settings
    (``config_from_settings(app.config, store=my_store)``).

    Raises:
        ConfigurationError: a ``prefix``-ed key or an override that names no field (the message names
            the closest valid ones), a required setting (``MTLS_TRUST_ROOTS``, ``MTLS_STORE``) that is
            missing, or any value :class:`MTLSConfig` refuses.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(detail=f"prefix={prefix!r} must be a non-empty string such as 'MTLS_'")
    fields = _fields()
    by_setting = {prefix + f.name.upper(): f.name for f in fields}
    # Suggestions include the login settings: "MTLS_LOGIN_SITEURL" should point to them.
    names = (*by_setting, *LOGIN_SETTING_NAMES) if prefix == "MTLS_" else tuple(by_setting)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        if prefix == "MTLS_" and key in LOGIN_SETTING_NAMES:
            continue
        field_name = by_setting.get(key)
        if field_name is None:
            raise ConfigurationError(detail=f"unknown setting {key}: {_close(key, names)}")
        kwargs[field_name] = value
    field_names = tuple(f.name for f in fields)
    for name in overrides:
        if name not in field_names:
            raise ConfigurationError(
                detail=f"unknown MTLSConfig keyword {name!r}: {_close(name, field_names)}"
            )
    kwargs.update(overrides)
    missing = [
        prefix + f.name.upper()
        for f in fields
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigurationError(
            detail=f"missing setting(s) {', '.join(missing)}: set them to configure mTLS"
        )
    return MTLSConfig(**kwargs)
