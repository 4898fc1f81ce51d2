"""The `tracktalk` command as a newcomer runs it: from another folder than the project's."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.auth.hs256 import verify_token
from tests.support.processes import ROOT, START_TIMEOUT, Replica, free_port
from tests.support.waiting import wait_until

TRACKTALK = Path(sys.executable).with_name("tracktalk")
"""The console script, as `pip install` put it beside the interpreter."""


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`tracktalk ARGS` in `cwd`, with `env` and none of the suite's TRACKTALK_… or DATABASE_URL."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKTALK_", "DATABASE_URL"))}
    return subprocess.run(
        [str(TRACKTALK), *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_outside_the_project_folder_says_where_it_looked_and_makes_nothing(tmp_path: Path) -> None:
    """It used to make a new key there and print a token that every server refuses."""
    made = run("token", "3", cwd=tmp_path)
    assert made.returncode == 2, made
    assert made.stdout == ""
    message = made.stderr
    assert message.startswith("tracktalk: no token key: TRACKTALK_SECRET is not set"), message
    assert str(tmp_path / ".tracktalk" / "secret") in message  # where it looked
    for hint in ("TRACKTALK_SECRET", "TRACKTALK_HOME", "tracktalk serve"):  # what to do
        assert hint in message, message
    assert list(tmp_path.iterdir()) == []  # no key made, no folder


def test_token_signs_with_the_key_serve_made(tmp_path: Path) -> None:
    home = tmp_path / "project" / ".tracktalk"
    home.mkdir(parents=True)
    (home / "secret").write_text("the-key-serve-made-0123456789-abcdefghij\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, env in [(home.parent, {}), (elsewhere, {"TRACKTALK_HOME": str(home)})]:
        made = run("token", "3", cwd=cwd, **env)
        assert made.returncode == 0, made.stderr
        claims = verify_token("the-key-serve-made-0123456789-abcdefghij", made.stdout.strip())
        assert claims.user_id == 3
    assert list(elsewhere.iterdir()) == []
    # With TRACKTALK_SECRET set, no folder is needed at all.
    signed = run("token", "4", cwd=elsewhere, TRACKTALK_SECRET="s" * 32)
    assert signed.returncode == 0 and verify_token("s" * 32, signed.stdout.strip()).user_id == 4


def test_serve_without_its_database_says_so_in_one_line(tmp_path: Path) -> None:
    """A container restarted while its database starts printed a traceback each time."""
    made = run(
        "serve",
        "--port",
        "1",
        cwd=tmp_path,
        DATABASE_URL="postgresql://tracktalk@127.0.0.1:1/tracktalk",
        TRACKTALK_SECRET="s" * 32,
    )
    assert made.returncode == 1
    lines = made.stderr.splitlines()
    assert len(lines) == 1, made.stderr
    assert lines[0].startswith("tracktalk: the database cannot be reached (DATABASE_URL): "), lines
    assert "Connection refused" in lines[0] and "Traceback" not in made.stderr


def test_a_command_on_a_folder_whose_server_runs_says_how_to_reach_it_in_one_line(tmp_path: Path) -> None:
    """`tracktalk migrate` (or demo, check, a second serve) while `make run` serves printed a
    traceback; it now says who holds the folder and the DATABASE_URL of the database it serves."""
    home = tmp_path / ".tracktalk"
    home.mkdir()
    (home / "port").write_text("54321\n")
    with open(home / "lock", "w") as lock:  # as a running `tracktalk serve` holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        for command in (["migrate"], ["demo"], ["check"], ["serve", "--port", "1"]):
            made = run(*command, cwd=tmp_path)
            assert made.returncode == 1, (command, made)
            assert "Traceback" not in made.stderr, made.stderr
            lines = made.stderr.splitlines()
            assert len(lines) == 1, made.stderr
            assert lines[0].startswith(
                f"tracktalk: another tracktalk (PID 4242) is using the database in {home}"
            )
            assert "set DATABASE_URL=postgresql://tracktalk@127.0.0.1:54321/tracktalk" in lines[0], lines[0]
    assert sorted(p.name for p in home.iterdir()) == ["lock", "port"]  # nothing made, nothing started


LOG_LINES = """
import logging
from app.logs import configure_logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # as `tracktalk` does
configure_logging(json={json})
logging.getLogger("psycopg.pool").warning(
    "error connecting in %r: %s", "tracktalk-requests",
    'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\\n'
    "\\tIs the server running on that host and accepting TCP/IP connections?",
)
logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1:9/jwks?token=secret "HTTP/1.1 200 OK"')
logging.getLogger("app.listener").info("listening")
"""


def test_the_libraries_log_lines_take_the_apps_format(tmp_path: Path) -> None:
    """psycopg's and httpx's lines came out plain with TRACKTALK_LOG_JSON=1, and psycopg's
    connection errors on two lines."""
    for json_logs in (True, False):
        done = subprocess.run(
            [sys.executable, "-c", LOG_LINES.format(json=json_logs)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 3, done.stderr
        assert "secret" not in done.stderr
        if json_logs:
            records = [json.loads(line) for line in lines]
            assert [r["logger"] for r in records] == ["psycopg.pool", "httpx", "app.listener"]
            assert records[0]["message"].endswith(
                "Connection refused Is the server running on that host and accepting TCP/IP connections?"
            )
        else:
            assert lines[0].startswith("WARNING psycopg.pool: error connecting in 'tracktalk-requests': ")
            assert lines[1].startswith("INFO httpx: HTTP Request: GET http://127.0.0.1:9/jwks?token=***")


def descendants(pid: int) -> list[int]:
    """The processes under `pid` (from /proc), nearest first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def test_make_run_stopped_with_sigterm_ends_without_an_error(db_url: str) -> None:
    """It printed `make: *** [Makefile:…: run] Error 143` (tracktalk ends by the signal it got)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKTALK_")}
    env.update(DATABASE_URL=db_url, TRACKTALK_SECRET="s" * 32, MAKEFLAGS="")
    make = subprocess.Popen(
        ["make", "-s", "run", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = Replica(db_url, port=port)
        wait_until(ready.ready, START_TIMEOUT, "make run to serve")
        server = [  # the deepest: a shell may stand between make and tracktalk
            pid for pid in descendants(make.pid) if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ][-1]
        os.kill(server, signal.SIGTERM)
        output, _ = make.communicate(timeout=30)
    finally:
        if make.poll() is None:
            make.kill()
            make.wait(5)
    assert make.returncode == 0, output
    assert "Error" not in output and "***" not in output, output
