"""The WebSocket of a track: `/api/ws/track/{track_id}?token=…[&since=SEQ[&tag=TAG]]`, as a bare ASGI
app; and what it shares with /api/ws (app/handlers/topic_sockets.py): admission, closing.

Sockets are what a replica holds by the thousand, so these routes skip the framework:
`app/main.py` sends their paths here ahead of Litestar, whose per-request machinery would cost about
3 KiB per idle socket (docs/performance.md). Frames go out through uvicorn's connection with
`app/live/wsprotocol.py`'s fast path: the hub writes them there and then, so a handler has no
writer task; it only reads the client's frames.

The track socket is a connection with one subscription, to the topic `track:{track_id}`, whose
frames carry no `topic`. Order on a new socket: accept; check `since`, an anonymous socket's
client address (at most TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS on this replica, counted with its
/api/ws sockets: app/edge/addresses.py), origin, token and track (closing with 1008 and a reason
before anything is sent); join the feed (the user's lane, then the track's topic, which fixes the
seq that live frames follow); send `connected`, then the replay of `since` (or `resync`) at the
client's pace while live frames wait; then live, starting with the track's `presence`
(app/presence/tracker.py counts the subscription from the moment the feed registers it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec
import psycopg
from psycopg_pool import PoolTimeout

from app.auth.claims import IdentityProviderUnavailable, TokenError
from app.bounds import MAX_FRAME, MAX_TAG, MAX_TRACK_ID
from app.data.events import Access
from app.edge.addresses import PerAddress, client_key
from app.live import close_codes
from app.live.connection import ANONYMOUS, Connection
from app.live.cursors import nothing_to_replay
from app.live.frames import message_frame
from app.live.hub import ShuttingDown, TooManySockets
from app.live.topics import track_topic
from app.live.wsprotocol import EXTENSION, FrameProtocol
from app.services import Services
from app.wire import (
    Connected,
    Error,
    UserTyping,
    client_envelope_decoder,
    client_message_decoder,
    encoder,
)

log = logging.getLogger(__name__)

PATH = "/api/ws/track/"
"""Where the track sockets live; the track id follows (URL-encoded)."""
_HEX = frozenset("0123456789abcdef")
REPLAY_STALL = 10.0
"""Seconds a resuming client may leave its replay unread before it is closed as too slow."""
DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout, TimeoutError)
"""What a socket meets when the database cannot be reached in time."""
_TYPING_HELP = '{"type": "typing", "is_typing": true|false}'


class Refused(Exception):
    """The socket may not go on; the message is the close reason, `code` the close code."""

    def __init__(self, reason: str, code: int = close_codes.POLICY) -> None:
        super().__init__(reason)
        self.code = code


class TrackSockets:
    """The ASGI app of the track sockets (`services_of` gives the running replica's services;
    `anonymous` counts the anonymous sockets of each client address, shared with /api/ws)."""

    def __init__(self, services_of: Callable[[], Services], anonymous: PerAddress | None = None) -> None:
        self._services_of = services_of
        self.anonymous = anonymous if anonymous is not None else PerAddress()
        """The anonymous sockets of each client address on this replica."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one socket, from its handshake to its end."""
        conn = await handshake(receive, send, scope)
        if conn is None:
            return
        services = self._services_of()
        track_id = scope["path"][len(PATH) :]
        try:
            await _serve(scope, receive, conn, track_id, services, self.anonymous)
        except Refused as exc:
            await close(send, conn, exc.code, str(exc))
        except DATABASE_ERRORS:
            await close(send, conn, close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)
        except Exception:
            log.exception("socket of track %r failed", track_id[:100])
            await close(send, conn, close_codes.INTERNAL, close_codes.SERVER_FAILED)


async def handshake(receive: Any, send: Any, scope: Any) -> FrameProtocol | None:
    """The socket's connection, once its handshake request came (None: it went, or the server runs
    without tracktalk's protocol, which is then said and logged)."""
    if (await receive())["type"] != "websocket.connect":
        return None
    conn: FrameProtocol | None = scope["extensions"].get(EXTENSION)
    if conn is None:
        log.error("sockets need tracktalk's uvicorn protocol (app/live/wsprotocol.py): run `tracktalk serve`")
        await send({"type": "websocket.accept"})
        await send(
            {"type": "websocket.close", "code": close_codes.INTERNAL, "reason": "server misconfigured"}
        )
    return conn


async def close(send: Any, conn: FrameProtocol, code: int, reason: str) -> None:
    """Close with a reason the browser can read: after the handshake (a refused handshake's
    status is hidden from scripts). A socket refused after it was registered may have frames of
    its user's waiting for the answer (a mention heard while it joined its track): they are
    dropped, so that only the close follows the answer (docs/protocol.md; a mention is a live
    hint, GET /api/notifications has it)."""
    if not conn.handshake_complete:
        conn.drop_unanswered()
        await send({"type": "websocket.accept"})
    conn.close_now(code, reason)


async def _serve(
    scope: Any, receive: Any, conn: FrameProtocol, track_id: str, services: Services, anonymous: PerAddress
) -> None:
    """Admit the socket, join its track, then `connected` (with the handshake's answer, in one
    write), its replay, and live frames while its own frames are read."""
    if services.hub.closing:
        raise Refused(close_codes.SHUTTING_DOWN, close_codes.GOING_AWAY)
    query = parse_qs(scope["query_string"].decode("latin-1"))
    since, tag = _since(query)  # a bad one is refused before the database is asked anything
    address = count_anonymous(scope, query, services, anonymous)  # so is one too many
    topic = track_topic(track_id)
    try:
        epoch = services.feed.access_epoch
        user_id, expires_at = await admit(scope, query, services)
        if not track_id or "\x00" in track_id or len(track_id) > MAX_TRACK_ID:
            raise Refused(close_codes.TRACK_NOT_FOUND)
        found = await _may_watch(topic, user_id, services)
        socket = Connection(conn, user_id, services.settings.socket_buffer, expires_at)
        wait = services.settings.pool_timeout
        async with services.feed.connection(socket, wait):
            start = await services.feed.subscribe(socket, topic, wait, found.moderator, found.presence)
            if services.feed.access_epoch != epoch:
                # A revocation may have passed between the admission and the join: ask again,
                # before anything of the track is sent.
                found = await _may_watch(topic, user_id, services)
                socket.moderate(topic, found.moderator)
            if socket.closed_code:
                # Closed while it joined (its token expired, the replica began to shut down): a
                # close before the handshake's answer cannot be sent, so it is the refusal instead.
                raise Refused(socket.closed_for or "", socket.closed_code)
            hello = message_frame(
                Connected(
                    track_id=track_id, message="Connected to comment updates", seq=start.seq, tag=start.tag
                )
            )
            live_at_once = nothing_to_replay(since, start, tag)
            if live_at_once:
                # Its first frames (presence) wait for the handshake's answer and go in its write.
                socket.go_live(topic)
            if not conn.accept_with(hello):
                return  # the client left while it waited
            if not live_at_once:
                assert since is not None
                async for frames in services.feed.replay(socket, topic, since, start, tag):
                    if not socket.write_now(frames):
                        return
                    try:  # this client's pace; live frames wait meanwhile
                        await asyncio.wait_for(socket.drained(), REPLAY_STALL)
                    except TimeoutError:
                        socket.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
                        return
                socket.go_live(topic)
            await _read(receive, socket, track_id, found.username, services)
    except TooManySockets as exc:
        raise Refused(str(exc)) from None
    except ShuttingDown:
        raise Refused(close_codes.SHUTTING_DOWN, close_codes.GOING_AWAY) from None
    finally:
        if address is not None:
            anonymous.give_back(address)


def count_anonymous(
    scope: Any, query: dict[str, list[str]], services: Services, anonymous: PerAddress
) -> str | None:
    """The client address an anonymous socket is counted under (None for a socket with a token,
    or where anonymous sockets are off); Refused when the address holds as many as it may."""
    settings = services.settings
    if not settings.anonymous_sockets or one(query, "token"):
        return None
    address = client_key(scope)
    limit = settings.anonymous_sockets_per_address
    if not anonymous.take(address, limit):
        raise Refused(f"too many anonymous sockets from your address: at most {limit}; sign in, or close one")
    return address


async def admit(scope: Any, query: dict[str, list[str]], services: Services) -> tuple[int, float]:
    """Who is connecting (user id, ANONYMOUS without a token; token expiry), or Refused with the
    reason: an origin not allowed, a bad token (or none where anonymous sockets are off)."""
    settings = services.settings
    if settings.allowed_origins and header(scope, b"origin") not in settings.allowed_origins:
        raise Refused("origin not allowed")
    token = one(query, "token")
    if not token and not settings.anonymous_sockets:
        raise Refused("invalid token: pass ?token=<access token>")
    if not token:
        return ANONYMOUS, float("inf")
    try:
        claims = await services.tokens.verify(token)
    except TokenError as exc:
        raise Refused(str(exc)) from None
    except IdentityProviderUnavailable as exc:
        raise Refused(str(exc), close_codes.TRY_AGAIN) from None
    return claims.user_id, float(claims.expires_at)


async def _may_watch(topic: str, user_id: int, services: Services) -> Access:
    """The user (if they exist) and their access to the track's topic, if they may watch it; else
    Refused."""
    found = await services.access((topic, user_id or None))
    if user_id != ANONYMOUS and found.username is None:
        raise Refused(close_codes.USER_GONE)
    if not found.may_see:
        raise Refused(close_codes.TRACK_NOT_FOUND)
    return found


def _since(query: dict[str, list[str]]) -> tuple[int | None, str | None]:
    """`since` and `tag`: the last seq the client has, and that event's tag (optional)."""
    raw, tag = one(query, "since"), one(query, "tag") or None
    if raw is None or raw == "":
        if tag is not None:
            raise Refused("invalid tag: give it with since=, as the tag of the event at that seq")
        return None, None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Refused("invalid since: give the last seq you received, a whole number >= 0")
    if tag is not None and (len(tag) > MAX_TAG or not tag.isascii() or not all(c in _HEX for c in tag)):
        raise Refused(f"invalid tag: give the tag of the event at since=, up to {MAX_TAG} hex digits")
    return int(raw), tag


def one(query: dict[str, list[str]], name: str) -> str | None:
    """The last value of a query parameter."""
    values = query.get(name)
    return values[-1] if values else None


def header(scope: Any, name: bytes) -> str | None:
    """A request header's value."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read(
    receive: Any, socket: Connection, track_id: str, username: str | None, services: Services
) -> None:
    """Handle the client's frames until it leaves or breaks a rule (the close ends it too: the
    connection answers `websocket.disconnect` then)."""
    while True:
        text = await read_text(receive, socket)
        if text is None:
            return
        try:
            kind = client_envelope_decoder.decode(text).type
        except msgspec.DecodeError:
            socket.close(close_codes.UNSUPPORTED, f"frames must be JSON objects like {_TYPING_HELP}")
            continue
        if kind != "typing":
            _error(socket, track_id, f"unknown message type {kind[:40]!r}: send {_TYPING_HELP}")
            continue
        try:
            typing = client_message_decoder.decode(text)
        except msgspec.DecodeError as exc:
            _error(socket, track_id, f"bad typing message: {exc}")
            continue
        if username is None:
            _error(socket, track_id, "sign in to say you are typing: reconnect with ?token=<access token>")
        elif services.typing.allow((socket.user_id, track_topic(track_id))):
            await relay_typing(services, track_topic(track_id), socket.user_id, username, typing.is_typing)


async def read_text(receive: Any, socket: Connection) -> str | None:
    """The client's next text frame; None once the socket ended. A frame that is not text, or
    over MAX_FRAME bytes, closes it (1003, 1009)."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect" or socket.closed:
            return None
        text = message.get("text")
        if not isinstance(text, str):
            socket.close(close_codes.UNSUPPORTED, "send JSON text frames")
            continue
        if len(text) > MAX_FRAME or len(text.encode()) > MAX_FRAME:
            socket.close(close_codes.TOO_BIG, f"frames are limited to {MAX_FRAME} bytes")
            continue
        return text


def _error(socket: Connection, track_id: str, message: str) -> None:
    socket.send(message_frame(Error(message=message, track_id=track_id)))


async def relay_typing(services: Services, topic: str, user_id: int, username: str, is_typing: bool) -> None:
    """Tell every replica's sockets of the topic, sealed, through NOTIFY (not kept)."""
    track_id = topic[len("track:") :] if topic.startswith("track:") else None
    message = UserTyping(track_id=track_id, user_id=user_id, username=username, is_typing=is_typing)
    payload = services.codec.seal(topic, encoder.encode(message))
    try:
        await services.events.notify(services.codec.topic_channel(topic), payload)
    except Exception as exc:
        log.warning("typing not relayed: %s", type(exc).__name__)
