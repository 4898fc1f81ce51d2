"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import hmac
from typing import Any, Literal

from litestar import Request, Response, get
from litestar.exceptions import NotAuthorizedException
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.data.db import serves
from app.data.nodes import NOT_SENDING, describe, not_following
from app.ops.readiness import NodeReading, describe_holder, watched_queues
from app.services import Services
from app.wire import FanoutNode, Health, NotifyQueue, Readiness


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
            description="Not ready: `checks` says which of database, schema, listener, notify_queue, notifies "
            "and node is not (null: could not be asked, or no fan-out node), `detail` what to do.",
            generate_examples=False,
        )
    },
)
async def readyz(services: Services) -> Response[Readiness]:
    """Ready: the database answers, its schema is this code's or newer, its NOTIFY queue is below
    the limit, the listener is connected and caught up, and where it listens NOTIFYs are sent (not
    the primary in 'fanout' mode), by a fan-out node that receives the primary's changes, whose
    trigger on the log sends them, and that is less than TRACKTALK_NODE_LAG_LIMIT behind. Answers at once, from the database's last reading
    (taken every second in the background): null where the database could not be asked, and
    `node` null where the listener is on none."""
    reading = services.readiness.reading()
    limit = services.readiness.queue_limit
    queues = [] if reading is None else watched_queues(reading, limit)
    # The one to show: the first past the limit, or else the listener's.
    queue = next((q for q in queues if q.usage >= limit), queues[0] if queues else None)
    node = None if reading is None or reading.node is None else _node(reading.node, services)
    # On a node that the last reading did not look at yet (the listener just got there): not ready
    # until it has (within a second).
    unread = services.reads.node is not None and (node is None or node.name != services.reads.node)
    checks: dict[str, bool | None] = {
        "database": reading is not None,
        "schema": None if reading is None else serves(reading.version),
        "listener": services.listener.ready and services.feed.caught_up,
        "notify_queue": None if not queues else all(q.usage < limit for q in queues),
        "notifies": None if reading is None else reading.node is not None or reading.notify_mode != "fanout",
        "node": None if node is None and not unread else not unread and node is not None and _node_ok(node),
    }
    ok = all(value is True for key, value in checks.items() if key != "node") and checks["node"] is not False
    mode = None if reading is None else reading.notify_mode
    notify_mode: Literal["direct", "fanout"] | None = (
        "fanout" if mode == "fanout" else "direct" if mode == "direct" else None
    )
    return Response(
        Readiness(
            status="ok" if ok else "unavailable",
            checks=checks,
            notify_queue=queue,
            detail=None
            if ok
            else _detail(
                checks,
                queue,
                node,
                reading.node if reading else None,
                unread,
                describe(services.settings.database_url),
            ),
            notify_mode=notify_mode,
            node=node,
        ),
        status_code=200 if ok else 503,
    )


def _node(reading: NodeReading, services: Services) -> FanoutNode:
    state = reading.state
    return FanoutNode(
        name=reading.name,
        subscription=None if state is None else state.subscription,
        running=state is not None and state.running,
        sending=state is not None and state.sending,
        lag_seconds=None if reading.lag is None else round(reading.lag, 3),
        lag_limit=services.readiness.node_lag_limit,
        follows=reading.follows,
    )


def _node_ok(node: FanoutNode) -> bool:
    return (
        node.follows
        and node.running
        and node.sending
        and (node.lag_seconds is None or node.lag_seconds <= node.lag_limit)
    )


def _detail(
    checks: dict[str, bool | None],
    queue: NotifyQueue | None,
    node: FanoutNode | None = None,
    reading: NodeReading | None = None,
    unread: bool = False,
    primary: str = "",
) -> str:
    """What is wrong, for a person reading the answer."""
    wrong = []
    if not checks["database"]:
        wrong.append("the database does not answer")
    elif not checks["schema"]:
        wrong.append("the database's schema is missing or older than this code's: run `tracktalk migrate`")
    if queue is not None and not checks["notify_queue"]:
        server = "the primary's" if queue.server is None else f"fan-out node {queue.server}'s"
        wrong.append(
            f"PostgreSQL's NOTIFY queue ({server} server) is {queue.usage:.2%} full (limit {queue.limit:.2%}); "
            f"{describe_holder(queue.held_by)}"
        )
    if not checks["listener"]:
        wrong.append("the listener is not connected, or still catching up")
    if checks["notifies"] is False:
        wrong.append(
            "tracktalk.settings.notify_mode is 'fanout': the primary sends no NOTIFYs, and this replica "
            "listens on it (it reads the log every second meanwhile): set TRACKTALK_LISTEN_URL to the "
            "fan-out nodes, or set notify_mode back to 'direct'"
        )
    if checks["node"] is False and unread:
        wrong.append("the fan-out node the listener just got to is not looked at yet (within a second)")
    elif node is not None and checks["node"] is False:
        if reading is not None and reading.state is None:
            wrong.append(f"fan-out node {node.name}: {reading.error}")
        elif reading is not None and reading.state is not None and not node.follows:
            wrong.append(not_following(node.name, reading.state, primary))
        elif not node.running:
            wrong.append(
                f"fan-out node {node.name}: its subscription {node.subscription} receives nothing from the "
                "primary (disabled, failing, or the primary unreachable from it: see its server log and "
                'pg_stat_subscription; docs/dba.md, "Fan-out nodes")'
            )
        elif not node.sending:
            wrong.append(f"fan-out node {node.name}: {NOT_SENDING}")
        else:
            wrong.append(
                f"fan-out node {node.name} is {node.lag_seconds:.1f} s behind the primary (limit "
                f"{node.lag_limit:g} s): its sockets get events that late"
            )
    return "; ".join(wrong)


_METRICS_MEDIA_TYPE = "; ".join(
    part for part in CONTENT_TYPE_LATEST.split("; ") if not part.startswith("charset=")
)
"""Prometheus' text format without its charset: Litestar adds `; charset=utf-8` to every text type,
and a Content-Type that names the charset twice is one Prometheus 3 refuses to scrape (Go's
mime.ParseMediaType: "duplicate parameter name")."""


@get("/metrics", tags=["health"], media_type=_METRICS_MEDIA_TYPE)
async def metrics(request: Request[Any, Any, Any], services: Services) -> Response[bytes]:
    """Prometheus metrics: sockets, deliveries, listener, lag, NOTIFY queue usage (the fullest of
    the queues /readyz watches, from its last reading, at most a second old). With
    TRACKTALK_METRICS_TOKEN set, only for `Authorization: Bearer <that token>` (401 otherwise)."""
    _check_scraper(request.headers.get("authorization"), services.settings.metrics_token)
    return Response(generate_latest(services.metrics.registry), media_type=_METRICS_MEDIA_TYPE)


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
