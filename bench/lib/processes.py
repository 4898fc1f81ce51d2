"""The benchmark's processes: servers (tracktalk, the baselines) and the picows client processes, with their CPU and memory.

Each is started by tests/support/children.py's popen(): a run killed with SIGKILL takes them with
it (they kept their ports, files and CPU). numpy and psutil (the bench's extras) are imported where
they are used, so that the tests, which have neither, start these processes as the bench does
(tests/integration/test_reaper.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.lib.settings import PY, ROOT, SECRET
from tests.support.children import popen

if TYPE_CHECKING:
    import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start: {log.read_text()[-2000:]}")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    grace: float = 15.0
    """Seconds to wait after SIGTERM (the baselines do not close their sockets: they get 1 s)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()


def start_server(args: list[str], env: dict[str, str], logdir: Path, name: str, port: int = 0) -> Server:
    """A server process on `port` (a free one when 0), once the port answers."""
    port = port or free_port()
    log = logdir / f"{name}-{port}-{time.monotonic_ns()}.log"
    argv = [a.replace("{port}", str(port)) for a in args]
    with log.open("wb") as out:
        proc = popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    wait_port(port, proc, log)
    return server


def start_tracktalk(url: str, logdir: Path, port: int = 0, reuse_port: bool = False) -> Server:
    env = {
        "DATABASE_URL": url,
        "TRACKTALK_SECRET": SECRET,
        # No comments-per-minute limit: the writers post far faster than any limit allows. (The
        # limit costs each POST one more statement, reading at most the limit's number of rows.)
        "TRACKTALK_COMMENTS_PER_MINUTE": "0",
        "TRACKTALK_SOCKETS_PER_USER": "1000000",
    }
    args = [PY, "-m", "app", "serve", "--port", "{port}", *(["--reuse-port"] if reuse_port else [])]
    return wait_ready(start_server(args, env, logdir, "tracktalk", port))


def start_tracktalk_workers(url: str, logdir: Path, workers: int) -> list[Server]:
    """`workers` replicas on one port (`tracktalk serve --reuse-port`), each listening before the next starts."""
    port = free_port()
    servers: list[Server] = []
    try:
        for _ in range(workers):
            server = start_tracktalk(url, logdir, port, reuse_port=True)
            servers.append(server)
            deadline = time.monotonic() + 30
            while not listens_on(server.pid, port):  # /readyz may have been answered by another one
                if time.monotonic() > deadline or server.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker {server.pid} not listening on {port}: {server.log.read_text()[-2000:]}"
                    )
                time.sleep(0.1)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def listens_on(pid: int, port: int) -> bool:
    """The process `pid` has a socket listening on 127.0.0.1:`port`."""
    return _sockets_on(pid, port, "0A") > 0  # 0A: LISTEN


def connections_on(pid: int, port: int) -> int:
    """The established connections the process `pid` holds on its 127.0.0.1:`port`."""
    return _sockets_on(pid, port, "01")  # 01: ESTABLISHED


def _sockets_on(pid: int, port: int, state: str) -> int:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    local = f"0100007F:{port:04X}"  # 127.0.0.1 as /proc/net/tcp writes it
    with open("/proc/net/tcp") as table:
        return sum(
            1
            for f in (line.split() for line in table.readlines()[1:])
            if f[1] == local and f[3] == state and f[9] in inodes
        )


def wait_ready(server: Server, timeout: float = 30) -> Server:
    """`server` once its /readyz answers 200; an error with its log's end after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    raise RuntimeError(f"server not ready (log {server.log}): {server.log.read_text()[-2000:]}")


class LoadProcesses:
    """Load-client processes (`python -m MODULE CONFIG`, one config each; bench/client.py,
    bench/swarm.py): each prints `ready …` once its sockets are tried, then `stat …` (numbers)
    every 0.5 s, `saved` after a `save`, and obeys `mark`, `save` and `stop` on stdin."""

    def __init__(self, module: str, configs: list[dict[str, Any]], workdir: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.outs: list[str] = []
        self.ready: list[list[str]] = []
        """Each process's `ready` line, after the word."""
        self.stats: list[list[int]] = [[] for _ in configs]
        """Each process's last `stat` line, after the word."""
        self.saved = threading.Semaphore(0)
        """Released once per `saved` line (a process wrote its window's results)."""
        name = module.rsplit(".", 1)[-1]
        for i, config in enumerate(configs):
            out = str(workdir / f"{name}-{i}-{time.monotonic_ns()}.json")
            path = out + ".config"
            Path(path).write_text(json.dumps({**config, "out": out}))
            self.procs.append(
                popen(
                    [PY, "-m", module, path],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            self.outs.append(out)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"{module} failed to start: {line}")
            self.ready.append(line[1:])
        for i, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts and parts[0] == "stat":
                self.stats[i] = [int(p) for p in parts[1:]]
            elif parts == ["saved"]:
                self.saved.release()

    def command(self, text: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(text + "\n")
            proc.stdin.flush()

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def end(self, timeout: float = 30) -> None:
        """`stop` every process and wait for it (killed past `timeout` s): their results are written."""
        self.command("stop")
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


class Clients(LoadProcesses):
    """The picows load-client processes (bench/client.py), sockets spread over them."""

    def __init__(self, urls: list[str], count: int, workdir: Path) -> None:
        configs = [{"urls": urls[i::count], "concurrency": 40} for i in range(count)]
        super().__init__("bench.client", configs, workdir)

    @property
    def frames(self) -> list[int]:
        """Frames each process received so far (its last `stat`)."""
        return [stat[0] if stat else 0 for stat in self.stats]

    @property
    def closed(self) -> list[int]:
        return [stat[1] if stat else 0 for stat in self.stats]

    @property
    def opened(self) -> int:
        return sum(int(r[0]) for r in self.ready)

    @property
    def failed(self) -> int:
        return sum(int(r[1]) for r in self.ready)

    def collect(self, timeout: float = 30) -> dict[str, Any]:
        """What arrived since `mark` (or the last collect), the sockets kept open for another window."""
        self.command("save")
        deadline = time.monotonic() + timeout
        for _ in self.procs:
            if not self.saved.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a client did not save its results within {timeout} s")
        return self._results()

    def stop(self) -> dict[str, Any]:
        self.end()
        return self._results()

    def _results(self) -> dict[str, Any]:
        import numpy as np

        frames = closed = 0
        ids: list[np.ndarray] = []
        times: list[np.ndarray] = []
        for out in self.outs:
            with contextlib.suppress(FileNotFoundError):
                data = json.loads(Path(out).read_text())
                frames += data["frames"]
                closed += data["closed"]
                ids.append(np.fromfile(out + ".ids", dtype=np.int64))
                times.append(np.fromfile(out + ".times", dtype=np.float64))
        return {
            "frames": frames,
            "closed": closed,
            "ids": np.concatenate(ids) if ids else np.zeros(0, np.int64),
            "times": np.concatenate(times) if times else np.zeros(0),
        }
