"""A replica's /metrics, read as numbers."""

from __future__ import annotations

import httpx

from tests.support.processes import LocalServer


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a /metrics page (Prometheus' text format), by name with any labels as
    written: `tracktalk_open_sockets`, `python_gc_collections_total{generation="2"}`."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def metrics(server: LocalServer) -> dict[str, float]:
    """Every sample of the server's /metrics (see parse_metrics)."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{server.http}/metrics")
    assert answer.status_code == 200, f"/metrics answered {answer.status_code}: {answer.text[:500]}"
    return parse_metrics(answer.text)


async def metric(server: LocalServer, name: str) -> float:
    """One sample of the server's /metrics: `name` as parse_metrics keys it."""
    values = await metrics(server)
    assert name in values, f"no {name} in /metrics: {sorted(values)}"
    return values[name]
