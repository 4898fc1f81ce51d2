"""The benchmark's settings: where results go, the designs and scenarios, the sizes of a full and a quick run."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


RESULTS = ROOT / "bench" / "results"


SECRET = "bench-secret-0123456789-abcdefghijklmnop"


PY = sys.executable


DESIGNS = ("tracktalk", "topics", "floor", "redis", "channels")
"""`topics` is tracktalk through /api/ws: each socket subscribes to its track's topic."""

TRACKTALK = ("tracktalk", "topics")
"""The designs that are tracktalk's replicas (its tables, its triggers, its API)."""


SCENARIOS = ("idle", "hot", "catalog", "fanout", "elsewhere", "write")


@dataclass
class Sizes:
    idle_sockets: int
    idle_tracks: int
    idle_small_sockets: int
    idle_small_tracks: int
    hot_sockets: int
    hot_rate: float
    cat_replicas: int
    cat_sockets: int
    cat_tracks: int
    cat_rate: float
    fan_sockets: int
    fan_rate: float
    elsewhere_sockets: int
    elsewhere_rate: float
    duration: float
    write_seconds: float
    write_workers: int
    clients: int
    users: int
    settle: float = 1.0
    """Seconds between the last socket opened and the RSS reading, and for the last frames to arrive."""


FULL = Sizes(
    idle_sockets=10_000,
    idle_tracks=1_000,
    idle_small_sockets=2_000,
    idle_small_tracks=200,
    hot_sockets=1_000,
    hot_rate=50,
    cat_replicas=2,
    cat_sockets=2_000,
    cat_tracks=200,
    cat_rate=200,
    fan_sockets=5_000,
    fan_rate=30,  # 150,000 frames/s offered: more than any design delivers here, so the figure is capacity
    elsewhere_sockets=100,
    elsewhere_rate=1_000,
    duration=20,
    write_seconds=10,
    write_workers=4,
    clients=2,
    users=200,
)


QUICK = Sizes(
    idle_sockets=800,
    idle_tracks=100,
    idle_small_sockets=400,
    idle_small_tracks=40,
    hot_sockets=300,
    hot_rate=50,
    cat_replicas=2,
    cat_sockets=200,
    cat_tracks=20,
    cat_rate=100,
    fan_sockets=300,
    fan_rate=40,
    elsewhere_sockets=20,
    elsewhere_rate=300,
    duration=1.5,
    write_seconds=1.0,
    write_workers=2,
    clients=2,
    users=40,
    settle=0.5,
)
