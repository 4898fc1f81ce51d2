"""CORS for the HTTP API: browsers on the origins of TRACKTALK_ALLOWED_ORIGINS may call /api/.

An ASGI wrapper around the Litestar app rather than Litestar's CORSConfig, which answers every
preflight with the same methods (not the route's, and 204 for a route that does not exist),
sends `Access-Control-Allow-Methods` and `-Headers` to every origin, reads `*` in an origin as a
wildcard (the socket check, app/handlers/sockets.py, compares origins exactly), and answers a
refused origin's preflight with a text 400. Litestar's own OPTIONS answer is no help either: its
`Allow` names the methods of the first handler registered on a path (`GET, OPTIONS` for the
comments, which take POST too). Here, for paths under /api/:

- any OPTIONS request of a route is answered 204 with `Allow`: the route's methods;
- an origin not listed gets nothing of CORS: the request is served as if it had no `Origin`;
- a listed origin's preflight (OPTIONS with `Access-Control-Request-Method`) gets the route's
  methods and `Authorization` and `Content-Type` as headers; a path that is no route gets its
  404, without CORS headers, so the browser refuses the request;
- a listed origin's requests get `Access-Control-Allow-Origin` (errors too: the page can read
  the `detail`) and may read `Link` (the next page) and `Retry-After` (after 429 and 503).

/client/ is open to any origin on its own (app/handlers/client.py), and the sockets check
their origin when they are admitted.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute

PREFIX = "/api/"
"""The paths CORS applies to."""
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Link, Retry-After"
MAX_AGE = 600
"""Seconds a browser may keep a preflight's answer."""

Scope = Any
Message = dict[str, Any]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")
_PATTERNS = {"int": r"-?\d+", "path": r".*"}
"""What a path parameter of each type matches (any other type: one path segment)."""


def _route_pattern(path: str) -> re.Pattern[str]:
    """A Litestar route path (`/api/comments/{comment_id:int}`) as a regex of request paths."""
    parts, at = [], 0
    for found in _PARAMETER.finditer(path):
        parts += [re.escape(path[at : found.start()]), _PATTERNS.get(found.group(2), r"[^/]+")]
        at = found.end()
    return re.compile("".join([*parts, re.escape(path[at:])]))


class Cors:
    """Wraps `app` (the Litestar app) with CORS for `origins` (exact `scheme://host[:port]`;
    none: OPTIONS answered right, and no CORS)."""

    def __init__(self, app: Litestar, origins: tuple[str, ...]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self._routes = [
            (_route_pattern(route.path), ", ".join(sorted(route.methods)).encode())
            for route in app.routes
            if route.path.startswith(PREFIX) and isinstance(route, HTTPRoute)
        ]

    def _methods(self, path: str) -> bytes | None:
        """The methods of the route of `path` (None: no route)."""
        return next((methods for pattern, methods in self._routes if pattern.fullmatch(path)), None)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one HTTP request, with CORS where its origin is listed."""
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        allowed = origin is not None and origin in self.origins
        if scope["method"] == "OPTIONS":
            methods = self._methods(scope["path"])
            if methods is None:  # no such route: its 404, nothing for the browser to go on with
                await self.app(scope, receive, send)
                return
            preflight = allowed and _header(scope, b"access-control-request-method") is not None
            await _options(send, methods, origin if preflight else None)
            return
        if not allowed or origin is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _with_origin(send, origin))


async def _options(send: Any, methods: bytes, origin: str | None) -> None:
    """204 with the route's methods; for a listed origin's preflight, what lets the browser go on."""
    headers = [(b"allow", methods), (b"content-length", b"0")]
    if origin is not None:
        headers += [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", methods),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", str(MAX_AGE).encode()),
            (b"vary", b"Origin"),
        ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_origin(send: Any, origin: str) -> Any:
    """`send`, with what lets the listed origin's page read the answer."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (key, value)
                for key, value in message.get("headers", [])
                if key.lower() != b"access-control-allow-origin"
            ]
            headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
