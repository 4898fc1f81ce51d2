"""tracktalk's HTTP API for services and bots: `Api` posts, edits, likes and deletes comments and
reads them and the caller's notifications, each answer decoded into `app.wire`'s structs; an
error is `ApiError` (its status, the server's `detail`, and `retry_after` for 429 and 503).

    async with Api("https://tracktalk.example", token=my_token) as api:
        comment = await api.post_comment("sunrise", "nice drop", timestamp=61.5)
        async for old in api.comments("sunrise"):
            ...
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from app.wire import Comment, LikeState, NotificationPage, TrackMetrics

T = TypeVar("T")

TIMEOUT = 10.0
"""Seconds a request may take, all of it."""


class TokenSource(Protocol):
    """A function that gives the access token to use: `token(expired=False)` before each socket
    and request, `token(expired=True)` once the server said the last one expired (a fresh one,
    or None to give up). It may be async."""

    def __call__(self, *, expired: bool) -> str | Awaitable[str | None] | None: ...


async def call_token_source(source: TokenSource | str | None, *, expired: bool) -> str | None:
    """The token `source` gives now (a fixed token is given as long as it has not expired)."""
    if source is None or isinstance(source, str):
        return None if expired else source
    token = source(expired=expired)
    if inspect.isawaitable(token):
        token = await token
    return token


class ApiError(Exception):
    """The API answered with an error: `status`, the server's `detail` (what to fix), and for 429
    and 503 `retry_after` (seconds)."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class Api:
    """tracktalk's HTTP API, as the user `token` names (`token`: an access token, or a
    TokenSource; None: anonymous, which may only read public tracks)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: TokenSource | str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._token = token
        self._client = client or httpx.AsyncClient(timeout=TIMEOUT)
        self._own_client = client is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (unless it was given)."""
        if self._own_client:
            await self._client.aclose()

    async def post_comment(
        self, track_id: str, content: str, timestamp: float, parent_id: int | None = None
    ) -> Comment:
        """A new comment (or a reply to `parent_id`) at `timestamp` seconds into the track."""
        body: dict[str, Any] = {"content": content, "timestamp": timestamp}
        if parent_id is not None:
            body["parent_id"] = parent_id
        return await self._call("POST", f"/api/tracks/{_path(track_id)}/comments", Comment, json=body)

    async def edit_comment(self, comment_id: int, content: str) -> Comment:
        """New content for the caller's own comment."""
        return await self._call("PUT", f"/api/comments/{comment_id}", Comment, json={"content": content})

    async def delete_comment(self, comment_id: int) -> None:
        """Delete a comment (its author's, or as the track's creator or the team)."""
        await self._call("DELETE", f"/api/comments/{comment_id}", None)

    async def like_comment(self, comment_id: int, like: bool = True) -> LikeState:
        """Like (or, with like=False, unlike) a comment; doing it twice changes nothing."""
        return await self._call("POST" if like else "DELETE", f"/api/comments/{comment_id}/like", LikeState)

    async def metrics(self, track_id: str) -> TrackMetrics:
        """The track's counters."""
        return await self._call("GET", f"/api/tracks/{_path(track_id)}/metrics", TrackMetrics)

    async def comments(self, track_id: str, page: int = 500) -> AsyncIterator[Comment]:
        """Every comment of the track, oldest first, page after page (`page` a request)."""
        path: str | None = f"/api/tracks/{_path(track_id)}/comments?limit={page}"
        while path is not None:
            answer = await self._request("GET", path)
            for comment in msgspec.json.decode(answer.content, type=list[Comment]):
                yield comment
            following = answer.links.get("next", {}).get("url")
            path = None if following is None else str(httpx.URL(self._base).join(following))

    async def notifications(self) -> NotificationPage:
        """The caller's newest notifications, and how many are unread."""
        return await self._call("GET", "/api/notifications", NotificationPage)

    async def _call(self, method: str, path: str, kind: type[T] | None, **kw: Any) -> T:
        answer = await self._request(method, path, **kw)
        if kind is None:
            return None  # type: ignore[return-value]
        return msgspec.json.decode(answer.content, type=kind)

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        url = path if path.startswith(("http://", "https://")) else self._base + path
        expired = False
        while True:
            token = await call_token_source(self._token, expired=expired)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = await self._client.request(method, url, headers=headers, **kw)
            if answer.status_code < 400:
                return answer
            detail = _detail(answer)
            if answer.status_code == 401 and detail.startswith("token expired") and not expired:
                expired = True  # once, with a fresh token
                continue
            retry_after = answer.headers.get("retry-after")
            raise ApiError(answer.status_code, detail, float(retry_after) if retry_after else None)


def _path(track_id: str) -> str:
    return quote(track_id, safe="")


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else answer.reason_phrase
