"""Header profiles (kept importable here; the profiles live in :mod:`.profiles`)."""

from __future__ import annotations

from .profiles import PROFILES, Decoder, ProxyProfile, VerifyReader, get_profile

__all__ = ["PROFILES", "Decoder", "ProxyProfile", "VerifyReader", "get_profile"]
