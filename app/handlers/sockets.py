"""The WebSocket of a track: `/api/ws/track/{track_id}?token=…[&since=SEQ]`.

Order on a new socket: check token and track (closing with 1008 and a reason, before anything is
sent), register with the feed (which fixes the seq that live frames follow), send `connected`,
replay `since` (or `resync`), then the queued live frames. A reader handles the client's frames
meanwhile; a writer task is the only one that sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import psycopg
from litestar import WebSocket, websocket
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.types import WebSocketSendEvent
from psycopg_pool import PoolTimeout

from app.auth import TokenError, verify_token
from app.deps import Viewer, load_viewer
from app.feed import resync_frame
from app.handlers.validation import check_track_id
from app.services import Services
from app.subscriber import CLOSE_GOING_AWAY, Subscriber
from app.tracks import visible_track
from app.wire import (
    Connected,
    Ephemeral,
    Error,
    UserTyping,
    client_envelope_decoder,
    client_message_decoder,
    encoder,
)

log = logging.getLogger(__name__)

MAX_FRAME = 4096
"""Largest client frame, in bytes; a bigger one closes the socket with 1009."""
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
DATABASE_DOWN = (psycopg.OperationalError, PoolTimeout)
"""What a socket meets when the database cannot be reached in time."""
_SERVER_FAILED = "server error (logged): reconnect with since=<last seq>"
_CLOSE_TIMEOUT = 5.0
"""Seconds a stopping socket's writer may take to flush and send the close frame."""


class Refused(Exception):
    """The socket may not go on; the message is the close reason."""


@websocket("/api/ws/track/{track_id:str}")
async def track_socket(socket: WebSocket[Any, Any, Any], track_id: str, services: Services) -> None:
    """Live events of a track and live messages for the socket's user."""
    await socket.accept()
    if services.hub.closing:
        await socket.close(CLOSE_GOING_AWAY, "server shutting down: try another replica")
        return
    try:
        viewer, since, expires_at = await _admit(socket, track_id, services)
    except Refused as exc:
        await socket.close(CLOSE_POLICY, str(exc))
        return
    except DATABASE_DOWN:
        await socket.close(CLOSE_TRY_AGAIN, "database unavailable: reconnect in a few seconds")
        return
    except Exception:
        log.exception("socket for track %r refused: unforeseen failure", track_id[:100])
        await socket.close(CLOSE_INTERNAL, _SERVER_FAILED)
        return
    # A client that resumes may be ahead of this replica (it came from a faster one): live
    # frames up to its `since` are not sent again.
    sub = Subscriber(
        viewer.id, track_id, services.settings.socket_queue, skip_through=since or 0, expires_at=expires_at
    )
    try:
        async with services.feed.subscription(sub) as start:
            await _serve(socket, sub, viewer, services, since, start)
    except DATABASE_DOWN:
        await socket.close(CLOSE_TRY_AGAIN, "database unavailable: reconnect in a few seconds")


async def _serve(
    socket: WebSocket[Any, Any, Any],
    sub: Subscriber,
    viewer: Viewer,
    services: Services,
    since: int | None,
    start: int,
) -> None:
    """Read the client's frames here while a writer task sends; stop when the client leaves."""
    writer = asyncio.create_task(_write(socket, sub, services, since, start))
    try:
        await _read(socket, sub, viewer, services)
        # Let the writer say goodbye when a rule was broken; a client that left needs none.
        await asyncio.wait({writer}, timeout=_CLOSE_TIMEOUT)
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _admit(
    socket: WebSocket[Any, Any, Any], track_id: str, services: Services
) -> tuple[Viewer, int | None, int]:
    """Who is connecting, to which track, from which seq; Refused with the reason otherwise."""
    origins = services.settings.allowed_origins
    if origins and socket.headers.get("origin") not in origins:
        raise Refused("origin not allowed")
    token = socket.query_params.get("token")
    if not token:
        raise Refused("invalid token: pass ?token=<access token>")
    since = _since(socket.query_params.get("since"))
    try:
        claims = verify_token(services.settings.secret, token)
        viewer = await load_viewer(services, claims.user_id)
        check_track_id(track_id)
        async with services.pool.connection() as conn:
            await visible_track(conn, track_id, viewer.id)
    except TokenError as exc:
        raise Refused(str(exc)) from None
    except HTTPException:
        raise Refused("track not found") from None
    if len(services.hub.users.get(viewer.id, ())) >= services.settings.sockets_per_user:
        raise Refused(
            f"too many sockets: at most {services.settings.sockets_per_user} per user; close one first"
        )
    return viewer, since, claims.expires_at


def _since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise Refused("invalid since: give the last seq you received, a whole number >= 0")
    return int(raw)


async def _write(
    socket: WebSocket[Any, Any, Any], sub: Subscriber, services: Services, since: int | None, start: int
) -> None:
    """The socket's only sender: connected, the replay, then live frames; then the close frame."""

    try:
        hello = Connected(track_id=sub.track_id, message="Connected to comment updates", seq=start)
        await _send(socket, encoder.encode(hello).decode())
        if since is not None:
            try:
                await _replay(socket, sub, services, since, start)
            except DATABASE_DOWN:
                sub.close(CLOSE_TRY_AGAIN, "database unavailable: reconnect with since=<last seq> shortly")
        while sub.close_reason is None:
            frames = sub.take()
            if not frames:
                await sub.waiter()
            for frame in frames:
                await _send(socket, frame)
        code, reason = sub.close_reason
        if code != CLOSE_NORMAL:
            await socket.close(code, reason)
    except (OSError, RuntimeError, TimeoutError, WebSocketDisconnect) as exc:
        log.debug("socket writer stopped: %s", type(exc).__name__)
    except Exception:
        # Anything else would end the writer unseen and leave the client on a socket that
        # says nothing more: log it, and close so that the client reconnects and resumes.
        log.exception("socket writer for track %r failed", sub.track_id[:100])
        sub.close(CLOSE_INTERNAL, _SERVER_FAILED)
        with contextlib.suppress(Exception):
            await socket.close(CLOSE_INTERNAL, _SERVER_FAILED)


async def _send(socket: WebSocket[Any, Any, Any], frame: str) -> None:
    """One text frame, as a bare ASGI event (the same str object for every socket)."""
    event: WebSocketSendEvent = {"type": "websocket.send", "text": frame, "bytes": None}
    await socket.send(event)


async def _replay(
    socket: WebSocket[Any, Any, Any], sub: Subscriber, services: Services, since: int, start: int
) -> None:
    """Send the track's events since+1..start, or `resync` when some are no longer kept."""
    if since >= start:
        if since > start:
            latest = (await services.events.latest([sub.track_id]))[sub.track_id]
            if since > latest:  # a seq the track never had: the client must reload
                sub.skip_through = 0
                await _send(socket, resync_frame(sub.track_id, start))
        return
    after = since
    while after < start:
        rows = await services.events.range(sub.track_id, after, start)
        if not rows or rows[0][0] != after + 1:
            await _send(socket, resync_frame(sub.track_id, start))
            return
        for seq, frame in rows:
            await _send(socket, frame)
            after = seq


async def _read(
    socket: WebSocket[Any, Any, Any], sub: Subscriber, viewer: Viewer, services: Services
) -> None:
    """Handle the client's frames until it leaves or breaks a rule."""
    while sub.close_reason is None:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            sub.close(CLOSE_NORMAL, "client left")
            return
        text = message.get("text")
        if not isinstance(text, str):
            sub.close(CLOSE_UNSUPPORTED, "send JSON text frames")
            return
        if len(text) > MAX_FRAME or len(text.encode()) > MAX_FRAME:
            sub.close(CLOSE_TOO_BIG, f"frames are limited to {MAX_FRAME} bytes")
            return
        try:
            kind = client_envelope_decoder.decode(text).type
        except msgspec.DecodeError:
            sub.close(
                CLOSE_UNSUPPORTED, 'frames must be JSON objects like {"type": "typing", "is_typing": true}'
            )
            return
        if kind != "typing":
            _error(
                sub, f'unknown message type {kind[:40]!r}: send {{"type": "typing", "is_typing": true|false}}'
            )
            continue
        try:
            typing = client_message_decoder.decode(text)
        except msgspec.DecodeError as exc:
            _error(sub, f"bad typing message: {exc}")
            continue
        if services.typing.allow((viewer.id, sub.track_id)):
            await _relay_typing(services, sub.track_id, viewer, typing.is_typing)


def _error(sub: Subscriber, message: str) -> None:
    sub.offer(0, encoder.encode(Error(message=message, track_id=sub.track_id)).decode())


async def _relay_typing(services: Services, track_id: str, viewer: Viewer, is_typing: bool) -> None:
    """Tell every replica's sockets of the track, through NOTIFY (not kept)."""
    message = UserTyping(track_id=track_id, user_id=viewer.id, username=viewer.username, is_typing=is_typing)
    payload = Ephemeral(track_id=track_id, message=msgspec.Raw(encoder.encode(message)))
    try:
        await services.events.notify(encoder.encode(payload).decode())
    except Exception as exc:
        log.warning("typing not relayed: %s", type(exc).__name__)


route_handlers = [track_socket]
