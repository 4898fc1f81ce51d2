"""Child processes that die with the process that started them: the tests' replicas and `tracktalk`
commands (processes.py), the bench's servers and load clients (bench/lib/processes.py).

A run killed with SIGKILL (a timeout, a closed terminal, the OOM killer) runs no finalizer, and its
children lived on, keeping their ports, their files and the machine's CPU. `popen()` starts a
child that the kernel kills (SIGKILL) when its parent ends, however it ends: on Linux the child
sets `prctl(PR_SET_PDEATHSIG)` between fork and exec (an exec keeps it; the children are not
set-uid). The kernel sends it when the *thread* that forked the child ends, not the process, so
every child is forked by one thread that lives as long as the process: a replica started from
`asyncio.to_thread()` would otherwise die with that worker thread. A parent that died before the
child set the signal shows in the child as a new parent pid: the child then ends before exec.

This covers the direct children only: a child's own children (nginx's workers, PostgreSQL's
backends) need a process group and a watchdog (reaper.py, clusters.py). Off Linux, popen() is
subprocess.Popen.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1
"""From <sys/prctl.h>."""


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up here and not in the child (after a fork, only the calls it must
    make), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
_FORKER = ThreadPoolExecutor(1, thread_name_prefix="children-forker")
"""The one thread that forks every child (see the module): it ends with the process."""


def popen(args: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen(args, **options), for a child that is killed when this process ends."""
    return _FORKER.submit(_fork, args, os.getpid(), options).result()


def _fork(args: Sequence[str], parent: int, options: dict[str, Any]) -> subprocess.Popen[Any]:
    if _PRCTL is None:
        return subprocess.Popen(args, **options)
    prctl = _PRCTL

    def die_with_parent() -> None:
        # In the child, just before exec.
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the call above: no signal would come
            os._exit(1)

    return subprocess.Popen(args, preexec_fn=die_with_parent, **options)  # noqa: PLW1509 - see the module
