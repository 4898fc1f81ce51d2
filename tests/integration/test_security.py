"""Who gets in, and how much they may do: tokens, origins, private tracks, rate limits, a slow database."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from tests.support.processes import ROOT, SECRET, Replica, free_port, replicas
from tests.support.seed import World, seed
from tests.support.sockets import open_socket
from tests.support.writes import insert_comment


def forge(header: dict[str, str], claims: dict[str, object], key: bytes) -> str:
    """A JWT with any header, signed with HMAC-SHA256 under `key`."""

    def part(value: object) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part(header) + b"." + part(claims)
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


@pytest.fixture(scope="module")
def strict(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica with tight limits and an Origin allow-list."""
    env = {
        "TRACKTALK_COMMENTS_PER_MINUTE": "3",
        "TRACKTALK_WRITES_PER_MINUTE": "6",
        "TRACKTALK_SOCKETS_PER_USER": "2",
        "TRACKTALK_ALLOWED_ORIGINS": "https://app.example, https://other.example",
        "TRACKTALK_STATEMENT_TIMEOUT": "1",
    }
    with replicas(db_url, log_dir, 1, **env) as started:
        yield started[0]


@pytest.mark.parametrize(
    "header",
    [{"alg": "HS512", "typ": "JWT"}, {"alg": "RS256", "typ": "JWT"}, {"alg": "none", "typ": "JWT"}],
    ids=["hs512", "rs256-confusion", "none"],
)
def test_tokens_in_another_algorithm_are_refused_even_with_the_right_key(
    replica: Replica, world: World, header: dict[str, str]
) -> None:
    token = forge(header, {"sub": str(world.users["alice"]), "exp": int(time.time()) + 600}, SECRET.encode())
    answer = httpx.post(
        f"{replica.http}/api/tracks/{world.public}/comments",
        json={"content": "forged", "timestamp": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert (answer.status_code, answer.json()["detail"]) == (401, "invalid token")


async def test_a_socket_is_closed_with_4001_when_its_token_expires_and_can_come_back(
    replica: Replica, world: World, db_url: str
) -> None:
    short = issue_token(SECRET, world.users["alice"], 2)
    async with open_socket(replica.ws, world.public, short) as sock:
        seq = (await sock.expect("connected"))["seq"]
        code, reason = await sock.closed(timeout=15)
    assert code == 4001 and reason and reason.startswith("token expired")
    missed = await insert_comment(db_url, world.public, world.users["bob"], "while the token was renewed")
    async with open_socket(replica.ws, world.public, world.tokens["alice"], since=seq) as again:
        await again.expect("connected")
        assert (await again.events(1))[0]["comment"]["id"] == missed


async def test_the_origin_allow_list_guards_the_handshake(strict: Replica, world: World) -> None:
    async with open_socket(
        strict.ws, world.public, world.tokens["bob"], origin="https://evil.example"
    ) as evil:
        code, reason = await evil.closed()
    assert (code, reason, evil.received) == (1008, "origin not allowed", [])
    async with open_socket(
        strict.ws, world.public, world.tokens["bob"], origin="https://other.example"
    ) as good:
        await good.expect("connected")


async def test_private_tracks_stay_private_through_since_replays(
    replica: Replica, world: World, db_url: str
) -> None:
    await insert_comment(db_url, world.private, world.users["carol"], "for the team only")
    async with open_socket(replica.ws, world.private, world.tokens["alice"], since=0) as outsider:
        code, reason = await outsider.closed()
    assert (code, reason, outsider.received) == (1008, "track not found", [])


def test_comments_per_user_per_minute_are_limited_with_429(strict: Replica, world: World) -> None:
    def post(who: str) -> httpx.Response:
        return httpx.post(
            f"{strict.http}/api/tracks/{world.public}/comments",
            json={"content": "again", "timestamp": 1},
            headers=world.auth(who),
            timeout=10,
        )

    assert [post("dave").status_code for _ in range(3)] == [201, 201, 201]
    refused = post("dave")
    assert refused.status_code == 429
    assert "at most 3 comments a minute" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 0
    assert post("bob").status_code == 201  # others are not slowed down


async def _exactly_four_get_through(
    pair: list[Replica],
    write: Callable[..., Awaitable[httpx.Response]],
    done: int,
    detail: str,
) -> None:
    """Dave's ten writes at once, spread over both replicas: exactly four get through (`done`);
    then each replica refuses him with 429, `Retry-After` and `detail`, and lets bob through."""
    answers = await asyncio.gather(*(write(pair[k % 2]) for k in range(10)))
    assert sorted(a.status_code for a in answers) == [done] * 4 + [429] * 6
    for replica in pair:
        refused = await write(replica)
        assert refused.status_code == 429, refused.text
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert detail in refused.json()["detail"]
    assert (await write(pair[1], "bob")).status_code == done  # others are not slowed down


async def test_the_comment_limit_holds_across_replicas_and_concurrent_posts(
    new_database: Callable[[], str], log_dir: Path
) -> None:
    url = new_database()
    world = seed(url)
    with replicas(url, log_dir, 2, TRACKTALK_COMMENTS_PER_MINUTE="4") as pair:
        async with httpx.AsyncClient(timeout=10) as client:

            async def post(replica: Replica, who: str = "dave") -> httpx.Response:
                return await client.post(
                    f"{replica.http}/api/tracks/{world.public}/comments",
                    json={"content": "as fast as I can", "timestamp": 1},
                    headers=world.auth(who),
                )

            await _exactly_four_get_through(pair, post, 201, "at most 4 comments a minute")

            # Posts are counted, not the comments left: deleting one gives no room back.
            kept = (await post(pair[0], "alice")).json()
            assert (await post(pair[1], "alice")).status_code == 201
            gone = await client.delete(
                f"{pair[0].http}/api/comments/{kept['id']}", headers=world.auth("alice")
            )
            assert gone.status_code == 204
            assert [(await post(pair[k % 2], "alice")).status_code for k in range(3)] == [201, 201, 429]
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM comments WHERE user_id = %s", (world.users["dave"],)
        ).fetchone()
    assert row == (4,)


def writes_of_every_kind(base: str, world: World, who: str, comment_id: int) -> dict[str, httpx.Request]:
    """One request of each route that TRACKTALK_WRITES_PER_MINUTE counts, as `who`."""
    auth = world.auth(who)
    return {
        "edit": httpx.Request(
            "PUT", f"{base}/api/comments/{comment_id}", json={"content": "edited"}, headers=auth
        ),
        "like comment": httpx.Request("POST", f"{base}/api/comments/{comment_id}/like", headers=auth),
        "unlike comment": httpx.Request("DELETE", f"{base}/api/comments/{comment_id}/like", headers=auth),
        "like track": httpx.Request("POST", f"{base}/api/tracks/{world.public}/like", headers=auth),
        "unlike track": httpx.Request("DELETE", f"{base}/api/tracks/{world.public}/like", headers=auth),
        "share": httpx.Request("POST", f"{base}/api/tracks/{world.public}/share", headers=auth),
    }


def test_writes_per_user_per_minute_are_limited_with_429(strict: Replica, world: World) -> None:
    with httpx.Client(timeout=10) as client:

        def post_comment(who: str) -> httpx.Response:
            return client.post(
                f"{strict.http}/api/tracks/{world.public}/comments",
                json={"content": f"by {who} @bob", "timestamp": 1},
                headers=world.auth(who),
            )

        mine = post_comment("alice")
        assert mine.status_code == 201, mine.text
        writes = writes_of_every_kind(strict.http, world, "alice", mine.json()["id"])
        # Six writes, one of them a like that changes nothing: it is counted all the same.
        for name in ["edit", "like comment", "like comment", "unlike comment", "like track", "share"]:
            answer = client.send(writes[name])
            assert answer.status_code == 200, (name, answer.text)
        # The seventh write, whichever route: 429, and nothing written.
        for name, request in writes.items():
            refused = client.send(request)
            assert refused.status_code == 429, (name, refused.text)
            assert 0 < int(refused.headers["retry-after"]) <= 60
            assert refused.json()["detail"].startswith("at most 6 writes a minute: try again in ")
        metrics = client.get(f"{strict.http}/api/tracks/{world.public}/metrics", headers=world.auth("alice"))
        assert metrics.json()["user_has_liked"] is True  # the refused unlike did not happen
        # Comment posts keep their own limit; other users are not slowed down.
        assert post_comment("alice").status_code == 201
        for name, request in writes_of_every_kind(strict.http, world, "bob", mine.json()["id"]).items():
            assert client.send(request).status_code == (403 if name == "edit" else 200), name


async def test_the_write_limit_holds_across_replicas_and_concurrent_writes(
    new_database: Callable[[], str], log_dir: Path
) -> None:
    url = new_database()
    world = seed(url)
    with replicas(url, log_dir, 2, TRACKTALK_WRITES_PER_MINUTE="4") as pair:
        async with httpx.AsyncClient(timeout=10) as client:

            async def share(replica: Replica, who: str = "dave") -> httpx.Response:
                return await client.post(
                    f"{replica.http}/api/tracks/{world.public}/share", headers=world.auth(who)
                )

            await _exactly_four_get_through(pair, share, 200, "at most 4 writes a minute")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM track_shares WHERE user_id = %s", (world.users["dave"],)
        ).fetchone()
    assert row == (4,)


def test_a_write_limit_of_0_lets_every_write_through(replica: Replica, world: World) -> None:
    assert replica.env.get("TRACKTALK_WRITES_PER_MINUTE", "0") == "0"
    with httpx.Client(timeout=10) as client:
        answers = [
            client.post(
                f"{replica.http}/api/tracks/{world.other}/share", headers=world.auth("tina")
            ).status_code
            for _ in range(130)  # more than the default limit of 120
        ]
    assert answers == [200] * 130


@pytest.mark.parametrize("value", ["-1", "lots", "2.5", "1000001"])
def test_a_bad_write_limit_fails_at_start_naming_the_variable(db_url: str, value: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "TRACKTALK_SECRET": SECRET,
        "TRACKTALK_WRITES_PER_MINUTE": value,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(
            f"TRACKTALK_WRITES_PER_MINUTE={value!r}: the server started all the same"
        ) from None
    assert process.returncode == 2, stderr[-2000:]
    assert f"TRACKTALK_WRITES_PER_MINUTE={value!r}" in stderr


async def test_sockets_per_user_are_limited(strict: Replica, world: World) -> None:
    origin = {"origin": "https://app.example"}
    async with (
        open_socket(strict.ws, world.public, world.tokens["tina"], **origin) as first,
        open_socket(strict.ws, world.other, world.tokens["tina"], **origin) as second,
    ):
        await first.expect("connected")
        await second.expect("connected")
        async with open_socket(strict.ws, world.timed, world.tokens["tina"], **origin) as third:
            code, reason = await third.closed()
        assert code == 1008 and reason and reason.startswith("too many sockets")
    async with open_socket(strict.ws, world.timed, world.tokens["tina"], **origin) as later:
        await later.expect("connected")


async def test_a_locked_table_gives_503_in_bounded_time_and_the_listener_carries_on(
    strict: Replica, world: World, db_url: str
) -> None:
    async with (
        open_socket(strict.ws, world.timed, world.tokens["carol"], origin="https://app.example") as sock,
        await psycopg.AsyncConnection.connect(db_url) as locker,
    ):
        await sock.expect("connected")
        await locker.execute("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(
                f"{strict.http}/api/tracks/{world.timed}/comments",
                json={"content": "blocked", "timestamp": 1},
                headers=world.auth("carol"),
            )
        took = time.monotonic() - began
        assert answer.status_code == 503 and "try again" in answer.json()["detail"]
        assert took < 5
        # Meanwhile, writes elsewhere still go live.
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as other:
            await other.execute(
                "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)",
                (world.timed, world.users["bob"]),
            )
        metrics = await sock.expect("track_metrics")
        assert metrics["likes"] >= 1
        await locker.rollback()
