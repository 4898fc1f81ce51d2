"""The replica's edge, reached directly by plain TCP and WebSocket clients (issue 23, items 5, 6, 9):
a deadline on each request, a cap on connections within the file limit, anonymous sockets per
client address (and whose X-Forwarded-For says who the client is), /metrics behind a bearer."""

from __future__ import annotations

from app.edge.addresses import PerAddress, client_key


def test_the_client_key_of_an_address() -> None:
    assert client_key({"client": ("203.0.113.7", 5)}) == "203.0.113.7"
    assert client_key({"client": ("2001:db8:1:2:3:4:5:6", 5)}) == "2001:db8:1:2::/64"
    assert client_key({"client": ("::ffff:203.0.113.7", 5)}) == "203.0.113.7"  # IPv4 on an IPv6 socket
    assert client_key({"client": None}) == client_key({}) == ""
    assert client_key({"client": ("not-an-address", 0)}) == "not-an-address"
    held = PerAddress()
    assert all(held.take("a", 2) for _ in range(2)) and not held.take("a", 2) and held.take("b", 2)
    held.give_back("a")
    assert held.held("a") == 1 and held.take("a", 2)
    assert all(held.take("c", 0) for _ in range(50))  # 0: no limit
