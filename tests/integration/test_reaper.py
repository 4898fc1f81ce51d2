"""The processes a run starts die with it, a run killed with SIGKILL included: the servers the
tests run in the foreground (nginx, PgBouncer: tests/support/processes.py's launch()) with the
processes they started (nginx's workers) and their folders (tests/support/reaper.py); the tests'
replicas and `tracktalk` commands, and the bench's servers and load clients
(tests/support/children.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tests.support.processes import ROOT, port_open
from tests.support.reaper import let_go, started
from tests.support.waiting import wait_until

_LAUNCHES = textwrap.dedent(
    """
    import sys, tempfile, time
    from pathlib import Path
    from tests.support.processes import free_port, launch
    home = Path(tempfile.mkdtemp(prefix="tracktalk-reaper-"))
    port = free_port()
    # A server with a child of its own, as nginx's master has its workers.
    server = launch(
        ["sh", "-c", f"sleep 600 & exec {sys.executable} -m http.server {port} --bind 127.0.0.1"],
        port,
        lambda: "",
        home,
    )
    print(server.pid, home, flush=True)
    time.sleep(600)
    """
)


def processes() -> Iterator[tuple[int, list[str]]]:
    """Every process's pid and the fields of its /proc stat after its name (state, parent, group, …)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue


def group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (not the zombies: they have ended)."""
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]


def test_a_server_launched_by_a_run_killed_with_sigkill_dies_with_its_children_and_folder() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHES], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pid = None
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().split()  # the child's own deadline (launch's 15 s) bounds this
        assert len(line) == 2, line
        pid, home = int(line[0]), Path(line[1])
        assert home.is_dir() and len(group(pid)) == 2, (home, group(pid))
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not group(pid), 30, "the killed run's server and its child to end")
        wait_until(lambda: not home.exists(), 30, "the killed run's server's folder to go")
    finally:
        let_go(owner)
        if pid is not None:
            for member in group(pid):  # whatever the outcome, nothing stays behind this test
                os.kill(member, signal.SIGKILL)


_STARTS_REPLICAS = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from tests.support.processes import Replica, free_port, port_open, tracktalk
    from tests.support.waiting import wait_until
    url, logs = sys.argv[1], Path(sys.argv[2])
    replica = Replica(url)
    # From a thread that ends before the run is killed, as asyncio.to_thread() starts a replica.
    starter = threading.Thread(target=replica.start, args=(logs,))
    starter.start()
    starter.join()
    # A command that runs until it is killed (a fanout-node that waits), in the background.
    port = free_port()
    threading.Thread(
        target=tracktalk, args=("serve", "--port", str(port)), kwargs={"database_url": url}, daemon=True
    ).start()
    wait_until(lambda: port_open(port), 30, "the command to listen")
    assert replica.ready(), "the replica died with the thread that started it"
    print(replica.pid, replica.port, port, flush=True)
    time.sleep(600)
    """
)

_STARTS_BENCH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bench.lib.processes import LoadProcesses, start_tracktalk
    url, logs = sys.argv[1], Path(sys.argv[2])
    server = start_tracktalk(url, logs)
    clients = LoadProcesses("standin_client", [{}, {}], logs)
    print(server.pid, *(client.pid for client in clients.procs), flush=True)
    time.sleep(600)
    """
)

_STANDIN_CLIENT = """
import time
print("ready 0 0", flush=True)  # bench/lib/processes.py's LoadProcesses waits for it
time.sleep(600)
"""
"""A load client as LoadProcesses runs one (`python -m MODULE CONFIG`), without picows (the bench's
extra): it says it is ready and stays."""


def children(pid: int) -> dict[int, str]:
    """The live children of process `pid`, with their start times (reaper.started())."""
    return {child: fields[19] for child, fields in processes() if int(fields[1]) == pid and fields[0] != "Z"}


def alive(pid: int, start: str) -> bool:
    """Process `pid`, started at `start`, still runs: one of its threads is not a zombie (its first
    thread is one as soon as it ends, while the others may still be ending, with the files open)."""
    if started(pid) != start:
        return False
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                return True
    return False


def kill_the_run(
    script: str, *args: str, errors: Path, env: dict[str, str] | None = None
) -> tuple[list[int], dict[int, str]]:
    """Run `script` (it starts children, prints a line of numbers, the first a child's pid, and
    waits; its stderr to `errors`), kill it with SIGKILL and see every child it had end within
    30 s: the line, and the children as they were before the kill."""
    with errors.open("wb") as stderr:
        owner = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    left: dict[int, str] = {}
    try:
        assert owner.stdout is not None
        line = [int(word) for word in owner.stdout.readline().split()]  # the run's own deadlines bound this
        left = children(owner.pid)
        assert line and line[0] in left, (line, left, errors.read_text()[-2000:])
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(
            lambda: not any(alive(pid, start) for pid, start in left.items()),
            30,
            "the killed run's children to end",
        )
        return line, left
    finally:
        let_go(owner)
        for pid, start in left.items():  # whatever the outcome, nothing stays behind this test
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_the_replicas_and_commands_of_a_run_killed_with_sigkill_die_with_it(
    db_url: str, log_dir: Path, tmp_path: Path
) -> None:
    """A replica (started from a thread that had ended: it lived on until the run was killed) and
    a `tracktalk` command still running: both stayed, with their ports, after a kill -9 of pytest."""
    line, left = kill_the_run(_STARTS_REPLICAS, db_url, str(log_dir), errors=tmp_path / "run.err")
    assert len(left) == 2, left  # the replica, and the command
    assert not port_open(line[1]) and not port_open(line[2]), line  # their ports are free again


def test_the_bench_servers_and_load_clients_of_a_run_killed_with_sigkill_die_with_it(
    db_url: str, tmp_path: Path
) -> None:
    """bench/lib/processes.py's servers (start_tracktalk) and load clients (LoadProcesses, as
    bench/scale.py, bench/fanout.py and bench/hot10k.py start them) stayed after a kill -9 of
    `python -m bench...`."""
    (tmp_path / "standin_client.py").write_text(_STANDIN_CLIENT)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    line, left = kill_the_run(_STARTS_BENCH, db_url, str(tmp_path), errors=tmp_path / "run.err", env=env)
    assert set(line) == set(left), (line, left)  # the server and its two clients, nothing else
