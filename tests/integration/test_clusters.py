"""The tests' own PostgreSQL servers (tests/support/clusters.py), and bench/fanout.py's, die with
the run that started them: a pytest process killed with SIGKILL leaves no server running and no folder behind, and a
folder whose owner is gone is cleared at the next session's start."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from app.dev.embedded import _alive, _read_pid, find_bindir
from tests.support.clusters import OWNER, Cluster, clear, sweep
from tests.support.processes import ROOT, free_port
from tests.support.reaper import let_go
from tests.support.waiting import wait_until

_STARTS = textwrap.dedent(
    """
    import sys, time
    from tests.support.clusters import Cluster, cluster_root
    from tests.support.processes import free_port
    with cluster_root("tracktalk-fanout-") as (bindir, root):
        server = Cluster(bindir, root / "only", free_port()).initdb().start()
        print(server.data, flush=True)
        time.sleep(600)
    """
)


def _killed_leaves_nothing(script: str, who: str) -> None:
    """Run `script` (it starts a server, prints its data folder and waits), SIGKILL it, and see
    its server stop and its folder go, each within a deadline."""
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    data = None
    try:
        assert owner.stdout is not None
        data = Path(owner.stdout.readline().strip())  # the child's own timeouts (initdb, start) bound this
        postmaster = _read_pid(data / "postmaster.pid")
        assert postmaster is not None and _alive(postmaster), data
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not _alive(postmaster), 30, f"the server of the killed {who} to stop")
        wait_until(lambda: not data.parent.exists(), 30, f"the killed {who}'s folder to go")
    finally:
        let_go(owner)
        bindir = find_bindir()
        if data is not None and data.parent.exists() and bindir is not None:
            clear(bindir, data.parent)  # whatever the outcome, nothing stays behind this test


def test_a_run_killed_with_sigkill_leaves_no_server_and_no_folder() -> None:
    _killed_leaves_nothing(_STARTS, "run")


_BENCH_STARTS = textwrap.dedent(
    """
    import time
    from bench import fanout
    started = fanout.Server.start
    def start_and_wait(self, conf):  # the primary up: the run is killed here
        started(self, conf)
        print(self.data, flush=True)
        time.sleep(600)
    fanout.Server.start = start_and_wait
    with fanout.topology(10):
        pass
    """
)


def test_a_fanout_bench_killed_with_sigkill_leaves_no_server_and_no_folder() -> None:
    """bench/fanout.py's servers and folder: it made its folder itself, and a run killed (a kill
    -9, a closed terminal) left both behind; it uses cluster_root() now."""
    _killed_leaves_nothing(_BENCH_STARTS, "bench")


def test_a_folder_whose_owner_is_gone_is_cleared_at_the_start_and_a_live_ones_kept() -> None:
    bindir = find_bindir()
    assert bindir is not None
    parent = Path(tempfile.mkdtemp(prefix="tracktalk-sweep-"))
    parent.chmod(0o755)
    dead = subprocess.Popen(["true"])  # its pid names no process once it has ended
    dead.wait()
    try:
        left, kept = parent / "tracktalk-fanout-left", parent / "tracktalk-failover-kept"
        for root in (left, kept):
            root.mkdir()
            root.chmod(0o755)
            if os.geteuid() == 0:
                os.chown(root, *_postgres_ids())
        (left / OWNER).write_text(f"{dead.pid} 1\n", encoding="utf-8")
        (kept / OWNER).write_text(f"{os.getpid()} {_started_field(os.getpid())}\n", encoding="utf-8")
        server = Cluster(bindir, left / "only", free_port()).initdb().start()  # started with no watchdog
        postmaster = _read_pid(server.data / "postmaster.pid")
        assert postmaster is not None and _alive(postmaster)
        assert sweep(parent) == [left]
        wait_until(lambda: not _alive(postmaster), 10, "the left server to be gone")
        assert not left.exists() and kept.exists()
    finally:
        for root in parent.iterdir():
            clear(bindir, root)
        clear(bindir, parent)


def _started_field(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19]


def _postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid
