"""The replica's edge, reached directly by plain TCP and WebSocket clients (issue 23, items 5, 6, 9):
a deadline on each request, a cap on connections within the file limit, anonymous sockets per
client address (and whose X-Forwarded-For says who the client is), /metrics behind a bearer."""

from __future__ import annotations

import uvicorn
from uvicorn.server import ServerState

from app.edge.addresses import PerAddress, client_key
from app.edge.httpprotocol import EdgeProtocol
from app.live.wsprotocol import FrameProtocol
from tests.support.fakes import FakeTransport
from tests.support.waiting import async_wait_until


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


# ---------------------------------------------------------------------------------------------
# The HTTP connection before its first read: uvicorn's h11 side is not made yet
# ---------------------------------------------------------------------------------------------


def _edge() -> tuple[EdgeProtocol, FakeTransport, ServerState]:
    async def app(scope: object, receive: object, send: object) -> None: ...

    config = uvicorn.Config(app, http=EdgeProtocol, ws=FrameProtocol, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocol = EdgeProtocol(config, state, {})
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, state


async def test_a_connection_that_goes_before_sending_anything_is_let_go_of() -> None:
    """Counted while open (the cap counts it), uncounted, closed and its clock stopped when it
    goes; uvicorn's h11 connection never made."""
    protocol, transport, state = _edge()
    assert state.connections == {protocol} and protocol._deadline is not None
    protocol.connection_lost(None)
    assert not state.connections and transport.closing and protocol._deadline is None
    assert "conn" not in vars(protocol)


async def test_a_connection_that_sent_nothing_gets_408_at_its_deadline_or_closes_at_shutdown() -> None:
    late, transport, _ = _edge()
    assert late._deadline is not None
    late._deadline.cancel()
    late._too_late()  # its deadline, now
    assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closing
    quiet, transport, _ = _edge()
    quiet.shutdown()
    assert transport.closing and transport.written == b""


async def test_a_first_read_that_is_not_a_handshake_makes_uvicorns_side_and_is_answered() -> None:
    protocol, transport, state = _edge()
    protocol.data_received(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    await async_wait_until(lambda: transport.written, 2, "an answer")
    assert "conn" in vars(protocol) and state.connections == {protocol}
    assert transport.written.startswith(b"HTTP/1.1 ")
