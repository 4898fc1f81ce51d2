"""Routes of moderation (issue 20): pin, heart, hide, approve, report, the queue, track settings,
mutes, and the deep link of a comment.

Who may: the track's moderators (its album's creator and the team) pin, heart, hide, approve and
change settings; anyone signed in who sees a comment may report it, once; a creator mutes users on
all their tracks. Each write is one row change that the triggers make live (sql/triggers.sql), as
the same change made with psql. The routes that act on a comment take an optional `track_id` query:
a comment of another track is then 404, so a page that acts on what it shows cannot act elsewhere.
"""

from __future__ import annotations

from typing import Annotated

from litestar import delete, get, post, put
from litestar.params import Parameter

from app.data import comments, moderation
from app.data.tracks import visible_track
from app.data.users import Viewer
from app.handlers.schema import SIGNED_IN, TOKEN_OPTIONAL, errors
from app.handlers.validation import check_id, check_track_id
from app.handlers.write_limits import counted_write
from app.problems import Forbidden, NotFound, Unprocessable
from app.services import Services
from app.wire import (
    Comment,
    CommentThread,
    MuteState,
    QueueItem,
    Report,
    ReportIn,
    TrackSettingsIn,
    TrackSettingsState,
)

_TAG = ["moderation"]
_MARK_ERRORS = errors(401, 403, 404, 422, 429, 503)
MAX_REASON = 1000
"""Characters of a report's reason."""
MAX_REPLIES = 500
"""Replies a deep link answers with."""
MAX_QUEUE = 500
"""Comments the moderation queue answers with at most."""

OnTrack = Annotated[
    str | None,
    Parameter(
        description="The track the caller acts on: a comment of another track is then 404.", max_length=200
    ),
]
"""The optional `track_id` query of the routes that act on a comment."""


async def _moderate(
    comment_id: int, services: Services, user: Viewer, action: moderation.Mark, track_id: str | None
) -> Comment:
    check_id("comment", comment_id)
    async with counted_write(services, user.id) as conn:
        found = await moderation.target(conn, comment_id, user.id)
        if track_id is not None and found.track_id != track_id:
            raise NotFound(f"comment {comment_id} of track {track_id[:50]!r}")
        if not found.moderator:
            raise Forbidden("only the track's creator or a team member can moderate its comments")
        if action in ("pin", "heart"):
            comments.refuse_tombstone(comment_id, found.deleted, action)
        await moderation.mark(conn, comment_id, action, user.id)
        return await comments.get(conn, comment_id, user.id)


@post(
    "/api/comments/{comment_id:int}/pin",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def pin_comment(comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None) -> Comment:
    """Pin the comment: first in every order; the track's pinned comment before it is unpinned."""
    return await _moderate(comment_id, services, user, "pin", track_id)


@delete(
    "/api/comments/{comment_id:int}/pin",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def unpin_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Unpin the comment (unpinned already: nothing changes)."""
    return await _moderate(comment_id, services, user, "unpin", track_id)


@post(
    "/api/comments/{comment_id:int}/heart",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def heart_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Give the comment the artist's heart."""
    return await _moderate(comment_id, services, user, "heart", track_id)


@delete(
    "/api/comments/{comment_id:int}/heart",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def unheart_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Take the artist's heart back."""
    return await _moderate(comment_id, services, user, "unheart", track_id)


@post(
    "/api/comments/{comment_id:int}/hide",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def hide_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Hide the comment from everyone but its author and the track's moderators (a held one stays
    hidden and leaves the queue)."""
    return await _moderate(comment_id, services, user, "hide", track_id)


@delete(
    "/api/comments/{comment_id:int}/hide",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def unhide_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Show the hidden comment again (still held for review, if it is)."""
    return await _moderate(comment_id, services, user, "unhide", track_id)


@post(
    "/api/comments/{comment_id:int}/approve",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_MARK_ERRORS,
)
async def approve_comment(
    comment_id: int, services: Services, user: Viewer, track_id: OnTrack = None
) -> Comment:
    """Make a held, hidden or reported comment visible, its reports cleared: it reaches those who
    did not see it as a new comment (comment_restored)."""
    return await _moderate(comment_id, services, user, "approve", track_id)


@post(
    "/api/comments/{comment_id:int}/report",
    status_code=201,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 404, 409, 413, 422, 429, 503),
)
async def report_comment(comment_id: int, data: ReportIn, services: Services, user: Viewer) -> Report:
    """Report a comment (once per user: 409 after), with a reason. At
    tracktalk.settings.reports_to_hide distinct reports (default 3) it is held for review. Each
    report counts toward the caller's writes per minute."""
    check_id("comment", comment_id)
    reason = data.reason.strip()
    if not reason:
        raise Unprocessable("reason: say why (it is empty after trimming spaces)")
    if len(reason) > MAX_REASON or "\x00" in reason:
        raise Unprocessable(f"reason: at most {MAX_REASON} characters, without NUL")
    async with counted_write(services, user.id) as conn:
        found = await moderation.target(conn, comment_id, user.id)
        if found.user_id == user.id:
            raise Unprocessable("comment_id: you cannot report your own comment")
        comments.refuse_tombstone(comment_id, found.deleted, "report")
        return await moderation.report(conn, comment_id, user.id, reason)


@get("/api/moderation/queue", tags=_TAG, security=SIGNED_IN, responses=errors(401, 403, 404, 422, 503))
async def moderation_queue(
    services: Services,
    user: Viewer,
    track_id: Annotated[
        str | None, Parameter(description="Only this track's comments.", max_length=200)
    ] = None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_QUEUE, description="Comments at most.")] = 100,
) -> list[QueueItem]:
    """Held comments, and reported ones that are not hidden, of the tracks the caller moderates,
    oldest first, each with its reports. Approve one to make it visible, hide it to keep it hidden."""
    async with services.pool.connection() as conn:
        if track_id is not None:
            check_track_id(track_id)
            await visible_track(conn, track_id, user.id)
            if not await moderation.moderates_track(conn, track_id, user.id):
                raise Forbidden("only the track's creator or a team member sees its moderation queue")
        elif not user.is_team and not await moderation.is_creator(conn, user.id):
            raise Forbidden("the moderation queue is for creators and team members")
        return await moderation.queue(conn, user.id, track_id, limit)


@put(
    "/api/tracks/{track_id:str}/settings",
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def track_settings(
    track_id: str, data: TrackSettingsIn, services: Services, user: Viewer
) -> TrackSettingsState:
    """Turn comments off (new ones get 403; those there stay) or on, and set slow mode (a user's
    next comment on the track waits this many seconds; 0: off). Creator or team; live as
    `track_settings`."""
    check_track_id(track_id)
    if data.comments_enabled is None and data.slow_mode_seconds is None:
        raise Unprocessable("body: send comments_enabled, slow_mode_seconds, or both")
    async with counted_write(services, user.id) as conn:
        await visible_track(conn, track_id, user.id)
        if not await moderation.moderates_track(conn, track_id, user.id):
            raise Forbidden("only the track's creator or a team member can change its settings")
        return await moderation.set_track_settings(
            conn, track_id, data.comments_enabled, data.slow_mode_seconds
        )


async def _mute(user_id: int, services: Services, user: Viewer, *, muted: bool) -> MuteState:
    check_id("user", user_id)
    if user_id == user.id:
        raise Unprocessable("user_id: you cannot mute yourself")
    async with counted_write(services, user.id) as conn:
        if not await moderation.is_creator(conn, user.id):
            raise Forbidden("only a creator can mute users (on all their tracks)")
        await moderation.mute(conn, user.id, user_id, muted=muted)
    return MuteState(user_id=user_id, muted=muted)


@post(
    "/api/users/{user_id:int}/mute",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def mute_user(user_id: int, services: Services, user: Viewer) -> MuteState:
    """Mute a user on all the caller's tracks: their new comments (replies too) are hidden from
    everyone but them and the moderators from the start. Creators only."""
    return await _mute(user_id, services, user, muted=True)


@delete(
    "/api/users/{user_id:int}/mute",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def unmute_user(user_id: int, services: Services, user: Viewer) -> MuteState:
    """Unmute a user (their comments from now on are visible; those hidden stay hidden)."""
    return await _mute(user_id, services, user, muted=False)


@get(
    "/api/comments/{comment_id:int}",
    tags=["comments"],
    security=TOKEN_OPTIONAL,
    responses=errors(401, 404, 503),
)
async def comment_thread(comment_id: int, services: Services, viewer: Viewer | None) -> CommentThread:
    """A deep link: the comment, the one it replies to, and its replies (the page opens
    `/tracks/{track_id}?comment={comment_id}` at it). Hidden and held comments only for their
    author and the track's moderators (404 for anyone else)."""
    check_id("comment", comment_id)
    viewer_id = viewer.id if viewer else None
    async with services.pool.connection() as conn:
        await comments.access(conn, comment_id, viewer_id)
        comment = await comments.get(conn, comment_id, viewer_id)
        parent = None
        if comment.parent_id is not None:
            try:
                parent = await comments.get(conn, comment.parent_id, viewer_id)
            except NotFound:
                parent = None  # hidden from this viewer
        replies = await comments.thread(conn, comment, viewer_id, MAX_REPLIES)
    return CommentThread(comment=comment, parent=parent, replies=replies)


route_handlers = [
    pin_comment,
    unpin_comment,
    heart_comment,
    unheart_comment,
    hide_comment,
    unhide_comment,
    approve_comment,
    report_comment,
    moderation_queue,
    track_settings,
    mute_user,
    unmute_user,
    comment_thread,
]
