"""/readyz in-process: the handler over a real database and a listener and feed in a given state.

The same route through real replicas (a database down, a schema too old) is in test_operations.py
and test_listener_outage.py; here, what only a chosen moment shows: a listener that is connected
but whose catch-up after a reconnect has not delivered what was missed yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from app.config import Settings
from app.db import create_pool
from app.events import EventLog
from app.handlers.health import readyz
from tests.support import SECRET


@pytest.fixture
async def services(new_database: Callable[[], str]) -> AsyncIterator[Any]:
    """What /readyz reads of a replica's services: its pool and log over a real, migrated
    database; a listener and a feed whose state each test sets."""
    settings = Settings(database_url=new_database(), secret=SECRET)
    pool = create_pool(settings)
    await pool.open(wait=True, timeout=10)
    try:
        yield SimpleNamespace(
            settings=settings,
            pool=pool,
            events=EventLog(pool),
            listener=SimpleNamespace(ready=True),
            feed=SimpleNamespace(caught_up=True),
        )
    finally:
        await pool.close()


async def ready(services: Any) -> tuple[int, dict[str, Any]]:
    answer = await readyz.fn(services=services)
    return answer.status_code, msgspec.to_builtins(answer.content)


async def test_ready_when_the_database_answers_and_the_listener_is_connected_and_caught_up(
    services: Any,
) -> None:
    status, body = await ready(services)
    assert (status, body["status"], body["checks"]["listener"]) == (200, "ok", True)


async def test_not_ready_while_a_catch_up_after_a_reconnect_is_delivering_what_was_missed(
    services: Any,
) -> None:
    services.feed.caught_up = False  # connected again (ready), the missed events not yet sent
    status, body = await ready(services)
    assert (status, body["status"], body["checks"]["listener"]) == (503, "unavailable", False)


async def test_not_ready_while_the_listener_is_away(services: Any) -> None:
    services.listener.ready = False
    status, body = await ready(services)
    assert (status, body["checks"]["listener"]) == (503, False)
