"""Fixtures of the system tests (besides tests/conftest.py's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import serve

from tests.support.host_app import ScriptedServer


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    """A WebSocket server that hands each connection to the test."""
    server = ScriptedServer()
    async with serve(server._handle, "127.0.0.1", server.port) as running:
        server.server = running
        yield server
