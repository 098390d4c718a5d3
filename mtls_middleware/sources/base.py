"""What every source hands on: the presented chain, still undecoded, and where it came from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Presented"]


class Presented:
    """A presented chain before parsing.

    ``key`` is what the verdict cache is keyed on: the raw presented values, so a repeat costs a
    hash and a lookup. ``items`` (raw certificate encodings, PEM or DER, leaf first) are decoded
    from the raw values only when first asked for, which a verdict-cache hit never does.
    ``proxy_verified`` is what a proxy reported of its own verification: True, False, or None
    (not reported, or not a proxy); ``proxy_detail`` its raw words, for the history.
    """

    __slots__ = ("_decode", "_items", "_raw", "key", "proxy_detail", "proxy_verified", "source")

    def __init__(
        self,
        source: str,
        key: object,
        items: tuple[bytes, ...] | None = None,
        raw: Any = None,
        decode: Callable[[Any], tuple[bytes, ...]] | None = None,
        proxy_verified: bool | None = None,
        proxy_detail: str = "",
    ) -> None:
        self.source = source
        self.key = key
        self._items = items
        self._raw = raw
        self._decode = decode
        self.proxy_verified = proxy_verified
        self.proxy_detail = proxy_detail

    @property
    def empty(self) -> bool:
        """True when nothing was presented (a proxy that reported a failure without a cert)."""
        return self.key is None

    @property
    def items(self) -> tuple[bytes, ...]:
        """The raw certificate encodings.

        Raises:
            CertificateError: the raw values do not decode (bad header encoding).
        """
        if self._items is None:
            self._items = self._decode(self._raw) if self._decode is not None else ()
        return self._items

    def __repr__(self) -> str:
        return f"<Presented source={self.source!r} verified={self.proxy_verified!r}>"
