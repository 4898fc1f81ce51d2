"""What handlers get injected: the services, and who is calling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import State
from psycopg.rows import class_row

from app.auth import TokenError, bearer_token
from app.errors import unauthorized
from app.services import Services


@dataclass(frozen=True, slots=True)
class Viewer:
    """The user a verified token names."""

    id: int
    username: str
    is_team: bool


def provide_services(state: State) -> Services:
    """The running replica's services (made in the lifespan)."""
    services: Services = state.services
    return services


async def load_viewer(services: Services, user_id: int) -> Viewer:
    """The user a verified token names; TokenError when that user is gone."""
    async with services.pool.connection() as conn, conn.cursor(row_factory=class_row(Viewer)) as cur:
        await cur.execute("SELECT id, username, is_team FROM users WHERE id = %s", (user_id,))
        viewer = await cur.fetchone()
    if viewer is None:
        raise TokenError("invalid token: its user does not exist")
    return viewer


async def provide_viewer(request: Request[Any, Any, Any], services: Services) -> Viewer | None:
    """The caller, or None without a token; 401 for a token that cannot be trusted."""
    try:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        claims = await services.tokens.verify(token)
        return await load_viewer(services, claims.user_id)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None


async def provide_user(viewer: Viewer | None) -> Viewer:
    """The caller; 401 without a token."""
    if viewer is None:
        raise unauthorized()
    return viewer
