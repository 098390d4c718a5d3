"""Header profiles: how each reverse proxy forwards the client certificate.

A profile is one small declarative unit: the header names and their roles, a decoder from a header
value to certificate encodings, how the chain is carried, and how the proxy reports its own
verification. Adding a proxy means adding one :class:`ProxyProfile` to :mod:`.builtin`. Profiles
never decide whether to believe a header: the trusted-proxy gate (:mod:`..trust`) does, before a
profile is consulted.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ...errors import ConfigurationError
from .builtin import BUILTIN
from .profile import Decoder, ProxyProfile, VerifyReader

__all__ = ["PROFILES", "Decoder", "ProxyProfile", "VerifyReader", "get_profile"]

#: Every built-in profile, by the name ``MTLSConfig.proxy`` accepts.
PROFILES: Mapping[str, ProxyProfile] = MappingProxyType({p.name: p for p in BUILTIN})


def get_profile(name: str) -> ProxyProfile:
    """The built-in profile called ``name``.

    Raises:
        ConfigurationError: no such profile (the message lists the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigurationError(
            detail=f"proxy={name!r} is not a known header profile; use one of: {known}, "
            "or None to read the certificate from the TLS layer"
        ) from None
