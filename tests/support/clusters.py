"""PostgreSQL servers of the tests' own, besides the session's embedded one: Debian's (or the
machine's) binaries, run with pg_ctl as the `postgres` user when root; for the tests that need
several servers (a failover to a standby, fan-out nodes).

pg_ctl's servers outlive the process that started them, so none is left behind by a run that is
killed (SIGKILL, a timeout, a closed terminal): each folder of `cluster_root` names its owner
(`OWNER`: the pytest process's pid and start time) and has a watchdog, a process of its own
session that waits on a pipe only the owner holds; when the owner ends, however it ends, the pipe
closes and the watchdog stops every server in the folder and removes it. And every session starts
with `sweep()`, which does the same for a folder whose owner is gone and whose watchdog did not
(the machine restarted, or the watchdog was killed too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from app.dev.embedded import _alive, _is_postmaster_for, _read_pid, find_bindir
from tests.support.reaper import end as end_watchdog
from tests.support.reaper import started as _started

ROLE = "tracktalk"
"""The superuser initdb makes (trust authentication, 127.0.0.1 only)."""
OWNER = "owner"
"""The file of a cluster root that names the process it belongs to: `<pid> <start time>`."""
BENCH_PREFIX = "tracktalk-bench-fanout-"
"""The roots of bench/fanout.py, which uses cluster_root() too."""
PREFIXES = ("tracktalk-fanout-", "tracktalk-failover-", BENCH_PREFIX)
"""The prefixes of the roots that the tests (and bench/fanout.py) make, and that sweep() looks at."""
LEGACY_AGE = 2 * 3600.0
"""Seconds after which a root without an OWNER file (made before there was one) counts as left
behind: no test module of those that make roots runs that long."""
_REPO = Path(__file__).resolve().parents[2]
_WATCHDOG_EXIT = 30.0
"""Seconds the watchdog of a root that ended normally has to see it gone and end."""


class Cluster:
    """A PostgreSQL data folder and its server, run with pg_ctl as the `postgres` user when root."""

    def __init__(self, bindir: Path, data: Path, port: int, database: str = "tracktalk") -> None:
        self.bindir = bindir
        self.data = data
        self.port = port
        self.database = database
        self.log = data.parent / f"{data.name}.log"

    def url(self, dbname: str | None = None, user: str = ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname or self.database}"

    def run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*as_postgres, *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def initdb(self, settings: str = "wal_level = replica\nmax_wal_senders = 5\n") -> Cluster:
        """initdb, then `settings` (postgresql.conf lines) besides fsync off and hot standby."""
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings + "\nfsync = off\nhot_standby = on\n")
        return self

    def configure(self, settings: str) -> Cluster:
        """More postgresql.conf lines (taken at the next start)."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n" + settings + "\n")
        return self

    def start(self) -> Cluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data.parent}"
        )
        self.run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def standby(self, data: Path, port: int) -> Cluster:
        """A streaming standby of this server (pg_basebackup -R), started."""
        self.run(
            str(self.bindir / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-D", str(data), "-R", "-X", "stream"),
            "--checkpoint=fast",
        )
        return Cluster(self.bindir, data, port, self.database).start()

    def promote_alone(self, port: int) -> None:
        """Start this stopped standby on `port`, with nothing to stream from, and promote it."""
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("primary_conninfo = ''\n")
        self.port = port
        self.start()
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")


@contextlib.contextmanager
def cluster_root(prefix: str) -> Iterator[tuple[Path, Path]]:
    """(the binaries' folder, a folder for data folders that the server's user may use); every
    server left running in it is stopped at the end, and the folder removed: by this process when
    it gets there, or by the folder's watchdog when this process ends without getting there."""
    bindir = find_bindir()
    assert bindir is not None and (bindir / "pg_basebackup").exists(), (
        "no PostgreSQL binaries with pg_basebackup"
    )
    root = Path(tempfile.mkdtemp(prefix=prefix))
    (root / OWNER).write_text(f"{os.getpid()} {_started(os.getpid())}\n", encoding="utf-8")
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "tests.support.clusters", str(bindir), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=_REPO,
        start_new_session=True,  # a signal to this process group (Ctrl-C, a kill of the group) spares it
    )
    try:
        yield bindir, root
    finally:
        clear(bindir, root)
        end_watchdog(watchdog, _WATCHDOG_EXIT)


def clear(bindir: Path, root: Path) -> None:
    """Stop every server running in `root`'s data folders; remove `root`."""
    for pid_file in sorted(root.glob("*/postmaster.pid")):
        pid = _read_pid(pid_file)
        if pid is None or not _alive(pid) or not _is_postmaster_for(pid, pid_file.parent):
            continue  # not running (a PID of the file may be another program's by now)
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            Cluster(bindir, pid_file.parent, 0).stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def sweep(parent: Path | None = None) -> list[Path]:
    """Clear the cluster roots under `parent` (the temporary folder) that were left behind: their
    owner is gone (or, made before roots named one, they are older than LEGACY_AGE). The roots
    cleared."""
    bindir = find_bindir()
    cleared = []
    for prefix in PREFIXES:
        for root in sorted(Path(parent or tempfile.gettempdir()).glob(f"{prefix}*")):
            if root.is_dir() and _left_behind(root) and bindir is not None:
                clear(bindir, root)
                cleared.append(root)
    return cleared


def _left_behind(root: Path) -> bool:
    try:
        pid, started = (root / OWNER).read_text(encoding="utf-8").split()
    except FileNotFoundError:
        try:
            return time.time() - root.stat().st_mtime > LEGACY_AGE
        except OSError:
            return False
    except (OSError, ValueError):
        return False
    return not _alive(int(pid)) or _started(int(pid)) != started


def _watch(bindir: Path, root: Path) -> None:
    """The watchdog: wait until the owner closes the pipe (it is done, or it died), then clear
    the root (nothing is left to do when the owner cleared it itself)."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    if root.exists():
        clear(bindir, root)


if __name__ == "__main__":
    _watch(Path(sys.argv[1]), Path(sys.argv[2]))
