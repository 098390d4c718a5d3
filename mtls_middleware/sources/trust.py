"""The trusted-proxy gate: certificate headers are believed only from these peers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from ..errors import ConfigurationError

__all__ = ["UNIX_PEER", "TrustedProxies"]

#: Name a UNIX-socket peer (REMOTE_ADDR empty or a path) in ``trusted_proxies`` with this word.
UNIX_PEER = "unix"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class TrustedProxies:
    """A set of addresses and networks (IPv4 and IPv6) whose headers may be believed.

    Raises:
        ConfigurationError: an entry is not an address, a CIDR network, or ``"unix"``.
    """

    __slots__ = ("_entries", "_networks", "_trust_unix", "contains")

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[_Network] = []
        trust_unix = False
        for entry in entries:
            if not isinstance(entry, str):
                raise ConfigurationError(
                    detail=f"trusted_proxies entries must be strings, got {entry!r}"
                )
            text = entry.strip()
            if text == UNIX_PEER:
                trust_unix = True
                continue
            try:
                # strict=True: "10.0.0.1/8" is almost always a typo for 10.0.0.0/8 or a /32.
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                raise ConfigurationError(
                    detail=(
                        f"trusted_proxies entry {entry!r} is not an IP address or CIDR network "
                        f"({exc}); write e.g. '10.0.0.0/8', '192.0.2.7', '::1' or 'unix'"
                    )
                ) from None
        self._entries = tuple(networks)
        # An IPv4-mapped entry (::ffff:10.0.0.0/104) names IPv4 hosts: an IPv4 socket reports
        # them as 10.x, so the entry is kept in both forms.
        for network in tuple(networks):
            if (
                isinstance(network, ipaddress.IPv6Network)
                and network.prefixlen >= 96
                and network.subnet_of(_MAPPED)
            ):
                mapped = network.network_address.ipv4_mapped
                if mapped is not None:
                    networks.append(ipaddress.IPv4Network((mapped, network.prefixlen - 96)))
        self._networks = tuple(networks)
        self._trust_unix = trust_unix
        # Peers repeat: a proxy is one address, so memoise the decision per address string.
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def __bool__(self) -> bool:
        return bool(self._networks) or self._trust_unix

    def __repr__(self) -> str:
        entries = [str(n) for n in self._entries] + ([UNIX_PEER] if self._trust_unix else [])
        return f"TrustedProxies({entries!r})"

    def _contains(self, peer: str | None) -> bool:
        """True when ``peer`` (an address string, or None/'' for a UNIX socket) is trusted."""
        if not peer or peer.startswith("/") or peer == UNIX_PEER:
            return self._trust_unix
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # An IPv4 peer on a dual-stack socket: the IPv4 host it is (the mapped entries were
            # added in IPv4 form too).
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
