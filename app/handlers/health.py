"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.openapi import ResponseSpec
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


@get(
    "/readyz",
    tags=["health"],
    responses={
        503: ResponseSpec(
            data_container=Health,
            description="Not ready: `checks` says which of database, schema and listener is not.",
            generate_examples=False,
        )
    },
)
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
async def metrics(services: Services) -> Response[bytes]:
    """Prometheus metrics: sockets, deliveries, listener, lag, NOTIFY queue usage."""
    try:
        usage = await asyncio.wait_for(services.events.queue_usage(), _DB_CHECK_TIMEOUT)
        services.metrics.notify_queue_usage = usage
    except Exception:
        pass  # keep the last reading; /readyz tells whether the database answers
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


route_handlers = [healthz, readyz, metrics]
