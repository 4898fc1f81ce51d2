"""The web page: `/` lists the tracks, `/tracks/{track_id}` plays one with its comments."""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, get
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).resolve().parent.parent / "static"


@get(["/", "/tracks/{track_id:str}"], media_type=MediaType.HTML, include_in_schema=False)
async def page() -> str:
    """The single page; the script reads the track id from the address."""
    return (STATIC / "index.html").read_text(encoding="utf-8")


route_handlers = [page, create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)]
