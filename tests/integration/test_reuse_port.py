"""Two `tracktalk serve --reuse-port` processes on one port: the kernel spreads the sockets over
both (SO_REUSEPORT), and each process, a whole replica with its own LISTEN connection, delivers
a comment to the sockets it holds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from tests.support.processes import Replica, free_port, tracktalk
from tests.support.seed import World
from tests.support.sockets import open_socket
from tests.support.writes import insert_comment

pytestmark = pytest.mark.timeout(120)

SOCKETS = 24
"""Spread by a hash of their addresses: all on one process by chance once in 2**23."""


def peer_ports(pid: int, port: int) -> set[int]:
    """The client ports of the connections the process `pid` holds on its 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed as it is read
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    # 01: ESTABLISHED; the remote address is "0100007F:PORT" in hex
    return {int(f[2].split(":")[1], 16) for f in rows if f[1] == local and f[3] == "01" and f[9] in inodes}


async def test_two_processes_on_one_port_both_accept_and_both_deliver_a_comment(
    db_url: str, world: World, log_dir: Path
) -> None:
    port = free_port()
    started: list[Replica] = []
    try:
        for _ in range(2):  # the second binds the port the first listens on
            started.append(Replica(db_url, port=port, serve_args=("--reuse-port",)).start(log_dir, tries=1))
        first, second = started
        users = ["alice", "bob", "dave", "carol"]
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(
                    open_socket(first.ws, world.public, world.tokens[users[i % len(users)]])
                )
                for i in range(SOCKETS)
            ]
            for sock in sockets:
                await sock.expect("connected")
            owner = {p: r.pid for r in started for p in peer_ports(r.pid, port)}
            held_by = [owner.get(sock.conn.local_address[1]) for sock in sockets]
            assert None not in held_by, "a socket that neither process holds"
            assert {first.pid, second.pid} == set(held_by), "the kernel gave every socket to one process"

            comment = await insert_comment(db_url, world.public, world.users["bob"], "to both processes")
            for sock in sockets:
                event = (await sock.events(1))[0]
                assert (event["type"], event["comment"]["id"]) == ("new_comment", comment)
    finally:
        for replica in started:
            replica.stop()


def test_reuse_port_on_a_port_a_plain_replica_holds_fails_at_start_and_says_why(
    replica: Replica, db_url: str
) -> None:
    done = tracktalk("serve", "--port", str(replica.port), "--reuse-port", database_url=db_url)
    assert done.returncode == 2, done.stderr
    assert f"cannot bind 127.0.0.1:{replica.port} with SO_REUSEPORT" in done.stderr
    assert "without --reuse-port" in done.stderr
    assert replica.ready()  # the one that held it is untouched
