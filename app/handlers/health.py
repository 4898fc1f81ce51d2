"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotAuthorizedException
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.data.db import serves
from app.ops.readiness import describe_holder
from app.services import Services
from app.wire import Health, NotifyQueue, Readiness

_DB_CHECK_TIMEOUT = 2.0
"""Seconds /metrics waits for the database's NOTIFY queue usage before it keeps the last reading."""


@get("/healthz", tags=["health"])
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@get(
    "/readyz",
    tags=["health"],
    responses={
        503: ResponseSpec(
            data_container=Readiness,
            description="Not ready: `checks` says which of database, schema, listener and notify_queue is not "
            "(null: could not be asked), `detail` what to do.",
            generate_examples=False,
        )
    },
)
async def readyz(services: Services) -> Response[Readiness]:
    """Ready: the database answers, its schema is this code's or newer, its NOTIFY queue is below
    the limit, the listener is connected and caught up. Answers at once, from the database's last
    reading (taken every second in the background): null where the database could not be asked."""
    reading = services.readiness.reading()
    limit = services.readiness.queue_limit
    queue = None if reading is None else NotifyQueue(reading.queue_usage, limit, reading.holder)
    checks: dict[str, bool | None] = {
        "database": reading is not None,
        "schema": None if reading is None else serves(reading.version),
        "listener": services.listener.ready and services.feed.caught_up,
        "notify_queue": None if queue is None else queue.usage < limit,
    }
    ok = all(value is True for value in checks.values())
    return Response(
        Readiness(
            status="ok" if ok else "unavailable",
            checks=checks,
            notify_queue=queue,
            detail=None if ok else _detail(checks, queue),
        ),
        status_code=200 if ok else 503,
    )


def _detail(checks: dict[str, bool | None], queue: NotifyQueue | None) -> str:
    """What is wrong, for a person reading the answer."""
    wrong = []
    if not checks["database"]:
        wrong.append("the database does not answer")
    elif not checks["schema"]:
        wrong.append("the database's schema is missing or older than this code's: run `tracktalk migrate`")
    if queue is not None and not checks["notify_queue"]:
        wrong.append(
            f"PostgreSQL's NOTIFY queue is {queue.usage:.2%} full (limit {queue.limit:.2%}); "
            f"{describe_holder(queue.held_by)}"
        )
    if not checks["listener"]:
        wrong.append("the listener is not connected, or still catching up")
    return "; ".join(wrong)


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
