"""Routes of the caller's notifications."""

from __future__ import annotations

from typing import Annotated

from litestar import Response, get, post
from litestar.params import Parameter

from app.bounds import MAX_BIGINT, MAX_NOTIFICATION_PAGE, NOTIFICATION_PAGE
from app.data import notifications
from app.data.users import Viewer
from app.handlers.comments import LINK
from app.handlers.schema import SIGNED_IN, errors
from app.services import Services
from app.wire import MarkRead, NotificationPage, UnreadCount

_TAG = ["notifications"]


@get(
    "/api/notifications",
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(401, 422, 503),
    response_headers=[LINK],
)
async def list_notifications(
    services: Services,
    user: Viewer,
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_NOTIFICATION_PAGE, description="Notifications per page.")
    ] = NOTIFICATION_PAGE,
    before_id: Annotated[
        int | None, Parameter(ge=1, le=MAX_BIGINT, description="Cursor: the last id of the previous page.")
    ] = None,
) -> Response[NotificationPage]:
    """The caller's notifications, newest first, with the unread count; `Link: rel="next"` pages on."""
    async with services.pool.connection() as conn:
        items = await notifications.page(conn, user.id, before_id=before_id, limit=limit)
        unread = await notifications.unread(conn, user.id)
    headers = {}
    if len(items) == limit:
        headers["Link"] = f'</api/notifications?before_id={items[-1].id}&limit={limit}>; rel="next"'
    return Response(NotificationPage(notifications=items, unread=unread), headers=headers)


@post(
    "/api/notifications/read",
    status_code=200,
    tags=_TAG,
    security=SIGNED_IN,
    responses=errors(400, 401, 413, 422, 503),
)
async def mark_read(services: Services, user: Viewer, data: MarkRead | None = None) -> UnreadCount:
    """Mark some notifications (`ids`) or all of them read; answer how many stay unread."""
    ids = data.id_list() if data is not None else None
    async with services.pool.connection() as conn:
        await notifications.mark_read(conn, user.id, ids)
        return UnreadCount(unread=await notifications.unread(conn, user.id))


route_handlers = [list_notifications, mark_read]
