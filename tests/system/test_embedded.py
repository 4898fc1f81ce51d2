"""The embedded PostgreSQL: first start, reuse, stop, stale servers, signals and the CLI."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from app.dev.embedded import EmbeddedError, EmbeddedPostgres, find_bindir

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes through /proc"),
    pytest.mark.skipif(find_bindir() is None, reason="no PostgreSQL binaries (see README)"),
]


PROJECT = Path(__file__).resolve().parents[2]


DEADLINE = 10.0  # seconds any awaited event may take


# Runs in a child Python: start a server on argv[1], print its PID, then wait for a signal.
# Ctrl-C as a program run from a terminal gets it: whatever the test runner inherited (a runner
# started in the background by a script, without a terminal, has SIGINT ignored, and so would the
# child: it would never stop, and the test would wait on it for good).
CHILD = """
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
import app.dev.embedded as embedded
if sys.argv[2] == "no-death-signal":
    embedded._DEATH_SIGNAL = None
with embedded.EmbeddedPostgres(Path(sys.argv[1]), fast=True) as pg:
    print(pg.pid, flush=True)
    while True:
        signal.pause()
"""


@dataclass(frozen=True)
class Cluster:
    """A root folder whose first start has run (it made a table `kept` holding 42)."""

    root: Path
    data: Path
    created: bool


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def _cluster_pids(data: Path) -> set[int]:
    """The live postgres processes (postmaster and children) working in the folder `data`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres" and os.readlink(entry / "cwd") == str(data):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")
        time.sleep(0.02)


def _kill_cluster(data: Path) -> None:
    """SIGKILL whatever a failed test left running on `data`."""
    for pid in _cluster_pids(data):
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not _cluster_pids(data), "leftover postgres processes to die")


def _remove_data(data: Path) -> None:
    """Delete the server's folder when it was put in /var/tmp (pytest deletes the rest)."""
    if data.parent.parent == Path("/var/tmp") and data.parent.name.startswith("tracktalk-"):
        shutil.rmtree(data.parent, ignore_errors=True)


def _read_pid_line(proc: subprocess.Popen[str]) -> int:
    """The PID the child prints once its server is up."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE + 20)  # startup may take ~30 s at worst
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        proc.kill()
        _, err = proc.communicate(timeout=DEADLINE)
        raise AssertionError(f"the child did not start a server: {line!r}\n{err}")
    return int(line)


@contextlib.contextmanager
def _start_child(root: Path, mode: str = "death-signal") -> Iterator[subprocess.Popen[str]]:
    """A child Python (its own session, like a program run from a terminal) running CHILD;
    killed at the end if it is still running (a failed test leaves no child behind)."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), mode],
        cwd=PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            yield child
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(DEADLINE)


def _query(url: str, sql: str) -> object:
    """The first value of the first row of `sql`."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One initialised root folder for the module (initdb runs once)."""
    root = tmp_path_factory.mktemp("embedded") / ".tracktalk"
    with EmbeddedPostgres(root, fast=True) as pg:
        data, created = pg.data_dir, pg.created
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (42)")
    yield Cluster(root.resolve(), data, created)
    _kill_cluster(data)
    _remove_data(data)


@pytest.fixture
def no_leftover(cluster: Cluster) -> Iterator[None]:
    """Check that a test leaves no postgres on the cluster, cleaning up if it did."""
    yield
    left = _cluster_pids(cluster.data)
    _kill_cluster(cluster.data)
    assert not left, f"postgres processes left behind: {left}"


def test_first_start_creates_the_cluster(cluster: Cluster) -> None:
    assert cluster.created
    assert (cluster.data / "PG_VERSION").exists()
    assert not _cluster_pids(cluster.data)


def test_start_answers_then_stop_leaves_nothing(cluster: Cluster, no_leftover: None) -> None:
    with EmbeddedPostgres(cluster.root, fast=True) as pg:
        assert pg.pid is not None and _running(pg.pid)
        assert os.getsid(pg.pid) == pg.pid, "postgres runs in its own session, away from Ctrl-C"
        assert _query(pg.url, "SELECT 1") == 1
        assert _query(pg.url, "SELECT current_database()") == "tracktalk"
        assert _query(pg.url, "SHOW max_connections") == "200"
        assert _query(pg.url, "SHOW listen_addresses") == "127.0.0.1"
        assert _query(pg.url, "SHOW fsync") == "off"
        pid = pg.pid
    assert pg.pid is None
    assert not _running(pid)


def test_second_start_reuses_the_data_and_port(cluster: Cluster, no_leftover: None) -> None:
    remembered = int((cluster.root / "port").read_text())
    with EmbeddedPostgres(cluster.root) as pg:
        assert not pg.created
        assert pg.url == f"postgresql://tracktalk@127.0.0.1:{remembered}/tracktalk"
        assert _query(pg.url, "SELECT n FROM kept") == 42
        assert _query(pg.url, "SHOW fsync") == "on"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's data can move to /var/tmp")
def test_root_moves_data_out_of_a_private_folder(cluster: Cluster) -> None:
    # pytest's temporary folders are mode 700, so the postgres user cannot enter them.
    assert cluster.data.parent.parent == Path("/var/tmp")
    note = (cluster.root / "DATA-IS-ELSEWHERE.txt").read_text()
    assert note.splitlines()[0] == f"{cluster.data.parent}/"
    assert cluster.data.stat().st_uid != 0


def test_data_stays_in_a_reachable_root(no_leftover: None) -> None:
    top = Path(tempfile.mkdtemp(prefix="tracktalk-test-"))
    try:
        top.chmod(0o755)  # our own temporary folder: let the postgres user in when we are root
        root = top / ".tracktalk"
        with EmbeddedPostgres(root, fast=True) as pg:
            assert pg.created
            assert pg.data_dir == root.resolve() / "data"
            assert _query(pg.url, "SELECT 1") == 1
            data = pg.data_dir
        assert not _cluster_pids(data)
        assert (root / "postgres.log").exists()
        assert not (root / "DATA-IS-ELSEWHERE.txt").exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_parent_killed_server_stops_itself(cluster: Cluster, no_leftover: None) -> None:
    with _start_child(cluster.root) as child:
        old = _read_pid_line(child)
        child.kill()
        child.wait(timeout=DEADLINE)
    _wait_for(lambda: not _running(old), "the parent-death signal to stop postgres")
    with EmbeddedPostgres(cluster.root, fast=True) as pg:
        assert _query(pg.url, "SELECT n FROM kept") == 42


def test_server_left_running_is_stopped_by_the_next_start(cluster: Cluster, no_leftover: None) -> None:
    with _start_child(cluster.root, "no-death-signal") as child:
        old = _read_pid_line(child)
        child.kill()
        child.wait(timeout=DEADLINE)
    assert _running(old), "without the death signal the server outlives its parent"
    with EmbeddedPostgres(cluster.root, fast=True) as pg:
        assert not _running(old)
        assert pg.pid != old
        assert _query(pg.url, "SELECT n FROM kept") == 42


def _lock_file_naming(cluster: Cluster, pid: int) -> None:
    """Leave postmaster.pid as a real server wrote it, but naming `pid`."""
    with EmbeddedPostgres(cluster.root, fast=True):
        lines = (cluster.data / "postmaster.pid").read_text().splitlines()
    (cluster.data / "postmaster.pid").write_text("\n".join([str(pid), *lines[1:]]) + "\n")


def test_lock_file_of_a_dead_server_is_handled(cluster: Cluster, no_leftover: None) -> None:
    with subprocess.Popen(["true"]) as gone:
        gone.wait(timeout=DEADLINE)
    _lock_file_naming(cluster, gone.pid)
    with EmbeddedPostgres(cluster.root, fast=True) as pg:
        assert _query(pg.url, "SELECT 1") == 1


def test_lock_file_naming_another_program_is_handled(cluster: Cluster, no_leftover: None) -> None:
    # Run by the server's user: postgres itself takes a PID it may not signal for a dead one.
    owner = cluster.data.stat().st_uid
    with subprocess.Popen(["sleep", "60"], user=owner if os.geteuid() == 0 else None) as other:
        try:
            _lock_file_naming(cluster, other.pid)
            with EmbeddedPostgres(cluster.root, fast=True) as pg:
                assert _query(pg.url, "SELECT 1") == 1
            assert _running(other.pid)
        finally:
            other.kill()


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_signal_to_the_parent_stops_the_server(cluster: Cluster, no_leftover: None, how: str) -> None:
    with _start_child(cluster.root) as child:
        pid = _read_pid_line(child)
        if how == "SIGTERM":
            child.send_signal(signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGINT)  # as a terminal does: the whole foreground group
        _, err = child.communicate(timeout=DEADLINE + 10)
    assert child.returncode == (143 if how == "SIGTERM" else -signal.SIGINT), err
    assert not _running(pid)


def test_a_root_in_use_is_refused(cluster: Cluster, no_leftover: None) -> None:
    with EmbeddedPostgres(cluster.root, fast=True) as pg:
        with pytest.raises(EmbeddedError, match="another tracktalk"):
            EmbeddedPostgres(cluster.root).__enter__()
        assert _query(pg.url, "SELECT 1") == 1


def test_find_bindir_and_has_binaries() -> None:
    bindir = find_bindir()
    assert bindir is not None
    assert os.access(bindir / "postgres", os.X_OK) and os.access(bindir / "initdb", os.X_OK)
    done = subprocess.run(
        [sys.executable, "-m", "app.dev.embedded", "--has-binaries"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
