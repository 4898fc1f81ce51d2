"""PostgreSQL servers of the tests' own, besides the session's embedded one: Debian's (or the
machine's) binaries, run with pg_ctl as the `postgres` user when root; for the tests that need
several servers (a failover to a standby, fan-out nodes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.dev.embedded import find_bindir

ROLE = "tracktalk"
"""The superuser initdb makes (trust authentication, 127.0.0.1 only)."""


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
    server left running in it is stopped at the end, and the folder removed."""
    bindir = find_bindir()
    assert bindir is not None and (bindir / "pg_basebackup").exists(), (
        "no PostgreSQL binaries with pg_basebackup"
    )
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    try:
        yield bindir, root
    finally:
        for data in sorted(root.glob("*/postmaster.pid")):
            with contextlib.suppress(AssertionError):
                Cluster(bindir, data.parent, 0).stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
