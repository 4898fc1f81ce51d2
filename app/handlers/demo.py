"""Demo sign-in: pick a user, get a token. Registered only with the embedded database or
TRACKTALK_DEMO=1; in production the host app hands the page its token."""

from __future__ import annotations

from litestar import get, post
from psycopg.rows import class_row

from app.auth.hs256 import issue_token
from app.handlers.schema import errors
from app.handlers.validation import check_id
from app.problems import NotFound
from app.services import Services
from app.wire import DemoToken, DemoUser

_TAG = ["demo"]
_TTL = 12 * 3600


@get("/api/demo/users", tags=_TAG, responses=errors(503))
async def demo_users(services: Services) -> list[DemoUser]:
    """The users one may sign in as."""
    async with services.pool.connection() as conn, conn.cursor(row_factory=class_row(DemoUser)) as cur:
        await cur.execute("SELECT id, username, is_creator, is_team FROM users ORDER BY id LIMIT 100")
        return await cur.fetchall()


@post("/api/demo/token/{user_id:int}", status_code=200, tags=_TAG, responses=errors(404, 503))
async def demo_token(user_id: int, services: Services) -> DemoToken:
    """A token for a demo user."""
    check_id("user", user_id)
    async with services.pool.connection() as conn, conn.cursor(row_factory=class_row(DemoUser)) as cur:
        await cur.execute("SELECT id, username, is_creator, is_team FROM users WHERE id = %s", (user_id,))
        user = await cur.fetchone()
    if user is None:
        raise NotFound(f"user {user_id}")
    return DemoToken(token=issue_token(services.settings.secret, user.id, _TTL), user=user)


route_handlers = [demo_users, demo_token]
