"""Routes of tracks: the list, one track, its metrics, likes, shares and audio."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.openapi import ResponseSpec

from app.data import tracks
from app.data.db import Conn
from app.data.users import Viewer
from app.handlers.schema import SIGNED_IN, TOKEN_OPTIONAL, errors
from app.handlers.validation import check_track_id
from app.handlers.write_limits import counted_write
from app.live.topics import track_topic
from app.problems import NotFound
from app.services import Services
from app.wire import Track, TrackMetrics

_TAG = ["tracks"]
_READ_ERRORS = errors(401, 404, 503)
_WRITE_ERRORS = errors(401, 404, 429, 503)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@get("/api/tracks", tags=_TAG, security=TOKEN_OPTIONAL, responses=errors(401, 503))
async def list_tracks(services: Services, viewer: Viewer | None) -> list[Track]:
    """The tracks the caller may see."""
    async with services.pool.connection() as conn:
        return await tracks.list_tracks(conn, viewer.id if viewer else None)


@get("/api/tracks/{track_id:str}", tags=_TAG, security=TOKEN_OPTIONAL, responses=_READ_ERRORS)
async def get_track(track_id: str, services: Services, viewer: Viewer | None) -> Track:
    """One track."""
    check_track_id(track_id)
    async with services.pool.connection() as conn:
        return await tracks.get_track(conn, track_id, viewer.id if viewer else None)


@get("/api/tracks/{track_id:str}/metrics", tags=_TAG, security=TOKEN_OPTIONAL, responses=_READ_ERRORS)
async def get_metrics(track_id: str, services: Services, viewer: Viewer | None) -> TrackMetrics:
    """Likes, comments and shares of the track, whether the caller liked it, and how many listen."""
    check_track_id(track_id)
    viewer_id = viewer.id if viewer else None
    async with services.pool.connection() as conn:
        await tracks.visible_track(conn, track_id, viewer_id)
        return await _with_listening(services, conn, await tracks.metrics(conn, track_id, viewer_id))


@post(
    "/api/tracks/{track_id:str}/like", status_code=200, tags=_TAG, security=SIGNED_IN, responses=_WRITE_ERRORS
)
async def like_track(track_id: str, services: Services, user: Viewer) -> TrackMetrics:
    """Like the track (liking twice changes nothing)."""
    return await _change(track_id, services, user, tracks.like)


@delete(
    "/api/tracks/{track_id:str}/like", status_code=200, tags=_TAG, security=SIGNED_IN, responses=_WRITE_ERRORS
)
async def unlike_track(track_id: str, services: Services, user: Viewer) -> TrackMetrics:
    """Take the like back."""
    return await _change(track_id, services, user, tracks.unlike)


@post(
    "/api/tracks/{track_id:str}/share",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_WRITE_ERRORS,
)
async def share_track(track_id: str, services: Services, user: Viewer) -> TrackMetrics:
    """Count a share of the track."""
    return await _change(track_id, services, user, tracks.share)


async def _change(track_id: str, services: Services, user: Viewer, action: Any) -> TrackMetrics:
    check_track_id(track_id)
    async with counted_write(services, user.id) as conn:
        await tracks.visible_track(conn, track_id, user.id)
        await action(conn, track_id, user.id)
        found = await tracks.metrics(conn, track_id, user.id)
    # After the commit: the write's locks on the track's rows are not held for the count's query.
    async with services.pool.connection() as conn:
        return await _with_listening(services, conn, found)


async def _with_listening(services: Services, conn: Conn, found: TrackMetrics) -> TrackMetrics:
    """The metrics with `listening`, the track's count across replicas (app/presence/tracker.py)."""
    return msgspec.structs.replace(
        found, listening=await services.presence.count(conn, track_topic(found.track_id))
    )


@get(
    "/api/tracks/{track_id:str}/audio",
    tags=_TAG,
    media_type="audio/wav",
    security=TOKEN_OPTIONAL,
    responses={
        206: ResponseSpec(
            data_container=bytes,
            media_type="audio/wav",
            description="The part a `Range: bytes=…` header asked for (`Content-Range` says which).",
            generate_examples=False,
        ),
        416: ResponseSpec(
            data_container=None,
            description="A range past the end (`Content-Range: bytes */<size>`).",
            generate_examples=False,
        ),
        **_READ_ERRORS,
    },
)
async def get_audio(
    track_id: str, services: Services, viewer: Viewer | None, request: Request[Any, Any, Any]
) -> Response[bytes]:
    """The track's audio when tracktalk serves it (the demo's); supports Range for seeking."""
    check_track_id(track_id)
    async with services.pool.connection() as conn:
        await tracks.visible_track(conn, track_id, viewer.id if viewer else None)
        found = await tracks.audio(conn, track_id)
    if found is None:
        raise NotFound(f"audio of track {track_id!r}")
    content_type, data = found
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    wanted = _RANGE.match(request.headers.get("range", ""))
    if wanted is None:
        return Response(data, media_type=content_type, headers=headers)
    start, end = _byte_range(wanted, len(data))
    if start > end:
        headers["Content-Range"] = f"bytes */{len(data)}"
        return Response(b"", status_code=416, media_type=content_type, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Response(data[start : end + 1], status_code=206, media_type=content_type, headers=headers)


def _byte_range(match: re.Match[str], size: int) -> tuple[int, int]:
    first, last = match.group(1), match.group(2)
    if first == "":
        count = int(last or 0)
        return max(size - count, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start < size else (size, size - 1)


route_handlers = [list_tracks, get_track, get_metrics, like_track, unlike_track, share_track, get_audio]
