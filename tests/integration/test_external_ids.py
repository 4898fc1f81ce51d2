"""The host's own ids of its users (issue 21, item 2): tokens of its identity provider whose user
claim is a string — `auth0|…`, Keycloak's UUIDs, Clerk's `user_…`, Google's 21 digits — name their
user by `users.external_id`, over HTTP and on sockets; without a row, 401 (1008) saying how to make
one; with TRACKTALK_JWT_PROVISION=1 the row is made on first sight, once, however many first
requests reach however many replicas at once, named after the username claim, unique and
reachable by @mentions. Real replicas, a real JWKS over HTTP (tests/support/idp.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app.auth.subjects import REMEMBER, Subjects, UnknownUser
from tests.support.idp import JwksServer, claims, jwks_server, rsa_key
from tests.support.processes import Replica, replicas
from tests.support.seed import World, new_track
from tests.support.sockets import open_socket
from tests.support.writes import sql

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 10.0

KEY = rsa_key("host-idp-1")

UNKNOWN = (
    "unknown user: no users.external_id is this token's `sub`; add the user, or set TRACKTALK_JWT_PROVISION=1"
)


def subject_token(sub: str, **extra: Any) -> str:
    """A token of the host's identity provider whose `sub` is `sub` (a string)."""
    return KEY.token({**claims(0), "sub": sub, **extra})


@pytest.fixture(scope="module")
def idp() -> Iterator[JwksServer]:
    with jwks_server(KEY) as server:
        yield server


@pytest.fixture(scope="module")
def plain(db_url: str, world: World, log_dir: Path, idp: JwksServer) -> Iterator[Replica]:
    """A replica that takes the identity provider's tokens and makes no user."""
    with replicas(db_url, log_dir, 1, TRACKTALK_JWKS_URL=idp.url) as (started,):
        yield started


@pytest.fixture(scope="module")
def provisioning(db_url: str, world: World, log_dir: Path, idp: JwksServer) -> Iterator[list[Replica]]:
    """Two replicas that make the user of a new subject on first sight."""
    with replicas(db_url, log_dir, 2, TRACKTALK_JWKS_URL=idp.url, TRACKTALK_JWT_PROVISION="1") as started:
        yield started


async def call(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw)


async def post(base: str, track: str, token: str, content: str = "hello") -> httpx.Response:
    return await call(
        "POST", f"{base}/api/tracks/{track}/comments", token, json={"content": content, "timestamp": 1.5}
    )


async def user_of_subject(db_url: str, subject: str) -> list[tuple[Any, ...]]:
    return await sql(db_url, "SELECT id, username FROM users WHERE external_id = %s", (subject,))


@pytest.mark.parametrize(
    "subject",
    [
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "6b1a3f0e-2c4d-4e8f-9a7b-1c2d3e4f5a6b",  # Keycloak, Cognito, Supabase: a UUID
        "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",  # Clerk
        "110169484474386276334",  # Google: 21 digits, more than a users.id has
    ],
    ids=["auth0", "uuid", "clerk", "google"],
)
async def test_a_string_subject_names_the_user_whose_external_id_it_is(
    plain: Replica, world: World, db_url: str, subject: str
) -> None:
    name = f"ext_{uuid.uuid4().hex[:8]}"
    (row,) = await sql(
        db_url, "INSERT INTO users (username, external_id) VALUES (%s, %s) RETURNING id", (name, subject)
    )
    token = subject_token(subject)
    async with open_socket(plain.ws, world.public, token) as sock:
        await sock.expect("connected")
        await sock.send({"type": "typing", "is_typing": True})
        typing = await sock.expect("user_typing")
        answer = await post(plain.http, world.public, token, "by my host's id")
        assert answer.status_code == 201, answer.text
        live = await sock.expect("new_comment", ignore=("user_typing",))
    assert (typing["user_id"], typing["username"]) == (row[0], name)
    assert (answer.json()["user_id"], answer.json()["username"]) == (row[0], name)
    assert live["comment"]["id"] == answer.json()["id"]


async def test_an_unknown_subject_is_refused_saying_how_to_make_its_user(
    plain: Replica, world: World, db_url: str
) -> None:
    subject = f"auth0|{uuid.uuid4().hex}"
    token = subject_token(subject, preferred_username="nobody")
    for answer in (
        await post(plain.http, world.public, token),
        await call("GET", f"{plain.http}/api/tracks/{world.public}/comments", token),
    ):
        assert (answer.status_code, answer.json()["detail"]) == (401, UNKNOWN)
    async with open_socket(plain.ws, world.public, token) as sock:
        code, reason = await sock.closed()
    assert (code, reason, sock.received) == (1008, UNKNOWN, [])
    assert await user_of_subject(db_url, subject) == []
    # Made by the host a moment later: found at once (an unknown subject is not remembered).
    await sql(
        db_url, "INSERT INTO users (username, external_id) VALUES (%s, %s)", (uuid.uuid4().hex[:12], subject)
    )
    assert (await post(plain.http, world.public, token)).status_code == 201


async def test_numbers_and_strings_of_digits_are_users_ids_as_before(plain: Replica, world: World) -> None:
    bob = world.users["bob"]
    for sub in (str(bob), bob):
        answer = await post(plain.http, world.public, KEY.token({**claims(0), "sub": sub}))
        assert (answer.status_code, answer.json()["user_id"]) == (201, bob), answer.text


async def test_provisioning_makes_the_user_on_first_sight_named_after_the_claim(
    provisioning: list[Replica], world: World, db_url: str
) -> None:
    first, second = provisioning
    tag = uuid.uuid4().hex[:6]
    wanted = {
        # subject: (the claims it comes with, the username it gets)
        f"auth0|{tag}a": ({"preferred_username": f"José María {tag}"}, f"Jose_Maria_{tag}"),
        f"auth0|{tag}b": ({"preferred_username": f"{tag}.lee@example.com"}, f"{tag}_lee"),
        f"auth0|{tag}c": (
            {"preferred_username": f"{tag.upper()}_LEE"},
            f"{tag.upper()}_LEE_2",
        ),  # case aside: taken
        f"auth0|{tag}d": ({"preferred_username": "Юлия"}, "user"),
    }
    for subject, (extra, _) in wanted.items():
        answer = await post(first.http, world.public, subject_token(subject, **extra))
        assert answer.status_code == 201, answer.text
    got = {subject: (await user_of_subject(db_url, subject))[0][1] for subject in wanted}
    expected = {subject: name for subject, (_, name) in wanted.items()}
    assert got[f"auth0|{tag}d"].startswith("user")  # `user`, or `user_N` when another test made one
    expected[f"auth0|{tag}d"] = got[f"auth0|{tag}d"]
    assert got == expected
    # Found, not made again, on the other replica; and reachable by an @mention.
    mentioner = subject_token(f"auth0|{tag}a")
    answer = await post(second.http, world.public, mentioner, f"hi @{tag.upper()}_LEE_2")
    assert answer.status_code == 201 and answer.json()["username"] == f"Jose_Maria_{tag}", answer.text
    mentioned = await call("GET", f"{second.http}/api/notifications", subject_token(f"auth0|{tag}c"))
    kinds = [(n["kind"], n["comment_id"]) for n in mentioned.json()["notifications"]]
    assert ("mention", answer.json()["id"]) in kinds
    rows = await sql(db_url, "SELECT count(*) FROM users WHERE external_id LIKE %s", (f"auth0|{tag}%",))
    assert rows == [(4,)]


async def test_first_requests_of_new_users_at_once_on_two_replicas_make_one_user_each(
    provisioning: list[Replica], world: World, db_url: str
) -> None:
    """Twelve new users who all want the name `sam…`, each making two first requests at once (one
    to each replica: a POST on one, a socket on the other): one row each, twelve distinct names."""
    stem = f"sam{uuid.uuid4().hex[:6]}"
    subjects = [f"user_{uuid.uuid4().hex}" for _ in range(12)]
    tracks = [new_track(db_url) for _ in subjects]  # a track each: the typing seen is the user's own

    async def by_socket(replica: Replica, track: str, token: str) -> int:
        async with open_socket(replica.ws, track, token) as sock:
            await sock.expect("connected")
            await sock.send({"type": "typing", "is_typing": True})
            # (the POST on the same track may come first)
            return int((await sock.expect("user_typing", ignore=("new_comment",)))["user_id"])

    async def by_post(replica: Replica, track: str, token: str) -> int:
        answer = await post(replica.http, track, token)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["user_id"])

    firsts = []
    for n, (subject, track) in enumerate(zip(subjects, tracks, strict=True)):
        token = subject_token(subject, preferred_username=stem)
        one, other = provisioning if n % 2 else provisioning[::-1]
        firsts += [by_post(one, track, token), by_socket(other, track, token)]
    seen = await asyncio.gather(*firsts)
    rows = await sql(
        db_url, "SELECT external_id, id, username FROM users WHERE external_id = ANY(%s)", (subjects,)
    )
    assert sorted(row[0] for row in rows) == sorted(subjects)  # one row each
    ids = {row[0]: row[1] for row in rows}
    for n, subject in enumerate(subjects):
        assert seen[2 * n] == seen[2 * n + 1] == ids[subject]
    assert sorted(row[2] for row in rows) == sorted([stem] + [f"{stem}_{n}" for n in range(2, 13)])


async def test_a_provisioned_user_deleted_since_is_made_again_at_the_next_request(
    provisioning: list[Replica], world: World, db_url: str
) -> None:
    subject = f"kc-{uuid.uuid4()}"
    token = subject_token(subject, preferred_username=f"gone{uuid.uuid4().hex[:6]}")
    first = await post(provisioning[0].http, world.public, token)
    assert first.status_code == 201, first.text
    await sql(db_url, "DELETE FROM users WHERE external_id = %s", (subject,))
    # The replica remembered the token's user: it finds the user gone and looks the subject up again.
    again = await post(provisioning[0].http, world.public, token)
    assert again.status_code == 201, again.text
    assert again.json()["user_id"] != first.json()["user_id"]
    assert [row[0] for row in await user_of_subject(db_url, subject)] == [again.json()["user_id"]]


async def test_a_remembered_subject_is_asked_again_after_a_while(db_url: str, world: World) -> None:
    """A subject given to another user (`UPDATE users SET external_id …`) is followed once what was
    remembered of it is REMEMBER seconds old; what is unknown is never remembered."""
    now = [1000.0]
    subject = f"auth0|{uuid.uuid4().hex}"
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as pool:
        subjects = Subjects(pool, provision=False, clock=lambda: now[0])
        with pytest.raises(UnknownUser):
            await subjects.user_id(subject, None)
        await sql(db_url, "UPDATE users SET external_id = %s WHERE id = %s", (subject, world.users["dave"]))
        assert await subjects.user_id(subject, None) == world.users["dave"]
        await sql(db_url, "UPDATE users SET external_id = NULL WHERE id = %s", (world.users["dave"],))
        await sql(db_url, "UPDATE users SET external_id = %s WHERE id = %s", (subject, world.users["bob"]))
        now[0] += REMEMBER - 1
        assert await subjects.user_id(subject, None) == world.users["dave"]  # remembered
        now[0] += 1
        assert await subjects.user_id(subject, None) == world.users["bob"]
        assert subjects.forget(world.users["bob"]) and not subjects.forget(world.users["bob"])
    await sql(db_url, "UPDATE users SET external_id = NULL WHERE id = %s", (world.users["bob"],))


def test_the_app_role_makes_users_only_through_provision_user(db_url: str, world: World) -> None:
    """tracktalk.provision_user runs as its owner: a role that may only read users (as the app role
    of sql/roles.sql) makes a user through it, and cannot insert one itself. A name that no
    @mention reaches is refused."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA tracktalk TO {role}")
        conn.execute(f"GRANT SELECT ON users TO {role}")
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                (made,) = conn.execute("SELECT tracktalk.provision_user('role|1', 'carol')").fetchone() or ()
                (again,) = conn.execute("SELECT tracktalk.provision_user('role|1', 'other')").fetchone() or ()
                assert made == again
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    conn.execute("INSERT INTO users (username) VALUES ('sneaky')")
                with (
                    pytest.raises(psycopg.errors.InvalidParameterValue, match="not one an @mention reaches"),
                    conn.transaction(),
                ):
                    conn.execute("SELECT tracktalk.provision_user('role|2', 'no spaces')")
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
        row = conn.execute("SELECT username FROM users WHERE external_id = 'role|1'").fetchone()
    assert row == ("carol_2",)
