"""Users as the API sees its caller, and as the host's identity provider names them
(`users.external_id`: its subject), made on first sight where the host lets tracktalk do so."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from psycopg.rows import class_row

from app.data.db import Conn

MAX_USERNAME = 48
"""Longest username made from a token's claim, in characters: `_` and a number of up to 10 digits
still fit in the 64 characters an @mention reads (tracktalk.mentioned_names)."""
FALLBACK_USERNAME = "user"
"""The username of a new user whose token proposes none that can be used (`user`, `user_2`, …)."""
_NOT_MENTIONABLE = re.compile(r"[^A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Viewer:
    """The user a verified token names."""

    id: int
    username: str
    is_team: bool


async def viewer(conn: Conn, user_id: int) -> Viewer | None:
    """The user `user_id`, None when there is none (deleted since its token was made)."""
    async with conn.cursor(row_factory=class_row(Viewer)) as cur:
        await cur.execute("SELECT id, username, is_team FROM users WHERE id = %s", (user_id,))
        return await cur.fetchone()


async def by_external_id(conn: Conn, external_id: str) -> int | None:
    """The id of the user whose `external_id` is this, None when there is none."""
    cur = await conn.execute("SELECT id FROM users WHERE external_id = %s", (external_id,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def provision(conn: Conn, external_id: str, username: str) -> int:
    """The id of the user whose `external_id` is this, made now if there is none, named `username`
    (a `mentionable()` one) or, when that is taken, `username_2`, `username_3`, … (the SQL function
    tracktalk.provision_user: one at a time across replicas)."""
    cur = await conn.execute("SELECT tracktalk.provision_user(%s, %s)", (external_id, username))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def mentionable(proposed: object) -> str:
    """A username that an @mention reaches (1 to 48 of A-Z, a-z, 0-9 and _), made of what a token
    proposes: the part before an `@` (an e-mail address), letters with their accents taken off
    (`José` -> `Jose`), every run of anything else one `_` (`Mary Ann` -> `Mary_Ann`), no `_` at
    either end, cut at 48; `user` when nothing is left (no claim, or a name in another script)."""
    if not isinstance(proposed, str):
        return FALLBACK_USERNAME
    name = proposed.split("@", 1)[0] if "@" in proposed[1:] else proposed
    name = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    name = _NOT_MENTIONABLE.sub("_", name).strip("_")[:MAX_USERNAME].rstrip("_")
    return name or FALLBACK_USERNAME
