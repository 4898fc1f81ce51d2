"""Client addresses: what a client is counted as, and the anonymous sockets each one holds.

The address is the ASGI scope's `client`, which uvicorn takes from `X-Forwarded-For` (the
right-most address in it that is not a trusted proxy's: proxies append) only when the peer is in
TRACKTALK_TRUSTED_PROXIES (app/server.py), and from the peer otherwise. An IPv6 client counts as
its /64, the block one subscriber is usually given (it could otherwise take a fresh address for
each socket); an IPv4 client reached through an IPv6 socket (`::ffff:a.b.c.d`) as its IPv4 address.
"""

from __future__ import annotations

import ipaddress
from typing import Any

_IPV6_BLOCK = 64


def client_key(scope: Any) -> str:
    """What the client of an ASGI connection is counted as ("" when the server does not know)."""
    client = scope.get("client")
    host: str = client[0] if client else ""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, _IPV6_BLOCK), strict=False))


class PerAddress:
    """How many sockets each client address holds; `take` counts one in unless the address is at
    the limit (counting and checking in one step, with no await between)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def take(self, address: str, limit: int) -> bool:
        """Count a socket of `address` in; False (nothing counted) when it already holds `limit`
        (0: no limit)."""
        held = self._held.get(address, 0)
        if limit and held >= limit:
            return False
        self._held[address] = held + 1
        return True

    def give_back(self, address: str) -> None:
        """A socket of `address` that was counted in has ended."""
        held = self._held[address] - 1
        if held:
            self._held[address] = held
        else:
            del self._held[address]

    def held(self, address: str) -> int:
        """The sockets `address` holds."""
        return self._held.get(address, 0)
