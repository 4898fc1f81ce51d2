"""The protocol as the repository states it: /schema/asyncapi.json and docs/protocol.md.

The AsyncAPI document is checked against what a real replica sends: sockets on a track, every
kind of message provoked, each frame validated with a JSON Schema validator against the
document's payload for its `type` (closed: a field the document does not name fails too).
docs/protocol.md is checked for every route, close code and variable the code has, and its JSON
examples against the same document.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, get_args

import httpx
import jsonschema
import psycopg
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from app import wire
from app.handlers.asyncapi import ASYNCAPI_VERSION
from tests.support.processes import ROOT, Replica
from tests.support.seed import World, new_track
from tests.support.sockets import RECV_TIMEOUT, Socket, open_socket, open_topics
from tests.support.writes import post_comment, sql

pytestmark = pytest.mark.timeout(120)


DOC = ROOT / "docs" / "protocol.md"


BASE = "urn:tracktalk:asyncapi"
"""Where the validator finds the document (its `#/components/...` refs resolve inside it)."""


SENT = {struct.__struct_config__.tag for struct in get_args(wire.ServerMessage)}
"""Every `type` of the ServerMessage union."""
FORUM = {struct.__struct_config__.tag for struct in get_args(wire.ForumMessage)}
"""Every `type` of the forum's topics (sent on /api/ws only)."""


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties."""
    if isinstance(schema, dict):
        made = {key: closed(value) for key, value in schema.items()}
        if "properties" in made and "additionalProperties" not in made:
            made["additionalProperties"] = False
        return made
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def pointer(document: dict[str, Any], ref: str) -> Any:
    """What a local `#/a/b` ref points at."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


class Messages:
    """The payload validators of one operation of the document, by message `type`."""

    def __init__(self, document: dict[str, Any], operation: str) -> None:
        strict = closed(copy.deepcopy(document))
        registry: Registry[Any] = Registry().with_resource(BASE, Resource.from_contents(strict, DRAFT7))
        self.validators: dict[str, jsonschema.Draft7Validator] = {}
        for ref in strict["operations"][operation]["messages"]:
            message = pointer(strict, pointer(strict, ref["$ref"])["$ref"])
            schema = {"$ref": BASE + message["payload"]["$ref"]}
            self.validators[message["name"]] = jsonschema.Draft7Validator(schema, registry=registry)

    def problems(self, frame: Any) -> list[str]:
        """Why `frame` does not match the document (empty: it does)."""
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind not in self.validators:
            return [f"no message of type {kind!r} in the document"]
        return [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self.validators[kind].iter_errors(frame)
        ]

    def check(self, frame: Any) -> None:
        problems = self.problems(frame)
        assert not problems, f"{json.dumps(frame)[:300]} does not match the AsyncAPI document: {problems}"


@pytest.fixture(scope="module")
def document(replica: Replica) -> dict[str, Any]:
    """The AsyncAPI document as a replica serves it."""
    answer = httpx.get(f"{replica.http}/schema/asyncapi.json", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    result: dict[str, Any] = answer.json()
    return result


def test_the_asyncapi_document_describes_the_track_socket(replica: Replica, document: dict[str, Any]) -> None:
    assert document["asyncapi"] == ASYNCAPI_VERSION == "3.0.0"
    channel = document["channels"]["trackSocket"]
    assert channel["address"] == "/api/ws/track/{track_id}"
    assert set(channel["parameters"]) == {"track_id"}
    assert set(channel["bindings"]["ws"]["query"]["properties"]) == {"token", "since", "tag"}
    assert set(Messages(document, "sendTrackMessages").validators) == SENT
    assert set(Messages(document, "receiveClientMessages").validators) == {"typing"}
    assert {int(code) for code in channel["x-close-codes"]} == {
        1000,
        1001,
        1003,
        1008,
        1009,
        1011,
        1013,
        4001,
    }
    for ref in re.findall(r'"\$ref": "(#[^"]+)"', json.dumps(document)):
        pointer(document, ref)  # every ref resolves
    # beside Litestar's OpenAPI schema, not instead of it
    openapi = httpx.get(f"{replica.http}/schema/openapi.json", timeout=10)
    assert openapi.status_code == 200 and "/api/tracks/{track_id}/comments" in openapi.json()["paths"]


async def until_seen(socket: Socket, kinds: set[str], timeout: float = RECV_TIMEOUT) -> None:
    """Read until the socket has received a message of each of `kinds`."""
    deadline = time.monotonic() + timeout
    while not kinds <= {m["type"] for m in socket.received}:
        missing = kinds - {m["type"] for m in socket.received}
        assert time.monotonic() < deadline, f"no {sorted(missing)} within {timeout}s"
        await socket.recv(max(0.01, deadline - time.monotonic()))


async def test_every_message_the_server_sends_matches_the_asyncapi_document(
    replica: Replica, world: World, document: dict[str, Any], db_url: str
) -> None:
    sent, received = Messages(document, "sendTrackMessages"), Messages(document, "receiveClientMessages")
    track = world.public
    async with (
        open_socket(replica.ws, track, world.tokens["alice"], presence=True) as alice,
        open_socket(replica.ws, track, world.tokens["bob"]) as bob,
        open_socket(replica.ws, track, world.tokens["dave"], since=10**15) as ahead,
        httpx.AsyncClient(base_url=replica.http, timeout=10) as client,
    ):
        await until_seen(ahead, {"connected", "resync"})  # a seq from the future: reload
        await until_seen(alice, {"connected"})
        await until_seen(bob, {"connected"})
        comment = await post_comment(replica.http, world, "bob", track, "hey @alice, listen to this")
        cid = comment["id"]
        for method, path, who in [
            ("PUT", f"/api/comments/{cid}", "bob"),
            ("POST", f"/api/comments/{cid}/like", "alice"),
            ("POST", f"/api/tracks/{track}/like", "alice"),
            ("POST", f"/api/tracks/{track}/share", "alice"),
        ]:
            body = {"content": "hey @alice, listen to this one"} if method == "PUT" else None
            answer = await client.request(method, path, json=body, headers=world.auth(who))
            assert answer.status_code == 200, answer.text
        # Moderation (issue 20), as any SQL client makes it: alice gets the public forms
        # (comment_hidden, skip, comment_restored), bob, the author, the restricted one.
        for statement in (
            "UPDATE comments SET pinned_at = now() WHERE id = %s",
            "UPDATE comments SET hearted_at = now() WHERE id = %s",
            "UPDATE comments SET hidden_at = now() WHERE id = %s",
            "UPDATE comments SET content = 'hidden words' WHERE id = %s",
            "UPDATE comments SET hidden_at = NULL WHERE id = %s",
        ):
            await sql(db_url, statement, (cid,))
        await sql(db_url, "UPDATE tracks SET slow_mode_seconds = 5 WHERE id = %s", (track,))
        await sql(db_url, "UPDATE tracks SET slow_mode_seconds = 0 WHERE id = %s", (track,))
        typing = {"type": "typing", "is_typing": True}
        received.check(typing)
        await bob.send(typing)
        unknown = {"type": "subscribe", "track": "all"}
        assert received.problems(unknown)  # not in the document, and the server says so:
        await alice.send(unknown)
        deleted = await client.delete(f"/api/comments/{cid}", headers=world.auth("bob"))
        assert deleted.status_code == 204
        await until_seen(
            alice,
            {"new_comment", "comment_edited", "comment_liked", "track_metrics", "comment_deleted"}
            | {"user_typing", "presence", "mention", "notification", "error"}
            | {
                "comment_pinned",
                "comment_hearted",
                "comment_hidden",
                "skip",
                "comment_restored",
                "track_settings",
            },
        )
        # alice liked bob's comment; bob wrote the hidden one
        await until_seen(bob, {"comment_deleted", "notification", "comment_moderated"})
        frames = alice.received + bob.received + bob.presence + ahead.received + ahead.presence
    assert {frame["type"] for frame in frames} == SENT
    for frame in frames:
        sent.check(frame)


async def test_every_message_of_the_socket_of_topics_matches_the_asyncapi_document(
    replica: Replica, world: World, document: dict[str, Any], db_url: str
) -> None:
    channel = document["channels"]["topicSocket"]
    assert channel["address"] == "/api/ws" and set(channel["bindings"]["ws"]["query"]["properties"]) == {
        "token"
    }
    sent = Messages(document, "sendTopicMessages")
    received = Messages(document, "receiveTopicClientMessages")
    assert set(received.validators) == {"subscribe", "unsubscribe", "typing"}
    track = new_track(db_url)
    topic = f"track:{track}"
    await sql(db_url, "CREATE TABLE public.protocol_rows (id int PRIMARY KEY, title text)")
    await sql(db_url, "SELECT tracktalk.make_live('public.protocol_rows')")  # row_* (docs/dba.md)
    async with (
        open_topics(replica.ws, world.tokens["alice"]) as alice,
        open_topics(replica.ws, world.tokens["bob"]) as bob,
        httpx.AsyncClient(base_url=replica.http, timeout=10) as client,
    ):
        for sock in (alice, bob):
            await sock.subscribe(topic)
        await alice.subscribe("protocol_rows")
        for statement in (
            "INSERT INTO protocol_rows VALUES (1, 'one')",
            "UPDATE protocol_rows SET title = 'two'",
            "DELETE FROM protocol_rows",
        ):
            await sql(db_url, statement)
        for message in [
            {
                "type": "subscribe",
                "topic": f"track:{world.public}",
                "since": 10**15,
            },  # from the future: resync
            {"type": "subscribe", "topic": "track:no-such-track"},
            {"type": "typing", "topic": topic, "is_typing": True},
            {"type": "unsubscribe", "topic": topic},
            {"type": "hello"},
        ]:
            assert not received.problems(message) or message["type"] == "hello"
            await bob.send(message)
        comment = await post_comment(replica.http, world, "bob", track, "hey @alice, listen")
        cid = comment["id"]
        for method, path, who in [
            ("PUT", f"/api/comments/{cid}", "bob"),
            ("POST", f"/api/comments/{cid}/like", "alice"),
            ("POST", f"/api/tracks/{track}/like", "alice"),
            ("DELETE", f"/api/comments/{cid}", "bob"),
        ]:
            body = {"content": "hey @alice, listen again"} if method == "PUT" else None
            answer = await client.request(method, path, json=body, headers=world.auth(who))
            assert answer.status_code in (200, 204), answer.text
        kinds = {"new_comment", "comment_edited", "comment_liked", "track_metrics", "comment_deleted"}
        kinds |= {"row_inserted", "row_updated", "row_deleted"}
        await alice.until(
            lambda: kinds | {"user_typing", "presence", "mention"} <= {m["type"] for m in alice.received},
            "every kind on alice's socket",
        )
        await bob.until(
            lambda: (
                {"resync", "subscribe_error", "unsubscribed", "error", "notification"}
                <= {m["type"] for m in bob.received}
            ),
            "every kind on bob's socket",
        )
        frames = alice.received + bob.received
    assert {frame["type"] for frame in frames} == {
        name.removeprefix("topics.") for name in sent.validators
    } - FORUM
    for frame in frames:
        sent.check(frame)


async def test_every_message_of_the_forums_topics_matches_the_asyncapi_document(
    replica: Replica, world: World, document: dict[str, Any], db_url: str
) -> None:
    """The forum's messages on /api/ws (its thread's and category's topics, its mention and
    notification), each provoked, each checked against the document; a category's topic has no
    presence nor typing, a thread's has both."""
    sent = Messages(document, "sendTopicMessages")
    assert {name.removeprefix("topics.") for name in sent.validators} >= FORUM
    slug, moved_to = f"f-{uuid.uuid4().hex[:8]}", f"f-{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO forum_categories (slug, title) VALUES (%s, 'Forum'), (%s, 'Elsewhere')",
            (slug, moved_to),
        )
    async with (
        open_topics(replica.ws, world.tokens["alice"]) as alice,
        open_topics(replica.ws, world.tokens["bob"]) as bob,
        httpx.AsyncClient(base_url=replica.http, timeout=10) as client,
    ):
        await alice.subscribe(f"category:{slug}")
        made = await client.post(
            f"/api/forum/categories/{slug}/threads",
            json={"title": "Protocol", "content": "first"},
            headers=world.auth("alice"),
        )
        thread = made.json()
        topic, first = f"thread:{thread['id']}", thread["first_post"]["id"]
        for sock in (alice, bob):
            await sock.subscribe(topic)
        await bob.send({"type": "typing", "topic": topic, "is_typing": True})
        reply = await client.post(
            f"/api/forum/threads/{thread['id']}/posts",
            json={"content": "hi @alice", "parent_id": first},
            headers=world.auth("bob"),
        )
        for method, path, who, body in [
            ("PUT", f"/api/forum/posts/{reply.json()['id']}", "bob", {"content": "hi again @alice"}),
            ("POST", f"/api/forum/posts/{first}/like", "bob", None),
            ("PUT", f"/api/forum/threads/{thread['id']}", "alice", {"title": "Protocol, renamed"}),
            ("DELETE", f"/api/forum/posts/{reply.json()['id']}", "bob", None),
        ]:
            answer = await client.request(method, path, json=body, headers=world.auth(who))
            assert answer.status_code in (200, 204), answer.text
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute(
                "UPDATE forum_threads SET category_id = (SELECT id FROM forum_categories WHERE slug = %s)"
                " WHERE id = %s",
                (moved_to, thread["id"]),
            )
        await alice.until(
            lambda: (
                FORUM | {"user_typing", "presence", "mention", "notification"}
                <= {m["type"] for m in alice.received}
            ),
            "every kind of the forum on alice's socket",
        )
        frames = alice.received
    assert not [
        f for f in frames if f.get("topic") == f"category:{slug}" and f["type"] in ("presence", "user_typing")
    ]
    for frame in frames:
        sent.check(frame)


def test_the_validation_fails_a_frame_that_drifts_from_the_document(document: dict[str, Any]) -> None:
    """What would make the test above fail: a missing, extra or mistyped field, an unknown type."""
    sent = Messages(document, "sendTrackMessages")
    good = {"type": "comment_liked", "track_id": "t", "seq": 3, "comment_id": 7, "like_count": 1}
    assert sent.problems(good) == []
    for drifted in [
        {key: value for key, value in good.items() if key != "like_count"},
        {**good, "likes": 1},
        {**good, "seq": "3"},
        {**good, "type": "comment_loved"},
        {"type": "new_comment", "track_id": "t", "seq": 4, "comment": {"id": 1}, "metrics": {}},
    ]:
        assert sent.problems(drifted), drifted


def doc_text() -> str:
    assert DOC.exists(), "docs/protocol.md is missing"
    return DOC.read_text()


def section(text: str, heading: str) -> str:
    """The text under `## heading`, up to the next `## `."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, f"docs/protocol.md has no section '## {heading}'"
    return found.group(1)


def json_examples(text: str) -> Iterator[Any]:
    for block in re.findall(r"^```json\n(.*?)^```", text, re.M | re.S):
        yield json.loads(block)


def test_the_socket_examples_in_the_doc_match_the_document(document: dict[str, Any]) -> None:
    sent, received = Messages(document, "sendTrackMessages"), Messages(document, "receiveClientMessages")
    examples = list(json_examples(section(doc_text(), "Socket messages")))
    for example in examples:
        (received if example.get("type") == "typing" else sent).check(example)
    assert {example["type"] for example in examples} == SENT | {"typing"}


def test_the_examples_of_the_socket_of_topics_in_the_doc_match_the_document(document: dict[str, Any]) -> None:
    sent = Messages(document, "sendTopicMessages")
    received = Messages(document, "receiveTopicClientMessages")
    examples = list(json_examples(section(doc_text(), "One socket, many topics")))
    for example in examples:
        (received if example.get("type") in ("subscribe", "unsubscribe", "typing") else sent).check(example)
    assert {example["type"] for example in examples} >= {
        "connected",
        "subscribed",
        "subscribe_error",
        "unsubscribed",
        "error",
        "subscribe",
        "unsubscribe",
        "typing",
        "new_comment",
        "row_inserted",
        "row_updated",
        "row_deleted",
    }


def test_the_examples_of_the_forums_topics_in_the_doc_match_the_document(document: dict[str, Any]) -> None:
    sent = Messages(document, "sendTopicMessages")
    examples = list(json_examples(section(doc_text(), "The forum's topics")))
    for example in examples:
        sent.check(example)
    assert {example["type"] for example in examples} == FORUM
