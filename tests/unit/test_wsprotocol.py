"""The light stand-ins app/live/wsprotocol.py gives uvicorn's connection for its queue and its event.

They replace asyncio.Queue and asyncio.Event on every socket to save memory (docs/performance.md),
so they must behave as uvicorn expects of those: in order, never losing a wake-up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import weakref

import pytest
import uvicorn
from uvicorn.protocols.websockets.wsproto_impl import WebsocketBuffer, WSProtocol
from uvicorn.server import ServerState
from wsproto import ConnectionState, ConnectionType, WSConnection, events
from wsproto.handshake import H11Handshake

from app.edge import upgrade
from app.handlers import sockets
from app.live.wsprotocol import _DONE, EXTENSION, FrameProtocol, _Flag, _Inbox
from tests.support.fakes import HANDSHAKE, FakeTransport
from tests.support.waiting import async_wait_until


async def test_the_inbox_gives_items_in_order_and_wakes_a_waiting_reader() -> None:
    inbox = _Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait(3)
    inbox.put_nowait(4)
    assert await asyncio.wait_for(reader, 1) == 3
    assert not inbox.empty() and await inbox.get() == 4 and inbox.empty()


async def test_a_cancelled_reader_leaves_the_inbox_usable() -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    inbox.put_nowait("after")
    assert await asyncio.wait_for(inbox.get(), 1) == "after"


async def test_the_flag_lets_waiters_through_only_while_set() -> None:
    flag = _Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert flag.is_set()


# ---------------------------------------------------------------------------------------------
# FrameProtocol on a fake transport: the handshake, what it lets go of, and how it closes
# ---------------------------------------------------------------------------------------------


async def _connected(app_done: asyncio.Event) -> tuple[FrameProtocol, FakeTransport, dict[str, object]]:
    seen: dict[str, object] = {}

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen["scope"] = scope
        await app_done.wait()

    config = uvicorn.Config(app, ws=FrameProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = FrameProtocol(config, ServerState(), {})
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(HANDSHAKE)
    await asyncio.sleep(0)  # the app's task starts
    return protocol, transport, seen


async def test_after_the_handshake_the_protocol_lets_go_of_its_request_and_token() -> None:
    done = asyncio.Event()
    protocol, transport, seen = await _connected(done)
    scope = seen["scope"]
    assert isinstance(scope, dict) and scope["extensions"][EXTENSION] is protocol
    assert protocol.accept_with(b"\x81\x02{}")
    assert transport.written.startswith(b"HTTP/1.1 101 ") and transport.written.endswith(b"\x81\x02{}")
    assert scope["headers"] == [] and scope["query_string"] == b""  # the token is gone
    assert protocol.conn.handshake is _DONE
    assert protocol.write_frames(b"\x81\x00")
    protocol.connection_lost(None)
    assert EXTENSION not in scope["extensions"]  # no cycle left for the garbage collector
    assert not protocol.write_frames(b"\x81\x00")
    done.set()


async def test_a_client_that_reads_nothing_is_cut_however_the_close_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.live.wsprotocol.CLOSE_TIMEOUT", 0.01)
    for begin in ("close_now", "keepalive", "twice"):
        done = asyncio.Event()
        protocol, transport, _ = await _connected(done)
        protocol.accept_with(b"")
        transport.stuck = 10**6
        if begin == "close_now":
            protocol.close_now(1013, "too slow")
        elif begin == "keepalive":
            protocol.keepalive_timeout()  # uvicorn's own close: transport.close(), which would wait
        else:
            protocol.keepalive_timeout()
            protocol.close_now(1013, "too slow")  # already closing: must not put the cut off
        await async_wait_until(lambda t=transport: t.aborted, 1, f"the cut after {begin}")
        done.set()


async def test_frames_written_before_the_answer_go_after_it_in_its_write() -> None:
    """A new socket's first frames (its presence, held since it joined) are written before the
    handshake is answered: they wait, and go in the answer's one write, after its own frames."""
    done = asyncio.Event()
    protocol, transport, _ = await _connected(done)
    assert protocol.write_frames(b"\x81\x01p")
    assert protocol.write_frames(b"\x81\x01q")
    assert transport.writes == []  # nothing before the 101
    assert protocol.accept_with(b"\x81\x01c")
    assert len(transport.writes) == 1
    assert transport.written.startswith(b"HTTP/1.1 101 ")
    assert transport.written.endswith(b"\r\n\r\n\x81\x01c\x81\x01p\x81\x01q")
    assert protocol.write_frames(b"\x81\x01r")  # after the answer: as they come
    assert transport.writes[1:] == [b"\x81\x01r"]
    done.set()


async def test_a_refusal_drops_the_frames_written_before_the_answer() -> None:
    """A socket refused after it was registered (its user's mention came while it joined) gets
    the answer and its close, nothing between (app/handlers/sockets.py's `close`)."""
    done = asyncio.Event()
    protocol, transport, _ = await _connected(done)
    assert protocol.write_frames(b"\x81\x01m")
    await sockets.close(protocol.send, protocol, 1008, "track not found")
    answer, _, after = transport.written.partition(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert after == b"\x88\x11\x03\xf0track not found"  # the close frame alone
    done.set()


async def test_pings_from_a_client_that_reads_nothing_are_not_answered() -> None:
    done = asyncio.Event()
    protocol, transport, _ = await _connected(done)
    protocol.accept_with(b"")
    before = len(transport.written)
    protocol.handle_ping(events.Ping(payload=b"1"))
    assert len(transport.written) > before  # answered
    transport.stuck = 10**6
    before = len(transport.written)
    protocol.handle_ping(events.Ping(payload=b"2"))
    assert len(transport.written) == before
    done.set()


async def test_the_handshake_answer_is_wsprotos_own_and_the_connection_then_reads_frames() -> None:
    """The 101 is written by hand (a reconnect storm's cost): byte for byte what wsproto writes,
    and wsproto's connection is open after it (a client's ping is answered)."""
    done = asyncio.Event()
    theirs, _, _ = await _connected(done)
    expected = theirs.conn.send(events.AcceptConnection(extra_headers=theirs.default_headers))
    ours, transport, _ = await _connected(done)
    assert ours.accept_with(b"")
    assert transport.written == expected
    assert (
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in transport.written
    )  # RFC 6455's example
    ping = bytes([0x89, 0x80 | 1]) + b"\x00\x00\x00\x00" + b"p"  # a masked ping, mask 0
    before = len(transport.written)
    ours.data_received(ping)
    assert transport.written[before:] == b"\x8a\x01p"  # its pong
    done.set()


async def test_a_socket_is_logged_at_debug_level_only() -> None:
    """A line per socket at info was a tenth of a reconnect storm's CPU; the replica counts them
    (tracktalk_sockets_opened_total) and logs them only at debug level."""
    done = asyncio.Event()
    quiet, _, _ = await _connected(done)
    told, _, _ = await _connected(done)  # (uvicorn's Config sets its loggers' levels: set them after)
    logger = logging.getLogger("uvicorn.error")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.setLevel(logging.INFO)
        assert quiet.accept_with(b"")
        assert not [r for r in seen if "[accepted]" in r.getMessage()]
        logger.setLevel(logging.DEBUG)
        assert told.accept_with(b"")
        lines = [r for r in seen if "[accepted]" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.WARNING)
        done.set()


async def test_a_connection_keeps_few_enough_attributes_for_python_to_share_their_names() -> None:
    """Past 30 attribute names an instance gets a dictionary of its own (1.5 KiB, by the ten
    thousand on a replica): the server's settings live once per server, not on each connection."""
    done = asyncio.Event()
    protocol, _, _ = await _connected(done)
    assert protocol.accept_with(b"")
    protocol.handle_pong(events.Pong(payload=b"tt"))
    assert len(vars(protocol)) <= 30
    assert sys.getsizeof(vars(protocol)) < 500  # a shared-key table (an own one is ~1,600 bytes)
    assert protocol.ping_interval == 20.0 and protocol.loop is asyncio.get_running_loop()
    done.set()


async def test_a_connection_has_every_attribute_uvicorns_own_making_gives_it_in_its_order() -> None:
    """FrameProtocol makes its connections without uvicorn's __init__ (in a reconnect storm, by
    the thousand a second): each attribute uvicorn's sets is there with the same value (the
    queue, the event and wsproto's connection are this module's own), set in uvicorn's order (a
    shared table of names needs one order). Fails when uvicorn's protocol changes under it."""

    async def app(scope: object, receive: object, send: object) -> None: ...

    config = uvicorn.Config(app, ws=FrameProtocol, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    ours, theirs = FrameProtocol(config, state, {}), WSProtocol(config, state, {})
    ours_by_name = {name: getattr(ours, name) for name in vars(theirs)}  # AttributeError: one is missing
    own = {"queue": _Inbox, "writable": _Flag, "conn": WSConnection, "buffer": WebsocketBuffer}
    for name, value in vars(theirs).items():
        if name in own:
            assert isinstance(ours_by_name[name], own[name]), name
        else:
            assert ours_by_name[name] == value, name
    assert vars(ours_by_name["buffer"]) == vars(theirs.buffer)
    per_connection = [name for name in vars(theirs) if name in vars(ours)]
    assert [name for name in vars(ours) if name in vars(theirs)] == per_connection
    assert ours.conn.connection is None and not ours.conn.client
    # wsproto's connection, made without its __init__ too: the same attributes (the handshake lazily)
    wsprotos = vars(WSConnection(ConnectionType.SERVER))
    assert sorted(name.lstrip("_") for name in vars(ours.conn)) == sorted(wsprotos)


async def test_each_socket_answers_with_the_servers_headers_of_the_moment() -> None:
    """uvicorn makes a new list of its default headers (the Date) every second: a socket's 101
    carries the list of the moment it answers, not the one its server's first socket saw."""
    done = asyncio.Event()

    async def app(scope: object, receive: object, send: object) -> None:
        await done.wait()

    config = uvicorn.Config(app, ws=FrameProtocol, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 10:00:00 GMT")]
    request = upgrade.parse(HANDSHAKE)
    assert request is not None
    first, second = FrameProtocol(config, state, {}), FrameProtocol(config, state, {})
    first_out, second_out = FakeTransport(), FakeTransport()
    first.upgraded(first_out, (None, None), request)  # type: ignore[arg-type]
    assert first.accept_with(b"")
    state.default_headers = [(b"date", b"Sat, 05 Dec 2026 10:00:01 GMT")]  # uvicorn's tick, a second on
    second.upgraded(second_out, (None, None), request)  # type: ignore[arg-type]
    assert second.accept_with(b"")
    assert b"\r\ndate: Sat, 05 Dec 2026 10:00:00 GMT\r\n" in first_out.written
    assert b"\r\ndate: Sat, 05 Dec 2026 10:00:01 GMT\r\n" in second_out.written
    assert first.default_headers is second.default_headers is state.default_headers
    done.set()
    tasks = state.tasks
    await async_wait_until(lambda: not tasks, 2, "the apps' ends")
    first.connection_lost(None)
    second.connection_lost(None)
    del first, second
    gone = weakref.ref(state)
    del state
    gc.collect()
    assert gone() is None  # its connections' shared settings do not keep a server's state


async def test_wsprotos_handshake_is_made_only_for_a_handshake_it_reads() -> None:
    """A handshake read once and answered with our 101 never makes wsproto's (an h11 connection
    a socket); one it must read (here, the long way's) makes it then."""
    done = asyncio.Event()

    async def app(scope: object, receive: object, send: object) -> None:
        await done.wait()

    config = uvicorn.Config(app, ws=FrameProtocol, lifespan="off", log_level="warning")
    config.load()
    read_once = FrameProtocol(config, ServerState(), {})
    request = upgrade.parse(HANDSHAKE)
    assert request is not None
    read_once.upgraded(FakeTransport(), (None, None), request)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the app's task starts
    assert read_once.conn._handshake is None
    assert read_once.accept_with(b"")
    assert read_once.conn._handshake is _DONE
    long_way, _, _ = await _connected(done)  # data_received(HANDSHAKE): wsproto reads it
    assert (
        isinstance(long_way.conn.handshake, H11Handshake)
        and long_way.conn.state is ConnectionState.CONNECTING
    )
    done.set()


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client's frame (mask 0, so the payload reads as is)."""
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def test_a_pong_that_comes_alone_answers_the_ping_without_wsproto() -> None:
    """The idle socket's one message every interval is read here (docs/performance.md): wsproto's
    frame reader is not called for it."""
    done = asyncio.Event()
    protocol, _, _ = await _connected(done)
    assert protocol.accept_with(b"")
    assert protocol.keepalive_turn()
    reader = protocol.conn.connection._proto  # type: ignore[union-attr]
    read_by_wsproto: list[bytes] = []
    original = reader.receive_bytes
    reader.receive_bytes = lambda data: (read_by_wsproto.append(data), original(data))  # type: ignore[method-assign]
    protocol.data_received(_masked(0xA, b"tt"))
    assert protocol.pending_ping_payload is None and read_by_wsproto == []
    done.set()


@pytest.mark.parametrize(
    "case",
    [
        "in two reads",
        "inside a fragmented message",
        "after half a frame",
        "after a frame's first byte",
        "unmasked",
    ],
)
async def test_a_pong_that_does_not_come_alone_is_read_by_wsproto_and_nothing_is_lost(case: str) -> None:
    done = asyncio.Event()
    protocol, transport, _ = await _connected(done)
    assert protocol.accept_with(b"")
    assert protocol.keepalive_turn()
    pong = _masked(0xA, b"tt")
    if case == "in two reads":
        reads = [pong[:3], pong[3:]]
    elif case == "inside a fragmented message":
        reads = [_masked(0x1, b'{"a":', fin=False), pong, _masked(0x0, b"1}")]
    elif case == "after half a frame":  # the rest of a binary frame that looks like a pong
        frame = _masked(0x2, pong)
        reads = [frame[:6], frame[6:], pong]
    elif case == "after a frame's first byte":  # a text frame whose rest has a pong's shape
        mask = bytes([0x80 - 6 + 15, 0, 0, 0])  # the rest's second byte: a 9-byte masked payload
        text = b"0123456789"
        frame = b"\x81\x8a" + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(text))
        reads = [frame[:1], frame[1:], pong]
    else:
        reads = [bytes([0x8A, 2]) + b"tt"]
    for data in reads:
        protocol.data_received(data)
    if case == "unmasked":  # a protocol error: wsproto's, as before (the connection is closed)
        assert transport.closing and protocol.pending_ping_payload is not None
    else:
        assert protocol.pending_ping_payload is None
    if case in ("inside a fragmented message", "after half a frame", "after a frame's first byte"):
        messages = [await asyncio.wait_for(protocol.queue.get(), 1) for _ in range(2)]  # connect, then it
        sent = {
            "inside a fragmented message": {"type": "websocket.receive", "text": '{"a":1}'},
            "after half a frame": {"type": "websocket.receive", "bytes": pong},
            "after a frame's first byte": {"type": "websocket.receive", "text": "0123456789"},
        }[case]
        assert messages[1] == sent
    done.set()
