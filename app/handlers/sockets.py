"""The WebSocket of a track: `/api/ws/track/{track_id}?token=…[&since=SEQ[&tag=TAG]]`, as a bare ASGI app.

Sockets are what a replica holds by the thousand, so this one route skips the framework:
`app/main.py` sends its path here ahead of Litestar, whose per-request machinery would cost about
3 KiB per idle socket (docs/performance.md). Frames go out through uvicorn's connection with
`app/live/wsprotocol.py`'s fast path: the hub writes them there and then, so this handler has no
writer task; it only reads the client's frames.

Order on a new socket: accept; check `since`, an anonymous socket's client address (at most
TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS on this replica, app/edge/addresses.py), origin, token and
track (closing with 1008 and a reason before anything is sent); join the feed, which fixes the
seq that live frames follow; send `connected`, then the replay of `since` (or `resync`) at the
client's pace while live frames wait; then live, starting with the track's `presence`
(app/presence/tracker.py counts the socket from the moment the feed registers it).
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
from app.edge.addresses import PerAddress, client_key
from app.live import close_codes
from app.live.frames import message_frame
from app.live.hub import ShuttingDown, TooManySockets
from app.live.subscriber import ANONYMOUS, EPHEMERAL, Subscriber
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
    """The ASGI app of the track sockets (`services_of` gives the running replica's services)."""

    def __init__(self, services_of: Callable[[], Services]) -> None:
        self._services_of = services_of
        self.anonymous = PerAddress()
        """The anonymous sockets of each client address on this replica."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one socket, from its handshake to its end."""
        if (await receive())["type"] != "websocket.connect":
            return
        conn: FrameProtocol | None = scope["extensions"].get(EXTENSION)
        if conn is None:
            log.error(
                "track sockets need tracktalk's uvicorn protocol (app/live/wsprotocol.py): run `tracktalk serve`"
            )
            await send({"type": "websocket.accept"})
            await send(
                {"type": "websocket.close", "code": close_codes.INTERNAL, "reason": "server misconfigured"}
            )
            return
        services = self._services_of()
        track_id = scope["path"][len(PATH) :]
        try:
            await _serve(scope, receive, conn, track_id, services, self.anonymous)
        except Refused as exc:
            await _close(send, conn, exc.code, str(exc))
        except DATABASE_ERRORS:
            await _close(send, conn, close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)
        except Exception:
            log.exception("socket of track %r failed", track_id[:100])
            await _close(send, conn, close_codes.INTERNAL, close_codes.SERVER_FAILED)


async def _close(send: Any, conn: FrameProtocol, code: int, reason: str) -> None:
    """Close with a reason the browser can read: after the handshake (a refused handshake's
    status is hidden from scripts)."""
    if not conn.handshake_complete:
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
    address = _count_anonymous(scope, query, services, anonymous)  # so is one too many
    try:
        epoch = services.feed.access_epoch
        user_id, username, expires_at = await _admit(scope, query, track_id, services)
        sub = Subscriber(conn, user_id, track_id, services.settings.socket_buffer, expires_at)
        async with services.feed.subscription(sub, services.settings.pool_timeout) as start:
            if services.feed.access_epoch != epoch:
                # A revocation may have passed between the admission and the join: ask again,
                # before anything of the track is sent.
                await _may_watch(track_id, user_id, services)
            with services.presence.present(sub):  # counted; its `presence` waits for go_live
                hello = Connected(
                    track_id=track_id, message="Connected to comment updates", seq=start.seq, tag=start.tag
                )
                if not conn.accept_with(message_frame(hello)):
                    return  # the client left while it waited
                if since is not None:
                    async for frames in services.feed.replay(sub, since, start, tag):
                        if not sub.write_now(frames):
                            return
                        try:  # this client's pace; live frames wait meanwhile
                            await asyncio.wait_for(sub.drained(), REPLAY_STALL)
                        except TimeoutError:
                            sub.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
                            return
                sub.go_live()
                await _read(receive, sub, username, services)
    except TooManySockets as exc:
        raise Refused(str(exc)) from None
    except ShuttingDown:
        raise Refused(close_codes.SHUTTING_DOWN, close_codes.GOING_AWAY) from None
    finally:
        if address is not None:
            anonymous.give_back(address)


def _count_anonymous(
    scope: Any, query: dict[str, list[str]], services: Services, anonymous: PerAddress
) -> str | None:
    """The client address an anonymous socket is counted under (None for a socket with a token,
    or where anonymous sockets are off); Refused when the address holds as many as it may."""
    settings = services.settings
    if not settings.anonymous_sockets or _one(query, "token"):
        return None
    address = client_key(scope)
    limit = settings.anonymous_sockets_per_address
    if not anonymous.take(address, limit):
        raise Refused(f"too many anonymous sockets from your address: at most {limit}; sign in, or close one")
    return address


async def _admit(
    scope: Any, query: dict[str, list[str]], track_id: str, services: Services
) -> tuple[int, str | None, float]:
    """Who is connecting (user id, username, token expiry), or Refused with the reason."""
    settings = services.settings
    if settings.allowed_origins and _header(scope, b"origin") not in settings.allowed_origins:
        raise Refused("origin not allowed")
    token = _one(query, "token")
    if not token and not settings.anonymous_sockets:
        raise Refused("invalid token: pass ?token=<access token>")
    user_id, expires_at = ANONYMOUS, float("inf")
    if token:
        try:
            claims = await services.tokens.verify(token)
        except TokenError as exc:
            raise Refused(str(exc)) from None
        except IdentityProviderUnavailable as exc:
            raise Refused(str(exc), close_codes.TRY_AGAIN) from None
        user_id, expires_at = claims.user_id, float(claims.expires_at)
    if not track_id or "\x00" in track_id or len(track_id) > MAX_TRACK_ID:
        raise Refused(close_codes.TRACK_NOT_FOUND)
    return user_id, await _may_watch(track_id, user_id, services), expires_at


async def _may_watch(track_id: str, user_id: int, services: Services) -> str | None:
    """The user's name (None: anonymous), if they exist and may watch the track; else Refused."""
    found = await services.watchers((track_id, user_id or None))
    if user_id != ANONYMOUS and found.username is None:
        raise Refused("invalid token: its user does not exist")
    if not found.may_see:
        raise Refused(close_codes.TRACK_NOT_FOUND)
    return found.username


def _since(query: dict[str, list[str]]) -> tuple[int | None, str | None]:
    """`since` and `tag`: the last seq the client has, and that event's tag (optional)."""
    raw, tag = _one(query, "since"), _one(query, "tag") or None
    if raw is None or raw == "":
        if tag is not None:
            raise Refused("invalid tag: give it with since=, as the tag of the event at that seq")
        return None, None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Refused("invalid since: give the last seq you received, a whole number >= 0")
    if tag is not None and (len(tag) > MAX_TAG or not tag.isascii() or not all(c in _HEX for c in tag)):
        raise Refused(f"invalid tag: give the tag of the event at since=, up to {MAX_TAG} hex digits")
    return int(raw), tag


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read(receive: Any, sub: Subscriber, username: str | None, services: Services) -> None:
    """Handle the client's frames until it leaves or breaks a rule (the close ends it too: the
    connection answers `websocket.disconnect` then)."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect" or sub.closed:
            return
        text = message.get("text")
        if not isinstance(text, str):
            sub.close(close_codes.UNSUPPORTED, "send JSON text frames")
            continue
        if len(text) > MAX_FRAME or len(text.encode()) > MAX_FRAME:
            sub.close(close_codes.TOO_BIG, f"frames are limited to {MAX_FRAME} bytes")
            continue
        try:
            kind = client_envelope_decoder.decode(text).type
        except msgspec.DecodeError:
            sub.close(close_codes.UNSUPPORTED, f"frames must be JSON objects like {_TYPING_HELP}")
            continue
        if kind != "typing":
            _error(sub, f"unknown message type {kind[:40]!r}: send {_TYPING_HELP}")
            continue
        try:
            typing = client_message_decoder.decode(text)
        except msgspec.DecodeError as exc:
            _error(sub, f"bad typing message: {exc}")
            continue
        if username is None:
            _error(sub, "sign in to say you are typing: reconnect with ?token=<access token>")
        elif services.typing.allow((sub.user_id, sub.track_id)):
            await _relay_typing(services, sub, username, typing.is_typing)


def _error(sub: Subscriber, message: str) -> None:
    sub.offer(EPHEMERAL, message_frame(Error(message=message, track_id=sub.track_id)))


async def _relay_typing(services: Services, sub: Subscriber, username: str, is_typing: bool) -> None:
    """Tell every replica's sockets of the track, sealed, through NOTIFY (not kept)."""
    message = UserTyping(track_id=sub.track_id, user_id=sub.user_id, username=username, is_typing=is_typing)
    topic = track_topic(sub.track_id)
    payload = services.codec.seal(topic, encoder.encode(message))
    try:
        await services.events.notify(services.codec.topic_channel(topic), payload)
    except Exception as exc:
        log.warning("typing not relayed: %s", type(exc).__name__)
