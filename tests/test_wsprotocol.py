"""The light stand-ins app/wsprotocol.py gives uvicorn's connection for its queue and its event.

They replace asyncio.Queue and asyncio.Event on every socket to save memory (docs/performance.md),
so they must behave as uvicorn expects of those: in order, never losing a wake-up.
"""

from __future__ import annotations

import asyncio

from app.wsprotocol import _Flag, _Inbox


async def test_the_inbox_gives_items_in_order_and_wakes_a_waiting_reader() -> None:
    inbox = _Inbox()
    assert inbox.empty()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert [await inbox.get(), await inbox.get()] == [1, 2]
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()
    inbox.put_nowait(3)
    inbox.put_nowait(4)
    assert await asyncio.wait_for(reader, 1) == 3
    assert not inbox.empty() and await inbox.get() == 4 and inbox.empty()


async def test_a_cancelled_reader_leaves_the_inbox_usable() -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    inbox.put_nowait("after")
    assert await asyncio.wait_for(inbox.get(), 1) == "after"


async def test_the_flag_lets_waiters_through_only_while_set() -> None:
    flag = _Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert flag.is_set()
