"""Writing as a client or another service does: any statement on a connection of its own, a
comment inserted with SQL, a comment posted through the API."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from tests.support.seed import World


async def sql(db_url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (autocommit: it commits at once)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def insert_comment(db_url: str, track: str, user_id: int, content: str, ts: float = 1.0) -> int:
    rows = await sql(
        db_url,
        "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, %s, %s) RETURNING id",
        (track, user_id, content, ts),
    )
    return int(rows[0][0])


async def post_comment(base: str, world: World, who: str, track: str, content: str) -> dict[str, Any]:
    """POST a comment as `who` to the server at `base`; the comment object."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.post(
            f"/api/tracks/{track}/comments",
            json={"content": content, "timestamp": 2.5},
            headers=world.auth(who),
        )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result
