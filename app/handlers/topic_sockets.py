"""One socket, many topics: `/api/ws?token=…`, as a bare ASGI app (beside the track socket's,
app/handlers/sockets.py, whose admission and closing it shares).

The socket is a connection of its user (their `mention` and `notification` come once, whatever it
subscribes to) holding up to MAX_TOPICS subscriptions. The client sends
`{"type": "subscribe", "topic": T, "since": SEQ?, "tag": TAG?}`, `{"type": "unsubscribe", "topic": T}`
and `{"type": "typing", "topic": T, "is_typing": bool}`; every message of a topic comes with
`"topic": T` (spliced into the message built once for all sockets: app/live/frames.py).

A subscribe is checked here (its shape, the socket's 100 topics, a token bucket per socket whose
burst a page's 100 topics fit in), then asked of the database (tracktalk.may_see, with the
subscribes of every socket that arrive together: one query), joined in the feed (the seq its live
frames follow), answered `subscribed`, replayed after its `since` at the client's pace (the
socket's other topics go on live meanwhile), then live. Each runs in a task of its own, so that a
page's 100 subscribes go at once. A refused subscribe is `subscribe_error` with its reason, and the
socket stays open. A subscription whose user loses access ends with `unsubscribed` and a reason
(the access guard, app/live/access.py); the socket keeps its other topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec

from app.bounds import MAX_TOPICS, SUBSCRIBE_BURST, SUBSCRIBE_RATE
from app.data.events import Access
from app.edge.addresses import PerAddress
from app.handlers.sockets import (
    DATABASE_ERRORS,
    REPLAY_STALL,
    Refused,
    admit,
    close,
    count_anonymous,
    handshake,
    read_text,
    relay_typing,
)
from app.live import close_codes
from app.live.connection import ANONYMOUS, Connection
from app.live.frames import message_frame
from app.live.hub import ShuttingDown, TooManySockets
from app.live.throttle import Bucket
from app.live.topics import malformed
from app.live.wsprotocol import FrameProtocol
from app.services import Services
from app.wire import (
    Error,
    SocketConnected,
    Subscribe,
    Subscribed,
    SubscribeError,
    SubscribeFailure,
    TopicTyping,
    Unsubscribe,
    Unsubscribed,
    client_envelope_decoder,
    topic_client_decoder,
)

log = logging.getLogger(__name__)

PATH = "/api/ws"
"""Where the socket of many topics lives."""
_HELP = (
    'send {"type": "subscribe", "topic": "track:{id}", "since": SEQ?}, '
    '{"type": "unsubscribe", "topic": T} or {"type": "typing", "topic": T, "is_typing": true|false}'
)


class TopicSockets:
    """The ASGI app of /api/ws (`services_of` gives the running replica's services; `anonymous`
    counts the anonymous sockets of each client address, shared with the track sockets)."""

    def __init__(self, services_of: Callable[[], Services], anonymous: PerAddress) -> None:
        self._services_of = services_of
        self.anonymous = anonymous

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one socket, from its handshake to its end."""
        conn = await handshake(receive, send, scope)
        if conn is None:
            return
        services = self._services_of()
        try:
            await _serve(scope, receive, conn, services, self.anonymous)
        except Refused as exc:
            await close(send, conn, exc.code, str(exc))
        except DATABASE_ERRORS:
            await close(send, conn, close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)
        except Exception:
            log.exception("a socket of topics failed")
            await close(send, conn, close_codes.INTERNAL, close_codes.SERVER_FAILED)


async def _serve(
    scope: Any, receive: Any, conn: FrameProtocol, services: Services, anonymous: PerAddress
) -> None:
    """Admit the socket, register it, then `connected` (with the handshake's answer, in one
    write), and the client's frames until it leaves."""
    if services.hub.closing:
        raise Refused(close_codes.SHUTTING_DOWN, close_codes.GOING_AWAY)
    query = parse_qs(scope["query_string"].decode("latin-1"))
    address = count_anonymous(scope, query, services, anonymous)
    try:
        user_id, expires_at = await admit(scope, query, services)
        username = None
        if user_id != ANONYMOUS:
            username = (await services.access((None, user_id))).username
            if username is None:
                raise Refused(close_codes.USER_GONE)
        socket = Connection(conn, user_id, services.settings.socket_buffer, expires_at, tagged=True)
        async with services.feed.connection(socket, services.settings.pool_timeout):
            hello = SocketConnected(message="Connected: subscribe to topics")
            if not conn.accept_with(message_frame(hello)):
                return  # the client left while it waited
            session = _Session(socket, username, services)
            try:
                await session.read(receive)
            finally:
                await session.end()
    except TooManySockets as exc:
        raise Refused(str(exc)) from None
    except ShuttingDown:
        raise Refused(close_codes.SHUTTING_DOWN, close_codes.GOING_AWAY) from None
    finally:
        if address is not None:
            anonymous.give_back(address)


class _Session:
    """One socket's subscribes in flight, and what it may still subscribe to."""

    def __init__(self, socket: Connection, username: str | None, services: Services) -> None:
        self._socket = socket
        self._username = username
        self._services = services
        self._feed = services.feed
        self._joining: dict[str, asyncio.Task[None]] = {}
        """Topics being subscribed to: admission, join, replay."""
        self._bucket = Bucket(SUBSCRIBE_BURST, SUBSCRIBE_RATE)

    async def read(self, receive: Any) -> None:
        """Handle the client's frames until it leaves or breaks a rule."""
        socket = self._socket
        while (text := await read_text(receive, socket)) is not None:
            try:
                kind = client_envelope_decoder.decode(text).type
            except msgspec.DecodeError:
                socket.close(close_codes.UNSUPPORTED, f"frames must be JSON objects: {_HELP}")
                continue
            if kind not in ("subscribe", "unsubscribe", "typing"):
                self._error(f"unknown message type {kind[:40]!r}: {_HELP}")
                continue
            try:
                message = topic_client_decoder.decode(text)
            except msgspec.DecodeError as exc:
                self._error(f"bad {kind} message: {exc}")
                continue
            match message:
                case Subscribe():
                    self._subscribe(message)
                case Unsubscribe(topic=topic):
                    self._unsubscribe(topic)
                case TopicTyping(topic=topic, is_typing=is_typing):
                    await self._typing(topic, is_typing)

    async def end(self) -> None:
        """The socket ends: the subscribes in flight stop (the feed drops its subscriptions)."""
        joining = list(self._joining.values())
        for task in joining:
            task.cancel()
        for task in joining:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -----------------------------------------------------------------------------------------
    # What the client asks
    # -----------------------------------------------------------------------------------------

    def _subscribe(self, message: Subscribe) -> None:
        topic = message.topic
        if (problem := malformed(topic)) is not None:
            self._refuse(topic, "invalid topic", problem)
        elif topic in self._joining or topic in self._socket.topics:
            self._error(f"already subscribed to {topic[:80]!r}: unsubscribe first", topic)
        elif self._held() >= MAX_TOPICS:
            self._refuse(
                topic, "too many topics", f"a socket holds at most {MAX_TOPICS} topics: unsubscribe one first"
            )
        elif (wait := self._bucket.take()) > 0:
            self._refuse(
                topic,
                "too many topics",
                f"subscribing too fast: at most {SUBSCRIBE_BURST} at once, then {SUBSCRIBE_RATE:g} a second",
                retry_after=round(wait, 3),
            )
        else:
            task = asyncio.create_task(self._join(topic, message.since, message.tag))
            self._joining[topic] = task
            task.add_done_callback(lambda _: self._done(topic, task))

    def _held(self) -> int:
        """Topics held: subscribed, or being subscribed (a topic whose replay runs is both)."""
        topics = self._socket.topics
        return len(topics) + sum(topic not in topics for topic in self._joining)

    def _unsubscribe(self, topic: str) -> None:
        if (task := self._joining.pop(topic, None)) is not None:
            task.cancel()  # its end drops what it had joined
        self._feed.unsubscribe(self._socket, topic)
        self._socket.send(message_frame(Unsubscribed(topic=topic)))

    async def _typing(self, topic: str, is_typing: bool) -> None:
        if self._username is None:
            self._error("sign in to say you are typing: reconnect with ?token=<access token>", topic)
        elif topic not in self._socket.topics:
            self._error(f"subscribe to {topic[:80]!r} before typing in it", topic)
        elif not self._feed.presence(topic):
            self._error(f"{topic[:80]!r} has no typing (tracks and threads have)", topic)
        elif self._services.typing.allow((self._socket.user_id, topic)):
            await relay_typing(self._services, topic, self._socket.user_id, self._username, is_typing)

    # -----------------------------------------------------------------------------------------
    # A subscribe, in a task of its own
    # -----------------------------------------------------------------------------------------

    async def _join(self, topic: str, since: int | None, tag: str | None) -> None:
        socket, feed = self._socket, self._feed
        try:
            epoch = feed.access_epoch
            found = await self._access(topic)
            if (refusal := _refusal(found)) is not None:
                self._refuse(topic, *refusal)
                return
            wait = self._services.settings.pool_timeout
            start = await feed.subscribe(socket, topic, wait, found.moderator, found.presence)
            if feed.access_epoch != epoch:
                # A revocation may have passed between the admission and the join: ask again,
                # before anything of the topic is sent.
                found = await self._access(topic)
                if (refusal := _refusal(found)) is not None:
                    feed.unsubscribe(socket, topic)
                    self._refuse(topic, *refusal)
                    return
                socket.moderate(topic, found.moderator)
            socket.write_now(message_frame(Subscribed(topic=topic, seq=start.seq, tag=start.tag)))
            if since is not None:
                async for frames in feed.replay(socket, topic, since, start, tag):
                    if topic not in socket.topics or not socket.write_now(frames):
                        return  # it was taken away meanwhile, or the socket is gone
                    try:  # this client's pace; this topic's live frames wait meanwhile
                        await asyncio.wait_for(socket.drained(), REPLAY_STALL)
                    except TimeoutError:
                        socket.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
                        return
            socket.go_live(topic)
        except asyncio.CancelledError:
            # An unsubscribe took this subscribe out of _joining and dropped the subscription
            # itself; its end may come after a subscribe again to the topic: that one is not ours.
            if self._joining.get(topic) is asyncio.current_task():
                feed.unsubscribe(socket, topic)
            raise
        except DATABASE_ERRORS:
            # No database to ask: the socket closes as the track socket would, and the client
            # resumes each of its topics with its since= (docs/protocol.md).
            feed.unsubscribe(socket, topic)
            socket.close(close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)
        except Exception:
            feed.unsubscribe(socket, topic)
            log.exception("subscribing a socket to %r failed", topic[:100])
            socket.close(close_codes.INTERNAL, close_codes.SERVER_FAILED)

    async def _access(self, topic: str) -> Access:
        return await self._services.access((topic, self._socket.user_id or None))

    def _done(self, topic: str, task: asyncio.Task[None]) -> None:
        if self._joining.get(topic) is task:
            del self._joining[topic]
            if not self._joining:
                # A dict keeps its table when emptied: a page's 100 subscribes left 4 KiB in
                # every socket for good (bench/topics.py). Cleared, it lets it go.
                self._joining.clear()

    # -----------------------------------------------------------------------------------------
    # Answers
    # -----------------------------------------------------------------------------------------

    def _refuse(
        self, topic: object, reason: SubscribeFailure, message: str, retry_after: float | None = None
    ) -> None:
        shown = topic[:300] if isinstance(topic, str) else ""
        self._socket.send(
            message_frame(
                SubscribeError(topic=shown, reason=reason, message=message, retry_after=retry_after)
            )
        )

    def _error(self, message: str, topic: str | None = None) -> None:
        self._socket.send(message_frame(Error(message=message, topic=topic[:300] if topic else None)))


def _refusal(found: Access) -> tuple[SubscribeFailure, str] | None:
    """Why a subscribe is refused, as the database answered (None: it is not)."""
    if found.may_see is None:
        return "not found", "no such topic, or not one you may see"
    if not found.may_see:
        return "forbidden", "you may not see this topic"
    return None
