"""Topics: what a socket subscribes to, and what the database numbers events by.

A topic is a text, `kind` or `kind:key`: `track:{track_id}`, `thread:{id}`, `category:{slug}`, or
a table made live by its DBA (`book_requests`, `book_requests:7`). Its kind says who may see it
(tracktalk.topic_kinds and tracktalk.may_see in sql/triggers.sql; docs/dba.md, "Topics"): this
module only knows the shape of a topic, and what a message of it carries on each kind of socket.

The track socket's messages carry `track_id` (its contract); a message of a topic on /api/ws is
the same JSON with `"topic":…` spliced in front (`splice`), so that one message serves both
sockets and is never encoded again per socket.
"""

from __future__ import annotations

import re

import msgspec

from app.bounds import MAX_TOPIC, MAX_TRACK_ID

TRACK = "track:"
"""The prefix of a track's topic."""
_KIND = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""A kind, as tracktalk.topic_kinds allows it."""
_THREAD_KEY = re.compile(r"[1-9][0-9]{0,17}")
"""A thread's id (a positive bigint: 18 digits always fit)."""


def track_topic(track_id: str) -> str:
    """The topic of a track's events."""
    return TRACK + track_id


def track_of(topic: str) -> str | None:
    """The track id of a track's topic; None for a topic of another kind."""
    return topic[len(TRACK) :] if topic.startswith(TRACK) else None


def kind_of(topic: str) -> str:
    """The kind of a topic: the text before its first colon."""
    return topic.partition(":")[0]


def malformed(topic: object) -> str | None:
    """What is wrong with a topic a client sent (None: nothing; whether it exists and may be seen
    is the database's to say). Checked before anything is asked of the database."""
    if not isinstance(topic, str) or not topic:
        return "a topic is a non-empty string: track:{id}, thread:{id}, category:{slug} or a live table's"
    if len(topic) > MAX_TOPIC:
        return f"a topic has at most {MAX_TOPIC} characters"
    if "\x00" in topic:
        return "a topic holds no NUL character"
    kind, colon, key = topic.partition(":")
    if not _KIND.fullmatch(kind):
        return f"{kind[:40]!r} is not a kind of topic: a-z, 0-9 and _, starting with a letter"
    if colon and not key:
        return f"the topic {topic[:80]!r} has nothing after its colon"
    if kind == "track" and (not key or len(key) > MAX_TRACK_ID):
        return f"a track's topic is track:{{track_id}}, the id at most {MAX_TRACK_ID} characters"
    if kind == "thread" and not _THREAD_KEY.fullmatch(key):
        return "a thread's topic is thread:{id}, the id a positive whole number"
    if kind == "category" and not key:
        return "a category's topic is category:{slug}"
    return None


def identity(topic: str) -> dict[str, str]:
    """What a message of `topic` carries to say whose it is, beside `topic` on /api/ws: a track's
    messages carry `track_id` (the track socket's contract); other kinds' nothing more."""
    track_id = track_of(topic)
    return {} if track_id is None else {"track_id": track_id}


def prefix(topic: str) -> bytes:
    """The JSON that /api/ws puts in front of a message of `topic`: `{"topic":"…",`."""
    return b'{"topic":' + msgspec.json.encode(topic) + b","


def splice(prefix: bytes, message: bytes) -> bytes:
    """`message` (a JSON object) with the topic of `prefix` as its first field."""
    if message[1:2] == b"}":  # {}
        return prefix[:-1] + b"}"
    return prefix + message[1:]
