"""One query for many callers: what arrives while a query is in flight goes in the next one.

A replica that many sockets reach at once (a deploy, a listening party starting) would run one
admission query per socket; each costs a round trip and ~150 µs of psycopg's CPU. `Batched`
runs the first caller's query at once (no wait when it is alone) and gathers the callers that
come meanwhile into the next, so that under load a query answers tens of sockets.

When callers come in a stream (some came while the last query was in flight), the next query
waits LINGER seconds for more first. A replica that gets a share of a storm, a few hundred
sockets a second, otherwise ran a query for every one or two of them: in the six-replica storm
of docs/performance.md, the round trips to PostgreSQL (a `send` each, and the wake-up of a
backend) were the largest part of a survivor's CPU per socket. A lone caller never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MOST = 500
"""Callers answered by one query at most."""
LINGER = 0.005
"""Seconds a query waits for more callers when they come in a stream."""


class Batched(Generic[K, V]):
    """`await batched(key)` answers `fetch([..., key, ...])[i]`; one fetch in flight at a time."""

    def __init__(
        self, fetch: Callable[[list[K]], Awaitable[list[V]]], most: int = _MOST, linger: float = LINGER
    ) -> None:
        self._fetch = fetch
        self._most = most
        self._linger = linger
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, key: K) -> V:
        """The value for `key`; what `fetch` raised, if it failed."""
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending.append((key, answer))
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        try:
            streaming = False
            while self._pending:
                if streaming and len(self._pending) < self._most:
                    await asyncio.sleep(self._linger)  # these came during the last query: more follow
                streaming = True
                batch, self._pending = self._pending[: self._most], self._pending[self._most :]
                batch = [(key, answer) for key, answer in batch if not answer.done()]  # callers gone
                if not batch:
                    continue
                try:
                    values = await self._fetch([key for key, _ in batch])
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), value in zip(batch, values, strict=True):
                    if not answer.done():
                        answer.set_result(value)
        finally:
            self._running = None


class Shared(Generic[K, V]):
    """`await shared(key, fetch)`: callers asking the same `key` while its fetch is in flight share
    that one fetch, and its answer (or what it raised).

    A reconnect storm brings the sockets of a track back together, each with the same `since`
    (they were all caught up): their catch-up is the same page of the log, read once. Only equal
    questions share: an answer is never reused after its fetch ended, so a caller never gets an
    answer older than its own question's start by more than the one fetch in flight.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    async def __call__(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        answer = self._inflight.get(key)
        if answer is None:
            answer = self._inflight[key] = asyncio.ensure_future(fetch())
            answer.add_done_callback(lambda done: self._forget(key, done))
        # A caller that goes (its socket closed) leaves the fetch to the others.
        return await asyncio.shield(answer)

    def _forget(self, key: K, done: asyncio.Future[V]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody awaited any more is not logged as lost
