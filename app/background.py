"""Tasks of the replica: one that lives as long as a block (its background loops), and sets of
tasks started on the side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from app.logs import one_line


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `coro` as a task for the duration of the block; cancel it and wait at the end."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Tasks:
    """Tasks started on the side (a catch-up, a check), kept until they end and cancelled together;
    what one raised is logged (at debug: its owner logged what mattered), never left unretrieved."""

    def __init__(self, logger: str) -> None:
        self._log = logging.getLogger(logger)
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task of the set."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._retrieve)
        return task

    async def cancel(self) -> None:
        """Cancel every task of the set, and wait for them to end."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _retrieve(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.debug("task ended: %s", one_line(task.exception()))
