"""The demo sign-in routes: there with TRACKTALK_DEMO=1, absent (404) without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Replica, replicas
from tests.support.seed import World


@pytest.fixture(scope="module")
def demo_replica(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica with the demo switch on, over the same database as the plain `replica`."""
    with replicas(db_url, log_dir, 1, TRACKTALK_DEMO="1") as started:
        yield started[0]


def test_demo_users_lists_the_users(demo_replica: Replica, world: World) -> None:
    answer = httpx.get(f"{demo_replica.http}/api/demo/users", timeout=10)
    assert answer.status_code == 200
    users = {user["username"]: user for user in answer.json()}
    assert set(world.users) <= set(users)
    assert users["carol"] == {
        "id": world.users["carol"],
        "username": "carol",
        "is_creator": True,
        "is_team": False,
    }
    assert users["tina"]["is_team"] is True


def test_demo_token_works_on_the_api(demo_replica: Replica, world: World) -> None:
    alice = world.users["alice"]
    answer = httpx.post(f"{demo_replica.http}/api/demo/token/{alice}", timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["user"]["id"] == alice
    assert body["user"]["username"] == "alice"
    auth = {"Authorization": f"Bearer {body['token']}"}

    posted = httpx.post(
        f"{demo_replica.http}/api/tracks/{world.public}/comments",
        json={"content": "signed in through the demo", "timestamp": 1.5},
        headers=auth,
        timeout=10,
    )
    assert posted.status_code == 201, posted.text
    assert posted.json()["user_id"] == alice
    assert posted.json()["username"] == "alice"

    notes = httpx.get(f"{demo_replica.http}/api/notifications", headers=auth, timeout=10)
    assert notes.status_code == 200


def test_demo_token_for_an_unknown_user_is_404(demo_replica: Replica) -> None:
    answer = httpx.post(f"{demo_replica.http}/api/demo/token/987654321", timeout=10)
    assert answer.status_code == 404
    assert answer.json()["status_code"] == 404


def test_demo_routes_are_absent_without_the_switch(replica: Replica, world: World) -> None:
    users = httpx.get(f"{replica.http}/api/demo/users", timeout=10)
    token = httpx.post(f"{replica.http}/api/demo/token/{world.users['alice']}", timeout=10)
    assert users.status_code == 404
    assert token.status_code == 404
    # The rest of the app is there all the same.
    assert httpx.get(f"{replica.http}/api/tracks", timeout=10).status_code == 200
