"""One reading of a WebSocket handshake, for the requests that are plainly one.

A socket's opening request used to be read twice: uvicorn's h11 read it to learn that it asks
for an upgrade, wrote it out again, and wsproto's own h11 read it a second time for its key. In a
reconnect storm, where a replica opens sockets by the thousand, the two readings were about a
quarter of its CPU per socket (docs/performance.md, "Sockets by the hundred thousand").

A handshake has one shape: `GET target HTTP/1.1` and a dozen headers, in one read. `parse()`
reads that shape once and gives what wsproto would have made of it. Whatever it does not
recognise at once (a request split over two reads, bytes after the head, a body, a header twice,
a line h11 would refuse, a host in IDNA) it leaves to the long way, h11 then wsproto, which
answers it as before: so the long way stays the reference, and this path never answers a request
differently (tests/unit/test_upgrade.py compares the two).
"""

from __future__ import annotations

import re
from typing import NamedTuple, TypeAlias

MAX_HEAD = 16 * 1024
"""The longest head read here: h11's own limit, past which it refuses the request."""

_HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
"""A header's name (RFC 9110 token), as h11 checks it."""
_VALUE = re.compile(rb"(?:[\x21-\x7e](?:[ \t]*[\x21-\x7e])*)?")
"""A header's value, ASCII only (h11 allows more; the rest goes the long way)."""
_TARGET = re.compile(rb"/[\x21-\x7e]*")
"""A request target in origin form (a path and a query)."""
_ONCE = frozenset({b"host", b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"})
"""The headers that mean one thing only when sent once."""
_NOT_IN_SCOPE = frozenset({b"host", b"sec-websocket-extensions", b"sec-websocket-protocol"})
"""Headers that wsproto takes out of the list it hands on (the scope gets the host first)."""


Peer: TypeAlias = "tuple[tuple[str, int | None] | None, tuple[str, int] | None]"
"""A connection's two ends as uvicorn's protocols keep them (`server`, `client`): read once, by
the HTTP connection, and handed on with the handshake."""


class Upgrade(NamedTuple):
    """A WebSocket handshake as wsproto's `events.Request` gives it."""

    target: str
    """The path and query string, as sent."""
    host: str
    headers: list[tuple[bytes, bytes]]
    """Every header but those in `_NOT_IN_SCOPE`, its name in lower case, in the order sent."""
    subprotocols: list[str]
    raw: bytes
    """The request as received: for wsproto, should the app answer with anything but a 101."""


def parse(data: bytes) -> Upgrade | None:
    """`data`, one read from a new connection, as a WebSocket handshake; None when it is not
    plainly one (the caller then hands it to h11, which answers it in full)."""
    if (
        not data.startswith(b"GET /")
        or len(data) > MAX_HEAD
        or data.find(_HEAD_END) != len(data) - len(_HEAD_END)
        or b"websocket" not in data.lower()  # a page's or an API's GET: h11's, at once
    ):
        return None
    lines = data[: -len(_HEAD_END)].split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1" or not _TARGET.fullmatch(request_line[1]):
        return None
    host = b""
    headers: list[tuple[bytes, bytes]] = []
    once: dict[bytes, bytes] = {}
    subprotocols: list[str] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        name = name.lower()
        if name in _ONCE:
            if name in once:
                return None
            once[name] = value
        elif name in (b"content-length", b"transfer-encoding"):
            return None
        elif name == b"sec-websocket-protocol":
            subprotocols.extend(piece.decode().strip() for piece in value.split(b","))
        if name == b"host":
            host = value
        elif name not in _NOT_IN_SCOPE:
            headers.append((name, value))
    connection = once.get(b"connection", b"")
    if (
        not host
        or b"xn--" in host.lower()
        or once.get(b"upgrade", b"").lower() != b"websocket"
        or once.get(b"sec-websocket-version") != b"13"
        or b"sec-websocket-key" not in once
        or not any(token.strip().lower() == b"upgrade" for token in connection.split(b","))
    ):
        return None
    return Upgrade(request_line[1].decode(), host.decode(), headers, subprotocols, data)
