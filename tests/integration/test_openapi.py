"""/schema/openapi.json as a code generator and a person with Swagger read it, checked against what
real replicas answer — as tests/integration/test_protocol.py checks the AsyncAPI document against real frames.

- It passes `openapi-spec-validator` (and a broken copy does not).
- It declares the bearer token, and which routes need it and which take it optionally; a replica
  answers 401 exactly there.
- Every error status each route declares is one a real replica answers on that route, and every
  one a replica answers is declared, with the error body — provoked one by one: no token, a bad
  one, a missing id, bad JSON, too big, bad values, not allowed, over the rate limit (a replica
  with limits of 1), and the database cut (a replica whose connections go through a proxy).
- The form-encoded bodies are declared beside the JSON ones.
- /schema and /schema/swagger show the routes in Chromium with every request to another host
  refused.

(A TypeScript client generated from it and type-checked: tests/system/test_typescript.py.)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from app.dev.embedded import EmbeddedPostgres
from app.handlers.schema import BEARER
from app.wire import PROTOCOL
from tests.support.processes import Replica, replicas
from tests.support.proxies import TcpProxy
from tests.support.seed import MODERATION_ACTIONS, World, new_track
from tests.support.writes import post_comment

pytestmark = pytest.mark.timeout(180)


FORM = "application/x-www-form-urlencoded"


MISSING = {
    "track_id": "no-such-track",
    "comment_id": "999999999",
    "user_id": "999999999",
    "slug": "no-such-category",
    "thread_id": "999999999",
    "post_id": "999999999",
}
"""A value of each path parameter that names nothing."""


@pytest.fixture(scope="module")
def document(replica: Replica) -> dict[str, Any]:
    answer = httpx.get(f"{replica.http}/schema/openapi.json", timeout=10)
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) of every operation of the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method.upper(), path, operation


def test_the_document_passes_the_validator(replica: Replica, document: dict[str, Any]) -> None:
    validate(document)  # raises with what is wrong
    assert document["openapi"].startswith("3.1")
    assert document["info"]["version"] == str(PROTOCOL)
    as_yaml = httpx.get(f"{replica.http}/schema/openapi.yaml", timeout=10)
    assert yaml.safe_load(as_yaml.text) == document


def test_the_validator_is_real(document: dict[str, Any]) -> None:
    """What it would say of a document that drifts: a response without a description, a header
    without a schema, a path parameter not declared."""
    for breaking in [
        lambda d: d["paths"]["/api/notifications"]["get"]["responses"]["401"].pop("description"),
        lambda d: d["paths"]["/api/notifications"]["get"]["responses"]["200"]["headers"]["Link"].pop(
            "schema"
        ),
        lambda d: d["paths"]["/api/tracks/{track_id}"]["get"].pop("parameters"),
    ]:
        broken = json.loads(json.dumps(document))
        breaking(broken)
        with pytest.raises(OpenAPIValidationError):
            validate(broken)


def test_the_bearer_token_is_declared_and_where_it_is_needed(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"][BEARER]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    needs = {(m, p): op.get("security") for m, p, op in operations(document)}
    assert needs[("POST", "/api/tracks/{track_id}/comments")] == [{BEARER: []}]
    assert needs[("GET", "/api/tracks/{track_id}/comments")] == [{}, {BEARER: []}]
    assert needs[("GET", "/api/notifications")] == [{BEARER: []}]
    for (method, path), security in needs.items():
        if path.startswith("/api/") and not path.startswith("/api/demo/"):
            assert security in ([{BEARER: []}], [{}, {BEARER: []}]), (method, path)
            if method != "GET":
                assert security == [{BEARER: []}], (method, path)
        else:
            assert security is None, (method, path)


def test_form_encoded_bodies_are_declared_beside_json(document: dict[str, Any]) -> None:
    with_bodies = [(m, p, op) for m, p, op in operations(document) if "requestBody" in op]
    assert {(m, p) for m, p, _ in with_bodies} == {
        ("POST", "/api/tracks/{track_id}/comments"),
        ("PUT", "/api/comments/{comment_id}"),
        ("POST", "/api/notifications/read"),
        ("POST", "/api/forum/categories/{slug}/threads"),
        ("PUT", "/api/forum/threads/{thread_id}"),
        ("POST", "/api/forum/threads/{thread_id}/posts"),
        ("PUT", "/api/forum/posts/{post_id}"),
        ("POST", "/api/comments/{comment_id}/report"),
        ("PUT", "/api/tracks/{track_id}/settings"),
    }
    for _, _, op in with_bodies:
        content = op["requestBody"]["content"]
        assert content[FORM] == content["application/json"]


@dataclass
class Seen:
    """What real replicas answered, by operation: statuses, and the error bodies."""

    statuses: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))
    bodies: list[tuple[tuple[str, str], int, str]] = field(default_factory=list)

    async def call(
        self,
        client: httpx.AsyncClient,
        method: str,
        template: str,
        values: dict[str, str],
        **kw: Any,
    ) -> httpx.Response:
        path = template.format(**values)
        answer = await client.request(method, path, **kw)
        self.statuses[(method, template)].add(answer.status_code)
        self.bodies.append(((method, template), answer.status_code, answer.text))
        return answer


def bodies_of(method: str, path: str) -> dict[str, Any]:
    """A body each operation with one accepts (the rest get none)."""
    if (method, path) == ("POST", "/api/tracks/{track_id}/comments"):
        return {"json": {"content": "a provoking comment", "timestamp": 1}}
    if (method, path) == ("PUT", "/api/comments/{comment_id}"):
        return {"json": {"content": "edited"}}
    if (method, path) == ("POST", "/api/notifications/read"):
        return {"json": {"ids": [1]}}
    if (method, path) == ("POST", "/api/forum/categories/{slug}/threads"):
        return {"json": {"title": "a provoking thread", "content": "its first post"}}
    if (method, path) == ("PUT", "/api/forum/threads/{thread_id}"):
        return {"json": {"title": "renamed"}}
    if (method, path) in (
        ("POST", "/api/forum/threads/{thread_id}/posts"),
        ("PUT", "/api/forum/posts/{post_id}"),
    ):
        return {"json": {"content": "a provoking post"}}
    if (method, path) == ("POST", "/api/comments/{comment_id}/report"):
        return {"json": {"reason": "a provoking report"}}
    if (method, path) == ("PUT", "/api/tracks/{track_id}/settings"):
        return {"json": {"slow_mode_seconds": 0}}
    return {}


BAD_VALUES = {
    ("POST", "/api/tracks/{track_id}/comments"): {"json": {"content": "", "timestamp": 1}},
    ("PUT", "/api/comments/{comment_id}"): {"json": {"content": "x" * 5001}},
    ("POST", "/api/notifications/read"): {"json": {"ids": ["one"]}},
    ("GET", "/api/tracks/{track_id}/comments"): {"params": {"limit": 0}},
    ("GET", "/api/notifications"): {"params": {"limit": 100000}},
    ("POST", "/api/forum/categories/{slug}/threads"): {"json": {"title": "", "content": "x"}},
    ("GET", "/api/forum/categories/{slug}/threads"): {"params": {"limit": 0}},
    ("PUT", "/api/forum/threads/{thread_id}"): {"json": {"title": "t" * 201}},
    ("GET", "/api/forum/threads/{thread_id}/posts"): {"params": {"limit": 0}},
    ("POST", "/api/forum/threads/{thread_id}/posts"): {"json": {"content": ""}},
    ("PUT", "/api/forum/posts/{post_id}"): {"json": {"content": "x" * 5001}},
    ("POST", "/api/comments/{comment_id}/report"): {"json": {"reason": ""}},
    ("PUT", "/api/tracks/{track_id}/settings"): {"json": {"slow_mode_seconds": -1}},
    ("GET", "/api/moderation/queue"): {"params": {"limit": 0}},
    **{
        (method, f"/api/comments/{{comment_id}}/{action}"): {"params": {"track_id": "t" * 201}}
        for method, action in MODERATION_ACTIONS
    },
}
"""A request each operation that checks values refuses with 422."""


async def start_thread(db_url: str, slug: str, user_id: int, locked: bool) -> tuple[int, int]:
    """A thread of the user's in category `slug` (made if missing), with one post: (thread, post)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO forum_categories (slug, title) VALUES (%s, %s) ON CONFLICT (slug) DO NOTHING",
            (slug, slug),
        )
        cur = await conn.execute(
            "INSERT INTO forum_threads (category_id, user_id, title, is_locked)"
            " SELECT id, %s, 'a thread', %s FROM forum_categories WHERE slug = %s RETURNING id",
            (user_id, locked, slug),
        )
        thread = await cur.fetchone()
        assert thread is not None
        cur = await conn.execute(
            "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, 'a post') RETURNING id",
            (thread[0], user_id),
        )
        made = await cur.fetchone()
        assert made is not None
    return int(thread[0]), int(made[0])


@pytest.fixture(scope="module")
def limited(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica that allows one comment and one other write per user and minute, and the demo."""
    with replicas(
        db_url,
        log_dir,
        1,
        TRACKTALK_COMMENTS_PER_MINUTE="1",
        TRACKTALK_WRITES_PER_MINUTE="1",
        TRACKTALK_DEMO="1",
    ) as (started,):
        yield started


@pytest.fixture(scope="module")
def cut(db_url: str, world: World, log_dir: Path, pg: EmbeddedPostgres) -> Iterator[tuple[Replica, TcpProxy]]:
    """A replica whose every connection to the database goes through a proxy that the test cuts."""
    port = urlsplit(pg.url).port
    assert port is not None
    proxy = TcpProxy(port).start()
    parts = urlsplit(db_url)
    through = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    try:
        with replicas(through, log_dir, 1, TRACKTALK_POOL_TIMEOUT="1", TRACKTALK_DEMO="1") as (started,):
            yield started, proxy
    finally:
        proxy.cut()


async def test_every_error_status_a_route_answers_is_declared_and_every_declared_one_is_answered(
    document: dict[str, Any],
    replica: Replica,
    limited: Replica,
    cut: tuple[Replica, TcpProxy],
    world: World,
    db_url: str,
) -> None:
    ops = {(m, p): op for m, p, op in operations(document)}
    seen = Seen()
    comment = await post_comment(replica.http, world, "alice", world.public, "alice's, to be refused to bob")
    slug, locked = "general", "locked"
    thread = await start_thread(db_url, slug, world.users["alice"], locked=False)
    locked_thread = await start_thread(db_url, locked, world.users["alice"], locked=True)
    existing = {
        "track_id": world.public,
        "comment_id": str(comment["id"]),
        "user_id": str(world.users["bob"]),
        "slug": slug,
        "thread_id": str(thread[0]),
        "post_id": str(thread[1]),
    }
    with psycopg.connect(db_url, autocommit=True) as conn:  # audio, for the ranges
        conn.execute(
            "INSERT INTO tracktalk.track_audio (track_id, content_type, data) VALUES (%s, 'audio/wav', %s)"
            " ON CONFLICT DO NOTHING",
            (world.public, b"RIFF" + bytes(96)),
        )
    api = [(m, p) for m, p in ops if p.startswith("/api/") and not p.startswith("/api/demo/")]
    async with httpx.AsyncClient(base_url=replica.http, timeout=15) as client:
        for method, path in api:
            body = bodies_of(method, path)
            secured = ops[(method, path)]["security"]
            if secured == [{BEARER: []}]:
                await seen.call(client, method, path, existing, **body)  # no token
            await seen.call(client, method, path, existing, headers={"Authorization": "Bearer x.y.z"}, **body)
            if "{" in path:
                await seen.call(client, method, path, MISSING, headers=world.auth("alice"), **body)
            if body:
                for content in (b"{not json", b"x" * (70 * 1024)):
                    headers = {**world.auth("alice"), "content-type": "application/json"}
                    await seen.call(client, method, path, existing, headers=headers, content=content)
            if (method, path) in BAD_VALUES:
                await seen.call(
                    client, method, path, existing, headers=world.auth("alice"), **BAD_VALUES[(method, path)]
                )
        for method, path in [  # bob, on alice's comment, thread and post
            ("PUT", "/api/comments/{comment_id}"),
            ("DELETE", "/api/comments/{comment_id}"),
            ("PUT", "/api/forum/threads/{thread_id}"),
            ("PUT", "/api/forum/posts/{post_id}"),
            ("DELETE", "/api/forum/posts/{post_id}"),
            # moderation: bob moderates nothing, and is no creator
            *[
                (m, f"/api/comments/{{comment_id}}/{a}")
                for m in ("POST", "DELETE")
                for a in ("pin", "heart", "hide")
            ],
            ("POST", "/api/comments/{comment_id}/approve"),
            ("PUT", "/api/tracks/{track_id}/settings"),
            ("GET", "/api/moderation/queue"),
            ("POST", "/api/users/{user_id}/mute"),
            ("DELETE", "/api/users/{user_id}/mute"),
        ]:
            await seen.call(
                client, method, path, existing, headers=world.auth("bob"), **bodies_of(method, path)
            )
        # Moderation (issue 20): a second report (409); the queue of a track that is not there
        # (404); a creator muting nobody (404) and herself (422); a post where comments are off (403).
        report = "/api/comments/{comment_id}/report"
        for _ in range(2):
            await seen.call(
                client, "POST", report, existing, headers=world.auth("bob"), **bodies_of("POST", report)
            )
        await seen.call(
            client,
            "GET",
            "/api/moderation/queue",
            {},
            headers=world.auth("carol"),
            params={"track_id": "no-such"},
        )
        for method in ("POST", "DELETE"):
            await seen.call(client, method, "/api/users/{user_id}/mute", MISSING, headers=world.auth("carol"))
            carol = {**existing, "user_id": str(world.users["carol"])}
            await seen.call(client, method, "/api/users/{user_id}/mute", carol, headers=world.auth("carol"))
        closed = new_track(db_url)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE tracks SET comments_enabled = false WHERE id = %s", (closed,))
        comments = "/api/tracks/{track_id}/comments"
        await seen.call(
            client,
            "POST",
            comments,
            {**existing, "track_id": closed},
            headers=world.auth("alice"),
            **bodies_of("POST", comments),
        )
        posts = "/api/forum/threads/{thread_id}/posts"  # in a locked thread
        locked_values = {**existing, "thread_id": str(locked_thread[0])}
        await seen.call(
            client, "POST", posts, locked_values, headers=world.auth("alice"), **bodies_of("POST", posts)
        )
        # A like of a tombstone (a deleted comment kept for its reply): 422.
        tombstone = await post_comment(replica.http, world, "alice", world.public, "soon a tombstone")
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO comments (track_id, user_id, parent_id, content) VALUES (%s, %s, %s, 'a reply')",
                (world.public, world.users["bob"], tombstone["id"]),
            )
            conn.execute("DELETE FROM comments WHERE id = %s", (tombstone["id"],))
        like = "/api/comments/{comment_id}/like"
        await seen.call(
            client, "POST", like, {**existing, "comment_id": str(tombstone["id"])}, headers=world.auth("bob")
        )
        audio = "/api/tracks/{track_id}/audio"
        for wanted in ("bytes=0-9", "bytes=5000-"):
            await seen.call(client, "GET", audio, existing, headers={"Range": wanted})
    daves = await post_comment(replica.http, world, "dave", world.public, "dave's, to edit and like")
    his_thread = await start_thread(db_url, slug, world.users["dave"], locked=False)
    his = {
        **existing,
        "comment_id": str(daves["id"]),
        "thread_id": str(his_thread[0]),
        "post_id": str(his_thread[1]),
    }
    async with httpx.AsyncClient(base_url=limited.http, timeout=15) as client:
        for method, path in api:
            if "429" in ops[(method, path)]["responses"]:
                for _ in range(2):  # dave: his post just now counted; one other write may pass, then 429
                    await seen.call(
                        client, method, path, his, headers=world.auth("dave"), **bodies_of(method, path)
                    )
        await seen.call(client, "POST", "/api/demo/token/{user_id}", MISSING)
    server, proxy = cut
    proxy.cut()
    async with httpx.AsyncClient(base_url=server.http, timeout=15) as client:
        for method, path in ops:
            if path.startswith("/api/") or path == "/readyz":
                await seen.call(
                    client, method, path, existing, headers=world.auth("alice"), **bodies_of(method, path)
                )

    for (method, path), op in ops.items():
        declared = {int(status) for status in op["responses"] if int(status) >= 300 or status in ("206",)}
        answered = {status for status in seen.statuses[(method, path)] if status >= 300 or status == 206}
        assert answered <= declared, f"{method} {path} answered {sorted(answered - declared)}, not declared"
        assert declared <= answered, f"{method} {path} declares {sorted(declared - answered)}, never answered"
        for status in declared & {400, 401, 403, 404, 409, 413, 422, 429, 503}:
            if (method, path) != ("GET", "/readyz"):
                schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            if status in (429, 503):
                assert "Retry-After" in op["responses"][str(status)]["headers"], (method, path, status)
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["detail", "status_code"]
    for (method, path), status, text in seen.bodies:
        if status >= 400 and status != 416 and path != "/readyz":
            body = json.loads(text)
            assert body["status_code"] == status and isinstance(body["detail"], str), (method, path, text)
