"""One time format everywhere: RFC 3339 in UTC with `Z`, microseconds as six digits, left out
when they are zero — over HTTP and on the socket alike, whatever the database's TimeZone.

The database of this module runs in Asia/Kolkata (+05:30), as a DBA's may; a comment whose time
has no microseconds and one whose microseconds end in zeros (to_json would write `.00001`) are
written by SQL, and each time of each kind of message is compared with the same time over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.processes import Replica, replicas
from tests.support.seed import World, seed
from tests.support.sockets import open_socket
from tests.support.writes import post_comment

pytestmark = pytest.mark.timeout(120)


FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


@pytest.fixture(scope="module")
def kolkata(new_database: Callable[[], str]) -> tuple[str, World]:
    url = new_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET timezone = 'Asia/Kolkata'")
    return url, seed(url)


@pytest.fixture(scope="module")
def server(kolkata: tuple[str, World], log_dir: Path) -> Iterator[Replica]:
    with replicas(kolkata[0], log_dir, 1) as (started,):
        yield started


async def get(server: Replica, path: str, world: World, who: str = "bob") -> Any:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        answer = await client.get(path, headers=world.auth(who))
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_http_and_the_socket_write_every_time_alike(
    server: Replica, kolkata: tuple[str, World]
) -> None:
    url, world = kolkata
    track, bob = world.public, world.users["bob"]
    async with open_socket(server.ws, track, world.tokens["bob"]) as sock:
        await sock.expect("connected")
        with psycopg.connect(url, autocommit=True) as conn:
            for at in ("2026-01-02 03:04:05+00", "2026-01-02 03:04:05.00001+00"):
                conn.execute(
                    "INSERT INTO comments (track_id, user_id, content, timestamp, created_at)"
                    " VALUES (%s, %s, 'by SQL', 1, %s)",
                    (track, world.users["alice"], at),
                )
        posted = await post_comment(server.http, world, "alice", track, "hey @bob")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE comments SET content = 'hey @bob, edited' WHERE id = %s", (posted["id"],))
        sent: dict[str, dict[str, Any]] = {}
        while (
            not {"new_comment", "comment_edited", "mention", "notification"} <= sent.keys()
            or len([m for m in sock.received if m["type"] == "new_comment"]) < 3
        ):
            message = await sock.recv()
            sent.setdefault(message["type"], message)
        new_comments = [m["comment"] for m in sock.received if m["type"] == "new_comment"]

    listed = {c["id"]: c for c in await get(server, f"/api/tracks/{track}/comments", world)}
    notes = (await get(server, "/api/notifications", world))["notifications"]
    assert [c["created_at"] for c in new_comments[:2]] == [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.000010Z",
    ]
    pairs = [(c["created_at"], listed[c["id"]]["created_at"]) for c in new_comments]
    edited = sent["comment_edited"]
    pairs.append((edited["last_edited_at"], listed[edited["comment_id"]]["last_edited_at"]))
    pairs.append((sent["mention"]["comment"]["created_at"], listed[posted["id"]]["created_at"]))
    note = next(n for n in notes if n["id"] == sent["notification"]["notification"]["id"])
    pairs.append((sent["notification"]["notification"]["created_at"], note["created_at"]))
    assert note["user_id"] == bob
    for on_socket, over_http in pairs:
        assert on_socket == over_http, pairs
        assert FORMAT.fullmatch(on_socket), on_socket
    # and a notification read: read_at, over HTTP
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        await client.post("/api/notifications/read", headers=world.auth("bob"))
    read = (await get(server, "/api/notifications", world))["notifications"][0]["read_at"]
    assert FORMAT.fullmatch(read), read
