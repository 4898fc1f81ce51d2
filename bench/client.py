"""A load client process: opens many WebSockets with picows and counts what arrives.

Run by bench/run.py as `python -m bench.client CONFIG.json`; talks over stdin/stdout:

- prints `ready OPENED FAILED` once every socket has been tried;
- then prints `stat FRAMES CLOSED` every 0.5 s (frames received since start, sockets closed);
- reads `mark` (start of the measured window: counters and samples start afresh), `save` (write
  the results file, start afresh, print `saved`: one window of several on the same sockets) and
  `stop` (write the results file, print `done`, exit).

For every `new_comment` frame it keeps (comment id, time.time() on arrival), to be joined with the
commit times afterwards. It parses nothing else, so that the client costs little per frame. A URL
with `subscribe=TOPIC` (tracktalk's /api/ws, which ignores the parameter) subscribes to TOPIC
after `connected`, and counts as open once `subscribed` came.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

_COMMENT_ID = re.compile(rb'"type": ?"new_comment".*?\{"id": ?(\d+)')


class Stats:
    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.closed = 0
        self.ids = array("q")
        self.times = array("d")

    def reset(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.ids = array("q")
        self.times = array("d")


STATS = Stats()


def write_results(out: str) -> None:
    """The counters to `out` (JSON), the samples to `out`.ids and `out`.times (raw arrays)."""
    with open(out + ".ids", "wb") as f:
        STATS.ids.tofile(f)
    with open(out + ".times", "wb") as f:
        STATS.times.tofile(f)
    with open(out, "w") as f:
        json.dump({"frames": STATS.frames, "bytes": STATS.bytes, "closed": STATS.closed}, f)


class Listener(WSListener):  # type: ignore[misc]
    def __init__(self, subscribe: str | None = None) -> None:
        self.connected = asyncio.get_running_loop().create_future()
        self.subscribe = subscribe
        """/api/ws: the topic to subscribe to once `connected` came."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        pass

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.time()
        kind = frame.msg_type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY):
            data = frame.get_payload_as_bytes()
            if not self.connected.done():
                if self.subscribe is not None:  # `connected`: now the subscribe; `subscribed` next
                    message = json.dumps({"type": "subscribe", "topic": self.subscribe}).encode()
                    transport.send(WSMsgType.TEXT, message)
                    self.subscribe = None
                    return
                self.connected.set_result(True)
                return
            STATS.frames += 1
            STATS.bytes += len(data)
            if b"new_comment" in data:
                match = _COMMENT_ID.search(data)
                if match:
                    STATS.ids.append(int(match.group(1)))
                    STATS.times.append(now)
        elif kind == WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        STATS.closed += 1
        if not self.connected.done():
            self.connected.set_result(False)


async def open_one(url: str, sem: asyncio.Semaphore, first_frame: bool) -> WSTransport | None:
    topic = parse_qs(urlsplit(url).query).get("subscribe", [None])[0]
    async with sem:
        try:
            transport, listener = await ws_connect(
                lambda: Listener(topic), url, websocket_handshake_timeout=30
            )
        except Exception:
            return None
        if not first_frame:
            listener.connected.set_result(True)
            return transport
        try:
            ok = await asyncio.wait_for(listener.connected, 30)
        except TimeoutError:
            ok = False
        return transport if ok else None


async def obey(stat: Callable[[], str], handlers: dict[str, Callable[[], None]]) -> None:
    """A load client's loop over its orders: print `stat` + `stat()` every 0.5 s, and run the
    handler of each line read on stdin (an unknown one is ignored) until `stop` or stdin's end.
    bench/swarm.py speaks the same way."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    async def report() -> None:
        while True:
            print(f"stat {stat()}", flush=True)
            await asyncio.sleep(0.5)

    threading.Thread(target=read_stdin, daemon=True).start()
    reporter = asyncio.create_task(report())
    while (command := await commands.get()) != "stop":
        if (handler := handlers.get(command)) is not None:
            handler()
    reporter.cancel()


async def follow_commands(out: str) -> None:
    """Print the counts every 0.5 s and obey stdin (`mark` resets them, `save` writes the window's
    results and starts another, `stop` or its end stops); then write the results to `out`."""

    def save() -> None:
        write_results(out)
        STATS.reset()
        print("saved", flush=True)

    await obey(lambda: f"{STATS.frames} {STATS.closed}", {"mark": STATS.reset, "save": save})
    write_results(out)


async def main(config: dict[str, Any]) -> None:
    sem = asyncio.Semaphore(int(config.get("concurrency", 50)))
    # The first frame is `connected` for tracktalk (and for the baselines): wait for it, so that
    # "ready" means subscribed, and do not count it.
    opened = await asyncio.gather(*(open_one(url, sem, True) for url in config["urls"]))
    transports = [t for t in opened if t is not None]
    print(f"ready {len(transports)} {len(opened) - len(transports)}", flush=True)
    await follow_commands(config["out"])
    for transport in transports:
        transport.disconnect()
    print("done", flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as config_file:
        asyncio.run(main(json.load(config_file)))
