"""Routes of comments and comment likes."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from litestar import Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.params import Parameter

from app.bounds import COMMENT_PAGE, MAX_BIGINT, MAX_COMMENT_PAGE
from app.data import comments, moderation
from app.data.tracks import visible_track
from app.data.users import Viewer
from app.handlers.schema import SIGNED_IN, TOKEN_OPTIONAL, errors
from app.handlers.validation import check_id, check_timestamp, check_track_id, clean_content
from app.handlers.write_limits import counted_write
from app.problems import Forbidden, Unprocessable
from app.services import Services
from app.wire import Comment, CommentEdit, CommentIn, LikeState

_TAG = ["comments"]
_LIKE_ERRORS = errors(401, 404, 429, 503)
LINK = ResponseHeader(
    name="Link",
    description='`<…>; rel="next"`: the next page, when there may be more.',
    documentation_only=True,
    required=False,
)


@get(
    "/api/tracks/{track_id:str}/comments",
    tags=_TAG,
    security=TOKEN_OPTIONAL,
    responses=errors(401, 404, 422, 503),
    response_headers=[LINK],
)
async def list_comments(
    track_id: str,
    services: Services,
    viewer: Viewer | None,
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_COMMENT_PAGE, description="Comments per page.")
    ] = COMMENT_PAGE,
    after_id: Annotated[
        int, Parameter(ge=0, le=MAX_BIGINT, description="Cursor: the last id of the previous page.")
    ] = 0,
    sort: Annotated[
        comments.Sort,
        Parameter(
            description="`timestamp`: by position in the track; `newest`: newest first; `top`: most liked"
            " first. The pinned comment comes first (on the first page) in every order."
        ),
    ] = "timestamp",
) -> Response[list[Comment]]:
    """A page of the track's comments (by default in the order of their position in the track, the
    pinned one first); a `Link: rel="next"` header points at the next page. Hidden and held
    comments are there for their author and the track's moderators only, marked."""
    check_track_id(track_id)
    viewer_id = viewer.id if viewer else None
    async with services.pool.connection() as conn:
        await visible_track(conn, track_id, viewer_id)
        items = await comments.page(conn, track_id, viewer_id, after_id=after_id, limit=limit, sort=sort)
    headers = {}
    if len(items) >= limit:
        # The last comment but the pinned one, or the pinned one filling a first page alone
        # (limit 1): as a cursor it places nothing, and the next page starts the order without it.
        last = next((item for item in reversed(items) if not item.pinned), items[-1])
        order = "" if sort == "timestamp" else f"&sort={sort}"
        next_page = f"/api/tracks/{quote(track_id, safe='')}/comments?after_id={last.id}&limit={limit}{order}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    return Response(items, headers=headers)


@post(
    "/api/tracks/{track_id:str}/comments",
    status_code=201,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def create_comment(track_id: str, data: CommentIn, services: Services, user: Viewer) -> Comment:
    """Post a comment at `timestamp` seconds into the track, or a reply to `parent_id`. 403 when the
    track's comments are off, 429 with `Retry-After` in its slow mode (its creator and team are
    above both)."""
    check_track_id(track_id)
    content = clean_content(data.content)
    # One transaction: a parent deleted meanwhile waits for the reply, not the reply's read-back
    # for it; and the author's next post waits for this one's commit to be counted.
    async with counted_write(services, user.id, "comment") as conn:
        track = await visible_track(conn, track_id, user.id)
        rules = await moderation.posting_rules(conn, track_id, user.id)
        # The track's creator and team are above its settings (slow mode: comments.insert).
        if not rules.moderator and not rules.comments_enabled:
            raise Forbidden(f"comments are off on track {track_id!r}: its creator turned them off")
        check_timestamp(data.timestamp, track.duration_seconds)
        if (
            data.parent_id is not None
            and await comments.parent_track(conn, data.parent_id, user.id, rules.moderator) != track_id
        ):
            raise Unprocessable(f"parent_id: {data.parent_id} is not a comment of track {track_id!r}")
        comment_id = await comments.insert(conn, track_id, user.id, content, data.timestamp, data.parent_id)
        return await comments.get(conn, comment_id, user.id)


@put(
    "/api/comments/{comment_id:int}",
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def edit_comment(comment_id: int, data: CommentEdit, services: Services, user: Viewer) -> Comment:
    """Change a comment's content (its author only)."""
    check_id("comment", comment_id)
    content = clean_content(data.content)
    async with counted_write(services, user.id) as conn:
        found = await comments.access(conn, comment_id, user.id)
        if found.user_id != user.id:
            raise Forbidden("only the comment's author can edit it")
        comments.refuse_tombstone(comment_id, found.deleted, "edit")
        await comments.update_content(conn, comment_id, content)
        return await comments.get(conn, comment_id, user.id)


@delete(
    "/api/comments/{comment_id:int}",
    status_code=204,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 403, 404, 503),
)
async def delete_comment(comment_id: int, services: Services, user: Viewer) -> None:
    """Delete a comment and its replies (its author, the track's creator or a team member)."""
    check_id("comment", comment_id)
    async with services.pool.connection() as conn:
        found = await comments.access(conn, comment_id, user.id)
        if user.id not in (found.user_id, found.creator_id) and not user.is_team:
            raise Forbidden("only the comment's author, the track's creator or a team member can delete it")
        await comments.delete(conn, comment_id)


@post(
    "/api/comments/{comment_id:int}/like",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 404, 422, 429, 503),
)
async def like_comment(comment_id: int, services: Services, user: Viewer) -> LikeState:
    """Like a comment (liking twice changes nothing; a tombstone: 422)."""
    return await _set_like(comment_id, services, user, liked=True)


@delete(
    "/api/comments/{comment_id:int}/like",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_LIKE_ERRORS,
)
async def unlike_comment(comment_id: int, services: Services, user: Viewer) -> LikeState:
    """Take a like back (without one, nothing changes)."""
    return await _set_like(comment_id, services, user, liked=False)


async def _set_like(comment_id: int, services: Services, user: Viewer, *, liked: bool) -> LikeState:
    check_id("comment", comment_id)
    async with counted_write(services, user.id) as conn:
        found = await comments.access(conn, comment_id, user.id)
        if liked:
            comments.refuse_tombstone(comment_id, found.deleted, "like")
        return await comments.set_like(conn, comment_id, user.id, liked=liked)


route_handlers = [list_comments, create_comment, edit_comment, delete_comment, like_comment, unlike_comment]
