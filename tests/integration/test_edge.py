"""The replica's edge, reached directly by plain TCP and WebSocket clients (issue 23, items 5, 6, 9):
a deadline on each request, a cap on connections within the file limit, anonymous sockets per
client address (and whose X-Forwarded-For says who the client is), /metrics behind a bearer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.exceptions import InvalidStatus

from app.edge import upgrade
from app.edge.httpprotocol import HEALTH_ROOM, REQUEST_TIMEOUT
from tests.support.processes import ROOT, SECRET, Replica, free_port
from tests.support.seed import World, new_track
from tests.support.sockets import RECV_TIMEOUT, Socket, open_socket

METRICS_TOKEN = "scraper-token-0123456789abcdef"


CAP = 4
"""TRACKTALK_MAX_CONNECTIONS of the `small` replica."""


LOWERED_FILES = 4096
"""The soft file limit the replicas here are started with (they raise it to the hard one)."""


TOO_LONG = 30.0
"""What the issue asks: nothing half-sent stays open this long."""


@contextlib.contextmanager
def started(db_url: str, log_dir: Path, **env: str) -> Iterator[Replica]:
    """A replica started with its soft file limit lowered to LOWERED_FILES (when the hard one is
    higher); it inherits the limit of this process, lowered while it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, LOWERED_FILES)
    assert len(os.listdir("/proc/self/fd")) < lowered // 2, (
        "this process holds too many files to lower its limit"
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    replica = Replica(db_url, env=env)
    try:
        try:
            replica.start(log_dir)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="module")
def edge(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """Default limits; anonymous sockets on; /metrics behind a token."""
    with started(
        db_url, log_dir, TRACKTALK_ANONYMOUS_SOCKETS="1", TRACKTALK_METRICS_TOKEN=METRICS_TOKEN
    ) as replica:
        yield replica


@pytest.fixture(scope="module")
def small(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """At most CAP client connections."""
    with started(db_url, log_dir, TRACKTALK_MAX_CONNECTIONS=str(CAP)) as replica:
        yield replica


@pytest.fixture(scope="module")
def untrusting(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """Trusts the X-Forwarded-For of 10.9.9.9 only (not of 127.0.0.1, where the tests are); two
    anonymous sockets per address."""
    with started(
        db_url,
        log_dir,
        TRACKTALK_ANONYMOUS_SOCKETS="1",
        TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS="2",
        TRACKTALK_TRUSTED_PROXIES="10.9.9.9, 192.0.2.0/24",
    ) as replica:
        yield replica


class Client:
    """A plain TCP client; `ended` is when the server closed the connection, taken as it happens."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""
        self.ended: float | None = None

    @classmethod
    async def connect(cls, replica: Replica) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", replica.port))

    async def send(self, data: bytes) -> bool:
        """Send; False once the server has closed the connection."""
        if self.ended is not None:
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def read_until_closed(self, timeout: float) -> float:
        """Read until the server closes; when that was (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while self.ended is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open after {timeout:.0f} s; received {self.received[:200]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except ConnectionError:
                chunk = b""
            except TimeoutError:
                continue
            if not chunk:
                self.ended = time.monotonic()
            self.received += chunk
        return self.ended

    async def read_response(self, timeout: float = RECV_TIMEOUT) -> bytes:
        """One response with a Content-Length (the head and the body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        return head + await asyncio.wait_for(self.reader.readexactly(length), timeout)

    def close(self) -> None:
        self.writer.close()


async def _drip(client: Client, data: bytes, every: float = 0.5) -> None:
    """Send `data` a byte at a time, `every` seconds apart, until it is all sent or the server closes."""
    for byte in data:
        if not await client.send(bytes([byte])):
            return
        await asyncio.sleep(every)


async def test_a_request_must_arrive_whole_within_the_deadline(edge: Replica) -> None:
    """Nothing sent, half a request line, headers dripped a byte at a time, the next request on a
    kept-alive connection dripped: each is answered 408 and closed REQUEST_TIMEOUT s after the
    connection began to wait for it (uvicorn alone kept them open for good); a request that comes
    in two parts a second apart is served."""
    silent, half, drip, kept, split = [await Client.connect(edge) for _ in range(5)]
    began = {name: time.monotonic() for name in ("silent", "half", "drip")}
    await half.send(b"GET /api/tra")
    slow_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200 + b"\r\n\r\n"
    drips = [asyncio.create_task(_drip(drip, slow_head))]
    await kept.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in (await kept.read_response()).split(b"\r\n")[0]
    began["kept"] = time.monotonic()
    drips.append(asyncio.create_task(_drip(kept, slow_head)))
    await split.send(b"GET /healthz HTTP/1.1\r\n")
    await asyncio.sleep(1.0)  # the client's pace, not a wait for the server
    await split.send(b"Host: x\r\n\r\n")
    assert b" 200 " in (await split.read_response()).split(b"\r\n")[0]
    try:
        clients = {"silent": silent, "half": half, "drip": drip, "kept": kept}
        ended = await asyncio.gather(*(c.read_until_closed(TOO_LONG) for c in clients.values()))
        for (name, client), at in zip(clients.items(), ended, strict=True):
            waited = at - began[name]
            # the deadline, give or take the time the two processes take to see things happen
            assert REQUEST_TIMEOUT - 2 <= waited <= REQUEST_TIMEOUT + 5, (
                f"{name}: closed after {waited:.1f} s"
            )
            assert client.received.startswith(b"HTTP/1.1 408 "), f"{name}: {client.received[:200]!r}"
            assert b"send it at once" in client.received
    finally:
        for task in drips:
            task.cancel()
        for client in (silent, half, drip, kept, split):
            client.close()


def _log_line(replica: Replica) -> str:
    # The whole log (Replica.log() is its tail): the line is written at start, and other tests
    # of the module may have logged much since.
    assert replica.log_path is not None
    whole = replica.log_path.read_text(errors="replace")
    found = re.search(r"file limit (\d+): up to (\d+) client connections.*", whole)
    assert found, f"no file-limit line in the replica's log:\n{whole[:4000]}"
    return found.group(0)


def _soft_file_limit(replica: Replica) -> int:
    assert replica.process is not None
    limits = Path(f"/proc/{replica.process.pid}/limits").read_text()
    found = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
    assert found, limits
    return int(found.group(1))


def test_a_replica_raises_its_file_limit_and_says_how_many_connections_it_takes(
    edge: Replica, small: Replica
) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > LOWERED_FILES, "the hard file limit here is too low to show the raise"
    for replica in (edge, small):
        assert _soft_file_limit(replica) == hard  # started with LOWERED_FILES
    assert re.fullmatch(
        rf"file limit {hard}: up to \d+ client connections \(requests and sockets\)", _log_line(edge)
    )
    allowed = int(re.findall(r"\d+", _log_line(edge))[1])
    assert hard - 200 < allowed < hard  # the rest: the pool, the other files, the room for /healthz
    assert _log_line(small).endswith(
        f"up to {CAP} client connections (requests and sockets) (TRACKTALK_MAX_CONNECTIONS)"
    )


async def _status(replica: Replica, path: str) -> httpx.Response:
    """One request on a connection of its own."""
    async with httpx.AsyncClient(base_url=replica.http, timeout=RECV_TIMEOUT) as client:
        return await client.get(path)


async def test_the_connection_past_the_cap_gets_503_and_the_others_are_unharmed(
    small: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        held: list[Socket] = []
        for name in ("alice", "bob", "carol", "dave"):
            sock = await stack.enter_async_context(open_socket(small.ws, track, world.tokens[name]))
            await sock.expect("connected")
            held.append(sock)
        # a request: 503, with a detail; /healthz is still answered (a full replica is alive)
        refused = await _status(small, f"/api/tracks/{track}/comments")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "holds as many connections as it may" in refused.json()["detail"]
        assert (await _status(small, "/healthz")).status_code == 200
        # a socket: its handshake gets 503
        with pytest.raises(InvalidStatus) as caught:
            async with open_socket(small.ws, track, world.tokens["tina"]):
                pass
        assert caught.value.response.status_code == 503
        # past the room kept for /healthz, 503 comes at once, before the client says anything
        idle = [await Client.connect(small) for _ in range(HEALTH_ROOM)]
        late = await Client.connect(small)
        try:
            await late.read_until_closed(RECV_TIMEOUT)
            assert late.received.startswith(b"HTTP/1.1 503 "), late.received[:200]
        finally:
            for client in (*idle, late):
                client.close()
        # the sockets let in are unharmed: they get the track's events
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'still here?', 1)",
                (track, world.users["alice"]),
            )
        for sock in held:
            assert (await sock.expect("new_comment"))["comment"]["content"] == "still here?"
        # one leaves: there is room again
        await held.pop().close()
        deadline = time.monotonic() + RECV_TIMEOUT
        while (answer := await _status(small, f"/api/tracks/{track}/comments")).status_code == 503:
            assert time.monotonic() < deadline, "no room after a socket left"
            await asyncio.sleep(0.05)
        assert answer.status_code == 200


@contextlib.asynccontextmanager
async def anonymous(replica: Replica, track: str, forwarded_for: str | None = None) -> AsyncIterator[Socket]:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    async with open_socket(replica.ws, track, None, additional_headers=headers) as sock:
        yield sock


async def _hold(
    stack: contextlib.AsyncExitStack, replica: Replica, track: str, count: int, **kw: Any
) -> list[Socket]:
    socks = [await stack.enter_async_context(anonymous(replica, track, **kw)) for _ in range(count)]
    for sock in socks:
        await sock.expect("connected")
    return socks


async def _refused(replica: Replica, track: str, forwarded_for: str | None = None) -> str | None:
    """The reason an anonymous socket is refused with (1008)."""
    async with anonymous(replica, track, forwarded_for) as sock:
        try:
            code, reason = await sock.closed()
        except TimeoutError:
            raise AssertionError(f"admitted: {sock.received[:2]}") from None
    assert code == 1008, (code, reason)
    return reason


async def _admitted(replica: Replica, track: str, forwarded_for: str | None = None) -> None:
    async with anonymous(replica, track, forwarded_for) as sock:
        await sock.expect("connected")


async def _listening(sock: Socket, count: int) -> None:
    """Read (a socket opened with presence=True) until its track's count is `count`."""
    deadline = time.monotonic() + RECV_TIMEOUT
    while not sock.presence or sock.presence[-1]["listening"] != count:
        left = deadline - time.monotonic()
        assert left > 0, f"listening never became {count}: {sock.presence[-3:]}"
        with contextlib.suppress(TimeoutError):
            await sock.recv(left)


async def test_the_eleventh_anonymous_socket_of_an_address_is_refused_and_not_counted(
    edge: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(
            open_socket(edge.ws, track, world.tokens["alice"], presence=True)
        )
        await watcher.expect("connected", ignore=("presence",))
        ten = await _hold(stack, edge, track, 10)
        await _listening(watcher, 11)
        reason = await _refused(edge, track)
        assert reason == "too many anonymous sockets from your address: at most 10; sign in, or close one"
        # a socket with a token, from the same address, is another matter
        bob = await stack.enter_async_context(open_socket(edge.ws, track, world.tokens["bob"]))
        await bob.expect("connected")
        await _listening(watcher, 12)
        assert max(m["listening"] for m in watcher.presence) == 12  # the refused one never counted
        # one leaves: another may come
        await ten[0].close()
        await _admitted(edge, track)


async def test_a_trusted_proxys_forwarded_for_tells_clients_apart(edge: Replica, db_url: str) -> None:
    """127.0.0.1, where the tests are, is trusted by default: the client is the right-most address
    of X-Forwarded-For that is not a trusted proxy's (what the proxy appended), IPv6 by its /64."""
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        await _hold(stack, edge, track, 10, forwarded_for="203.0.113.7")
        assert await _refused(edge, track, "203.0.113.7")
        # what the client wrote itself comes first; the proxy appends what it saw
        assert await _refused(edge, track, "198.51.100.1, 203.0.113.7")
        assert await _refused(edge, track, "203.0.113.7, 127.0.0.1")  # through a second, trusted proxy
        await _admitted(edge, track, "203.0.113.8")
        await _admitted(edge, track)  # 127.0.0.1 itself
        await _hold(stack, edge, track, 10, forwarded_for="2001:db8:1:2::1")
        assert await _refused(edge, track, "2001:db8:1:2:ffff::9")  # the same /64
        await _admitted(edge, track, "2001:db8:1:3::1")


async def test_an_untrusted_peers_forwarded_for_is_ignored(untrusting: Replica, db_url: str) -> None:
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        await _hold(stack, untrusting, track, 1, forwarded_for="203.0.113.1")
        await _hold(stack, untrusting, track, 1, forwarded_for="203.0.113.2")
        assert await _refused(untrusting, track, "203.0.113.3") == (
            "too many anonymous sockets from your address: at most 2; sign in, or close one"
        )


SERVE_WITH_LOWERED_FILES = (
    "import resource, runpy, sys;"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LOWERED_FILES}, {LOWERED_FILES}));"
    "sys.argv = ['tracktalk', *sys.argv[1:]];"
    "runpy.run_module('app', run_name='__main__')"
)
"""`python -m app` with a file limit of LOWERED_FILES, soft and hard."""


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("TRACKTALK_TRUSTED_PROXIES", "10.0.0.300", "TRACKTALK_TRUSTED_PROXIES='10.0.0.300'"),
        ("TRACKTALK_TRUSTED_PROXIES", "10.0.0.1/8", "TRACKTALK_TRUSTED_PROXIES='10.0.0.1/8'"),
        ("TRACKTALK_TRUSTED_PROXIES", "127.0.0.1,proxy.internal", "'proxy.internal' is not an IP address"),
        ("TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS", "ten", "TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS='ten'"),
        ("TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS", "-1", "TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS='-1'"),
        ("TRACKTALK_MAX_CONNECTIONS", "lots", "TRACKTALK_MAX_CONNECTIONS='lots'"),
        ("TRACKTALK_MAX_CONNECTIONS", "100000000", "TRACKTALK_MAX_CONNECTIONS='100000000'"),
        # started with a file limit of 4096 (below)
        (
            "TRACKTALK_MAX_CONNECTIONS",
            "5000",
            "TRACKTALK_MAX_CONNECTIONS=5000 is more than the file limit (ulimit -n 4096)",
        ),
        ("TRACKTALK_METRICS_TOKEN", "short", "TRACKTALK_METRICS_TOKEN must be at least 16"),
        ("FORWARDED_ALLOW_IPS", "*", "set that instead, and unset FORWARDED_ALLOW_IPS"),
    ],
)
def test_a_bad_edge_setting_fails_at_start_naming_the_variable(
    db_url: str, name: str, value: str, says: str
) -> None:
    env = {**os.environ, "DATABASE_URL": db_url, "TRACKTALK_SECRET": SECRET, name: value}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_WITH_LOWERED_FILES, "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"{name}={value!r}: the server started all the same") from None
    assert process.returncode == 2, stderr[-2000:]
    assert says in stderr, stderr[-2000:]


async def test_metrics_answer_only_the_scraper_with_the_token(edge: Replica) -> None:
    async with httpx.AsyncClient(base_url=edge.http, timeout=RECV_TIMEOUT) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-0123456789abcdef"},
            {"Authorization": f"Basic {METRICS_TOKEN}"},
            {"Authorization": f"Bearer {METRICS_TOKEN}x"},
        ):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert (
                refused.json()["detail"] == "/metrics needs `Authorization: Bearer <TRACKTALK_METRICS_TOKEN>`"
            )
            assert refused.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert "tracktalk_" not in refused.text
        answer = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert answer.status_code == 200
        assert "tracktalk_open_sockets" in answer.text
        assert (await client.get("/healthz")).status_code == 200  # the probes need no token
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("way", ["read once", "the long way"])
async def test_a_handshake_read_once_or_the_long_way_opens_a_socket_on_the_replicas_loop(
    edge: Replica, world: World, db_url: str, way: str
) -> None:
    """A plain handshake is read once (app/edge/upgrade.py); one it does not recognise at once (here
    a header's value beyond ASCII, which h11 takes) goes the long way, h11 then wsproto. Both must
    open the socket on the replica's own loop (uvloop): the 101, then `connected`."""
    track = new_track(db_url)
    extra = "X-Client: caf\u00e9\r\n" if way == "the long way" else ""
    raw = (
        f"GET /api/ws/track/{track}?token={world.tokens['alice']} HTTP/1.1\r\nHost: x\r\n{extra}"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    assert (upgrade.parse(raw) is None) == (way == "the long way")
    client = await Client.connect(edge)
    try:
        assert await client.send(raw)
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        first = await asyncio.wait_for(client.reader.readexactly(2), RECV_TIMEOUT)
        assert first[0] == 0x81  # a text frame, unmasked
        length = first[1]
        if length == 126:
            length = int.from_bytes(await asyncio.wait_for(client.reader.readexactly(2), RECV_TIMEOUT))
        body = await asyncio.wait_for(client.reader.readexactly(length), RECV_TIMEOUT)
        assert b'"type":"connected"' in body
    finally:
        client.close()
