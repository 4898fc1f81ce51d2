"""What handlers get injected: the services, and who is calling."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State

from app.auth.claims import TokenError, bearer_token
from app.data import users
from app.data.users import Viewer
from app.handlers.errors import unauthorized
from app.services import Services


def provide_services(state: State) -> Services:
    """The running replica's services (made in the lifespan)."""
    services: Services = state.services
    return services


async def load_viewer(services: Services, user_id: int) -> Viewer:
    """The user a verified token names; TokenError when that user is gone."""
    async with services.pool.connection() as conn:
        found = await users.viewer(conn, user_id)
    if found is None:
        raise TokenError("invalid token: its user does not exist")
    return found


async def provide_viewer(request: Request[Any, Any, Any], services: Services) -> Viewer | None:
    """The caller, or None without a token; 401 for a token that cannot be trusted."""
    try:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        claims = await services.tokens.verify(token)
        try:
            return await load_viewer(services, claims.user_id)
        except TokenError:
            # A user found by the token's external id, deleted since: look the id up afresh (it
            # may name another user now, or, with TRACKTALK_JWT_PROVISION=1, a new one).
            if not services.tokens.forget(claims.user_id):
                raise
            claims = await services.tokens.verify(token)
            return await load_viewer(services, claims.user_id)
    except TokenError as exc:
        raise unauthorized(str(exc)) from None


async def provide_user(viewer: Viewer | None) -> Viewer:
    """The caller; 401 without a token."""
    if viewer is None:
        raise unauthorized()
    return viewer
