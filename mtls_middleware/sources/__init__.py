"""Extract stage: where the presented client certificate chain comes from.

Either the server's own TLS layer (:mod:`.tls`) or the headers of a trusted reverse proxy
(:mod:`.proxies`, behind the gate of :mod:`.trust`).
"""

from __future__ import annotations

from .base import Presented
from .proxies import PROFILES, ProxyProfile, get_profile
from .trust import TrustedProxies

__all__ = ["PROFILES", "Presented", "ProxyProfile", "TrustedProxies", "get_profile"]
