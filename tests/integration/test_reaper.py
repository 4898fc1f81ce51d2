"""The servers the tests run in the foreground (nginx, PgBouncer: tests/support/processes.py's
launch()) die with the run that started them: a pytest process killed with SIGKILL leaves neither
the server, nor the processes it started (nginx's workers), nor its folder behind
(tests/support/reaper.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.processes import ROOT
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


def group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (not the zombies: they have ended)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


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
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
        if pid is not None:
            for member in group(pid):  # whatever the outcome, nothing stays behind this test
                os.kill(member, signal.SIGKILL)
