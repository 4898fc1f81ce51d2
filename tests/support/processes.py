"""Real processes: replicas (`tracktalk serve`), ports, what a process holds in memory. The replicas
and `tracktalk` commands die with the run that started them (children.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.children import popen
from tests.support.reaper import guard
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


SECRET = "test-secret-0123456789-abcdefghijklmnop"


START_TIMEOUT = 30.0


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
    serve_args: tuple[str, ...] = ()
    """More options of `tracktalk serve` (e.g. `--reuse-port`)."""
    ready_to_start: bool = True
    """start() waits for /readyz to answer 200; False: for it to answer at all (a replica that
    starts not ready, which is what the test looks at)."""

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
        self.log_path = log_dir / f"replica-{self.port}-{time.monotonic_ns()}.log"
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "TRACKTALK_SECRET": SECRET,
            # No limits: tests post and write fast; tests/integration/test_security.py checks the limits.
            "TRACKTALK_COMMENTS_PER_MINUTE": "0",
            "TRACKTALK_WRITES_PER_MINUTE": "0",
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = popen(
                [sys.executable, "-m", "app", "serve", "--port", str(self.port), *self.serve_args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def ready(self) -> bool:
        return self._readyz() == 200

    def _readyz(self) -> int | None:
        try:
            return httpx.get(f"{self.http}/readyz", timeout=1.0).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until it answers /readyz on its port, and it is the one listening there; PortTaken
        if it exited because another process had the port."""

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                if "address already in use" in self.log():
                    raise PortTaken(self.port)
                raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.log()}")
            answered = self._readyz() in ((200,) if self.ready_to_start else (200, 503))
            return answered and listens_on(self.process.pid, self.port)

        wait_until(up, timeout, f"replica on port {self.port} to be ready")

    def log(self) -> str:
        """The end of its log, for a failure's message."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""

    def logged(self, text: str) -> bool:
        """Whether its log says `text`, anywhere: log()'s last 4000 characters are about 65 lines
        of uvicorn's access log, 1.3 s of a wait that polls /readyz every 20 ms."""
        return self.log_path is not None and text in self.log_path.read_text(errors="replace")

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
def replicas(
    database_url: str, log_dir: Path, count: int = 1, *, ready: bool = True, **env: str
) -> Iterator[list[Replica]]:
    """`count` replicas over one database, stopped at the end; `ready`: started once ready (else
    once /readyz answers, 503 or not)."""
    started: list[Replica] = []
    try:
        for _ in range(count):
            started.append(Replica(database_url, env=dict(env), ready_to_start=ready).start(log_dir))
        yield started
    finally:
        for replica in started:
            with contextlib.suppress(AssertionError):
                replica.stop()


def debian_binary(name: str) -> str:
    """The path of Debian's `name` (in /usr/sbin, which root's PATH may lack); fails when missing."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (make test does it)")
    return found


def launch(
    args: list[str], port: int, log: Callable[[], str], home: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in the foreground and wait until it listens on `port` (its `log` on failure).
    It leads a process group of its own, killed with its folder `home` when this process ends
    without stopping it (tests/support/reaper.py; release() it once stopped)."""
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    guard(process, home)
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


def tracktalk(*args: str, database_url: str, **more: str) -> subprocess.CompletedProcess[str]:
    """The `tracktalk` command, as a DBA runs it against `database_url` (and `more` variables);
    killed past 60 s, or when this process ends first."""
    env = {**os.environ, "DATABASE_URL": database_url, "TRACKTALK_SECRET": SECRET, **more}
    argv = [sys.executable, "-m", "app", *args]
    with popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
