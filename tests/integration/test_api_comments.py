"""The comment routes of the contract, against a real `tracktalk serve` over a real PostgreSQL.

Covers list, create, reply, edit, delete, like and unlike: the comment object, every refusal
(status and a detail that says what to fix), form-encoded bodies, pagination, idempotent and
concurrent likes, cascading deletes, comments written by plain SQL, and the OpenAPI schema.

Tests that count rows work on a track of their own (`track` fixture), so that the module's
tests may share one database and one server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from tests.support.processes import SECRET, Replica
from tests.support.seed import World
from tests.support.waiting import async_wait_until

TIMEOUT = 10.0
MAX_PAGES = 200
COMMENT_FIELDS = {
    "id",
    "user_id",
    "username",
    "author_is_creator",
    "author_is_team",
    "track_id",
    "parent_id",
    "content",
    "timestamp",
    "is_edited",
    "created_at",
    "last_edited_at",
    "like_count",
    "user_has_liked",
    "pinned",
    "hearted",
    "deleted",
}
MARKS = {"hidden", "held", "report_count"}
"""The fields only a comment's author and the track's moderators get."""
LIKE_FIELDS = {"comment_id", "like_count", "user_has_liked"}
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def comments_url(track_id: str) -> str:
    return f"/api/tracks/{track_id}/comments"


def comment_url(comment_id: int) -> str:
    return f"/api/comments/{comment_id}"


def like_url(comment_id: int) -> str:
    return f"/api/comments/{comment_id}/like"


def sql_rows(db_url: str, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement that returns rows, in its own autocommitted connection."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def sql_run(db_url: str, query: str, params: Any = ()) -> int:
    """Run one statement that returns no rows; the number of rows it changed."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(query, params).rowcount


def sql_value(db_url: str, query: str, params: Any = ()) -> Any:
    rows = sql_rows(db_url, query, params)
    assert len(rows) == 1, rows
    return rows[0][0]


def count_comments(db_url: str, track_id: str) -> int:
    return int(sql_value(db_url, "SELECT count(*) FROM comments WHERE track_id = %s", (track_id,)))


def make_track(
    db_url: str, *, duration: float | None = None, private: bool = False, track_id: str | None = None
) -> str:
    """A new track in the seed album (whose creator is carol)."""
    track_id = track_id or f"t-{uuid.uuid4().hex[:12]}"
    return str(
        sql_value(
            db_url,
            """
            INSERT INTO tracks (id, album_id, title, duration_seconds, is_private)
            SELECT %s, a.id, 'Test track', %s, %s FROM albums a ORDER BY a.id LIMIT 1
            RETURNING id
            """,
            (track_id, duration, private),
        )
    )


def sql_comments(db_url: str, track_id: str, user_id: int, count: int, at: int = 0) -> list[int]:
    """`count` comments written by plain SQL, at `at` + 1, 2, … seconds; their ids in order."""
    rows = sql_rows(
        db_url,
        """
        INSERT INTO comments (track_id, user_id, content, "timestamp")
        SELECT %s, %s, 'bulk ' || n, %s + n FROM generate_series(1, %s) AS n
        RETURNING id
        """,
        (track_id, user_id, at, count),
    )
    return sorted(int(row[0]) for row in rows)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The answer is `status` with a JSON body of exactly {status_code, detail}, the detail naming `words`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"status_code", "detail"}, body
    assert body["status_code"] == status
    detail = body["detail"]
    assert isinstance(detail, str) and detail.strip(), body
    for word in words:
        assert word.lower() in detail.lower(), f"{word!r} not in detail {detail!r}"
    return detail


def assert_comment(comment: dict[str, Any], **expected: Any) -> None:
    """`comment` has every field of the contract's comment object, of the right type, and `expected`
    (and the marks, or none of them: they are its author's and the moderators')."""
    assert set(comment) in (COMMENT_FIELDS, COMMENT_FIELDS | MARKS), comment
    assert isinstance(comment["id"], int) and comment["id"] > 0
    assert isinstance(comment["user_id"], int)
    assert isinstance(comment["username"], str)
    assert isinstance(comment["timestamp"], (int, float))
    assert isinstance(comment["like_count"], int)
    for flag in ("author_is_creator", "author_is_team", "is_edited", "user_has_liked"):
        assert isinstance(comment[flag], bool), flag
    created = datetime.fromisoformat(comment["created_at"])
    assert created.tzinfo is not None
    if comment["last_edited_at"] is not None:
        assert datetime.fromisoformat(comment["last_edited_at"]) >= created
    for key, value in expected.items():
        assert comment[key] == value, (key, comment)


def unsigned_token(user_id: int) -> str:
    """A JWT with `alg: none` and no signature, claiming to be `user_id`."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": str(user_id), "exp": int(time.time()) + 3600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


class Api:
    """The comment routes as one user (or nobody) calls them; each call checks its success status."""

    def __init__(self, client: httpx.Client, world: World, who: str | None) -> None:
        self.client = client
        self.headers = world.auth(who) if who else {}

    def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """Any request with this user's token; the answer unchecked."""
        return self.client.request(method, url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def expect(self, status: int, method: str, url: str, **kw: Any) -> Any:
        response = self.call(method, url, **kw)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def post(
        self, track_id: str, content: str = "hello", timestamp: float = 1.0, **extra: Any
    ) -> dict[str, Any]:
        body = {"content": content, "timestamp": timestamp, **extra}
        return dict(self.expect(201, "POST", comments_url(track_id), json=body))

    def list(self, track_id: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.expect(200, "GET", comments_url(track_id), params=params))

    def one(self, track_id: str, comment_id: int) -> dict[str, Any]:
        """The comment as the track's list shows it (to this user)."""
        found = [c for c in self.list(track_id, limit=500) if c["id"] == comment_id]
        assert len(found) == 1, f"comment {comment_id} not listed once on {track_id}"
        return found[0]

    def edit(self, comment_id: int, content: str) -> dict[str, Any]:
        return dict(self.expect(200, "PUT", comment_url(comment_id), json={"content": content}))

    def delete(self, comment_id: int) -> None:
        assert self.expect(204, "DELETE", comment_url(comment_id)) is None

    def like(self, comment_id: int, *, liked: bool = True) -> dict[str, Any]:
        state = dict(self.expect(200, "POST" if liked else "DELETE", like_url(comment_id)))
        assert set(state) == LIKE_FIELDS, state
        assert state["comment_id"] == comment_id
        return state


AsUser = Callable[[str | None], Api]


def assert_untouched(as_user: AsUser, comment: dict[str, Any], track: str) -> None:
    """The comment and its track are as the fixture made them (as anyone sees it: without the marks
    only its author and the moderators get)."""
    public = {key: value for key, value in comment.items() if key not in ("hidden", "held", "report_count")}
    assert as_user(None).list(track) == [public]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(replica: Replica) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.http, timeout=TIMEOUT) as http:
        yield http


@pytest.fixture(scope="module")
def as_user(client: httpx.Client, world: World) -> AsUser:
    """`as_user("alice")` calls the API as alice; `as_user(None)` without a token."""
    return lambda who: Api(client, world, who)


@pytest.fixture
def track(db_url: str, world: World) -> str:
    """A public track of this test's own, without a duration."""
    return make_track(db_url)


@pytest.fixture
def comment(as_user: AsUser, track: str) -> dict[str, Any]:
    """A comment of alice's on the test's own track."""
    return dict(as_user("alice").post(track, "alice says hi", 3.0))


# ---------------------------------------------------------------------------------------------
# Reading and writing: the comment object
# ---------------------------------------------------------------------------------------------


def test_post_answers_the_full_comment_object(as_user: AsUser, world: World, track: str) -> None:
    made = as_user("alice").post(track, "  a fine riff \n", 12.5)
    assert_comment(
        made,
        user_id=world.users["alice"],
        username="alice",
        author_is_creator=False,
        author_is_team=False,
        track_id=track,
        parent_id=None,
        content="a fine riff",
        timestamp=12.5,
        is_edited=False,
        last_edited_at=None,
        like_count=0,
        user_has_liked=False,
    )
    assert as_user("alice").list(track) == [made]


@pytest.mark.parametrize(
    ("who", "creator", "team"), [("carol", True, False), ("tina", False, True), ("bob", False, False)]
)
def test_author_fields(
    as_user: AsUser, world: World, track: str, who: str, creator: bool, team: bool
) -> None:
    made = as_user(who).post(track, f"from {who}")
    assert_comment(
        made, user_id=world.users[who], username=who, author_is_creator=creator, author_is_team=team
    )


def test_public_comments_need_no_token(as_user: AsUser, comment: dict[str, Any], track: str) -> None:
    as_user("bob").like(comment["id"])
    [seen] = as_user(None).list(track)
    assert_comment(seen, id=comment["id"], content="alice says hi", like_count=1, user_has_liked=False)


def test_user_has_liked_is_the_callers(as_user: AsUser, comment: dict[str, Any], track: str) -> None:
    as_user("alice").like(comment["id"])
    assert as_user("alice").one(track, comment["id"])["user_has_liked"] is True
    assert as_user("bob").one(track, comment["id"])["user_has_liked"] is False


def test_reply(as_user: AsUser, comment: dict[str, Any], track: str) -> None:
    reply = as_user("bob").post(track, "agreed", 4.0, parent_id=comment["id"])
    assert_comment(reply, parent_id=comment["id"], track_id=track, username="bob")
    assert [c["id"] for c in as_user(None).list(track)] == [comment["id"], reply["id"]]


def test_timestamp_bounds_are_inclusive(as_user: AsUser, db_url: str, world: World) -> None:
    timed = make_track(db_url, duration=60)
    assert as_user("alice").post(timed, "start", 0)["timestamp"] == 0
    assert as_user("alice").post(timed, "end", 60)["timestamp"] == 60
    assert as_user("alice").post(world.timed, "end of t-timed", 60)["timestamp"] == 60
    assert as_user("alice").post(world.public, "no duration, no limit", 86_400)["timestamp"] == 86_400


def test_content_of_5000_characters_is_accepted(as_user: AsUser, track: str) -> None:
    text = "é" * 5000
    assert as_user("alice").post(track, f"  {text}  ")["content"] == text


def test_unicode_content_round_trips(as_user: AsUser, track: str) -> None:
    text = 'ça groove 🎸 — «bravo» 日本語 "quotes" <b>not html</b>'
    made = as_user("alice").post(track, text)
    assert made["content"] == text
    assert as_user(None).one(track, made["id"])["content"] == text


# ---------------------------------------------------------------------------------------------
# Form-encoded bodies, as the seed's client sends them
# ---------------------------------------------------------------------------------------------


def test_form_encoded_post_and_put(as_user: AsUser, track: str) -> None:
    alice = as_user("alice")
    made = alice.expect(201, "POST", comments_url(track), data={"content": " by form ", "timestamp": "12.5"})
    assert_comment(made, content="by form", timestamp=12.5, parent_id=None)

    fields = {"content": "form reply", "timestamp": "3", "parent_id": str(made["id"])}
    assert_comment(alice.expect(201, "POST", comments_url(track), data=fields), parent_id=made["id"])

    edited = alice.expect(200, "PUT", comment_url(made["id"]), data={"content": " edited by form "})
    assert_comment(edited, id=made["id"], content="edited by form", is_edited=True)


def test_form_blank_parent_id_is_a_top_level_comment(client: httpx.Client, world: World, track: str) -> None:
    """An HTML form sends its hidden `parent_id` input even when it is blank."""
    fields = {"content": "top", "timestamp": "2", "parent_id": ""}
    response = client.post(comments_url(track), data=fields, headers=world.auth("alice"))
    assert response.status_code == 201, response.text
    assert_comment(response.json(), parent_id=None, content="top")


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"content": "", "timestamp": "1"}, "content"),
        ({"content": "x", "timestamp": "soon"}, "timestamp"),
        ({"content": "x", "timestamp": "nan"}, "timestamp"),
        ({"content": "x", "timestamp": "inf"}, "timestamp"),
        ({"content": "x"}, "timestamp"),
        ({"content": "   ", "timestamp": "1"}, "content"),
        ({"content": "x", "timestamp": "1", "parent_id": "first"}, "parent_id"),
    ],
)
def test_form_encoded_bad_values(
    client: httpx.Client, world: World, db_url: str, track: str, fields: dict[str, str], word: str
) -> None:
    response = client.post(comments_url(track), data=fields, headers=world.auth("alice"))
    assert_error(response, 422, word)
    assert count_comments(db_url, track) == 0


# ---------------------------------------------------------------------------------------------
# Bad input: 400, 413, 422
# ---------------------------------------------------------------------------------------------

BAD_COMMENTS = {
    "empty content": ({"content": "", "timestamp": 1}, ["content"]),
    "whitespace content": ({"content": " \n\t ", "timestamp": 1}, ["content", "empty"]),
    "5001 characters": ({"content": "a" * 5001, "timestamp": 1}, ["content", "5000"]),
    "NUL character": ({"content": "a\x00b", "timestamp": 1}, ["content", "NUL"]),
    "content not a string": ({"content": 5, "timestamp": 1}, ["content"]),
    "no content": ({"timestamp": 1}, ["content"]),
    "no timestamp": ({"content": "x"}, ["timestamp"]),
    "negative timestamp": ({"content": "x", "timestamp": -0.5}, ["timestamp"]),
    "timestamp past the end": ({"content": "x", "timestamp": 60.5}, ["timestamp", "60"]),
    "timestamp not a number": ({"content": "x", "timestamp": "later"}, ["timestamp"]),
    "timestamp null": ({"content": "x", "timestamp": None}, ["timestamp"]),
    "parent_id zero": ({"content": "x", "timestamp": 1, "parent_id": 0}, ["parent_id"]),
    "parent_id not a number": ({"content": "x", "timestamp": 1, "parent_id": "abc"}, ["parent_id"]),
    "parent_id unknown": ({"content": "x", "timestamp": 1, "parent_id": 2**62}, ["parent_id"]),
    "parent_id beyond bigint": ({"content": "x", "timestamp": 1, "parent_id": 2**63}, ["parent_id"]),
    "body not an object": (["content", "x"], ["body", "object"]),
}


@pytest.mark.parametrize(("body", "words"), BAD_COMMENTS.values(), ids=BAD_COMMENTS.keys())
def test_bad_comment_is_422(
    client: httpx.Client, world: World, db_url: str, body: Any, words: list[str]
) -> None:
    before = count_comments(db_url, world.timed)
    response = client.post(comments_url(world.timed), json=body, headers=world.auth("alice"))
    assert_error(response, 422, *words)
    assert count_comments(db_url, world.timed) == before


def test_parent_on_another_track_is_422(as_user: AsUser, db_url: str, comment: dict[str, Any]) -> None:
    elsewhere = make_track(db_url)
    body = {"content": "wrong thread", "timestamp": 1, "parent_id": comment["id"]}
    response = as_user("bob").call("POST", comments_url(elsewhere), json=body)
    assert_error(response, 422, "parent_id", str(comment["id"]))
    assert count_comments(db_url, elsewhere) == 0


@pytest.mark.parametrize(
    ("content", "words"),
    [("", ["content"]), ("   ", ["content"]), ("b" * 5001, ["content", "5000"]), ("\x00", ["content"])],
    ids=["empty", "whitespace", "5001 characters", "NUL"],
)
def test_bad_edit_is_422_and_changes_nothing(
    as_user: AsUser, comment: dict[str, Any], track: str, content: str, words: list[str]
) -> None:
    alice = as_user("alice")
    assert_error(alice.call("PUT", comment_url(comment["id"]), json={"content": content}), 422, *words)
    assert alice.one(track, comment["id"]) == comment


def send_raw(api: Api, method: str, track: str, comment_id: int, body: Any) -> httpx.Response:
    """`body` as it is, labelled JSON, to the POST of `track`'s comments or the PUT of the comment."""
    url = comments_url(track) if method == "POST" else comment_url(comment_id)
    return api.call(method, url, content=body, headers={"Content-Type": "application/json"})


NOT_JSON = [
    b'{"content": "x", "timestamp": ',
    b"content=x",
    b"\xff\xfe",
    b"{'a': 1}",
    b'{"timestamp": 1e999}',
]


@pytest.mark.parametrize("raw", NOT_JSON)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_body_that_is_not_json_is_400(
    as_user: AsUser, comment: dict[str, Any], track: str, method: str, raw: bytes
) -> None:
    assert_error(send_raw(as_user("alice"), method, track, comment["id"], raw), 400, "not valid JSON")
    assert_untouched(as_user, comment, track)


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_empty_body_is_422(as_user: AsUser, comment: dict[str, Any], track: str, method: str) -> None:
    assert_error(send_raw(as_user("alice"), method, track, comment["id"], b""), 422, "body", "empty")
    assert_untouched(as_user, comment, track)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_body_over_64_kib_is_413(
    as_user: AsUser, comment: dict[str, Any], track: str, method: str, chunked: bool
) -> None:
    body = json.dumps({"content": "a" * (64 * 1024), "timestamp": 1}).encode()
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body
    assert_error(send_raw(as_user("alice"), method, track, comment["id"], content), 413, "too large", "65536")
    assert_untouched(as_user, comment, track)


# ---------------------------------------------------------------------------------------------
# 401: every write needs a trustworthy token
# ---------------------------------------------------------------------------------------------

WRITES = [
    ("POST", "/api/tracks/{track}/comments", {"content": "sneaky", "timestamp": 1}),
    ("PUT", "/api/comments/{comment}", {"content": "sneaky"}),
    ("DELETE", "/api/comments/{comment}", None),
    ("POST", "/api/comments/{comment}/like", None),
    ("DELETE", "/api/comments/{comment}/like", None),
]
WRITE_IDS = [f"{method} {path}" for method, path, _ in WRITES]

BAD_TOKENS = {
    "garbage": (lambda uid: "Bearer not.a.jwt", "invalid token"),
    "expired": (lambda uid: f"Bearer {issue_token(SECRET, uid, -60)}", "expired"),
    "other secret": (lambda uid: f"Bearer {issue_token(OTHER_SECRET, uid)}", "invalid token"),
    "alg none": (lambda uid: f"Bearer {unsigned_token(uid)}", "invalid token"),
    "unknown user": (lambda uid: f"Bearer {issue_token(SECRET, 10**15)}", "invalid token"),
    "not bearer": (lambda uid: f"Basic {base64.b64encode(b'alice:pw').decode()}", "Bearer"),
    "empty bearer": (lambda uid: "Bearer", "Bearer"),
}


def _write(
    client: httpx.Client, write: tuple[str, str, Any], track: str, comment_id: int, **kw: Any
) -> httpx.Response:
    method, path, body = write
    url = path.format(track=track, comment=comment_id)
    return client.request(method, url, json=body, **kw) if body else client.request(method, url, **kw)


@pytest.mark.parametrize("write", WRITES, ids=WRITE_IDS)
def test_write_without_token_is_401(
    client: httpx.Client, as_user: AsUser, comment: dict[str, Any], track: str, write: tuple[str, str, Any]
) -> None:
    assert_error(_write(client, write, track, comment["id"]), 401, "Authorization: Bearer")
    assert_untouched(as_user, comment, track)


@pytest.mark.parametrize("write", WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(("make", "word"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_write_with_bad_token_is_401(
    client: httpx.Client,
    world: World,
    as_user: AsUser,
    comment: dict[str, Any],
    track: str,
    write: tuple[str, str, Any],
    make: Any,
    word: str,
) -> None:
    headers = {"Authorization": make(world.users["alice"])}
    assert_error(_write(client, write, track, comment["id"], headers=headers), 401, word)
    assert_untouched(as_user, comment, track)


@pytest.mark.parametrize(("make", "word"), BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_read_with_bad_token_is_401(
    client: httpx.Client, world: World, track: str, make: Any, word: str
) -> None:
    """A token that is sent must be good, even where none is needed: no silent downgrade to anonymous."""
    response = client.get(comments_url(track), headers={"Authorization": make(world.users["alice"])})
    assert_error(response, 401, word)


# ---------------------------------------------------------------------------------------------
# 403 and who may do what
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["bob", "carol", "tina"])
def test_only_the_author_edits(as_user: AsUser, comment: dict[str, Any], track: str, who: str) -> None:
    response = as_user(who).call("PUT", comment_url(comment["id"]), json={"content": "mine now"})
    assert_error(response, 403, "author")
    assert_untouched(as_user, comment, track)


def test_listener_cannot_delete_anothers_comment(
    as_user: AsUser, comment: dict[str, Any], track: str
) -> None:
    response = as_user("dave").call("DELETE", comment_url(comment["id"]))
    assert_error(response, 403, "author", "creator", "team")
    assert_untouched(as_user, comment, track)


@pytest.mark.parametrize("who", ["alice", "carol", "tina"], ids=["author", "creator", "team"])
def test_author_creator_and_team_delete(
    as_user: AsUser, db_url: str, comment: dict[str, Any], track: str, who: str
) -> None:
    as_user(who).delete(comment["id"])
    assert as_user(None).list(track) == []
    assert count_comments(db_url, track) == 0


def test_edit_marks_the_comment_edited(as_user: AsUser, comment: dict[str, Any], track: str) -> None:
    edited = as_user("alice").edit(comment["id"], "  better words  ")
    assert_comment(
        edited,
        id=comment["id"],
        content="better words",
        is_edited=True,
        timestamp=comment["timestamp"],
        created_at=comment["created_at"],
        user_has_liked=False,
    )
    assert edited["last_edited_at"] is not None
    assert as_user("alice").one(track, comment["id"]) == edited
    assert as_user(None).one(track, comment["id"]) == {k: v for k, v in edited.items() if k not in MARKS}


def test_edit_keeps_likes(as_user: AsUser, comment: dict[str, Any]) -> None:
    as_user("bob").like(comment["id"])
    as_user("alice").like(comment["id"])
    edited = as_user("alice").edit(comment["id"], "still liked?")
    assert_comment(edited, like_count=2, user_has_liked=True)


# ---------------------------------------------------------------------------------------------
# 404: unknown things, and private tracks for outsiders
# ---------------------------------------------------------------------------------------------

UNKNOWN_TRACKS = ["t-nope", "T-PUBLIC", "x" * 300, "t%00x"]


@pytest.mark.parametrize("track_id", UNKNOWN_TRACKS)
def test_unknown_track_is_404(client: httpx.Client, world: World, track_id: str) -> None:
    assert_error(client.get(comments_url(track_id)), 404, "track", "not found")
    response = client.post(
        comments_url(track_id), json={"content": "x", "timestamp": 1}, headers=world.auth("alice")
    )
    assert_error(response, 404, "track", "not found")


UNKNOWN_COMMENTS = [2**62, 2**63, 10**30, 0]


@pytest.mark.parametrize("write", WRITES[1:], ids=WRITE_IDS[1:])
@pytest.mark.parametrize("comment_id", UNKNOWN_COMMENTS)
def test_unknown_comment_is_404(
    client: httpx.Client, world: World, write: tuple[str, str, Any], comment_id: int
) -> None:
    response = _write(client, write, world.public, comment_id, headers=world.auth("alice"))
    assert_error(response, 404, "comment", "not found")


def test_deleted_comment_is_404(
    client: httpx.Client, as_user: AsUser, world: World, comment: dict[str, Any]
) -> None:
    as_user("alice").delete(comment["id"])
    for write in WRITES[1:]:
        response = _write(client, write, world.public, comment["id"], headers=world.auth("alice"))
        assert_error(response, 404, "comment", "not found")


@pytest.fixture
def private_comment(as_user: AsUser, world: World) -> dict[str, Any]:
    """A comment of carol's on the private track t-private."""
    return dict(as_user("carol").post(world.private, "for insiders", 99))


@pytest.mark.parametrize("who", ["alice", None], ids=["listener", "anonymous"])
def test_private_track_does_not_exist_for_outsiders(
    client: httpx.Client, as_user: AsUser, world: World, private_comment: dict[str, Any], who: str | None
) -> None:
    headers = world.auth(who) if who else {}
    assert_error(client.get(comments_url(world.private), headers=headers), 404, "track", "not found")
    if who is None:
        return
    response = client.post(
        comments_url(world.private), json={"content": "x", "timestamp": 1}, headers=headers
    )
    assert_error(response, 404, "track", "not found")
    for write in WRITES[1:]:
        response = _write(client, write, world.private, private_comment["id"], headers=headers)
        assert_error(response, 404, "not found")
    assert as_user("carol").one(world.private, private_comment["id"]) == private_comment


@pytest.mark.parametrize("who", ["carol", "tina"], ids=["creator", "team"])
def test_private_track_exists_for_insiders(
    as_user: AsUser, world: World, private_comment: dict[str, Any], who: str
) -> None:
    insider = as_user(who)
    assert insider.one(world.private, private_comment["id"]) == private_comment
    reply = insider.post(world.private, "insider reply", 100, parent_id=private_comment["id"])
    assert_comment(reply, track_id=world.private, parent_id=private_comment["id"])
    assert insider.like(private_comment["id"])["user_has_liked"] is True


def test_private_track_duration_is_checked(client: httpx.Client, world: World) -> None:
    response = client.post(
        comments_url(world.private), json={"content": "x", "timestamp": 100.5}, headers=world.auth("carol")
    )
    assert_error(response, 422, "timestamp", "100")


# ---------------------------------------------------------------------------------------------
# Delete cascades to replies
# ---------------------------------------------------------------------------------------------


def test_delete_leaves_a_tombstone_that_keeps_the_replies_and_goes_with_the_last(
    as_user: AsUser, db_url: str, comment: dict[str, Any], track: str
) -> None:
    reply = as_user("bob").post(track, "reply", parent_id=comment["id"])
    nested = as_user("dave").post(track, "reply to reply", parent_id=reply["id"])
    kept = as_user("dave").post(track, "unrelated")
    as_user("bob").like(reply["id"])

    as_user("alice").delete(comment["id"])

    listed = {c["id"]: c for c in as_user(None).list(track)}
    assert set(listed) == {comment["id"], reply["id"], nested["id"], kept["id"]}
    assert (listed[comment["id"]]["deleted"], listed[comment["id"]]["content"]) == (True, "")
    assert listed[reply["id"]]["like_count"] == 1 and not listed[reply["id"]]["deleted"]

    as_user("dave").delete(nested["id"])  # a reply without replies: removed
    as_user("bob").delete(reply["id"])  # the tombstone's last reply: the tombstone goes with it
    assert [c["id"] for c in as_user(None).list(track)] == [kept["id"]]
    gone = [comment["id"], reply["id"], nested["id"]]
    assert sql_value(db_url, "SELECT count(*) FROM comments WHERE id = ANY(%s)", (gone,)) == 0
    assert sql_value(db_url, "SELECT count(*) FROM comment_likes WHERE comment_id = ANY(%s)", (gone,)) == 0


def test_second_delete_is_404(
    client: httpx.Client, as_user: AsUser, world: World, comment: dict[str, Any]
) -> None:
    as_user("alice").delete(comment["id"])
    response = client.delete(comment_url(comment["id"]), headers=world.auth("alice"))
    assert_error(response, 404, "comment", "not found")


# ---------------------------------------------------------------------------------------------
# Likes
# ---------------------------------------------------------------------------------------------


def like_rows(db_url: str, comment_id: int) -> list[int]:
    rows = sql_rows(
        db_url, "SELECT user_id FROM comment_likes WHERE comment_id = %s ORDER BY user_id", (comment_id,)
    )
    return [int(row[0]) for row in rows]


def test_like_twice_is_one_like(
    as_user: AsUser, world: World, db_url: str, comment: dict[str, Any], track: str
) -> None:
    bob = as_user("bob")
    for _ in range(2):
        assert bob.like(comment["id"]) == {
            "comment_id": comment["id"],
            "like_count": 1,
            "user_has_liked": True,
        }
    assert like_rows(db_url, comment["id"]) == [world.users["bob"]]
    assert_comment(bob.one(track, comment["id"]), like_count=1, user_has_liked=True)


def test_unlike_twice_is_fine(as_user: AsUser, db_url: str, comment: dict[str, Any], track: str) -> None:
    bob = as_user("bob")
    bob.like(comment["id"])
    for _ in range(2):
        assert bob.like(comment["id"], liked=False) == {
            "comment_id": comment["id"],
            "like_count": 0,
            "user_has_liked": False,
        }
    assert like_rows(db_url, comment["id"]) == []
    assert_comment(bob.one(track, comment["id"]), like_count=0, user_has_liked=False)


def test_unlike_without_a_like_changes_nothing(as_user: AsUser, comment: dict[str, Any]) -> None:
    as_user("carol").like(comment["id"])
    state = as_user("bob").like(comment["id"], liked=False)
    assert state == {"comment_id": comment["id"], "like_count": 1, "user_has_liked": False}


async def _concurrent_likes(
    replica: Replica, world: World, comment_id: int, users: list[str]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=TIMEOUT) as http:
        return list(
            await asyncio.gather(*(http.post(like_url(comment_id), headers=world.auth(u)) for u in users))
        )


async def test_same_user_liking_concurrently_leaves_one_row(
    replica: Replica, world: World, db_url: str, comment: dict[str, Any]
) -> None:
    responses = await _concurrent_likes(replica, world, comment["id"], ["bob"] * 10)
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    assert all(r.json()["user_has_liked"] and r.json()["like_count"] == 1 for r in responses)
    assert like_rows(db_url, comment["id"]) == [world.users["bob"]]
    assert (
        sql_value(db_url, "SELECT likes FROM tracktalk.comment_stats WHERE comment_id = %s", (comment["id"],))
        == 1
    )


async def test_different_users_liking_concurrently_all_count(
    replica: Replica, world: World, db_url: str, as_user: AsUser, comment: dict[str, Any], track: str
) -> None:
    users = ["carol", "tina", "alice", "bob", "dave"]
    responses = await _concurrent_likes(replica, world, comment["id"], users)
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert max(r.json()["like_count"] for r in responses) == 5
    assert like_rows(db_url, comment["id"]) == sorted(world.users[u] for u in users)
    assert_comment(as_user(None).one(track, comment["id"]), like_count=5)


async def race_with_delete(
    db_url: str,
    as_user: AsUser,
    track: str,
    write: Callable[[httpx.AsyncClient, int], Any],
    replica: Replica,
) -> list[httpx.Response]:
    """Three `write`s that lose the race against the deletion of their comment, for certain: the
    deletion is made and held uncommitted, the writes pass their checks and wait on the deleted
    row's lock (seen in pg_stat_activity), then the deletion commits under them."""
    target = as_user("alice").post(track, "going away")
    async with (
        await psycopg.AsyncConnection.connect(db_url) as deleter,
        httpx.AsyncClient(base_url=replica.http, timeout=TIMEOUT) as http,
    ):
        await deleter.execute("DELETE FROM comments WHERE id = %s", (target["id"],))
        racing = [asyncio.create_task(write(http, target["id"])) for _ in range(3)]

        def writes_waiting() -> bool:
            rows = sql_rows(
                db_url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'tracktalk' AND wait_event_type = 'Lock'",
            )
            return int(rows[0][0]) >= 3

        await async_wait_until(writes_waiting, TIMEOUT, "the writes to wait on the deleted comment")
        await deleter.commit()
        return list(await asyncio.gather(*racing))


async def test_likes_that_lose_the_race_against_a_delete_are_404(
    replica: Replica, world: World, db_url: str, as_user: AsUser, track: str
) -> None:
    """A like that loses the race against the comment's deletion is a 404, never a 422 or a 500."""

    def like(http: httpx.AsyncClient, comment_id: int) -> Any:
        return http.post(like_url(comment_id), headers=world.auth("bob"))

    for answer in await race_with_delete(db_url, as_user, track, like, replica):
        assert_error(answer, 404, "comment", "not found")
    assert count_comments(db_url, track) == 0  # and so no likes either (they cascade)


async def test_replies_that_lose_the_race_against_a_delete_are_422(
    replica: Replica, world: World, db_url: str, as_user: AsUser, track: str
) -> None:
    """A reply that loses the race against its parent's deletion is refused naming `parent_id`."""

    def reply(http: httpx.AsyncClient, comment_id: int) -> Any:
        body = {"content": "too late?", "timestamp": 1, "parent_id": comment_id}
        return http.post(comments_url(track), json=body, headers=world.auth("bob"))

    for answer in await race_with_delete(db_url, as_user, track, reply, replica):
        assert_error(answer, 422, "parent_id")
    assert count_comments(db_url, track) == 0


# ---------------------------------------------------------------------------------------------
# Pagination
# ---------------------------------------------------------------------------------------------


def walk_pages(
    client: httpx.Client, url: str, between_pages: Callable[[int], object] | None = None
) -> tuple[list[int], int]:
    """Follow `Link: rel="next"` from `url` to the end; the ids seen and the number of pages."""
    ids: list[int] = []
    for pages in range(1, MAX_PAGES + 1):
        response = client.get(url)
        assert response.status_code == 200, response.text
        ids += [c["id"] for c in response.json()]
        next_link = response.links.get("next")
        if next_link is None:
            return ids, pages
        url = next_link["url"]
        if between_pages is not None:
            between_pages(pages)
    raise AssertionError(f"still a next page after {MAX_PAGES} pages")


def test_walking_the_pages_sees_every_comment_once(
    client: httpx.Client, world: World, db_url: str, track: str
) -> None:
    written = sql_comments(db_url, track, world.users["bob"], 25)
    ids, pages = walk_pages(client, f"{comments_url(track)}?limit=7")
    assert ids == written
    assert pages == 4


def test_comments_written_while_walking_are_not_missed(
    client: httpx.Client, world: World, db_url: str, track: str
) -> None:
    written = sql_comments(db_url, track, world.users["bob"], 10)

    def write_more(page: int) -> None:
        # Later in the track than the walk's cursor (comments are listed by their position in the
        # track: one written meanwhile before the cursor's position reaches a page by its socket).
        written.extend(sql_comments(db_url, track, world.users["dave"], 3, at=100 + 10 * page))

    ids, _ = walk_pages(client, f"{comments_url(track)}?limit=4", write_more)
    assert len(ids) == len(set(ids))
    assert ids == sorted(written)


def test_page_shape_and_link(client: httpx.Client, world: World, db_url: str, track: str) -> None:
    written = sql_comments(db_url, track, world.users["bob"], 5)
    response = client.get(comments_url(track), params={"limit": 2, "after_id": written[0]})
    assert response.status_code == 200
    assert [c["id"] for c in response.json()] == written[1:3]
    next_url = httpx.URL(response.links["next"]["url"])
    assert next_url.path == comments_url(track)
    assert dict(next_url.params) == {"after_id": str(written[2]), "limit": "2"}

    last = client.get(comments_url(track), params={"limit": 10})
    assert [c["id"] for c in last.json()] == written
    assert "next" not in last.links


def test_link_works_for_a_track_id_that_needs_quoting(
    client: httpx.Client, world: World, db_url: str
) -> None:
    odd = make_track(db_url, track_id=f"t odd&id={uuid.uuid4().hex[:6]}")
    written = sql_comments(db_url, odd, world.users["bob"], 5)
    ids, pages = walk_pages(client, f"{comments_url(quote(odd, safe=''))}?limit=2")
    assert ids == written
    assert pages == 3


def test_list_is_never_unbounded(client: httpx.Client, world: World, db_url: str, track: str) -> None:
    sql_comments(db_url, track, world.users["bob"], 120)
    response = client.get(comments_url(track))
    assert response.status_code == 200
    assert len(response.json()) == 100
    assert "next" in response.links
    assert len(client.get(comments_url(track), params={"limit": 500}).json()) == 120


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"after_id": -1}, "after_id"),
        ({"after_id": 2**63}, "after_id"),
        ({"after_id": "last"}, "after_id"),
    ],
)
def test_bad_page_parameters_are_422(
    client: httpx.Client, world: World, params: dict[str, Any], word: str
) -> None:
    assert_error(client.get(comments_url(world.public), params=params), 422, word)


# ---------------------------------------------------------------------------------------------
# Comments written by plain SQL
# ---------------------------------------------------------------------------------------------


def test_sql_insert_shows_through_get(as_user: AsUser, world: World, db_url: str, track: str) -> None:
    comment_id = sql_value(
        db_url,
        "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'from psql', 12.5) RETURNING id",
        (track, world.users["tina"]),
    )
    [seen] = as_user("alice").list(track)
    assert_comment(
        seen,
        id=comment_id,
        user_id=world.users["tina"],
        username="tina",
        author_is_team=True,
        track_id=track,
        parent_id=None,
        content="from psql",
        timestamp=12.5,
        is_edited=False,
        last_edited_at=None,
        like_count=0,
        user_has_liked=False,
    )


def test_sql_update_marks_edited(as_user: AsUser, db_url: str, comment: dict[str, Any], track: str) -> None:
    assert (
        sql_run(db_url, "UPDATE comments SET content = 'fixed by a DBA' WHERE id = %s", (comment["id"],)) == 1
    )
    seen = as_user(None).one(track, comment["id"])
    assert_comment(seen, content="fixed by a DBA", is_edited=True, created_at=comment["created_at"])
    assert seen["last_edited_at"] is not None


def test_sql_likes_and_deletes_show_through_get(
    as_user: AsUser, world: World, db_url: str, comment: dict[str, Any], track: str
) -> None:
    sql_run(
        db_url,
        "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s), (%s, %s)",
        (comment["id"], world.users["bob"], comment["id"], world.users["alice"]),
    )
    assert_comment(as_user("alice").one(track, comment["id"]), like_count=2, user_has_liked=True)
    assert sql_run(db_url, "DELETE FROM comments WHERE id = %s", (comment["id"],)) == 1
    assert as_user(None).list(track) == []


# ---------------------------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------------------------


def test_openapi_lists_the_comment_routes(client: httpx.Client) -> None:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/api/tracks/{track_id}/comments": {"get", "post"},
        "/api/comments/{comment_id}": {"put", "delete"},
        "/api/comments/{comment_id}/like": {"post", "delete"},
    }
    for path, methods in expected.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
