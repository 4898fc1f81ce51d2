"""The same load client as bench/client.py, with the `websockets` library instead of picows.

It offers per-message deflate (websockets does by default), which picows cannot: the bench uses it
to compare the server's memory with deflate on and off. Same stdin/stdout protocol.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.client import _COMMENT_ID, STATS, follow_commands


async def reader(conn: ClientConnection) -> None:
    try:
        async for message in conn:
            data = message.encode() if isinstance(message, str) else message
            STATS.frames += 1
            STATS.bytes += len(data)
            if b"new_comment" in data:
                match = _COMMENT_ID.search(data)
                if match:
                    STATS.ids.append(int(match.group(1)))
                    STATS.times.append(time.time())
    except Exception:
        pass
    STATS.closed += 1


async def open_one(url: str, sem: asyncio.Semaphore) -> ClientConnection | None:
    async with sem:
        try:
            conn = await connect(url, open_timeout=30, max_size=2**22)
            await asyncio.wait_for(conn.recv(), 30)  # `connected`
        except Exception:
            return None
        return conn


async def main(config: dict[str, Any]) -> None:
    sem = asyncio.Semaphore(int(config.get("concurrency", 50)))
    opened = await asyncio.gather(*(open_one(url, sem) for url in config["urls"]))
    conns = [c for c in opened if c is not None]
    readers = [asyncio.create_task(reader(c)) for c in conns]
    print(f"ready {len(conns)} {len(opened) - len(conns)}", flush=True)
    await follow_commands(config["out"])
    for task in readers:
        task.cancel()
    print("done", flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as config_file:
        asyncio.run(main(json.load(config_file)))
