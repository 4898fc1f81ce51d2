"""The browser client: /client/tracktalk.js (an ES module) and /client/tracktalk.d.ts (its types),
and the same files at the protocol's versioned path, /client/v1/.

Other sites import the module from here, and a browser fetches a module script in CORS mode, so
both files are open to any origin (they hold nothing private). The unversioned address is
revalidated on every use (an ETag, answered 304 while unchanged): a page that imports it always
runs the client of the server it talks to. The versioned one may be kept for a week: any client
of a protocol version works with any server of that version (app/wire.py, PROTOCOL), so a copy a
few days old is still right, and pages load it without asking.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from litestar import Request, Response, get, head

from app.wire import PROTOCOL

CLIENT = Path(__file__).resolve().parent.parent / "client"
MEDIA_TYPES = {
    "tracktalk.js": "text/javascript",  # Litestar adds "; charset=utf-8" to text types
    "tracktalk.d.ts": "application/typescript; charset=utf-8",
}
"""The files served under /client/, and their content types."""


VERSIONED = f"/client/v{PROTOCOL}/"
"""Where the files of this protocol version are served with long cache headers."""
PATHS = [f"/client/{name}" for name in MEDIA_TYPES] + [VERSIONED + name for name in MEDIA_TYPES]
CACHE_CONTROL = "no-cache"
VERSIONED_CACHE_CONTROL = "public, max-age=604800"
"""A week: any client of the version works with this server (see the module's docstring)."""


@functools.cache
def _file(name: str) -> tuple[bytes, str]:
    """A client file's bytes and ETag, read once (they ship with the code)."""
    data = (CLIENT / name).read_bytes()
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def _answer(request: Request[Any, Any, Any], head: bool) -> Response[Any]:
    """The file named by the path, or 304 when the browser's copy is current; for HEAD the
    same headers (its length included) and no body."""
    path = request.url.path
    name = path.rsplit("/", 1)[-1]
    data, etag = _file(name)
    headers = {
        "ETag": etag,
        "Cache-Control": VERSIONED_CACHE_CONTROL if path.startswith(VERSIONED) else CACHE_CONTROL,
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(b"", status_code=304, headers=headers)
    if head:
        headers["Content-Length"] = str(len(data))
    return Response(b"" if head else data, media_type=MEDIA_TYPES[name], headers=headers)


@get(PATHS, include_in_schema=False)
async def client_file(request: Request[Any, Any, Any]) -> Response[bytes]:
    """One of the client's files."""
    return _answer(request, head=False)


@head(PATHS, include_in_schema=False)
async def client_file_head(request: Request[Any, Any, Any]) -> Response[None]:
    """What GET would answer, without the body (link checkers, CDNs, `curl -I`)."""
    return _answer(request, head=True)


route_handlers = [client_file, client_file_head]
