"""Routes of the forum: categories, threads, posts and post likes.

Who may do what: anyone may read what they may see (a private category, its threads and their
posts are the team's: 404 for anyone else); a thread's title is its author's (and the team's),
its lock and pin the team's; a post is its author's to edit, and its author's or the team's to
delete. A locked thread takes no new posts, edits or deletions but the team's. Starting a thread
and posting count toward TRACKTALK_COMMENTS_PER_MINUTE, every other write toward
TRACKTALK_WRITES_PER_MINUTE. Everything written goes live through the database's triggers, on the
thread's topic (`thread:{id}`) and its category's (`category:{slug}`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import quote

from litestar import Response, delete, get, post, put
from litestar.params import Parameter

from app.bounds import MAX_BIGINT, MAX_POST_PAGE, MAX_THREAD_PAGE, POST_PAGE, THREAD_PAGE
from app.data import forum
from app.data.forum import ThreadPlace
from app.data.users import Viewer
from app.handlers.comments import LINK
from app.handlers.schema import SIGNED_IN, TOKEN_OPTIONAL, errors
from app.handlers.validation import check_id, check_slug, clean_content, clean_title
from app.handlers.write_limits import counted_write
from app.problems import Forbidden, Unprocessable
from app.services import Services
from app.wire import Category, NewThread, Post, PostEdit, PostIn, PostLikeState, Thread, ThreadEdit, ThreadIn

_TAG = ["forum"]
_LIKE_ERRORS = errors(401, 404, 429, 503)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"([01])\.(-?\d{1,19})\.(\d{1,19})")
"""A threads page's cursor: pinned (0 or 1), last_post_at in microseconds since the epoch, id."""
_LOCKED = "the thread is locked: only the team can write in it"


def _cursor(thread: Thread) -> str:
    """The cursor of the page after `thread`."""
    micros = (thread.last_post_at - _EPOCH) // timedelta(microseconds=1)
    return f"{int(thread.is_pinned)}.{micros}.{thread.id}"


def _place(cursor: str) -> ThreadPlace:
    """The place a cursor names; 422 for one this server did not make."""
    match = _CURSOR.fullmatch(cursor)
    if match is None or not 0 < int(match[3]) <= MAX_BIGINT:
        raise Unprocessable('after: pass the cursor of a `Link: rel="next"` header as it is')
    try:
        at = _EPOCH + timedelta(microseconds=int(match[2]))
    except OverflowError:
        raise Unprocessable('after: pass the cursor of a `Link: rel="next"` header as it is') from None
    return ThreadPlace(is_pinned=match[1] == "1", last_post_at=at, id=int(match[3]))


@get("/api/forum/categories", tags=_TAG, security=TOKEN_OPTIONAL, responses=errors(401, 503))
async def list_categories(services: Services, viewer: Viewer | None) -> list[Category]:
    """The forum's categories the caller may see (the private ones are the team's)."""
    async with services.pool.connection() as conn:
        return await forum.categories(conn, viewer.id if viewer else None)


@get(
    "/api/forum/categories/{slug:str}/threads",
    tags=_TAG,
    security=TOKEN_OPTIONAL,
    responses=errors(401, 404, 422, 503),
    response_headers=[LINK],
)
async def list_threads(
    slug: str,
    services: Services,
    viewer: Viewer | None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_THREAD_PAGE, description="Threads per page.")] = THREAD_PAGE,
    after: Annotated[
        str | None,
        Parameter(
            max_length=64, description='Cursor: from the `Link: rel="next"` header of the page before.'
        ),
    ] = None,
) -> Response[list[Thread]]:
    """A page of the category's threads: pinned first, then the one with the newest post first; a
    `Link: rel="next"` header points at the next page."""
    check_slug(slug)
    place = _place(after) if after is not None else None
    async with services.pool.connection() as conn:
        category = await forum.category_id(conn, slug, viewer.id if viewer else None)
        items = await forum.threads(conn, category, after=place, limit=limit)
    headers = {}
    if len(items) == limit:
        next_page = (
            f"/api/forum/categories/{quote(slug, safe='')}/threads?after={_cursor(items[-1])}&limit={limit}"
        )
        headers["Link"] = f'<{next_page}>; rel="next"'
    return Response(items, headers=headers)


@post(
    "/api/forum/categories/{slug:str}/threads",
    status_code=201,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 404, 413, 422, 429, 503),
)
async def create_thread(slug: str, data: ThreadIn, services: Services, user: Viewer) -> NewThread:
    """Start a thread in the category, with its first post."""
    check_slug(slug)
    title = clean_title(data.title)
    content = clean_content(data.content)
    async with counted_write(services, user.id, "comment") as conn:
        category = await forum.category_id(conn, slug, user.id)
        thread_id = await forum.insert_thread(conn, category, user.id, title)
        post_id = await forum.insert_post(conn, thread_id, user.id, content, None)
        thread = await forum.thread(conn, thread_id, user.id)
        first = await forum.post(conn, post_id, user.id)
    return NewThread(
        **{field: getattr(thread, field) for field in Thread.__struct_fields__}, first_post=first
    )


@get(
    "/api/forum/threads/{thread_id:int}", tags=_TAG, security=TOKEN_OPTIONAL, responses=errors(401, 404, 503)
)
async def get_thread(thread_id: int, services: Services, viewer: Viewer | None) -> Thread:
    """One thread."""
    check_id("thread", thread_id)
    async with services.pool.connection() as conn:
        return await forum.thread(conn, thread_id, viewer.id if viewer else None)


@put(
    "/api/forum/threads/{thread_id:int}",
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def edit_thread(thread_id: int, data: ThreadEdit, services: Services, user: Viewer) -> Thread:
    """Change a thread's title (its author, or the team), or lock or pin it (the team)."""
    check_id("thread", thread_id)
    if data.title is None and data.is_locked is None and data.is_pinned is None:
        raise Unprocessable("body: send at least one of title, is_locked, is_pinned")
    title = clean_title(data.title) if data.title is not None else None
    async with counted_write(services, user.id) as conn:
        found = await forum.thread_access(conn, thread_id, user.id, lock=True)
        if not user.is_team:
            if data.is_locked is not None or data.is_pinned is not None:
                raise Forbidden("only the team can lock or pin a thread")
            if found.user_id != user.id:
                raise Forbidden("only the thread's author (or the team) can change its title")
            if found.is_locked:
                raise Forbidden(_LOCKED)
        await forum.update_thread(
            conn, thread_id, title=title, is_locked=data.is_locked, is_pinned=data.is_pinned
        )
        return await forum.thread(conn, thread_id, user.id)


@get(
    "/api/forum/threads/{thread_id:int}/posts",
    tags=_TAG,
    security=TOKEN_OPTIONAL,
    responses=errors(401, 404, 422, 503),
    response_headers=[LINK],
)
async def list_posts(
    thread_id: int,
    services: Services,
    viewer: Viewer | None,
    limit: Annotated[int, Parameter(ge=1, le=MAX_POST_PAGE, description="Posts per page.")] = POST_PAGE,
    after_id: Annotated[
        int, Parameter(ge=0, le=MAX_BIGINT, description="Cursor: the last id of the previous page.")
    ] = 0,
) -> Response[list[Post]]:
    """A page of the thread's posts, oldest first; a `Link: rel="next"` header points at the next page."""
    check_id("thread", thread_id)
    viewer_id = viewer.id if viewer else None
    async with services.pool.connection() as conn:
        await forum.thread_access(conn, thread_id, viewer_id)
        items = await forum.posts(conn, thread_id, viewer_id, after_id=after_id, limit=limit)
    headers = {}
    if len(items) == limit:
        next_page = f"/api/forum/threads/{thread_id}/posts?after_id={items[-1].id}&limit={limit}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    return Response(items, headers=headers)


@post(
    "/api/forum/threads/{thread_id:int}/posts",
    status_code=201,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def create_post(thread_id: int, data: PostIn, services: Services, user: Viewer) -> Post:
    """Post in the thread, or reply to its post `parent_id` (403 in a locked thread, but for the team)."""
    check_id("thread", thread_id)
    content = clean_content(data.content)
    # One transaction, the thread's row locked: a lock made meanwhile waits for the post, or the
    # post for it; and the author's next post waits for this one's commit to be counted.
    async with counted_write(services, user.id, "comment") as conn:
        thread = await forum.thread_access(conn, thread_id, user.id, lock=True)
        if thread.is_locked and not user.is_team:
            raise Forbidden(_LOCKED)
        if data.parent_id is not None and await forum.parent_thread(conn, data.parent_id) != thread_id:
            raise Unprocessable(f"parent_id: {data.parent_id} is not a post of thread {thread_id}")
        post_id = await forum.insert_post(conn, thread_id, user.id, content, data.parent_id)
        return await forum.post(conn, post_id, user.id)


@put(
    "/api/forum/posts/{post_id:int}",
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503),
)
async def edit_post(post_id: int, data: PostEdit, services: Services, user: Viewer) -> Post:
    """Change a post's content (its author only; not in a locked thread)."""
    check_id("post", post_id)
    content = clean_content(data.content)
    async with counted_write(services, user.id) as conn:
        found = await forum.post_access(conn, post_id, user.id)
        if found.user_id != user.id:
            raise Forbidden("only the post's author can edit it")
        if found.thread_is_locked and not user.is_team:
            raise Forbidden(_LOCKED)
        await forum.update_post(conn, post_id, content)
        return await forum.post(conn, post_id, user.id)


@delete(
    "/api/forum/posts/{post_id:int}",
    status_code=204,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 403, 404, 429, 503),
)
async def delete_post(post_id: int, services: Services, user: Viewer) -> None:
    """Delete a post (its author, or the team); its replies stay."""
    check_id("post", post_id)
    async with counted_write(services, user.id) as conn:
        found = await forum.post_access(conn, post_id, user.id)
        if not user.is_team:
            if found.user_id != user.id:
                raise Forbidden("only the post's author or the team can delete it")
            if found.thread_is_locked:
                raise Forbidden(_LOCKED)
        await forum.delete_post(conn, post_id)


@post(
    "/api/forum/posts/{post_id:int}/like",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_LIKE_ERRORS,
)
async def like_post(post_id: int, services: Services, user: Viewer) -> PostLikeState:
    """Like a post (liking twice changes nothing)."""
    return await _set_like(post_id, services, user, liked=True)


@delete(
    "/api/forum/posts/{post_id:int}/like",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=_LIKE_ERRORS,
)
async def unlike_post(post_id: int, services: Services, user: Viewer) -> PostLikeState:
    """Take a like back (without one, nothing changes)."""
    return await _set_like(post_id, services, user, liked=False)


async def _set_like(post_id: int, services: Services, user: Viewer, *, liked: bool) -> PostLikeState:
    check_id("post", post_id)
    async with counted_write(services, user.id) as conn:
        await forum.post_access(conn, post_id, user.id)
        return await forum.set_like(conn, post_id, user.id, liked=liked)


route_handlers = [
    list_categories,
    list_threads,
    create_thread,
    get_thread,
    edit_thread,
    list_posts,
    create_post,
    edit_post,
    delete_post,
    like_post,
    unlike_post,
]
