"""The LISTEN connection through a network outage: not ready meanwhile, nothing lost after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from app.dev.embedded import EmbeddedPostgres
from tests.support.processes import Replica, replicas
from tests.support.proxies import TcpProxy
from tests.support.seed import World
from tests.support.sockets import open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment


@pytest.fixture(scope="module")
def proxy(pg: EmbeddedPostgres) -> Iterator[TcpProxy]:
    port = urlsplit(pg.url).port
    assert port is not None
    started = TcpProxy(port).start()
    yield started
    started.cut()


@pytest.fixture(scope="module")
def behind_proxy(db_url: str, world: World, log_dir: Path, proxy: TcpProxy) -> Iterator[Replica]:
    """A replica whose LISTEN connection (TRACKTALK_LISTEN_URL) goes through the proxy."""
    parts = urlsplit(db_url)
    listen_url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    with replicas(db_url, log_dir, 1, TRACKTALK_LISTEN_URL=listen_url) as started:
        yield started[0]


async def readiness(replica: Replica) -> httpx.Response:
    async with httpx.AsyncClient(timeout=2) as client:
        return await client.get(f"{replica.http}/readyz")


async def answers(replica: Replica, status: int) -> httpx.Response | None:
    """/readyz's answer if it has `status`, else None."""
    answer = await readiness(replica)
    return answer if answer.status_code == status else None


async def test_a_network_outage_makes_the_replica_unready_and_loses_nothing(
    behind_proxy: Replica, proxy: TcpProxy, world: World, db_url: str
) -> None:
    async with open_socket(behind_proxy.ws, world.public, world.tokens["alice"]) as sock:
        start = (await sock.expect("connected"))["seq"]
        proxy.cut()
        unready = await async_wait_until(
            lambda: answers(behind_proxy, 503), 15, "the replica to report not ready"
        )
        assert unready.json()["checks"] == {
            "database": True,
            "schema": True,
            "listener": False,
            "notify_queue": True,
            "notifies": True,
            "node": None,
        }
        during = [
            await insert_comment(db_url, world.public, world.users["bob"], f"during {i}") for i in range(3)
        ]
        proxy.start()
        await async_wait_until(lambda: answers(behind_proxy, 200), 15, "the replica to be ready again")
        got = await sock.events(3)
    assert [e["seq"] for e in got] == list(range(start + 1, start + 4))
    assert [e["comment"]["id"] for e in got if e["type"] == "new_comment"] == during
