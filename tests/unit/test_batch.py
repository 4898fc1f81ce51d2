"""app/data/batch.py: callers that come while a query is in flight share the next one (Batched), or, asking the same, that one (Shared)."""

from __future__ import annotations

import asyncio

import pytest

from app.data.batch import Batched, Shared
from tests.support.waiting import async_wait_until


async def test_a_lone_caller_is_answered_at_once_and_the_crowd_behind_it_in_one_query() -> None:
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[int]) -> list[int]:
        calls.append(keys)
        await gate.wait()
        return [k * 10 for k in keys]

    batched: Batched[int, int] = Batched(fetch)
    first = asyncio.create_task(batched(1))
    await asyncio.sleep(0)
    crowd = [asyncio.create_task(batched(k)) for k in range(2, 7)]
    await asyncio.sleep(0)
    assert calls == [[1]]  # the first went alone, at once
    gate.set()
    assert await first == 10
    assert await asyncio.gather(*crowd) == [20, 30, 40, 50, 60]
    assert calls == [[1], [2, 3, 4, 5, 6]]


async def test_callers_that_come_in_a_stream_wait_a_moment_for_more_to_share_their_query() -> None:
    """The callers that came while a query was in flight are asked next after LINGER seconds, so
    that one who comes meanwhile is in the same query (a storm's share on one replica: a few
    hundred sockets a second); a caller who finds no query running is asked at once."""
    calls: list[list[int]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[int]) -> list[int]:
        calls.append(keys)
        if len(calls) == 1:
            await gate.wait()
        return keys

    batched: Batched[int, int] = Batched(fetch, linger=2.0)
    first = asyncio.create_task(batched(1))
    await async_wait_until(lambda: calls == [[1]], 1, "the lone caller's query, at once")
    during = asyncio.create_task(batched(2))  # comes while the first query is in flight
    await asyncio.sleep(0)
    gate.set()
    assert await first == 1
    for _ in range(5):  # the loop turns: the next query waits
        await asyncio.sleep(0)
    assert calls == [[1]]
    meanwhile = asyncio.create_task(batched(3))
    assert await asyncio.gather(during, meanwhile) == [2, 3]
    assert calls == [[1], [2, 3]]
    # the stream over, the next lone caller is asked at once again
    alone = asyncio.create_task(batched(4))
    await async_wait_until(lambda: len(calls) == 3, 1.0, "a lone caller's query, without the linger")
    assert await alone == 4 and calls[2] == [4]


async def test_a_failed_query_fails_its_callers_and_the_next_one_runs() -> None:
    attempts = 0

    async def fetch(keys: list[str]) -> list[str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("database down")
        return [k.upper() for k in keys]

    batched: Batched[str, str] = Batched(fetch)
    with pytest.raises(OSError):
        await batched("a")
    assert await batched("b") == "B"


async def test_a_caller_that_gave_up_is_left_out() -> None:
    seen: list[list[str]] = []
    gate = asyncio.Event()

    async def fetch(keys: list[str]) -> list[str]:
        seen.append(keys)
        await gate.wait()
        return keys

    batched: Batched[str, str] = Batched(fetch)
    first = asyncio.create_task(batched("first"))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(batched("quitter"))
    stayer = asyncio.create_task(batched("stayer"))
    await asyncio.sleep(0)
    quitter.cancel()
    gate.set()
    assert (await first, await stayer) == ("first", "stayer")
    assert seen == [["first"], ["stayer"]]


async def test_equal_questions_in_flight_share_one_fetch_and_a_later_one_fetches_again() -> None:
    fetches = 0
    gate = asyncio.Event()

    async def fetch() -> int:
        nonlocal fetches
        fetches += 1
        mine = fetches
        await gate.wait()
        return mine

    shared: Shared[str, int] = Shared()
    storm = [asyncio.create_task(shared("track:a since 41", fetch)) for _ in range(100)]
    other = asyncio.create_task(shared("track:b since 7", fetch))
    for _ in range(3):  # the callers' tasks run, then the fetches' own
        await asyncio.sleep(0)
    assert fetches == 2  # one per question, not one per caller
    storm[0].cancel()  # the first asker leaves: the others still get the answer
    gate.set()
    assert await asyncio.gather(*storm[1:]) == [1] * 99
    assert await other == 2
    assert await shared("track:a since 41", fetch) == 3  # over: asked again, fetched again


async def test_a_shared_fetch_that_fails_fails_each_caller_and_the_next_asks_afresh() -> None:
    fail = True

    async def fetch() -> str:
        await asyncio.sleep(0)
        if fail:
            raise OSError("database down")
        return "page"

    shared: Shared[str, str] = Shared()
    callers = [asyncio.create_task(shared("k", fetch)) for _ in range(3)]
    for caller in callers:
        with pytest.raises(OSError):
            await caller
    fail = False
    assert await shared("k", fetch) == "page"
