"""A swarm client process for bench/scale.py: thousands of track sockets that check every seq.

Run as `python -m bench.swarm CONFIG.json`. Lean on purpose (picows, a small read buffer, one
regex per frame): at 100,000 sockets on two cores the load driver must cost less than the servers.

Each socket is on one track and starts on its `home` replica. It keeps the last seq and tag it got
and checks every event it gets: the next seq of its track, never one twice, never one skipped. When
its connection ends (the replica was killed), it opens again at once on the next replica of the list
with `since=<last seq>&tag=<its tag>`, as the protocol asks a client to do, and goes on checking:
"nothing lost" is each socket's own count of gaps, repeats and resyncs, and its last seq against the
track's in the database at the end.

Talks over stdin/stdout with bench/scale.py:
- prints `ready OPENED FAILED SECONDS` once every socket has been tried;
- prints `stat FRAMES OPEN REOPENED GAPS REPEATS RESYNCS` every 0.5 s;
- `mark`: start the measured window (the `new_comment` arrival times are kept from then on);
- `stop`: write the results (`out`: counts, each replica's reopen times, each socket's track and
  last seq; `out.ids` / `out.times`: comment id and arrival time), print `done`, exit.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket
import sys
import time
from array import array
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.client import obey

_TYPE = re.compile(rb'"type": ?"(\w+)"')
_SEQ = re.compile(rb'"seq": ?(\d+)')
_TAG = re.compile(rb'"tag": ?"([0-9a-f]+)"')
_COMMENT_ID = re.compile(rb'\{"id": ?(\d+)')
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
"""Linux's option (since 4.2; Python names it from 3.12 on)."""


class Swarm:
    def __init__(self, config: dict[str, Any]) -> None:
        self.servers: list[str] = config["servers"]
        """Each replica's `ws://host:port`."""
        self.local_addrs: list[str] = config.get("local_addrs", [])
        """Its loopback source addresses, taken in turn (none: the kernel's choice)."""
        self._next_addr = itertools.cycle(self.local_addrs)
        self.tokens: list[str] = config["tokens"]
        self.sem = asyncio.Semaphore(int(config.get("concurrency", 200)))
        self.frames = 0
        self.n_open = 0
        self.reopened = 0
        self.gaps = 0
        self.repeats = 0
        self.resyncs = 0
        self.failed_reopens = 0
        self.marked = False
        self.stopping = False
        self.ids = array("q")
        self.times = array("d")
        self.reopen_times: dict[int, list[float]] = {}
        """replica index -> time.time() of each reopened socket's `connected`."""
        self.sockets: list[Sock] = []
        self.tasks: set[asyncio.Task[None]] = set()
        """The reopens in flight (a task nobody holds may be collected before it ends)."""

    def url(self, sock: Sock) -> str:
        base = f"{self.servers[sock.server]}/api/ws/track/{sock.track}?token={sock.token}"
        if sock.last is None:
            return base
        tag = f"&tag={sock.tag}" if sock.tag else ""
        return f"{base}&since={sock.last}{tag}"

    async def open(self, sock: Sock, first: bool) -> bool:
        """Open `sock` on its replica; on a reopen, try the next replicas in turn until one takes it."""
        tries = 1 if first else len(self.servers) * 3
        for attempt in range(tries):
            async with self.sem:
                try:
                    kwargs: dict[str, Any] = {}
                    if self.local_addrs:
                        kwargs["socket_factory"] = self.bound
                    # Before the connect: `connected` comes in the handshake's own TCP write.
                    connected = sock.waiter()
                    await ws_connect(
                        lambda: sock,
                        self.url(sock),
                        websocket_handshake_timeout=60,
                        read_buffer_init_size=2048,
                        **kwargs,
                    )
                    ok = await asyncio.wait_for(connected, 60)
                except Exception:
                    ok = False
            if ok:
                return True
            if first:
                return False
            sock.server = (sock.server + 1) % len(self.servers)
            await asyncio.sleep(random.uniform(0, 0.05 * (attempt + 1)))
        self.failed_reopens += 1
        return False

    def bound(self, _url: Any) -> socket.socket:
        """A socket on the next of this swarm's source addresses, its port left to the connect.

        Bound with a port of 0, the kernel picks the port at `bind()`, searching the address's
        ports in use for one free for any destination: with 16,000 sockets on the address that
        search was a third of a storm's client CPU. IP_BIND_ADDRESS_NO_PORT defers the choice to
        `connect()`, which needs only the 4-tuple to be unique; its search is then over the ports
        the address already uses towards that one replica, which several addresses keep short."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((next(self._next_addr), 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def open_again(self, sock: Sock) -> None:
        await self.open(sock, first=False)


class Sock(WSListener):  # type: ignore[misc]
    __slots__ = ("_connected", "last", "reopening", "server", "swarm", "tag", "token", "track")

    def __init__(self, swarm: Swarm, track: str, token: str, server: int) -> None:
        self.swarm = swarm
        self.track = track
        self.token = token
        self.server = server
        self.last: int | None = None
        self.tag: str | None = None
        self._connected: asyncio.Future[bool] | None = None
        self.reopening = False

    def waiter(self) -> asyncio.Future[bool]:
        self._connected = asyncio.get_running_loop().create_future()
        return self._connected

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        swarm = self.swarm
        data = frame.get_payload_as_bytes()
        kind = _TYPE.search(data)
        seq = _SEQ.search(data)
        if kind is None or seq is None:
            return  # presence and the like: no seq
        name = kind.group(1)
        n = int(seq.group(1))
        if name == b"connected":
            if self.last is None:
                self.last = n
                tag = _TAG.search(data)
                self.tag = tag.group(1).decode() if tag else None
            swarm.n_open += 1
            if self.reopening:
                self.reopening = False
                swarm.reopened += 1
                swarm.reopen_times.setdefault(self.server, []).append(time.time())
            if self._connected is not None and not self._connected.done():
                self._connected.set_result(True)
            return
        if name == b"resync":
            swarm.resyncs += 1
            self.last = n
            tag = _TAG.search(data)
            self.tag = tag.group(1).decode() if tag else None
            return
        swarm.frames += 1
        assert self.last is not None
        if n <= self.last:
            swarm.repeats += 1
            return
        if n != self.last + 1:
            swarm.gaps += n - self.last - 1
        self.last = n
        tag = _TAG.search(data)
        self.tag = tag.group(1).decode() if tag else None
        if name == b"new_comment" and swarm.marked:
            match = _COMMENT_ID.search(data)
            if match:
                swarm.ids.append(int(match.group(1)))
                swarm.times.append(time.time())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        swarm = self.swarm
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(False)
            return
        swarm.n_open -= 1
        if swarm.stopping:
            return
        self.reopening = True
        # As behind a load balancer: any other replica (this one is gone).
        others = len(swarm.servers) - 1
        self.server = (self.server + random.randint(1, others)) % len(swarm.servers) if others else 0
        task = asyncio.get_running_loop().create_task(swarm.open_again(self))
        swarm.tasks.add(task)
        task.add_done_callback(swarm.tasks.discard)


async def follow(swarm: Swarm, out: str) -> None:
    """Obey the bench (bench/client.py's `obey`): `mark` starts the measured window; then, at
    `stop`, write the results to `out`."""

    def mark() -> None:
        swarm.marked = True
        swarm.ids = array("q")
        swarm.times = array("d")

    await obey(
        lambda: (
            f"{swarm.frames} {swarm.n_open} {swarm.reopened} {swarm.gaps} {swarm.repeats} {swarm.resyncs}"
        ),
        {"mark": mark},
    )
    swarm.stopping = True
    write_results(swarm, out)


def write_results(swarm: Swarm, out: str) -> None:
    with open(out + ".ids", "wb") as f:
        swarm.ids.tofile(f)
    with open(out + ".times", "wb") as f:
        swarm.times.tofile(f)
    with open(out, "w") as f:
        json.dump(
            {
                "frames": swarm.frames,
                "open": swarm.n_open,
                "reopened": swarm.reopened,
                "failed_reopens": swarm.failed_reopens,
                "gaps": swarm.gaps,
                "repeats": swarm.repeats,
                "resyncs": swarm.resyncs,
                "reopen_times": {str(k): v for k, v in swarm.reopen_times.items()},
                "last": [[s.track, s.last] for s in swarm.sockets],
            },
            f,
        )


async def main(config: dict[str, Any]) -> None:
    swarm = Swarm(config)
    for i, (track, home) in enumerate(config["sockets"]):
        swarm.sockets.append(Sock(swarm, track, swarm.tokens[i % len(swarm.tokens)], home))
    start = time.monotonic()
    results = await asyncio.gather(*(swarm.open(s, first=True) for s in swarm.sockets))
    opened = sum(results)
    print(f"ready {opened} {len(results) - opened} {time.monotonic() - start:.3f}", flush=True)
    await follow(swarm, config["out"])
    print("done", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    with open(sys.argv[1]) as config_file:
        asyncio.run(main(json.load(config_file)))
