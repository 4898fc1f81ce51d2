"""The web page: `/` lists the tracks, `/tracks/{track_id}` plays one with its comments; `/forum`
lists the forum's categories, `/forum/{slug}` a category's threads, `/forum/threads/{thread_id}` a
thread's posts.

One HTML page and plain ES modules under /static (no build step); the script reads the track id
from the address. The Content-Security-Policy allows scripts and styles from this server only, so
that even a rendering mistake could not run a script from a comment.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).resolve().parent.parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # audio_url may point at the host app's storage; private tracks play from a blob.
        "media-src * blob: data:",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@get(
    ["/", "/tracks/{track_id:str}", "/forum", "/forum/{slug:str}", "/forum/threads/{thread_id:int}"],
    media_type=MediaType.HTML,
    include_in_schema=False,
)
async def page() -> Response[str]:
    """The single page; the script reads what to show from the address."""
    return Response((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


route_handlers = [
    page,
    create_static_files_router(
        path="/static",
        directories=[STATIC],
        include_in_schema=False,
        # Revalidate (ETag) so that a new release's modules are picked up at once.
        cache_control=CacheControlHeader(no_cache=True),
    ),
]
