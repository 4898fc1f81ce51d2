"""Topics: what a socket subscribes to, and what the database numbers events by.

A topic is a text, `kind` or `kind:key`: `track:{track_id}`, `thread:{id}`, `category:{slug}`, or
a table made live by its DBA (`book_requests`, `book_requests:7`). Its kind says who may see it
(tracktalk.topic_kinds, tracktalk.may_see in sql/triggers.sql; docs/dba.md, "Topics").
"""

from __future__ import annotations

TRACK = "track:"
"""The prefix of a track's topic."""


def track_topic(track_id: str) -> str:
    """The topic of a track's events."""
    return TRACK + track_id


def track_of(topic: str) -> str | None:
    """The track id of a track's topic; None for a topic of another kind."""
    return topic[len(TRACK) :] if topic.startswith(TRACK) else None
