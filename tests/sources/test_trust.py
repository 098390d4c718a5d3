"""sources/trust.py: the trusted-proxy gate."""

from __future__ import annotations

import pytest

from mtls_middleware import ConfigurationError, Reason
from mtls_middleware.sources.trust import UNIX_PEER, TrustedProxies

GATE = TrustedProxies(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"])


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.0.2.7", True),
        ("192.0.2.8", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::1", True),
        ("::2", False),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("::ffff:11.1.2.3", False),
        ("2001:db8::1%eth0", True),  # a zone id does not change the address
        ("not-an-address", False),
        ("10.0.0.1.evil.example", False),
        ("10.0.0.1:8080", False),
        ("", False),  # a UNIX socket, not trusted here
        (None, False),
        ("/run/nginx.sock", False),
        (UNIX_PEER, False),
    ],
    ids=repr,
)
def test_contains(peer: str | None, trusted: bool) -> None:
    assert GATE.contains(peer) is trusted


@pytest.mark.parametrize("peer", [None, "", "/run/app.sock", "unix"], ids=repr)
def test_unix_peers_are_trusted_only_when_named(peer: str | None) -> None:
    assert TrustedProxies(["unix"]).contains(peer) is True
    assert TrustedProxies(["127.0.0.1"]).contains(peer) is False


def test_unix_alone_does_not_trust_loopback() -> None:
    gate = TrustedProxies(["unix"])
    assert gate.contains("127.0.0.1") is False
    assert bool(gate) is True


@pytest.mark.parametrize(
    ("entries", "truth"),
    [([], False), (["10.0.0.1"], True), (["unix"], True), (["::/0"], True)],
    ids=["empty", "address", "unix", "everything-v6"],
)
def test_bool(entries: list[str], truth: bool) -> None:
    assert bool(TrustedProxies(entries)) is truth


def test_entries_are_stripped() -> None:
    assert TrustedProxies([" 10.0.0.1 "]).contains("10.0.0.1") is True


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.1/8",  # host bits set: a typo for 10.0.0.0/8 or for a /32
        "10.0.0.0/33",
        "300.1.2.3",
        "proxy.internal",
        "10.0.0.0/8,192.168.0.0/16",
        "",
        "*",
        "localhost",
    ],
    ids=repr,
)
def test_bad_entries(entry: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TrustedProxies([entry])
    assert info.value.reason is Reason.CONFIGURATION_ERROR


@pytest.mark.parametrize("entry", [10, None, b"10.0.0.1"], ids=repr)
def test_non_string_entries(entry: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        TrustedProxies([entry])  # type: ignore[list-item]
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_repr_lists_the_entries() -> None:
    assert repr(TrustedProxies(["10.0.0.0/8", "unix"])) == "TrustedProxies(['10.0.0.0/8', 'unix'])"


def test_decisions_are_stable_across_repeats() -> None:
    # The decision is memoised per address string: repeats must give the same answer.
    gate = TrustedProxies(["192.0.2.0/24"])
    assert [gate.contains("192.0.2.1") for _ in range(3)] == [True] * 3
    assert [gate.contains("198.51.100.1") for _ in range(3)] == [False] * 3


@pytest.mark.parametrize(
    ("entry", "peer", "trusted"),
    [
        # An IPv4-mapped entry names IPv4 hosts, whichever socket family reports them.
        ("::ffff:10.0.0.0/104", "10.1.2.3", True),
        ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", True),
        ("::ffff:10.0.0.0/104", "11.1.2.3", False),
        ("::ffff:192.0.2.7", "192.0.2.7", True),
        ("::ffff:192.0.2.7", "192.0.2.8", False),
        # An IPv4 entry covers the same host seen through a dual-stack socket ...
        ("192.0.2.7", "::ffff:192.0.2.7", True),
        # ... but an IPv6 network does not swallow IPv4 hosts.
        ("::/0", "192.0.2.7", False),
        ("::/0", "::ffff:192.0.2.7", False),
        ("::/0", "2001:db8::1", True),
        ("0.0.0.0/0", "2001:db8::1", False),
    ],
    ids=repr,
)
def test_ipv4_mapped(entry: str, peer: str, trusted: bool) -> None:
    assert TrustedProxies([entry]).contains(peer) is trusted


def test_repr_keeps_mapped_entries_as_written() -> None:
    assert repr(TrustedProxies(["::ffff:10.0.0.0/104"])) == "TrustedProxies(['::ffff:a00:0/104'])"
