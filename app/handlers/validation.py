"""Checks of values a client sends, each failing with a detail that says what to fix."""

from __future__ import annotations

import math
import re

from app.bounds import MAX_BIGINT, MAX_CONTENT, MAX_SLUG, MAX_TITLE, MAX_TRACK_ID
from app.problems import NotFound, Unprocessable

"""Largest id PostgreSQL's bigint holds."""


def clean_content(content: str) -> str:
    """The content trimmed; 422 unless 1 to MAX_CONTENT characters without NUL."""
    text = content.strip()
    if not text:
        raise Unprocessable("content: write something (it is empty after trimming spaces)")
    if len(text) > MAX_CONTENT:
        raise Unprocessable(f"content: at most {MAX_CONTENT} characters (got {len(text)})")
    if "\x00" in text:
        raise Unprocessable("content: the NUL character (\\u0000) is not allowed")
    return text


def check_timestamp(timestamp: float, duration: float | None) -> None:
    """422 unless a finite number of seconds from 0 to the track's duration (when known)."""
    if not math.isfinite(timestamp) or timestamp < 0:
        raise Unprocessable("timestamp: give the seconds into the track, a finite number >= 0")
    if duration is not None and timestamp > duration:
        raise Unprocessable(f"timestamp: {timestamp:g} is past the end of the track ({duration:g} seconds)")


def check_id(kind: str, value: int) -> int:
    """404 for an id that no row can have (<= 0, or beyond bigint)."""
    if not 0 < value <= MAX_BIGINT:
        raise NotFound(f"{kind} {value}")
    return value


def check_track_id(track_id: str) -> str:
    """404 for a track id that no row can have."""
    if not track_id or "\x00" in track_id or len(track_id) > MAX_TRACK_ID:
        raise NotFound(f"track {track_id[:50]!r}")
    return track_id


_SLUG = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_SLUG - 1}}}")
"""A category slug as forum_categories.slug allows it."""


def check_slug(slug: str) -> str:
    """404 for a category slug that no row can have."""
    if not _SLUG.fullmatch(slug):
        raise NotFound(f"category {slug[:50]!r}")
    return slug


def clean_title(title: str) -> str:
    """The title trimmed; 422 unless one line of 1 to MAX_TITLE characters."""
    text = title.strip()
    if not text:
        raise Unprocessable("title: write something (it is empty after trimming spaces)")
    if len(text) > MAX_TITLE:
        raise Unprocessable(f"title: at most {MAX_TITLE} characters (got {len(text)})")
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise Unprocessable("title: one line, without control characters (newlines, tabs, NUL)")
    return text
