"""The servers that the tests run in the foreground (nginx, PgBouncer: launch() in processes.py) die
with the run that started them, and their folders go with them.

A run killed with SIGKILL (a timeout, a closed terminal) runs no finalizer, and its children live
on: nginx kept its port and its workers, PgBouncer its port, and their folders stayed in the
temporary folder. So each such server is started in a process group of its own, and `guard()`
gives it a watchdog, a process of its own session that waits on a pipe only the run holds. When
the run ends, however it ends, the pipe closes: the watchdog kills the server's process group (if
that process is still the server: its pid and start time) and removes the server's folder. The
PostgreSQL clusters have the same arrangement (clusters.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]
_WATCHDOGS: dict[int, subprocess.Popen[bytes]] = {}
"""The watchdog of each guarded server, by the server's pid: its pipe stays open while this
process lives, or until release()."""
_WATCHDOG_EXIT = 10.0
"""Seconds a released watchdog has to end."""


def started(pid: int) -> str:
    """When process `pid` started (clock ticks after boot, /proc's field 22): with the pid, it
    names the process, whose pid may be another's later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def guard(process: subprocess.Popen[bytes], home: Path | None = None) -> None:
    """Kill `process`'s group (it leads one: start_new_session) and remove `home` when this
    process ends, unless release() comes first."""
    _WATCHDOGS[process.pid] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.reaper",
            str(process.pid),
            started(process.pid),
            str(home or ""),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=_REPO,
        start_new_session=True,  # a signal to the run's process group spares it
    )


def release(process: subprocess.Popen[bytes] | None) -> None:
    """The server was stopped and its folder removed by the run itself: its watchdog ends (after
    doing the same, which finds nothing left)."""
    watchdog = _WATCHDOGS.pop(process.pid, None) if process is not None else None
    if watchdog is not None:
        end(watchdog)


def end(watchdog: subprocess.Popen[Any], within: float = _WATCHDOG_EXIT) -> None:
    """Close a watchdog's pipe, which tells it to clear up and end; killed if it has not within
    `within` seconds."""
    assert watchdog.stdin is not None
    watchdog.stdin.close()
    try:
        watchdog.wait(within)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


def let_go(owner: subprocess.Popen[Any]) -> None:
    """Kill a test's own run if it is still there, and close its output pipe."""
    if owner.poll() is None:
        owner.kill()
        owner.wait(10)
    if owner.stdout is not None:
        owner.stdout.close()


def _watch(pid: int, start: str, home: str) -> None:
    """The watchdog: wait until the run closes the pipe (released, or ended), then kill what is
    left of the server's group and remove its folder."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    if started(pid) == start:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if home:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), sys.argv[2], sys.argv[3])
