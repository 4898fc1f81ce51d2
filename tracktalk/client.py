"""tracktalk's Python client, for services and bots: the live messages of a track, or of many topics
on one socket, as an async iterator that resumes across every drop; and the HTTP API (`Api`).

    from app.wire import NewComment
    from tracktalk.client import Api, Refused, TrackFeed

    async with TrackFeed("https://tracktalk.example", "sunrise", token=my_token) as feed:
        async for message in feed:
            match message:
                case NewComment(comment=comment):
                    print(comment.username, comment.content)

What it does (the protocol: docs/protocol.md; the client: docs/client.md):

- Messages are `app.wire`'s msgspec structs (`Connected`, `NewComment`, `CommentLiked`, …
  `Resync`); a message this version of `app.wire` does not know comes as `Other` (its type and
  fields), never as an error. `skip` (a durable event hidden from this socket) only moves the
  count on.
- Every durable event once, in `seq` order, across drops and replicas: the feed keeps the seq and
  the tag of the last one (`last_seq`, `last_tag`), reconnects with `since=` and `tag=`, drops
  duplicates, and closes and resumes on a gap. `Connected` comes at each connection (load the
  state with GET after the first); `Resync` says to load it again.
- Reconnects: at once after 1001 (the replica stops) and 1013 (too slow, database away) from a
  live socket; with backoff and jitter (half to all of 0.5 s, 1 s, 2 s, … 15 s; a socket live 10 s starts
  it over) after 1000, 1006 (no close frame: a killed replica, the network), 1011, a refused
  connection or an HTTP 5xx handshake; the token is asked of `token` before every connection.
  4001 (or 1008 `token expired`): once at once with `token(expired=True)`'s fresh one.
- Stops with `Refused` (`code`, `reason`) on 1008 (`track not found`, `invalid token`, … ), on a
  second expiry without a live socket between, or on an HTTP 4xx handshake (a wrong address).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self, TypeAlias
from urllib.parse import quote, urlencode, urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from app.backoff import Backoff
from app.wire import ServerMessage, server_message_decoder
from tracktalk.api import Api, ApiError, TokenSource, call_token_source

__all__ = [
    "Api",
    "ApiError",
    "CloseCode",
    "Other",
    "Refused",
    "SubscribeError",
    "Subscribed",
    "TokenSource",
    "TopicMessage",
    "Topics",
    "TrackFeed",
    "Unsubscribed",
]

log = logging.getLogger(__name__)


class CloseCode:
    """The close codes of tracktalk's sockets (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    POLICY = 1008
    INTERNAL = 1011
    TRY_AGAIN = 1013
    TOKEN_EXPIRED = 4001
    GAP = 4000
    """This client's own: it saw a gap in the seqs and resumes to fill it."""


FIRST_WAIT = 0.5
"""Seconds before the first reconnect after a failure (then 1 s, 2 s, …; each drawn from half of it to all of it)."""
MOST_WAIT = 15.0
"""Seconds between reconnects at most."""
STABLE = 10.0
"""A socket live this long starts the backoff over."""
MOST_FLAPS = 6
"""Live sockets in a row that ended before STABLE: after the second, a drop no longer reconnects at
once, and each one starts the backoff a step higher, up to this many."""
OPEN_TIMEOUT = 10.0
"""Seconds a connection (TCP, TLS, the handshake) may take before it counts as failed."""
MAX_MESSAGE = 1 << 22
"""Largest message taken from the server, in bytes."""
_AT_ONCE = frozenset({CloseCode.GOING_AWAY, CloseCode.TRY_AGAIN})
_TAG_CHARS = frozenset("0123456789abcdef")


class Refused(Exception):
    """The server refused the socket, and trying again as is would not help: `code` is the close
    code (1008, 4001) or the HTTP status of a refused handshake, `reason` says why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Other:
    """A message this client's `app.wire` does not describe (a newer server's): its `type`, its
    `seq` (None for an ephemeral one) and all its fields."""

    type: str
    seq: int | None
    data: dict[str, Any]


class Subscribed(msgspec.Struct, tag_field="type", tag="subscribed"):
    """/api/ws: the topic is subscribed; `seq` is its latest event, `tag` that event's tag."""

    topic: str
    seq: int
    tag: str | None = None


class SubscribeError(msgspec.Struct, tag_field="type", tag="subscribe_error"):
    """/api/ws: the topic could not be subscribed (`reason`: `invalid topic`, `not found`,
    `forbidden`, `too many topics`; `message` for people); it is not asked for again. (One refused
    for coming too fast, with `retry_after`, is not yielded: it is asked for again after that.)"""

    topic: str
    reason: str
    message: str = ""
    retry_after: float | None = None


class Unsubscribed(msgspec.Struct, tag_field="type", tag="unsubscribed"):
    """/api/ws: the topic is no longer subscribed (asked by the client, or access withdrawn:
    `reason`); it is not asked for again."""

    topic: str
    reason: str | None = None


Message: TypeAlias = ServerMessage | Other
"""What a feed yields."""


class TopicMessage(NamedTuple):
    """What `Topics` yields: the topic (None for the user's own `mention` and `notification`, once
    per socket) and the message (`Subscribed`, `SubscribeError` and `Unsubscribed` too)."""

    topic: str | None
    message: Message | Subscribed | SubscribeError | Unsubscribed


class _Head(msgspec.Struct):
    """What every message has that a feed needs to know."""

    type: str
    seq: int | None = None
    tag: str | None = None
    topic: str | None = None


_head = msgspec.json.Decoder(_Head)
_topic_replies = msgspec.json.Decoder(Subscribed | SubscribeError | Unsubscribed)


class _Gap(Exception):
    """Durable events were skipped: resume from the last one delivered."""


@dataclass
class _Position:
    """Where one stream of durable events is: its last seq delivered, and that event's tag."""

    seq: int | None = None
    tag: str | None = None

    def take(self, head: _Head) -> bool:
        """Whether a durable event is new (else a duplicate); _Gap when one is missing before it."""
        assert head.seq is not None
        if self.seq is not None:
            if head.seq <= self.seq:
                return False
            if head.seq > self.seq + 1:
                raise _Gap(f"events {self.seq + 1}..{head.seq - 1} missing")
        self.seq, self.tag = head.seq, _tag(head.tag)
        return True

    def start(self, head: _Head) -> None:
        """A (re)connection's latest seq: where to begin when nothing was delivered yet."""
        if self.seq is None and head.seq is not None:
            self.seq, self.tag = head.seq, _tag(head.tag)

    def reset(self, head: _Head) -> None:
        """`resync`: go on from its seq."""
        self.seq, self.tag = head.seq, _tag(head.tag)


def _tag(tag: str | None) -> str | None:
    ok = tag is not None and 0 < len(tag) <= 32 and all(c in _TAG_CHARS for c in tag)
    return tag if ok else None


def _decode(raw: str | bytes, head: _Head) -> Message:
    try:
        message: ServerMessage = server_message_decoder.decode(raw)
        return message
    except msgspec.ValidationError:
        data = json.loads(raw)
        return Other(head.type, head.seq, data if isinstance(data, dict) else {})


def _socket_base(base_url: str) -> str:
    """The server's WebSocket address (ws(s)://host[:port][/prefix]), from its http(s) one."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"base_url must be the server's http(s):// address, not {base_url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _address(base: str, path: str, query: dict[str, str]) -> str:
    return base + path + (f"?{urlencode(query)}" if query else "")


class _Reconnecting:
    """One socket, kept open: connect, read, and after a drop connect again (resuming), until
    closed or refused. Subclasses say where to connect and what the messages mean."""

    def __init__(self, base_url: str, token: TokenSource | str | None, *, backoff: Backoff | None) -> None:
        self._base = _socket_base(base_url)
        self._token = token
        self._backoff = backoff or Backoff(FIRST_WAIT, MOST_WAIT, jitter=0.5)
        self._socket: ClientConnection | None = None
        self._closed = False
        self._stopped = asyncio.Event()
        """Set by aclose(): a wait for the next attempt ends at once."""
        self._flaps = 0
        self.status = "connecting"
        """`connecting`, `live`, `reconnecting` or `closed`."""
        self.connections = 0
        """Sockets opened so far (each reconnect opens one)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: the socket is closed and the iteration ends (from any task)."""
        self._closed = True
        self._stopped.set()
        self.status = "closed"
        socket = self._socket
        if socket is not None:
            await socket.close(CloseCode.NORMAL, "client closed")

    def _url(self, token: str | None) -> str:
        raise NotImplementedError

    async def _opened(self, socket: ClientConnection) -> None:
        """The socket is open (subscribe here)."""

    def _take(self, raw: str | bytes) -> list[Any]:
        """What to yield of one frame; _Gap to resume."""
        raise NotImplementedError

    def _live(self, raw: str | bytes) -> bool:
        """Whether the frame says the socket is live (its first server message)."""
        raise NotImplementedError

    async def _run(self) -> AsyncIterator[Any]:
        renewing = False
        while not self._closed:
            try:
                token = await call_token_source(self._token, expired=renewing)
            except Exception as exc:  # the caller's identity provider may be away for a moment
                log.warning("tracktalk: the token callback failed: %r", exc)
                await self._wait("no token")
                continue
            if renewing and not token:
                raise Refused(CloseCode.TOKEN_EXPIRED, "token expired, and no fresh token was given")
            try:
                socket = await connect(
                    self._url(token), open_timeout=OPEN_TIMEOUT, max_size=MAX_MESSAGE, close_timeout=2
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status < 500 and status not in (408, 425, 429):
                    raise Refused(status, f"the server answered the handshake with HTTP {status}") from None
                await self._wait(f"HTTP {status}")
                continue
            except InvalidURI:
                raise
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                await self._wait(str(exc) or type(exc).__name__)
                continue
            self.connections += 1
            if self._closed:  # while it connected
                await socket.close(CloseCode.NORMAL, "client closed")
                return
            self._socket = socket
            live_at: float | None = None
            gap = False
            try:
                await self._opened(socket)
                async for raw in socket:
                    if live_at is None and self._live(raw):
                        live_at = time.monotonic()
                        renewing = False
                        self.status = "live"
                    try:
                        items = self._take(raw)
                    except msgspec.DecodeError as exc:  # a server's bug: never the caller's problem
                        log.warning("tracktalk: a frame that is not a message (%s): %.200r", exc, raw)
                        continue
                    except _Gap as exc:
                        log.warning("tracktalk: %s: resuming", exc)
                        gap = True
                        await socket.close(CloseCode.GAP, "gap in seq: resuming")
                        break
                    for item in items:
                        yield item
            except ConnectionClosed:
                pass
            finally:
                self._socket = None
                await socket.close()
            if self._closed:
                return
            code = CloseCode.GAP if gap else (socket.close_code or CloseCode.ABNORMAL)
            reason = socket.close_reason or ""
            lived = None if live_at is None else time.monotonic() - live_at
            if code == CloseCode.TOKEN_EXPIRED or (
                code == CloseCode.POLICY and reason.startswith("token expired")
            ):
                if renewing:  # a fresh token did not help
                    raise Refused(code, reason or "token expired")
                renewing = True
                self.status = "reconnecting"
                continue
            if code == CloseCode.POLICY:
                self.status = "closed"
                raise Refused(code, reason)
            self._count_flap(lived)
            if gap or (lived is not None and code in _AT_ONCE and self._flaps <= 2):
                self.status = "reconnecting"
                log.info("tracktalk: socket closed (%s %s): reconnecting at once", code, reason)
                continue
            await self._wait(f"closed {code} {reason}".strip())

    def _count_flap(self, lived: float | None) -> None:
        """A socket that was live shows the server answered: count the backoff afresh from there,
        a step higher for each short-lived socket before it."""
        if lived is None:
            return
        self._flaps = 0 if lived >= STABLE else min(self._flaps + 1, MOST_FLAPS)
        self._backoff.reset()
        self._backoff.failures = max(self._flaps - 1, 0)

    async def _wait(self, why: str) -> None:
        self.status = "reconnecting"
        delay = self._backoff.next_delay()
        log.info("tracktalk: %s: reconnecting in %.1f s", why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)


class TrackFeed(_Reconnecting):
    """The live messages of one track (`/api/ws/track/{track_id}`): iterate over it (once).

    `token`: an access token, or a function `token(expired=bool)` (sync or async) asked before each
    connection for the one to use (`expired=True` after the server said it expired: a fresh one,
    or None to stop); None: no token (anonymous sockets, where the server allows them).
    `since` and `tag`: the last seq this caller has of the track, and that event's tag, to resume
    from (events after it come first)."""

    def __init__(
        self,
        base_url: str,
        track_id: str,
        *,
        token: TokenSource | str | None = None,
        since: int | None = None,
        tag: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(base_url, token, backoff=backoff)
        if not track_id:
            raise ValueError("track_id must be a track's id")
        if since is not None and since < 0:
            raise ValueError("since must be a seq (a whole number >= 0)")
        if tag is not None and (since is None or _tag(tag) is None):
            raise ValueError("tag must be the tag of the event at since (hex digits), given with since")
        self.track_id = track_id
        self._position = _Position(since, tag)

    @property
    def last_seq(self) -> int | None:
        """The seq of the last durable event delivered (or given as `since`); keep it to resume."""
        return self._position.seq

    @property
    def last_tag(self) -> str | None:
        """The tag of that event (or given as `tag`): keep it with last_seq."""
        return self._position.tag

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._run()

    async def typing(self, is_typing: bool) -> None:
        """Tell the track's listeners whether this user is typing (the server relays one a second)."""
        socket = self._socket
        if socket is not None:
            with contextlib.suppress(ConnectionClosed):  # (said again by the caller, if it still types)
                await socket.send(json.dumps({"type": "typing", "is_typing": is_typing}))

    def _url(self, token: str | None) -> str:
        query: dict[str, str] = {}
        if token:
            query["token"] = token
        if self._position.seq is not None:
            query["since"] = str(self._position.seq)
            if self._position.tag:
                query["tag"] = self._position.tag
        return _address(self._base, f"/api/ws/track/{quote(self.track_id, safe='')}", query)

    def _live(self, raw: str | bytes) -> bool:
        return True  # `connected` is the first message

    def _take(self, raw: str | bytes) -> list[Message]:
        head = _head.decode(raw)
        if head.type == "connected":
            self._position.start(head)
        elif head.type == "resync":
            self._position.reset(head)
        elif head.seq is not None and not self._position.take(head):
            return []  # delivered already
        if head.type == "skip":
            return []
        return [_decode(raw, head)]


@dataclass
class _Topic:
    position: _Position = field(default_factory=_Position)
    subscribed: bool = False


class Topics(_Reconnecting):
    """Many topics on one socket (`/api/ws`): `subscribe(topic)` (before or while iterating), then
    iterate over `TopicMessage`s (once). Each topic resumes with its own `since` after a drop."""

    def __init__(
        self, base_url: str, *, token: TokenSource | str | None = None, backoff: Backoff | None = None
    ) -> None:
        super().__init__(base_url, token, backoff=backoff)
        self._topics: dict[str, _Topic] = {}
        self._retries: set[asyncio.Task[None]] = set()
        """Subscribes refused for coming too fast, waiting to be sent again."""

    def __aiter__(self) -> AsyncIterator[TopicMessage]:
        return self._run()

    def last_seq(self, topic: str) -> int | None:
        """The seq of the topic's last durable event delivered."""
        wanted = self._topics.get(topic)
        return None if wanted is None else wanted.position.seq

    def last_tag(self, topic: str) -> str | None:
        """The tag of that event."""
        wanted = self._topics.get(topic)
        return None if wanted is None else wanted.position.tag

    async def subscribe(self, topic: str, since: int | None = None, tag: str | None = None) -> None:
        """Ask for the topic's messages (after `since`, whose event's tag is `tag`, when given)."""
        self._topics[topic] = _Topic(_Position(since, _tag(tag) if since is not None else None))
        await self._send_subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        """No more of the topic's messages."""
        if self._topics.pop(topic, None) is not None and self._socket is not None:
            with contextlib.suppress(ConnectionClosed):  # (the next socket does not subscribe it)
                await self._socket.send(json.dumps({"type": "unsubscribe", "topic": topic}))

    async def typing(self, topic: str, is_typing: bool) -> None:
        """Tell the topic's listeners whether this user is typing."""
        if self._socket is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._socket.send(
                    json.dumps({"type": "typing", "topic": topic, "is_typing": is_typing})
                )

    def _retry(self, topic: str, after: float) -> None:
        async def again() -> None:
            await asyncio.sleep(after)
            await self._send_subscribe(topic)

        task = asyncio.create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def aclose(self) -> None:
        """Stop: the socket is closed and the iteration ends (from any task)."""
        for task in list(self._retries):
            task.cancel()
        await super().aclose()

    async def _send_subscribe(self, topic: str) -> None:
        socket = self._socket
        wanted = self._topics.get(topic)
        if socket is None or wanted is None:
            return  # sent when the socket opens
        frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if wanted.position.seq is not None:
            frame["since"] = wanted.position.seq
            if wanted.position.tag:
                frame["tag"] = wanted.position.tag
        with contextlib.suppress(ConnectionClosed):  # sent again when the next socket opens
            await socket.send(json.dumps(frame))

    def _url(self, token: str | None) -> str:
        return _address(self._base, "/api/ws", {"token": token} if token else {})

    async def _opened(self, socket: ClientConnection) -> None:
        for topic in list(self._topics):
            self._topics[topic].subscribed = False
            await self._send_subscribe(topic)

    def _live(self, raw: str | bytes) -> bool:
        return True  # the server answers as soon as it is up

    def _take(self, raw: str | bytes) -> list[TopicMessage]:
        head = _head.decode(raw)
        if head.type in ("subscribed", "subscribe_error", "unsubscribed"):
            reply = _topic_replies.decode(raw)
            wanted = self._topics.get(reply.topic)
            if isinstance(reply, Subscribed):
                if wanted is None:
                    return []  # unsubscribed meanwhile
                wanted.subscribed = True
                wanted.position.start(head)
            elif isinstance(reply, SubscribeError) and reply.retry_after is not None and wanted is not None:
                self._retry(reply.topic, reply.retry_after)
                return []
            else:
                self._topics.pop(reply.topic, None)
            return [TopicMessage(reply.topic, reply)]
        topic = head.topic
        if topic is None:
            return [TopicMessage(None, _decode(raw, head))]  # the user's own, once per socket
        wanted = self._topics.get(topic)
        if wanted is None:
            return []  # unsubscribed meanwhile
        if head.type == "resync":
            wanted.position.reset(head)
        elif head.seq is not None and not wanted.position.take(head):
            return []
        if head.type == "skip":
            return []
        return [TopicMessage(topic, _decode(raw, head))]
