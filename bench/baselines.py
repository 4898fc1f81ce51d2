"""The designs tracktalk is compared with, each a server process the bench starts.

    python -m bench.baselines floor    --port P
    python -m bench.baselines redis    --port P --redis-url URL
    python -m bench.baselines channels --port P --database-url URL

- floor: a bare broadcaster with the `websockets` library, no database: a writer connects to
  `/publish` and sends `{"track_id": T, "frames": [...]}`; the frames go to the track's sockets
  (`websockets.broadcast`, encoded once).
- redis: the seed's design. Litestar on uvicorn (the same server settings as tracktalk), every
  event PUBLISHed on ONE Redis channel; every socket of every replica gets every event, decodes it
  and keeps it when its track_id matches.
- channels: Litestar's own ChannelsPlugin with PsycoPgChannelsBackend, a channel per track
  (`track_<id>`); writers `pg_notify('track_<id>', frame)` in their INSERT's transaction.

Every socket is `/ws/{track_id}` and gets `{"type": "connected"}` first, as tracktalk's do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

CONNECTED = '{"type": "connected"}'


# (c) the floor --------------------------------------------------------------------------------


async def floor(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    tracks: dict[str, set[ServerConnection]] = {}

    async def handler(conn: ServerConnection) -> None:
        path = conn.request.path if conn.request else "/"
        if path == "/publish":
            async for raw in conn:
                event = json.loads(raw)
                subs = tracks.get(event["track_id"])
                if subs:
                    for frame in event["frames"]:
                        broadcast(subs, frame)
            return
        track_id = path.rsplit("/", 1)[-1].split("?", 1)[0]
        subs = tracks.setdefault(track_id, set())
        await conn.send(CONNECTED)
        subs.add(conn)
        try:
            await conn.wait_closed()
        finally:
            subs.discard(conn)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=4096):
        print("listening", flush=True)
        await asyncio.Future()


# (a) the seed's design: one Redis channel -----------------------------------------------------


def redis_app(redis_url: str) -> Any:
    import redis.asyncio as aioredis
    from litestar import Litestar, WebSocket, websocket

    sockets: set[asyncio.Queue[bytes]] = set()

    async def pump() -> None:
        client = aioredis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.subscribe("comments")
        async for message in pubsub.listen():
            if message["type"] == "message":
                for queue in sockets:
                    queue.put_nowait(message["data"])

    @asynccontextmanager_lifespan
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        task = asyncio.create_task(pump())
        yield
        task.cancel()

    @websocket("/ws/{track_id:str}")
    async def track_socket(socket: WebSocket[Any, Any, Any], track_id: str) -> None:
        await socket.accept()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        sockets.add(queue)
        reader = asyncio.create_task(socket.receive())
        try:
            await socket.send_text(CONNECTED)
            while not reader.done():
                raw = await queue.get()
                event = json.loads(raw)  # every socket decodes every event ...
                if event["track_id"] != track_id:  # ... and keeps those of its track
                    continue
                for frame in event["frames"]:
                    await socket.send_text(frame)
        except Exception:
            pass
        finally:
            sockets.discard(queue)
            reader.cancel()

    return Litestar([track_socket], lifespan=[lifespan])


def asynccontextmanager_lifespan(fn: Any) -> Any:
    return contextlib.asynccontextmanager(fn)


# (b) Litestar's ChannelsPlugin over PostgreSQL --------------------------------------------------


def channels_app(database_url: str) -> Any:
    from litestar import Litestar, WebSocket, websocket
    from litestar.channels import ChannelsPlugin
    from litestar.channels.backends.psycopg import PsycoPgChannelsBackend

    @websocket("/ws/{track_id:str}")
    async def track_socket(socket: WebSocket[Any, Any, Any], track_id: str, channels: ChannelsPlugin) -> None:
        await socket.accept()
        async with channels.start_subscription([f"track_{track_id}"]) as subscriber:
            await socket.send_text(CONNECTED)
            reader = asyncio.create_task(socket.receive())
            try:
                async for event in subscriber.iter_events():
                    if reader.done():
                        break
                    await socket.send_text(event.decode())
            except Exception:
                pass
            finally:
                reader.cancel()

    plugin = ChannelsPlugin(backend=PsycoPgChannelsBackend(database_url), arbitrary_channels_allowed=True)
    return Litestar([track_socket], plugins=[plugin])


def uvicorn_serve(app: Any, port: int, deflate: bool = False) -> None:
    import uvicorn

    # The same settings as app/server.py.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="wsproto",
        ws_max_size=4096,
        ws_per_message_deflate=deflate,
        lifespan="on",
        log_level="warning",
    )
    print("listening", flush=True)
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("design", choices=["floor", "redis", "channels"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    if args.design == "floor":
        asyncio.run(floor(args.port))
    elif args.design == "redis":
        uvicorn_serve(redis_app(args.redis_url), args.port)
    else:
        uvicorn_serve(channels_app(args.database_url), args.port)


if __name__ == "__main__":
    main()
