"""/readyz in-process: the handler over a replica's real services (app/services.py's `running`,
over a database of its own), at moments a real replica cannot be caught in on demand: its
listener connected, but the catch-up after a reconnect still delivering what was missed.

The same route through real replicas (a database down, a schema too old) is in test_operations.py
and test_listener_outage.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from app.config import Settings
from app.handlers.health import readyz
from app.live.feed import Feed
from app.services import Services, running
from tests.support.processes import SECRET
from tests.support.waiting import async_wait_until


@pytest.fixture
async def services(new_database: Callable[[], str]) -> AsyncIterator[Services]:
    """A replica's services, without its HTTP server, once /readyz says they are ready."""
    async with running(Settings(database_url=new_database(), secret=SECRET)) as started:
        await async_wait_until(lambda: ready(started), 10, "the services to be ready")
        yield started


async def ready(services: Services) -> bool:
    status, _ = await readiness(services)
    return status == 200


async def readiness(services: Services) -> tuple[int, dict[str, Any]]:
    answer = await readyz.fn(services=services)
    return answer.status_code, msgspec.to_builtins(answer.content)


async def test_not_ready_while_a_catch_up_after_a_reconnect_is_delivering_what_was_missed(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert services.listener.ready
    # Connected again, the missed events not yet all sent: as Feed.on_listen leaves it until its
    # catch-up is done (tests/unit/test_feed.py shows when caught_up goes false and true again).
    monkeypatch.setattr(Feed, "caught_up", property(lambda feed: False))
    status, body = await readiness(services)
    assert (status, body["status"], body["checks"]["listener"]) == (503, "unavailable", False)
    monkeypatch.undo()
    assert await ready(services)  # and ready again once it is caught up
