"""In-memory stand-ins for the feed's and the socket handler's unit tests: sockets, the event
log, the listener's channels, and the services a socket reaches for.

Each implements the small Protocol the real part implements (app/live/subscriber.py's FrameSocket,
app/live/feed.py's Log and Listening), or the part of it that app/handlers/sockets.py uses, and can be
made slow, stuck or failing on demand, which the real server cannot be made to be at a chosen
moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.auth.verifier import TokenVerifier
from app.bounds import EVENT_PAGE, EVENT_PAGE_BYTES
from app.config import Settings
from app.data.events import Access, Cursor, Page, Row
from app.live.feed import Feed
from app.live.hub import Hub
from app.live.notices import Codec
from app.live.throttle import RateLimiter


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """The JSON messages in a run of unmasked text frames (what a server writes)."""
    messages = []
    at = 0
    while at < len(data):
        head, size = data[at], data[at + 1] & 0x7F
        assert head == 0x81, f"not a whole text frame: {data[at : at + 8]!r}"
        at += 2
        if size == 126:
            (size,) = struct.unpack_from("!H", data, at)
            at += 2
        elif size == 127:
            (size,) = struct.unpack_from("!Q", data, at)
            at += 8
        messages.append(json.loads(data[at : at + size]))
        at += size
    return messages


class FakeSocket:
    """A socket's connection: records what is written, in writes; `backlog` plays a slow client."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.backlog = 0
        """Bytes the kernel would not take: what buffered() answers."""
        self.closed_with: tuple[int, str] | None = None

    def write_frames(self, data: bytes) -> bool:
        if self.closed_with is not None:
            return False
        self.writes.append(data)
        return True

    def buffered(self) -> int:
        return self.backlog

    async def drained(self) -> None:
        return None

    def close_now(self, code: int, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return parse_frames(b"".join(self.writes))

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if m["type"] not in ("connected", "resync")]

    @property
    def resyncs(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "resync"]


def event(topic: str, seq: int, kind: str = "comment_liked", tag: str | None = None) -> bytes:
    """A durable message as the triggers make it (a track's carries its track_id)."""
    identity = {"track_id": topic.removeprefix("track:")} if topic.startswith("track:") else {}
    return json.dumps(
        {"type": kind, **identity, "seq": seq, "tag": tag, "comment_id": seq, "like_count": 1}
    ).encode()


class MemoryLog:
    """tracktalk.events and topic_state in memory, by topic; `gate` holds reads of a topic's events
    until set."""

    def __init__(self) -> None:
        self.events: dict[str, dict[int, bytes]] = {}
        self.restricted: dict[str, dict[int, tuple[bytes, int | None]]] = {}
        """An event's restricted variant and its author, by topic and seq."""
        self.tags: dict[str, dict[int, str]] = {}
        """Every event's tag, kept or not (as the statement that made it: one per `write`) ..."""
        self.prevs: dict[str, dict[int, str | None]] = {}
        """... and the tag of the event before it."""
        self.last: dict[str, int] = {}
        self.visible_pairs: set[tuple[int, str]] | None = None
        """None: every pair may watch (the others are forbidden)."""
        self.moderators: set[tuple[int, str]] = set()
        self.waited_for: list[tuple[str, list[int]]] = []
        """(which read, the primary's transactions it was to wait for), for reads given some."""
        """(user, topic): the user moderates the topic."""
        self.pages: list[tuple[str, int, int]] = []
        """(topic, after, events returned) of each page read."""
        self.messages: dict[int, tuple[int, bytes]] = {}
        """notification id -> (user id, its message)."""
        self.forum: set[int] = set()
        """The notifications of those that are the forum's (not about a track)."""
        self.gate: dict[str, asyncio.Event] = {}
        self.answer_gate: dict[str, asyncio.Event] = {}
        """Holds a read's answer for a track (`latest`, `page`), once read, until set: the read
        took its snapshot and a commit (and its notice) may come before the answer does."""
        self.answers_held = 0
        self.reads = 0
        self.fail = False
        self.failures = 0
        """Reads that raised because of `fail`."""
        self.slow: asyncio.Event | None = None
        """While set but not yet fired, `latest` waits for it (a database that does not answer)."""
        self.waiting = 0
        self.access_gate: asyncio.Event | None = None
        """While set but not yet fired, `visible` holds its answers (a recheck that answers after
        the reads of the log) ..."""
        self.access_held = 0
        """... and how many it holds."""
        self.failing_pages = 0
        """Reads of events (`page`) that raise before the next ones answer again."""

    def write(
        self,
        track_id: str,
        count: int = 1,
        message: bytes | None = None,
        restricted: tuple[bytes, int | None] | None = None,
    ) -> list[tuple[int, bytes]]:
        """Commit `count` new events of a topic in one statement (one tag); their (seq, message).
        `message`: each event's JSON but for its seq and tag (default: a comment_liked);
        `restricted`: each one's restricted variant (likewise) and its author."""
        tag = os.urandom(8).hex()
        made = []
        for _ in range(count):
            seq = self.last[track_id] = self.last.get(track_id, 0) + 1
            text = event(track_id, seq, tag=tag) if message is None else _numbered(message, seq, tag)
            self.events.setdefault(track_id, {})[seq] = text
            if restricted is not None:
                variant, author = restricted
                self.restricted.setdefault(track_id, {})[seq] = (_numbered(variant, seq, tag), author)
            self.prevs.setdefault(track_id, {})[seq] = self.tag(track_id, seq - 1)
            self.tags.setdefault(track_id, {})[seq] = tag
            made.append((seq, text))
        return made

    def tag(self, track_id: str, seq: int) -> str | None:
        """The tag of event `seq` of the track (None for seq 0)."""
        return self.tags.get(track_id, {}).get(seq)

    def lose(self, track_id: str, count: int) -> None:
        """A failover that lost the track's last `count` events: the new primary never had them,
        and numbers its next events with their seqs (with other tags)."""
        for _ in range(count):
            seq = self.last[track_id]
            self.events[track_id].pop(seq, None)
            self.tags[track_id].pop(seq, None)
            self.prevs[track_id].pop(seq, None)
            self.last[track_id] = seq - 1

    def prune(self, track_id: str, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.events[track_id].pop(seq, None)

    def delete_track(self, track_id: str) -> None:
        """As tracks_after_delete does: the events go, the numbering stays."""
        self.events.pop(track_id, None)

    async def latest(self, track_ids: list[str]) -> dict[str, int]:
        await asyncio.sleep(0)  # a database answers later: other work runs meanwhile
        if self.slow is not None:
            self.waiting += 1
            await self.slow.wait()
            self.waiting -= 1
        self._check()
        answer = {t: self._latest(t) for t in track_ids}
        for track_id in track_ids:
            await self._hold(track_id)
        return answer

    async def page(
        self,
        track_id: str,
        after: int,
        limit: int = EVENT_PAGE,
        through: int | None = None,
        max_bytes: int = EVENT_PAGE_BYTES,
    ) -> Page:
        if (gate := self.gate.get(track_id)) is not None:
            await gate.wait()
        await asyncio.sleep(0)
        self._check()
        if self.failing_pages:
            self.failing_pages -= 1
            raise OSError("the database did not answer")
        self.reads += 1
        kept = self.events.get(track_id, {})
        top = through if through is not None else 2**62
        prevs = self.prevs.get(track_id, {})
        restricted = self.restricted.get(track_id, {})
        read = [
            Row(seq, kept[seq], self.tag(track_id, seq), prevs.get(seq), *restricted.get(seq, (None, None)))
            for seq in sorted(kept)
            if after < seq <= top
        ][:limit]
        rows: list[Row] = []
        size = 0
        for row in read:  # as the real one: cut where the bytes pass max_bytes, at least one
            if size >= max_bytes:
                break
            rows.append(row)
            size += len(row.message) + len(row.restricted or b"")
        answer = Page(rows, self._latest(track_id), more=len(read) >= limit or len(rows) < len(read))
        self.pages.append((track_id, after, len(rows)))
        await self._hold(track_id)
        return answer

    def _latest(self, track_id: str) -> Cursor:
        seq = self.last.get(track_id, 0)
        return Cursor(seq, self.tag(track_id, seq))

    async def _hold(self, track_id: str) -> None:
        if (gate := self.answer_gate.get(track_id)) is not None:
            self.answers_held += 1
            await gate.wait()
            self.answers_held -= 1

    async def user_messages(
        self, notification_ids: list[int], written_by: list[int] | None = None
    ) -> list[tuple[int, bytes, bool]]:
        await asyncio.sleep(0)
        self._check()
        if written_by:
            self.waited_for.append(("user_messages", written_by))
        return [(*self.messages[i], i not in self.forum) for i in notification_ids if i in self.messages]

    async def visible(
        self, pairs: list[tuple[int, str]], written_by: list[int] | None = None
    ) -> dict[tuple[int, str], Access]:
        await asyncio.sleep(0)
        self._check()
        if written_by:
            self.waited_for.append(("visible", written_by))
        answer = {
            pair: Access(
                username=f"user{pair[0]}" if pair[0] else None,
                may_see=self.visible_pairs is None or pair in self.visible_pairs,
                moderator=pair in self.moderators,
            )
            for pair in pairs
        }
        if self.access_gate is not None:
            self.access_held += 1
            await self.access_gate.wait()
            self.access_held -= 1
        return answer

    def _check(self) -> None:
        if self.fail:
            self.failures += 1
            raise OSError("the database is down")


class FakeListening:
    """The listener's LISTEN set; `hold` keeps listen() from returning until released."""

    def __init__(self) -> None:
        self.listening: set[str] = set()
        self.hold: asyncio.Event | None = None
        self.held = 0
        """listen() calls waiting on `hold`."""

    async def listen(self, channels: Iterable[str]) -> bool:
        """As the listener: True when some of `channels` were not listened on yet."""
        wanted = set(channels)
        if wanted <= self.listening:
            return False
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
            self.held -= 1
        self.listening.update(wanted)
        return True

    def unlisten(self, channels: Iterable[str]) -> None:
        self.listening.difference_update(channels)


# ---------------------------------------------------------------------------------------------
# The socket handler's world (app/handlers/sockets.py): its connection and its services
# ---------------------------------------------------------------------------------------------


class FakeConnection(FakeSocket):
    """A socket's connection as the handler uses it (app/live/wsprotocol.py's FrameProtocol), with the
    ASGI receive and send of its handler: what the client sends goes in `inbox`, the handler's
    ASGI messages are kept in `sent`; `reading` cleared plays a client that reads nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.handshake_complete = False
        self.corked = b""
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.sent: list[dict[str, Any]] = []
        self.reading = asyncio.Event()
        self.reading.set()

    def write_frames(self, data: bytes) -> bool:
        """As the real one: before the handshake's answer, frames wait to go in its write."""
        if self.closed_with is None and not self.handshake_complete:
            self.corked += data
            return True
        return super().write_frames(data)

    def accept_with(self, data: bytes) -> bool:
        """Complete the handshake and write the first frames (and those written before), in one
        write; False when the client is gone."""
        if self.handshake_complete or self.closed_with is not None:
            return False
        self.handshake_complete = True
        self.writes.append(data + self.corked)
        self.corked = b""
        return True

    def drop_unanswered(self) -> None:
        self.corked = b""

    def close_now(self, code: int, reason: str) -> None:
        """As the real one: only after the handshake; the handler's receive() then ends."""
        if not self.handshake_complete or self.closed_with is not None:
            return
        super().close_now(code, reason)
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def drained(self) -> None:
        await self.reading.wait()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.accept" and not self.handshake_complete:
            # As the real one (FrameProtocol.send): the answer, with the frames that waited for it.
            self.handshake_complete = True
            if self.corked:
                self.writes.append(self.corked)
                self.corked = b""

    def client_sends(self, text: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})

    def client_leaves(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})


class FakeAccess:
    """app/data/events.py's `access` lookup (Services.access), by (topic, user): every user of
    `users` may see every topic but those of `hidden` (forbidden) and `missing` (not found), and
    moderates those of `moderates`; `fail` is raised instead of answering (a database that is
    down)."""

    def __init__(self, users: dict[int, str]) -> None:
        self.users = users
        self.hidden: set[tuple[str, int | None]] = set()
        self.missing: set[str] = set()
        self.moderates: set[tuple[str, int | None]] = set()
        self.presence = True
        """Every topic's kind has presence."""
        self.batches: list[int] = []
        self.fail: BaseException | None = None
        self.asked: list[tuple[str | None, int | None]] = []
        self.hold: asyncio.Event | None = None
        """While set but not yet fired, an answer, once made, waits for it (the query took its
        snapshot; a revocation may commit, and be heard, before the answer arrives)."""
        self.held = 0

    async def __call__(self, wanted: tuple[str | None, int | None]) -> Access:
        self.asked.append(wanted)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        topic, user_id = wanted
        username = self.users.get(user_id) if user_id is not None else None
        known = user_id is None or username is not None
        may_see = None if not known or topic is None or topic in self.missing else wanted not in self.hidden
        answer = Access(username, may_see, wanted in self.moderates, self.presence)
        if self.hold is not None:
            self.held += 1
            await self.hold.wait()
            self.held -= 1
        return answer

    async def many(self, wanted: list[tuple[str | None, int | None]]) -> list[Access]:
        """The same for many at once (app/data/batch.py's Batched gathers them: services.access
        is one in a replica); `batches` records each call's size."""
        self.batches.append(len(wanted))
        return [await self(one) for one in wanted]


class FakeEvents:
    """EventLog.notify (the typing relay): records (channel, payload)."""

    def __init__(self) -> None:
        self.notified: list[tuple[str, str]] = []

    async def notify(self, channel: str, payload: str) -> None:
        self.notified.append((channel, payload))


class FakePresence:
    """Presence's join and leave (app/live/feed.py's Counting): which subscriptions are counted now."""

    def __init__(self) -> None:
        self.counted: set[tuple[Any, str]] = set()

    def join(self, conn: Any, topic: str) -> None:
        self.counted.add((conn, topic))

    def leave(self, conn: Any, topic: str) -> None:
        self.counted.discard((conn, topic))


@dataclass
class FakeServices:
    """What the socket handlers reach for in app/services.py's Services, over the fakes above:
    the real hub, feed (over MemoryLog, FakeListening and FakePresence), token verifier, typing
    limit and codec."""

    settings: Settings
    hub: Hub
    feed: Feed
    log: MemoryLog
    channels: FakeListening
    tokens: TokenVerifier
    access: FakeAccess
    presence: FakePresence
    events: FakeEvents = field(default_factory=FakeEvents)
    typing: RateLimiter = field(default_factory=lambda: RateLimiter(1, seconds=1.0))
    codec: Codec = field(default_factory=lambda: Codec(b"k" * 32))
    handlers: list[tuple[FakeConnection, asyncio.Task[None]]] = field(default_factory=list)
    """The socket handlers a test started (it ends those still running)."""

    @classmethod
    def make(cls, secret: str, users: dict[int, str], **settings: Any) -> FakeServices:
        hub = Hub(sockets_per_user=settings.pop("sockets_per_user", 20))
        log, channels, presence = MemoryLog(), FakeListening(), FakePresence()
        return cls(
            settings=Settings(database_url="postgresql://unused", secret=secret, **settings),
            hub=hub,
            feed=Feed(hub, log, channels, presence=presence),
            log=log,
            channels=channels,
            tokens=TokenVerifier(secret, None),
            access=FakeAccess(users),
            presence=presence,
        )


def _numbered(message: bytes, seq: int, tag: str) -> bytes:
    """`message` (a JSON object) with the seq and tag tracktalk.publish adds."""
    return json.dumps({**json.loads(message), "seq": seq, "tag": tag}).encode()


# A socket's connection under uvicorn's protocols (app/edge/, app/live/wsprotocol.py)

HANDSHAKE = (
    b"GET /api/ws/track/t1?token=secret-token HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


class FakeTransport:
    """What uvicorn's protocol asks of an asyncio transport; `stuck` plays a client that reads nothing."""

    def __init__(self) -> None:
        self.written = b""
        self.writes: list[bytes] = []
        """Each write's bytes (a system call each on a real transport)."""
        self.stuck = 0
        self.closing = False
        self.aborted = False
        self.protocol: object = None

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.stuck

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True  # a real transport waits for its buffer to drain first

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)
