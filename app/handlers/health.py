"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotAuthorizedException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.db import schema_version, serves
from app.services import Services
from app.wire import Health

_DB_CHECK_TIMEOUT = 2.0
"""Seconds /readyz waits for the database before calling it unreachable."""


@get("/healthz", tags=["health"])
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@get("/readyz", tags=["health"])
async def readyz(services: Services) -> Response[Health]:
    """Ready: the database answers, its schema is this code's or newer, the listener is connected and caught up."""
    try:
        version = await asyncio.wait_for(schema_version(services.pool), _DB_CHECK_TIMEOUT)
        database = True
    except Exception:
        version, database = None, False
    checks = {
        "database": database,
        "schema": serves(version),
        "listener": services.listener.ready and services.feed.caught_up,
    }
    ok = all(checks.values())
    return Response(
        Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503
    )


@get("/metrics", tags=["health"], media_type=CONTENT_TYPE_LATEST)
async def metrics(request: Request[Any, Any, Any], services: Services) -> Response[bytes]:
    """Prometheus metrics: sockets, deliveries, listener, lag, NOTIFY queue usage. With
    TRACKTALK_METRICS_TOKEN set, only for `Authorization: Bearer <that token>` (401 otherwise)."""
    _check_scraper(request.headers.get("authorization"), services.settings.metrics_token)
    try:
        usage = await asyncio.wait_for(services.events.queue_usage(), _DB_CHECK_TIMEOUT)
        services.metrics.notify_queue_usage = usage
    except Exception:
        pass  # keep the last reading; /readyz tells whether the database answers
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _check_scraper(header: str | None, token: str) -> None:
    if not token:
        return
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise NotAuthorizedException(
            detail="/metrics needs `Authorization: Bearer <TRACKTALK_METRICS_TOKEN>`",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


route_handlers = [healthz, readyz, metrics]
