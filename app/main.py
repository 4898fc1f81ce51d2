"""The Litestar application: `create_app()` builds it; nothing happens at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app.config import Settings
from app.deps import provide_services, provide_user, provide_viewer
from app.errors import MAX_BODY, exception_handlers
from app.handlers import comments, demo, health, notifications, pages, sockets, tracks
from app.logs import configure_logging
from app.request import TracktalkRequest
from app.services import running


def create_app(settings: Settings | None = None) -> Litestar:
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
        *tracks.route_handlers,
        *notifications.route_handlers,
        *sockets.route_handlers,
        *health.route_handlers,
        *pages.route_handlers,
    ]
    if settings.demo:
        handlers += demo.route_handlers
    return Litestar(
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
        openapi_config=OpenAPIConfig(title="tracktalk", version="0.1.0", path="/schema"),
    )
