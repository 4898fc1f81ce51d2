"""Users as the API sees its caller."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import class_row

from app.data.db import Conn


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
