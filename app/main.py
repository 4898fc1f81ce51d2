"""The application: `create_app()` builds it; nothing happens at import.

Two parts behind one ASGI callable: the sockets (the track socket, `app/handlers/sockets.py`, and
/api/ws, `app/handlers/topic_sockets.py`: bare ASGI apps, since a replica holds them by the
thousand and the framework's per-request machinery would cost ~3 KiB each) and everything else,
Litestar's (HTTP routes, the page, the OpenAPI schema, the lifespan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide

from app.bounds import MAX_BODY
from app.config import Settings
from app.edge.addresses import PerAddress
from app.edge.cors import Cors
from app.handlers import (
    client,
    comments,
    demo,
    forum,
    health,
    moderation,
    notifications,
    pages,
    schema,
    tracks,
)
from app.handlers.deps import provide_services, provide_user, provide_viewer
from app.handlers.errors import exception_handlers
from app.handlers.request import TracktalkRequest
from app.handlers.sockets import PATH, TrackSockets
from app.handlers.topic_sockets import PATH as TOPICS_PATH
from app.handlers.topic_sockets import TopicSockets
from app.logs import configure_logging
from app.services import Services, running


class Tracktalk:
    """The ASGI app of a replica: sockets to their handlers, the rest to Litestar."""

    def __init__(self, http: Litestar, allowed_origins: tuple[str, ...] = ()) -> None:
        self.http = http
        anonymous = PerAddress()  # one count of anonymous sockets per address, both kinds together
        self.sockets = TrackSockets(lambda: self.services, anonymous)
        self.topic_sockets = TopicSockets(lambda: self.services, anonymous)
        self._serve_http = Cors(http, allowed_origins)
        """Litestar, behind the API's OPTIONS and CORS answers (app/edge/cors.py)."""

    @property
    def state(self) -> State:
        """The Litestar app's state (where the lifespan keeps the services)."""
        return self.http.state

    @property
    def services(self) -> Services:
        """The running replica's services (made in the lifespan)."""
        services: Services = self.http.state.services
        return services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Route one ASGI connection."""
        if scope["type"] == "websocket" and scope["path"].startswith(PATH):
            await self.sockets(scope, receive, send)
        elif scope["type"] == "websocket" and scope["path"] == TOPICS_PATH:
            await self.topic_sockets(scope, receive, send)
        else:
            await self._serve_http(scope, receive, send)


def create_app(settings: Settings | None = None) -> Tracktalk:
    """The app for `settings` (read from the environment when not given)."""
    settings = settings or Settings.from_env()
    configure_logging(json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with running(settings) as services:
            app.state.services = services
            yield

    handlers: list[Any] = [
        *comments.route_handlers,
        *moderation.route_handlers,
        *tracks.route_handlers,
        *notifications.route_handlers,
        *forum.route_handlers,
        *health.route_handlers,
        *pages.route_handlers,
        *client.route_handlers,
        *schema.route_handlers,
    ]
    if settings.demo:
        handlers += demo.route_handlers
    http = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "viewer": Provide(provide_viewer),
            "user": Provide(provide_user),
        },
        exception_handlers=exception_handlers,
        request_class=TracktalkRequest,
        request_max_body_size=MAX_BODY,
        openapi_config=schema.openapi_config(),
    )
    schema.complete(http)
    return Tracktalk(http, settings.allowed_origins)
