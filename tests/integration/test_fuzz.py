"""Bad input of every kind: no route answers 500, and odd text is stored and returned verbatim."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import Replica
from tests.support.seed import World

_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "content": json_values | st.text(max_size=200),
        "timestamp": json_values | st.floats(allow_nan=False, allow_infinity=False),
        "parent_id": json_values,
        "ids": json_values,
    },
)


@pytest.fixture(scope="module")
def client(replica: Replica) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.http, timeout=15) as http:
        yield http


def assert_answered(answer: httpx.Response) -> None:
    """Never a 500; every error is JSON {status_code, detail}."""
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        body = answer.json()
        assert set(body) >= {"status_code", "detail"} and isinstance(body["detail"], str), body


@_SETTINGS
@given(body=fields)
def test_comment_bodies(client: httpx.Client, world: World, body: dict[str, Any]) -> None:
    assert_answered(
        client.post(f"/api/tracks/{world.public}/comments", json=body, headers=world.auth("alice"))
    )
    assert_answered(client.put("/api/comments/1", json=body, headers=world.auth("alice")))
    assert_answered(client.post("/api/notifications/read", json=body, headers=world.auth("alice")))


@_SETTINGS
@given(
    raw=st.binary(max_size=300), form=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=4)
)
def test_raw_and_form_bodies(client: httpx.Client, world: World, raw: bytes, form: dict[str, str]) -> None:
    headers = {**world.auth("bob"), "content-type": "application/json"}
    assert_answered(client.post(f"/api/tracks/{world.public}/comments", content=raw, headers=headers))
    assert_answered(client.post(f"/api/tracks/{world.public}/comments", data=form, headers=world.auth("bob")))


@_SETTINGS
@given(
    track=st.text(min_size=1, max_size=80),
    number=st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=12)),
)
def test_paths_and_queries(client: httpx.Client, world: World, track: str, number: str) -> None:
    t, n = quote(track, safe=""), quote(number, safe="")
    for method, path in [
        ("GET", f"/api/tracks/{t}/comments?limit={n}&after_id={n}"),
        ("GET", f"/api/tracks/{t}/metrics"),
        ("POST", f"/api/tracks/{t}/like"),
        ("POST", f"/api/tracks/{t}/share"),
        ("GET", f"/api/tracks/{t}/audio"),
        ("DELETE", f"/api/comments/{n}"),
        ("POST", f"/api/comments/{n}/like"),
        ("GET", f"/api/notifications?limit={n}&before_id={n}"),
    ]:
        assert_answered(client.request(method, path, headers=world.auth("dave")))


forum_fields = st.fixed_dictionaries(
    {},
    optional={
        "title": json_values | st.text(max_size=250),
        "content": json_values | st.text(max_size=200),
        "parent_id": json_values,
        "is_locked": json_values,
        "is_pinned": json_values,
    },
)


@pytest.fixture(scope="module")
def forum(client: httpx.Client, world: World, db_url: str) -> tuple[str, int, int]:
    """A category of the module's (its slug), a thread of bob's in it and its first post."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO forum_categories (slug, title) VALUES ('fuzz', 'Fuzz') ON CONFLICT DO NOTHING"
        )
    made = client.post(
        "/api/forum/categories/fuzz/threads",
        json={"title": "fuzzed", "content": "first"},
        headers=world.auth("bob"),
    )
    assert made.status_code == 201, made.text
    return "fuzz", made.json()["id"], made.json()["first_post"]["id"]


@_SETTINGS
@given(body=forum_fields)
def test_forum_bodies(
    client: httpx.Client, world: World, forum: tuple[str, int, int], body: dict[str, Any]
) -> None:
    slug, thread, post = forum
    for method, path in [
        ("POST", f"/api/forum/categories/{slug}/threads"),
        ("PUT", f"/api/forum/threads/{thread}"),
        ("POST", f"/api/forum/threads/{thread}/posts"),
        ("PUT", f"/api/forum/posts/{post}"),
    ]:
        assert_answered(client.request(method, path, json=body, headers=world.auth("bob")))
        assert_answered(
            client.request(
                method, path, data={k: str(v) for k, v in body.items()}, headers=world.auth("tina")
            )
        )


@_SETTINGS
@given(
    slug=st.text(min_size=1, max_size=80),
    number=st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=12)),
    cursor=st.text(max_size=70),
)
def test_forum_paths_and_queries(
    client: httpx.Client, world: World, slug: str, number: str, cursor: str
) -> None:
    c, n, after = quote(slug, safe=""), quote(number, safe=""), quote(cursor, safe="")
    for method, path in [
        ("GET", f"/api/forum/categories/{c}/threads?limit={n}&after={after}"),
        ("GET", f"/api/forum/categories/fuzz/threads?after={after}"),
        ("GET", f"/api/forum/threads/{n}"),
        ("GET", f"/api/forum/threads/{n}/posts?limit={n}&after_id={n}"),
        ("DELETE", f"/api/forum/posts/{n}"),
        ("POST", f"/api/forum/posts/{n}/like"),
    ]:
        assert_answered(client.request(method, path, headers=world.auth("dave")))


ODD_TEXT = [
    "right-to-left: \u202eabc\u202c and عربى",
    "4-byte emoji 🎵🧑🏽‍🎤 and flags 🇫🇷",
    "combining e\u0301\u0301 marks and zalgo Z\u0351\u0352",
    "'; DROP TABLE comments; --",
    "Robert'); DELETE FROM users WHERE ('1'='1",
    "%s %(x)s $1 \\x00 {}",
    "<img src=x onerror=alert(1)>",
    "line\nbreaks\r\nand\ttabs",
]


@pytest.mark.parametrize("text", ODD_TEXT)
def test_odd_text_is_stored_and_returned_verbatim(client: httpx.Client, world: World, text: str) -> None:
    made = client.post(
        f"/api/tracks/{world.other}/comments",
        json={"content": text, "timestamp": 0},
        headers=world.auth("alice"),
    )
    assert made.status_code == 201, made.text
    assert made.json()["content"] == text.strip()
    # The newest of the track: the id before it may be another track's, or none (an insert
    # refused by another test takes an id too).
    listed = client.get(f"/api/tracks/{world.other}/comments", params={"sort": "newest", "limit": 1})
    assert listed.json()[0]["id"] == made.json()["id"]
    assert listed.json()[0]["content"] == text.strip()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"content": "nul \\u0000 inside", "timestamp": 1}', 422),
        ('{"content": "x", "timestamp": NaN}', 400),
        ('{"content": "x", "timestamp": Infinity}', 400),
        ('{"content": "x", "timestamp": 1e400}', 400),
        ('{"content": "x", "timestamp": -0.5}', 422),
        ('{"content": "x", "timestamp": 1, "parent_id": 99999999999999999999}', 422),
    ],
)
def test_numbers_and_nul_that_json_or_postgres_cannot_hold(
    client: httpx.Client, world: World, body: str, status: int
) -> None:
    answer = client.post(
        f"/api/tracks/{world.public}/comments",
        content=body,
        headers={**world.auth("alice"), "content-type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    assert json.loads(answer.text)["detail"]
