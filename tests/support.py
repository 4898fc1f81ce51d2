"""Test helpers: server processes (replicas, nginx), WebSocket clients, seed data, the browser.
Every wait has a deadline."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame

from app.auth.hs256 import issue_token
from app.wire import server_message_decoder

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-0123456789-abcdefghijklmnop"
START_TIMEOUT = 30.0
RECV_TIMEOUT = 10.0
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A `${NAME}` of deploy/nginx.conf, filled as the nginx image's envsubst does."""
CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, driven through Playwright (never a downloaded browser)."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    """A TCP port nobody listens on right now (another process may take it before it is bound:
    a server started on it must check that it got it, as Replica.start does)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(Exception):
    """A server could not bind its port: another process had it."""


def listens_on(pid: int, port: int) -> bool:
    """The process `pid` itself listens on 127.0.0.1:`port` (and not some other process that took
    the port first: its answers would pass for those of the server under test)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    with contextlib.suppress(OSError):  # the process may be gone, or an fd closed as it is read
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    wanted = f"0100007F:{port:04X}"  # 127.0.0.1 as /proc/net/tcp writes it
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return True
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll an async or sync `check` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a /metrics page (Prometheus' text format), by name with any labels as
    written: `tracktalk_open_sockets`, `python_gc_collections_total{generation="2"}`."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def metrics(server: LocalServer) -> dict[str, float]:
    """Every sample of the server's /metrics (see parse_metrics)."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{server.http}/metrics")
    assert answer.status_code == 200, f"/metrics answered {answer.status_code}: {answer.text[:500]}"
    return parse_metrics(answer.text)


async def metric(server: LocalServer, name: str) -> float:
    """One sample of the server's /metrics: `name` as parse_metrics keys it."""
    values = await metrics(server)
    assert name in values, f"no {name} in /metrics: {sorted(values)}"
    return values[name]


def rss_kib(pid: int) -> int:
    """The resident memory of a process now (VmRSS), in KiB."""
    return _status_kib(pid, "VmRSS")


def reset_peak_rss(pid: int) -> int:
    """Start the process's peak resident memory (VmHWM) afresh from now; its RSS now, in KiB.

    The kernel keeps the peak at every page the process touches: read with peak_rss_kib, it is
    the true highest, where sampling RSS from outside would miss what lasts less than a sample."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (proc(5))
    return rss_kib(pid)


def peak_rss_kib(pid: int) -> int:
    """The highest resident memory of the process (VmHWM) since reset_peak_rss, in KiB."""
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


class LocalServer:
    """Base URLs of a server listening on 127.0.0.1:`port`."""

    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class Replica(LocalServer):
    """A `tracktalk serve` process over a database."""

    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, log_dir: Path, tries: int = 5) -> Replica:
        """Start it and wait until it is ready; on a port another process took meanwhile (free_port
        only found it free), again on another port."""
        for _ in range(tries - 1):
            try:
                return self._start(log_dir)
            except PortTaken:
                self.port = free_port()
        return self._start(log_dir)

    def _start(self, log_dir: Path) -> Replica:
        self.log_path = log_dir / f"replica-{self.port}.log"
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "TRACKTALK_SECRET": SECRET,
            # No limits: tests post and write fast; tests/test_security.py checks the limits.
            "TRACKTALK_COMMENTS_PER_MINUTE": "0",
            "TRACKTALK_WRITES_PER_MINUTE": "0",
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.http}/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until it answers /readyz on its port, and it is the one listening there; PortTaken
        if it exited because another process had the port."""

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                if "address already in use" in self.log():
                    raise PortTaken(self.port)
                raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.log()}")
            return self.ready() and listens_on(self.process.pid, self.port)

        wait_until(up, timeout, f"replica on port {self.port} to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    @property
    def pid(self) -> int:
        assert self.process is not None, "the replica was not started"
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"replica did not stop within {timeout}s:\n{self.log()}") from None


@contextlib.contextmanager
def replicas(database_url: str, log_dir: Path, count: int = 1, **env: str) -> Iterator[list[Replica]]:
    """`count` replicas over one database, stopped at the end."""
    started: list[Replica] = []
    try:
        for _ in range(count):
            started.append(Replica(database_url, env=dict(env)).start(log_dir))
        yield started
    finally:
        for replica in started:
            with contextlib.suppress(AssertionError):
                replica.stop()


class StampedConnection(ClientConnection):
    """A client connection that notes when each message arrives (time.monotonic()), as its
    frame is read off the socket, whenever the test gets to read the message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: collections.deque[float] = collections.deque()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES and event.fin:
            self.arrivals.append(time.monotonic())
        super().process_event(event)


class Socket:
    """A WebSocket client that decodes (and so checks) every server frame.

    `presence` frames come on their own schedule (on connect, and as others come and go): they
    are kept in `presence` and skipped by `recv`, unless the socket was opened with presence=True.
    Times are those of arrival (StampedConnection), not of the test's reading: a test that reads
    late does not make the server's gaps look shorter.
    """

    def __init__(self, conn: StampedConnection, presence: bool = False) -> None:
        self.conn = conn
        self.received: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        """Every `presence` message, in order ..."""
        self.presence_at: list[float] = []
        """... and when each arrived (time.monotonic())."""
        self.arrived_at = 0.0
        """When the message `recv` last returned arrived (time.monotonic())."""
        self._with_presence = presence

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.conn.recv(), max(0.01, deadline - time.monotonic()))
            arrived = self.conn.arrivals.popleft()
            assert isinstance(raw, str), f"expected a text frame, got {raw!r:.80}"
            server_message_decoder.decode(raw)  # every frame must match the wire types
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "presence":
                self.presence.append(message)
                self.presence_at.append(arrived)
                if not self._with_presence:
                    continue
            self.received.append(message)
            self.arrived_at = arrived
            return message

    async def expect(
        self, kind: str, timeout: float = RECV_TIMEOUT, ignore: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The next message of type `kind`, failing on any other type not in `ignore`."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == kind:
                return message
            assert message["type"] in ignore, f"expected {kind}, got {message}"

    async def events(
        self, count: int, timeout: float = RECV_TIMEOUT, resync: bool = False
    ) -> list[dict[str, Any]]:
        """The next `count` durable events (messages with a seq), skipping ephemeral ones; a
        `resync` fails the test unless `resync` says one may come (it is then skipped too)."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while len(got) < count:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == "resync":
                assert resync, f"an unexpected resync after {len(got)} of {count} events: {message}"
            elif "seq" in message and message["type"] != "connected":
                got.append(message)
        return got

    async def closed(self, timeout: float = RECV_TIMEOUT) -> tuple[int | None, str | None]:
        """Wait for the server to close; (code, reason). Messages before the close are kept (and
        checked: a malformed frame fails the test)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() < deadline:
                await self.recv(max(0.01, deadline - time.monotonic()))
        await asyncio.wait_for(self.conn.wait_closed(), max(0.01, deadline - time.monotonic()))
        return self.conn.close_code, self.conn.close_reason

    async def send(self, message: Any) -> None:
        await self.conn.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def close(self) -> None:
        await self.conn.close()


@contextlib.asynccontextmanager
async def open_socket(  # type: ignore[no-untyped-def]
    base: str,
    track_id: str,
    token: str | None,
    since: int | None = None,
    rcvbuf: int | None = None,
    presence: bool = False,
    **kw: Any,
):
    """A socket on a track (not yet past `connected`: call expect('connected')).

    `rcvbuf` fixes the client's TCP receive buffer (no autotuning), for a client that reads slowly;
    `presence`: `recv` returns the `presence` messages too.
    """
    if rcvbuf is not None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        host, port = base.removeprefix("ws://").split(":")
        sock.connect((host, int(port)))
        kw["sock"] = sock
    query = []
    if token is not None:
        query.append(f"token={token}")
    if since is not None:
        query.append(f"since={since}")
    url = f"{base}/api/ws/track/{track_id}" + ("?" + "&".join(query) if query else "")
    async with connect(
        url,
        open_timeout=RECV_TIMEOUT,
        close_timeout=2,
        max_size=2**22,
        create_connection=StampedConnection,
        **kw,
    ) as conn:
        assert isinstance(conn, StampedConnection)
        yield Socket(conn, presence)


@dataclass(frozen=True)
class World:
    """Seed data: users by name, their tokens, tracks."""

    users: dict[str, int]
    tokens: dict[str, str]
    public: str = "t-public"
    other: str = "t-other"
    private: str = "t-private"
    timed: str = "t-timed"

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def seed(database_url: str) -> World:
    """carol (creator of the album), tina (team), alice, bob, dave; four tracks."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        users = {}
        for name, creator, team in [
            ("carol", True, False),
            ("tina", False, True),
            ("alice", False, False),
            ("bob", False, False),
            ("dave", False, False),
        ]:
            row = conn.execute(
                "INSERT INTO users (username, is_creator, is_team) VALUES (%s, %s, %s) RETURNING id",
                (name, creator, team),
            ).fetchone()
            assert row is not None
            users[name] = int(row[0])
        album = conn.execute(
            "INSERT INTO albums (title, created_by_id) VALUES ('Album', %s) RETURNING id", (users["carol"],)
        ).fetchone()
        assert album is not None
        conn.execute(
            """
            INSERT INTO tracks (id, album_id, title, duration_seconds, is_private) VALUES
              ('t-public', %(a)s, 'Public', NULL, false),
              ('t-other', %(a)s, 'Other', NULL, false),
              ('t-private', %(a)s, 'Private', 100, true),
              ('t-timed', %(a)s, 'Timed', 60, false)
            """,
            {"a": album[0]},
        )
    tokens = {name: issue_token(SECRET, uid, 3600) for name, uid in users.items()}
    return World(users=users, tokens=tokens)


def new_track(db_url: str, private: bool = False, track_id: str | None = None) -> str:
    """A track on the seed album (carol's), public unless `private`: a fresh one, or `track_id`
    (a deleted track made again). Its id."""
    track_id = track_id or f"t-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tracks (id, album_id, title, is_private)"
            " SELECT %s, id, 'New', %s FROM albums ORDER BY id LIMIT 1",
            (track_id, private),
        )
    return track_id


class TcpProxy:
    """A real TCP forwarder that a test can cut and restore: a network outage on demand."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or 0
        """Its own port: the one given, or the one the system gives at its first start."""
        self._server: socketserver.ThreadingTCPServer | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._forward(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]  # the same again after a cut
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def cut(self) -> None:
        """Stop accepting and drop every open connection."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        pipe = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pipe.start()
        _pump(client, upstream)
        pipe.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


# --- Debian's servers: nginx in front of replicas ---------------------------------------


def render(template: str, values: dict[str, str]) -> str:
    """Fill `${NAME}` as the nginx image's envsubst does; every placeholder must have a value."""
    missing = set(PLACEHOLDER.findall(template)) - set(values)
    assert not missing, f"no value for {sorted(missing)}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def debian_binary(name: str) -> str:
    """The path of Debian's `name` (in /usr/sbin, which root's PATH may lack); fails when missing."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (make test does it)")
    return found


def launch(args: list[str], port: int, log: Callable[[], str]) -> subprocess.Popen[bytes]:
    """Start a server in the foreground and wait until it listens on `port` (its `log` on failure)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = Path(args[0]).name

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log()}")
        return port_open(port)

    wait_until(up, 15, f"{name} to listen")
    return process


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Nginx(LocalServer):
    """Debian's nginx in the foreground, with deploy/nginx.conf in front of `upstreams`."""

    def __init__(self, upstreams: list[int]) -> None:
        self.port = free_port()
        # A prefix the workers (nobody, when we are root) can enter: pytest's folders are private.
        self.prefix = Path(tempfile.mkdtemp(prefix="tracktalk-nginx-"))
        self.prefix.chmod(0o755)
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        site = render(
            NGINX_TEMPLATE.read_text(),
            {
                "TRACKTALK_LISTEN": f"127.0.0.1:{self.port}",
                "TRACKTALK_REPLICA_1": f"127.0.0.1:{upstreams[0]}",
                "TRACKTALK_REPLICA_2": f"127.0.0.1:{upstreams[1]}",
                "TRACKTALK_ACCESS_LOG": str(self.access_log),
            },
        )
        (self.prefix / "tracktalk.conf").write_text(site)
        user = ""
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
        # The only part that is not deploy/nginx.conf: what the nginx image's own nginx.conf does.
        temp = " ".join(
            f"{kind}_temp_path {self.prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.prefix / "nginx.conf").write_text(
            f"""
            {user}
            worker_processes 1;
            events {{ worker_connections 256; }}
            http {{
                {temp}
                include {self.prefix}/tracktalk.conf;
            }}
            """
        )
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.error_log.read_text(errors="replace")[-3000:] if self.error_log.exists() else ""

    def start(self) -> Nginx:
        nginx = debian_binary("nginx")
        conf = str(self.prefix / "nginx.conf")
        check = subprocess.run(
            [nginx, "-t", "-q", "-p", str(self.prefix), "-e", str(self.error_log), "-c", conf],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, f"nginx -t refused the config:\n{check.stderr}{self.log()}"
        self.process = launch(
            [
                nginx,
                *("-p", str(self.prefix), "-e", str(self.error_log), "-c", conf),
                *("-g", f"daemon off; pid {self.prefix / 'nginx.pid'};"),
            ],
            self.port,
            self.log,
        )
        return self

    def stop(self) -> int | None:
        """Graceful stop (SIGQUIT: finish what is in flight); the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGQUIT)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"nginx did not stop within 15 s:\n{self.log()}") from None

    def upstreams(self) -> list[str]:
        """The replica (host:port) of each logged request, in order."""
        if not self.access_log.exists():
            return []
        return [line.split(" ", 1)[0] for line in self.access_log.read_text().splitlines()]

    def cleanup(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
