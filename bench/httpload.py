"""A lean HTTP/1.1 keep-alive client for write load: a request costs it a few tens of µs of CPU
(httpx costs about ten times that, and would be the bottleneck on a 2-core machine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class HttpError(Exception):
    """The server answered something this client does not read (it reads Content-Length bodies)."""


async def post_until(
    host: str, port: int, stop_at: float, request: Callable[[], tuple[str, bytes, str]]
) -> dict[int, int]:
    """POST on one connection until `stop_at` (time.monotonic()); counts by status code.

    `request()` gives (path, JSON body, bearer token) for each request.
    """
    reader, writer = await asyncio.open_connection(host, port)
    counts: dict[int, int] = {}
    try:
        while time.monotonic() < stop_at:
            path, body, token = request()
            writer.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            status_line = await reader.readline()
            if not status_line:
                raise HttpError(f"the server closed the connection after {sum(counts.values())} requests")
            status = int(status_line.split(b" ", 2)[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise HttpError(f"status {status} without Content-Length")
            await reader.readexactly(length)
            counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()
    return counts
