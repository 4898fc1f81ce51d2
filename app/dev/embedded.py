"""An embedded PostgreSQL: a real server run as a child process, its data kept in a folder.

Use it as a context manager::

    with EmbeddedPostgres(Path(".tracktalk")) as pg:
        serve(pg.url)

The first start runs initdb; later starts reuse the data. The server is stopped, and waited for,
when the block ends: normally, on Ctrl-C (KeyboardInterrupt) and on SIGTERM (which raises SystemExit
while the block runs, unless the program has a SIGTERM handler of its own).

Binaries are looked for in this order: `pg_config --bindir`, `postgres`/`initdb` on PATH,
Debian's `/usr/lib/postgresql/<newest>/bin`, then the pip package `pgserver` (found with
`importlib.util.find_spec`, without importing it). `python -m app.embedded --has-binaries` exits 0
when one of them is there, 1 when none is.

What this does to the system
----------------------------
- Creates the root folder (default `.tracktalk/` in the current directory) holding `port` (the
  port last used), `lock` (held while a server runs, so that two runs never share one data folder)
  and, in the usual case, `data/` (the cluster), `run/` (the Unix socket) and `postgres.log`.
- Starts one PostgreSQL server, a child of this process, listening on 127.0.0.1 only, on a free
  TCP port, with a Unix socket in `run/` (none when that path would be over 100 characters).
  Authentication is `trust`: any local user or program can connect to it, as the superuser
  `tracktalk`, for as long as it runs. It is meant for development and tests, not for shared hosts.
- When run as root (initdb and postgres refuse root): runs initdb and postgres as the `postgres`
  system user if there is one, otherwise creates a system user `tracktalk`
  (`useradd --system --no-create-home tracktalk`; never removed), and chowns `data/` and `run/`
  to that user.
- When run as root and that user cannot enter the root folder (for instance a project under
  `/root`, mode 700): no permissions are changed; the data, the socket and the log go to
  `/var/tmp/tracktalk-<hash of the root folder's path>/` instead (mode 755, owned by root, left in
  place), and `DATA-IS-ELSEWHERE.txt` in the root folder says where. If that note is gone (the root
  folder was deleted, e.g. `make clean-db`), the old folder in /var/tmp is deleted at the next start.
- On start, a server left running by a run that was killed (its `postmaster.pid` names a live
  postgres for this data folder) is stopped: SIGINT, then SIGQUIT, then SIGKILL. A `postmaster.pid`
  naming a live process that is not that server (a reused PID) is deleted; one naming a dead
  process is left to PostgreSQL, which handles it.
- An interrupted first run's `data.initdb/` is deleted and initdb runs again.
- `postgres.log` is moved to `postgres.log.1` when it outgrows 10 MB.

How no orphan is left
---------------------
postgres is started directly (not through `pg_ctl`, which daemonizes), in its own session (so a
Ctrl-C in the terminal reaches only us, and we stop the server in order), and on Linux with a
parent-death signal: the kernel sends it SIGINT (fast shutdown) when the thread that started it
ends, even by SIGKILL. The signal is set with `prctl(PR_SET_PDEATHSIG)` in `preexec_fn`. A change of
credentials clears that setting, but CPython's `_posixsubprocess` calls setgroups, setregid and
setreuid before `preexec_fn` (checked in the 3.11 source and by test), so it holds; the exec of
postgres, which is not set-uid, keeps it. It is set only when the server is started from the main
thread (a worker thread's exit would stop the server); otherwise, and off Linux, a server whose
parent was killed is stopped by the next start instead.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import hashlib
import importlib.util
import itertools
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import quote

import psycopg

log = logging.getLogger(__name__)

_READY_TIMEOUT = 30.0  # seconds a started server has to accept connections
_READY_POLL = 0.05  # seconds between two connection attempts while it starts
_CONNECT_TIMEOUT = 2  # seconds one connection attempt may take (libpq's smallest)
_STOP_TIMEOUT = 10.0  # seconds a fast shutdown (SIGINT) may take before SIGQUIT
_QUIT_TIMEOUT = 5.0  # seconds an immediate shutdown (SIGQUIT) may take before SIGKILL
_KILL_TIMEOUT = 5.0  # seconds to wait for the process to be gone after SIGKILL
_GONE_POLL = 0.02  # seconds between two looks at a stale server that is stopping
_COMMAND_TIMEOUT = 120.0  # seconds initdb, useradd or `postgres --version` may take
_LOG_TAIL_LINES = 20  # server log lines quoted in an error
_LOG_MAX_BYTES = 10 * 1024 * 1024  # a larger server log is moved aside at start
_MAX_SOCKET_PATH = 100  # longest Unix socket path we use (the kernel's limit is 107)

_DEATH_SIGNAL: signal.Signals | None = signal.SIGINT  # sent to postgres when its parent dies
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_STOP_SIGNALS = (
    (signal.SIGINT, _STOP_TIMEOUT),
    (signal.SIGQUIT, _QUIT_TIMEOUT),
    (signal.SIGKILL, _KILL_TIMEOUT),
)
_ROLE = "tracktalk"  # the superuser initdb creates, and the database we create
_SERVER_USERS = ("postgres", "tracktalk")  # used when running as root; the second is created
_MAX_CONNECTIONS = 200
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_PRIVATE_PARENT = Path("/var/tmp")
_NOTE_NAME = "DATA-IS-ELSEWHERE.txt"
_DESCRIPTION = "The embedded PostgreSQL of tracktalk."


class EmbeddedError(Exception):
    """The embedded PostgreSQL could not be started; the message says what to do."""


@dataclass(frozen=True)
class _User:
    """The unprivileged user that runs initdb and postgres when we are root."""

    name: str
    uid: int
    gid: int
    groups: list[int]


@dataclass(frozen=True)
class _Layout:
    """Where the files of one embedded server are."""

    root: Path
    base: Path

    @property
    def data(self) -> Path:
        """The cluster (PGDATA)."""
        return self.base / "data"

    @property
    def initdb_dir(self) -> Path:
        """Where initdb writes before the result is renamed to `data`."""
        return self.base / "data.initdb"

    @property
    def run(self) -> Path:
        """The Unix socket's folder."""
        return self.base / "run"

    @property
    def log(self) -> Path:
        """The server log."""
        return self.base / "postgres.log"


# Finding the binaries.


def find_bindir() -> Path | None:
    """The first folder with PostgreSQL's `postgres` and `initdb`, or None."""
    for candidate in _candidate_bindirs():
        if _is_bindir(candidate):
            return candidate
    return None


def _candidate_bindirs() -> Iterator[Path]:
    """Folders that may hold the binaries, best first."""
    from_pg_config = _pg_config_bindir()
    if from_pg_config is not None:
        yield from_pg_config
    for name in ("postgres", "initdb"):
        found = shutil.which(name)
        if found:
            yield Path(found).resolve().parent
    debian = _debian_bindir()
    if debian is not None:
        yield debian
    pgserver = _pgserver_bindir()
    if pgserver is not None:
        yield pgserver


def _is_bindir(folder: Path) -> bool:
    """Whether `folder` has runnable `postgres` and `initdb`."""
    return all(os.access(folder / name, os.X_OK) for name in ("postgres", "initdb"))


def _pg_config_bindir() -> Path | None:
    """What `pg_config --bindir` says, if pg_config is on PATH."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=_COMMAND_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.stdout.strip() else None


def _debian_bindir() -> Path | None:
    """Debian's /usr/lib/postgresql/<newest version>/bin, if any."""
    try:
        versions = [p for p in _DEBIAN_ROOT.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(versions, key=lambda p: int(p.name)) / "bin" if versions else None


def _pgserver_bindir() -> Path | None:
    """The binaries inside the pip package pgserver, if it is installed (not imported)."""
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _server_major(bindir: Path) -> str | None:
    """The major version of `bindir`'s postgres, as PG_VERSION spells it."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
    )
    found = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", out.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return f"{major}.{found.group(2)}" if major < 10 else str(major)


# The user that runs the server, and where its files go.


def _server_user() -> _User | None:
    """The unprivileged user to run as when we are root (creating it if needed), else None."""
    if os.geteuid() != 0:
        return None
    found = _existing_user(_SERVER_USERS)
    if found is None:
        _create_system_user(_SERVER_USERS[-1])
        found = _existing_user(_SERVER_USERS[-1:])
    if found is None:
        raise EmbeddedError(f"the user {_SERVER_USERS[-1]!r} was created but cannot be found; start again")
    return found


def _existing_user(names: Sequence[str]) -> _User | None:
    """The first of `names` that is a user on this machine."""
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _User(name, entry.pw_uid, entry.pw_gid, os.getgrouplist(name, entry.pw_gid))
    return None


def _create_system_user(name: str) -> None:
    """Create the system user `name` (no home folder)."""
    log.info("creating the system user %s to run PostgreSQL (it refuses to run as root)", name)
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", name],
            capture_output=True,
            text=True,
            check=True,
            timeout=_COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise EmbeddedError(
            f"PostgreSQL refuses to run as root and the user {name!r} could not be created ({detail}); "
            f"create it (`useradd --system --no-create-home {name}`) or run as another user"
        ) from exc


def _may_enter(path: Path, user: _User) -> bool:
    """Whether `user` may search (or, for a file, execute) `path` and every folder above it."""
    for part in (path, *path.parents):
        try:
            mode, uid, gid = _owner_and_mode(part)
        except OSError:
            return False
        if uid == user.uid:
            bit = stat.S_IXUSR
        elif gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode & bit:
            return False
    return True


def _owner_and_mode(path: Path) -> tuple[int, int, int]:
    """`path`'s permission bits, owner and group."""
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_gid


def _layout(root: Path, user: _User | None) -> _Layout:
    """Where the data goes: in `root`, or in /var/tmp when `user` cannot enter `root`."""
    note = root / _NOTE_NAME
    if user is None or _may_enter(root, user):
        note.unlink(missing_ok=True)
        return _Layout(root, root)
    base = _PRIVATE_PARENT / f"tracktalk-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"
    if not note.exists() and base.exists():
        _remove_orphaned_base(base)
    _write_note(note, base, root, user)
    _make_private_base(base, user)
    return _Layout(root, base)


def _write_note(note: Path, base: Path, root: Path, user: _User) -> None:
    """Say in the root folder where its data is."""
    text = (
        f"{base}/\n\n"
        f"The PostgreSQL data of this folder is in the folder above: the user {user.name!r}, which runs\n"
        f"PostgreSQL, cannot enter {root}, and tracktalk does not change the permissions of your\n"
        "folders. Deleting this folder (e.g. `make clean-db`) makes the next start delete that one too.\n"
    )
    if not note.exists() or note.read_text(encoding="utf-8") != text:
        note.write_text(text, encoding="utf-8")


def _remove_orphaned_base(base: Path) -> None:
    """Delete the /var/tmp data of a root folder that was deleted."""
    _check_ours(base)
    log.warning("deleting %s: the root folder that pointed to it was deleted", base)
    _clear_stale_server(base / "data")
    shutil.rmtree(base)


def _make_private_base(base: Path, user: _User) -> None:
    """Create the /var/tmp folder (root's, mode 755) and check that `user` can enter it."""
    base.mkdir(exist_ok=True)
    _check_ours(base)
    base.chmod(0o755)
    if not _may_enter(base, user):
        raise EmbeddedError(
            f"the user {user.name!r} cannot enter {base}; make {base.parent} searchable by all (chmod o+x)"
        )


def _check_ours(base: Path) -> None:
    """Refuse a /var/tmp folder that is a link or that someone else made."""
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EmbeddedError(f"{base} is not a folder made by tracktalk; delete it, then start again")


def _prepare_folders(layout: _Layout, user: _User | None) -> None:
    """Create `run/` and hand it, and existing data, to `user`."""
    layout.run.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    os.chown(layout.run, user.uid, user.gid)
    if layout.data.exists() and layout.data.stat().st_uid != user.uid:
        log.info("giving %s to the user %s", layout.data, user.name)
        _chown_tree(layout.data, user)


def _chown_tree(top: Path, user: _User) -> None:
    """Chown `top` and everything under it to `user`."""
    os.chown(top, user.uid, user.gid)
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)


def _check_binaries(bindir: Path, user: _User | None, data: Path) -> None:
    """Refuse binaries the user cannot run, or a data folder made by another major version."""
    if user is not None and not _may_enter(bindir / "postgres", user):
        raise EmbeddedError(
            f"the user {user.name!r} that runs PostgreSQL cannot run {bindir}/postgres (a folder above "
            "it is private); install PostgreSQL system-wide (apt-get install postgresql) or move "
            "the virtualenv out of a private folder"
        )
    version_file = data / "PG_VERSION"
    if not version_file.exists():
        return
    made_by, running = version_file.read_text(encoding="utf-8").strip(), _server_major(bindir)
    if running is not None and made_by != running:
        raise EmbeddedError(
            f"the data in {data} was made by PostgreSQL {made_by} but {bindir} has PostgreSQL "
            f"{running}; delete the data folder (make clean-db) to start afresh, or install {made_by}"
        )


# The lock that keeps two runs from sharing a data folder.


def _lock(path: Path) -> int:
    """Take the root folder's lock (a file descriptor that holds it), or say who holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise EmbeddedError(
            f"another tracktalk (PID {holder}) is using the database in {path.parent}; stop it, "
            f"or give this one another folder{_reach_hint(path.parent / 'port')}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _reach_hint(port_file: Path) -> str:
    """How a command reaches the database the folder's running server serves (its port file)."""
    try:
        port = int(port_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return ""
    return (
        f"; to use the database it serves, set DATABASE_URL=postgresql://{_ROLE}@127.0.0.1:{port}/{_ROLE} "
        f"(and for `tracktalk serve`, TRACKTALK_SECRET=$(cat {port_file.parent / 'secret'}))"
    )


# A server left behind by a run that was killed.


def _clear_stale_server(data: Path) -> None:
    """Stop a server left running on `data`, or drop a lock file that names an unrelated process."""
    pid_file = data / "postmaster.pid"
    pid = _read_pid(pid_file)
    if pid is None or not _alive(pid):
        return  # no lock file, or a dead PID: PostgreSQL copes with that itself
    if _is_postmaster_for(pid, data):
        log.warning("stopping PostgreSQL (PID %s) left running on %s by an earlier run", pid, data)
        _stop_pid(pid)
    else:
        log.info("removing %s: its PID %s is now another program", pid_file, pid)
        pid_file.unlink(missing_ok=True)


def _read_pid(pid_file: Path) -> int | None:
    """The PID on the first line of postmaster.pid, if there is one."""
    try:
        first = pid_file.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() and int(first) > 0 else None


def _alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def _cmdline(pid: int) -> list[str]:
    """The arguments `pid` was started with (empty if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        if Path("/proc/self").exists():
            return []
        out = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)], check=False, capture_output=True, text=True
        )
        return out.stdout.split()
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_postmaster_for(pid: int, data: Path) -> bool:
    """Whether `pid` is a postgres server for the data folder `data`."""
    args = _cmdline(pid)
    if not args or Path(args[0]).name not in {"postgres", "postmaster"}:
        return False
    wanted = os.path.realpath(data)
    try:
        if os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == wanted:
            return True  # the postmaster runs in its data folder
    except OSError:
        pass
    for flag, value in itertools.pairwise(args):
        if flag == "-D" and os.path.isabs(value) and os.path.realpath(value) == wanted:
            return True
    return False


def _stop_pid(pid: int) -> None:
    """Stop a server that is not our child: SIGINT, then SIGQUIT, then SIGKILL."""
    for sig, timeout in _STOP_SIGNALS:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, timeout):
            return
        log.warning("PostgreSQL (PID %s) still runs %.0f s after %s", pid, timeout, sig.name)
    raise EmbeddedError(f"could not stop the old PostgreSQL (PID {pid}); kill it, then start again")


def _wait_gone(pid: int, timeout: float) -> bool:
    """Whether `pid` ends within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_GONE_POLL)
    return True


# Ports and settings.


def _choose_port(port_file: Path, *, fresh: bool) -> int:
    """The port used last time if it is free (and not `fresh`), else a new free one, remembered."""
    try:
        remembered = int(port_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        remembered = 0
    if remembered and not fresh and _port_is_free(remembered):
        return remembered
    port = _free_port()
    port_file.write_text(f"{port}\n", encoding="utf-8")
    return port


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` (as postgres binds: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _socket_dir_setting(run: Path, port: int) -> str:
    """The unix_socket_directories value: `run`, quoted, or '' when the socket path is too long."""
    if len(str(run / f".s.PGSQL.{port}")) > _MAX_SOCKET_PATH:
        return ""
    return '"' + str(run).replace('"', '""') + '"'


def _server_args(bindir: Path, layout: _Layout, port: int, fast: bool) -> list[str]:
    """The postgres command line."""
    settings = [
        "listen_addresses=127.0.0.1",
        f"port={port}",
        f"unix_socket_directories={_socket_dir_setting(layout.run, port)}",
        f"max_connections={_MAX_CONNECTIONS}",
        *(_FAST_SETTINGS if fast else ()),
    ]
    args = [str(bindir / "postgres"), "-D", str(layout.data)]
    for setting in settings:
        args += ["-c", setting]
    return args


# Running initdb and postgres.


def _initdb(bindir: Path, layout: _Layout, user: _User | None, fast: bool, log_file: IO[bytes]) -> None:
    """Create the cluster in `data.initdb`, then rename it to `data` (so a half-made one is never used)."""
    shutil.rmtree(layout.initdb_dir, ignore_errors=True)
    layout.initdb_dir.mkdir(mode=0o700)
    if user is not None:
        os.chown(layout.initdb_dir, user.uid, user.gid)
    args = [str(bindir / "initdb"), "-D", str(layout.initdb_dir), "-U", _ROLE, "-A", "trust"]
    args += ["-E", "UTF8", "--no-locale", *(["--no-sync"] if fast else [])]
    log.info("creating a PostgreSQL cluster in %s", layout.data)
    log_file.flush()
    done = subprocess.run(
        args,
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=layout.base,
        timeout=_COMMAND_TIMEOUT,
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=user.groups if user else None,
    )
    if done.returncode != 0:
        raise EmbeddedError(f"initdb failed (exit {done.returncode}); its output is in {layout.log}")
    layout.initdb_dir.rename(layout.data)


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel signal the child when this thread ends, or None."""
    if _DEATH_SIGNAL is None or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        log.info("PostgreSQL started outside the main thread: no parent-death signal")
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent, signum = os.getpid(), int(_DEATH_SIGNAL)

    def hook() -> None:
        # Runs in the child after setreuid (which would clear the setting), just before exec.
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call above: no signal would come
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _spawn(
    args: list[str], layout: _Layout, user: _User | None, log_file: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start postgres as our direct child, in its own session, its output in the log."""
    log_file.flush()
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=layout.base,
        start_new_session=True,
        preexec_fn=_death_signal_hook(),  # noqa: PLW1509 - needed after the uid change; see docstring
        user=user.uid if user else None,
        group=user.gid if user else None,
        extra_groups=user.groups if user else None,
    )


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop our postgres child: SIGINT (fast shutdown), then SIGQUIT, then SIGKILL; wait for it."""
    for sig, timeout in _STOP_SIGNALS:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            log.warning("PostgreSQL (PID %s) still runs %.0f s after %s", proc.pid, timeout, sig.name)
    log.error("PostgreSQL (PID %s) did not exit even after SIGKILL", proc.pid)


def _open_log(path: Path) -> IO[bytes]:
    """The server log, opened for appending (moved aside first when it is big)."""
    try:
        if path.stat().st_size > _LOG_MAX_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    return path.open("ab")


def _log_tail(path: Path, offset: int) -> str:
    """The last lines this run wrote to the server log."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(the server log is empty)"


def _wait_ready(proc: subprocess.Popen[bytes], conninfo: str, log_path: Path, offset: int) -> None:
    """Wait until the server accepts connections; raise EmbeddedError with the log if it doesn't."""
    deadline = time.monotonic() + _READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(
                f"PostgreSQL exited during startup (exit {proc.returncode}); from {log_path}:\n"
                + _log_tail(log_path, offset)
            )
        try:
            psycopg.connect(conninfo, connect_timeout=_CONNECT_TIMEOUT).close()
            return
        except psycopg.OperationalError as exc:
            last = exc
        time.sleep(_READY_POLL)
    raise EmbeddedError(
        f"PostgreSQL did not accept connections within {_READY_TIMEOUT:.0f} s ({last}); "
        f"from {log_path}:\n" + _log_tail(log_path, offset)
    )


def _prepare_database(conninfo: str, data: Path) -> None:
    """Check that the server we reached is ours, and create the `tracktalk` database if missing."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        served = str(row[0]) if row else ""
        if os.path.realpath(served) != os.path.realpath(data):
            raise EmbeddedError(
                f"another PostgreSQL (data in {served}) answered on our port; start again to pick another"
            )
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [_ROLE]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{_ROLE}"')


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so that `with` blocks unwind and the server is stopped."""
    raise SystemExit(128 + signum)


class EmbeddedPostgres:
    """A PostgreSQL server with its data under `root`, running while a `with` block runs."""

    pid: int | None
    """The postmaster's PID while it runs."""

    def __init__(self, root: Path = Path(".tracktalk"), *, fast: bool = False) -> None:
        self._root = Path(root).absolute()
        self._fast = fast
        self._port: int | None = None
        self._created = False
        self._layout: _Layout | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._trapped_sigterm = False
        self.pid = None

    def __enter__(self) -> EmbeddedPostgres:
        self._trap_sigterm()
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    @property
    def url(self) -> str:
        """The URL of the `tracktalk` database."""
        return self.url_for(_ROLE)

    def url_for(self, dbname: str) -> str:
        """The URL of the database `dbname` on this server."""
        if self._port is None:
            raise EmbeddedError("the embedded PostgreSQL has not been started: use it in a `with` block")
        return f"postgresql://{_ROLE}@127.0.0.1:{self._port}/{quote(dbname, safe='')}"

    @property
    def created(self) -> bool:
        """True when this start ran initdb (a first run)."""
        return self._created

    @property
    def data_dir(self) -> Path:
        """The cluster's folder (PGDATA), known once started."""
        if self._layout is None:
            raise EmbeddedError("the embedded PostgreSQL has not been started: use it in a `with` block")
        return self._layout.data

    def restart(self) -> None:
        """Stop the server and start it again on the same data and port: its clients see what a
        server restart does to them (the tests of recovery use this)."""
        bindir = find_bindir()
        if self._proc is None or self._layout is None or bindir is None:
            raise EmbeddedError(
                "the embedded PostgreSQL is not running: start it with `with EmbeddedPostgres(...)`"
            )
        _stop_process(self._proc)
        with _open_log(self._layout.log) as log_file:
            self._launch(bindir, self._layout, _server_user(), log_file, log_file.tell())
        log.info("PostgreSQL restarted (PID %s)", self.pid)

    def _start(self) -> None:
        """Find the binaries, take the lock, initdb if needed, start postgres and wait for it."""
        bindir = find_bindir()
        if bindir is None:
            raise EmbeddedError(
                "no PostgreSQL binaries found: install PostgreSQL (apt-get install postgresql, "
                "brew install postgresql) or `pip install pgserver`, or set DATABASE_URL"
            )
        self._root.mkdir(parents=True, exist_ok=True)
        self._root = self._root.resolve()
        self._lock_fd = _lock(self._root / "lock")
        user = _server_user()
        layout = self._layout = _layout(self._root, user)
        _prepare_folders(layout, user)
        _check_binaries(bindir, user, layout.data)
        self._created = False
        with _open_log(layout.log) as log_file:
            offset = log_file.tell()
            if (layout.data / "PG_VERSION").exists():
                _clear_stale_server(layout.data)
            else:
                _initdb(bindir, layout, user, self._fast, log_file)
                self._created = True
            self._launch(bindir, layout, user, log_file, offset)
        _prepare_database(self.url_for("postgres"), layout.data)
        log.info("PostgreSQL (PID %s) accepts connections at %s", self.pid, self.url)

    def _launch(
        self, bindir: Path, layout: _Layout, user: _User | None, log_file: IO[bytes], offset: int
    ) -> None:
        """Start postgres and wait for it, once more on a new port if ours was taken meanwhile."""
        for attempt in (1, 2):
            self._port = _choose_port(self._root / "port", fresh=attempt > 1)
            args = _server_args(bindir, layout, self._port, self._fast)
            log.debug("starting %s", args)
            self._proc = _spawn(args, layout, user, log_file)
            self.pid = self._proc.pid
            try:
                _wait_ready(self._proc, self.url_for("postgres"), layout.log, offset)
                return
            except EmbeddedError:
                if attempt > 1 or self._proc.poll() is None or _port_is_free(self._port):
                    raise
                log.info("port %s was taken while PostgreSQL started; trying another", self._port)

    def _stop(self) -> None:
        """Stop the server (if started), wait for it, and release the lock."""
        self._release_sigterm()
        try:
            if self._proc is not None:
                _stop_process(self._proc)
                log.info("PostgreSQL (PID %s) stopped", self._proc.pid)
        finally:
            self._proc = None
            self.pid = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _trap_sigterm(self) -> None:
        """While running, turn SIGTERM into SystemExit if nothing else handles it (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_signal)
            self._trapped_sigterm = True

    def _release_sigterm(self) -> None:
        """Put SIGTERM's default action back if we changed it."""
        if self._trapped_sigterm and signal.getsignal(signal.SIGTERM) is _exit_on_signal:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._trapped_sigterm = False


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m app.embedded --has-binaries`: exit 0 if PostgreSQL binaries are found, else 1."""
    parser = argparse.ArgumentParser(prog="python -m app.embedded", description=_DESCRIPTION)
    parser.add_argument(
        "--has-binaries", action="store_true", help="exit 0 if PostgreSQL binaries are found, 1 if not"
    )
    args = parser.parse_args(argv)
    if not args.has_binaries:
        parser.print_usage()
        return 2
    bindir = find_bindir()
    if bindir is None:
        print("no PostgreSQL binaries found", file=sys.stderr)
        return 1
    print(f"PostgreSQL binaries: {bindir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
