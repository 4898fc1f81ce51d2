"""How many forged NOTIFY payloads a replica's listener rejects per second.

    python -m bench.reject [--payloads N]    (embedded PostgreSQL, or DATABASE_URL: a superuser URL)

Any role that can connect may NOTIFY on any channel whose name it knows. The names of the channels
a replica listens on come from the channel key, so an outsider cannot name them; one that learned
a name anyway (the worst case, measured here) can flood it, and the replica's listener reads every
payload and drops what does not verify. This measures that rate end to end (PostgreSQL's LISTEN session,
libpq, app/listener.py and app/live/notices.py): the forged payloads are sent in transactions of
`--batch`, then one real signed payload; the rate is the payloads over the time from the first
flood's commit to that real payload's arrival. Two kinds of forgery: unsigned JSON (a track batch
with a fresh `at`), and the same behind 64 hex digits and a space (it looks signed, so the HMAC is
computed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.data.db import migrate
from app.data.events import read_channel_key
from app.dev.embedded import EmbeddedPostgres
from app.listener import Listener
from app.live.notices import Codec, Opened, topic_name
from app.live.topics import track_topic
from app.wire import TopicBatch, encoder

TRACK = "bench-flooded"
"""The track whose channel the forger floods (the replica watches it)."""
MARKER = "bench-marker"


class Sink:
    """Counts what the listener hands over; `marker` is set when the real payload arrives."""

    def __init__(self) -> None:
        self.marker = asyncio.Event()
        self.notices = 0

    def on_listen(self) -> None:
        pass

    def on_notice(self, opened: Opened) -> None:
        self.notices += 1
        if isinstance(opened.notice, TopicBatch) and opened.notice.topic == MARKER:
            self.marker.set()

    def catch_up(self) -> None:
        pass


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh, migrated database: on DATABASE_URL's server, or on an embedded one."""
    external = os.environ.get("DATABASE_URL")
    name = f"bench_reject_{int(time.time())}_{os.getpid()}"
    with contextlib.ExitStack() as stack:
        if external:
            admin = external
        else:
            root = Path(tempfile.mkdtemp(prefix="tracktalk-bench-"))
            root.chmod(0o755)
            stack.callback(shutil.rmtree, root, True)
            admin = stack.enter_context(EmbeddedPostgres(root, fast=True)).url_for("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = conninfo_to_dict(admin)
        params["dbname"] = name
        url = make_conninfo(**params)
        try:
            migrate(url)
            yield url
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


FORGERIES = {
    "unsigned": '\'{"k":"track","track_id":"%(track)s","first":\' || i || \',"last":\' || i || \',"at":\' || %(at)s || \'}\'',
    "looks signed": 'repeat(\'0\', 64) || \' {"k":"track","track_id":"%(track)s","first":\' || i || \',"last":\' || i || \',"at":\' || %(at)s || \'}\'',
}
"""SQL expressions of the forged payload number `i` (each distinct: PostgreSQL folds duplicates)."""


async def flood(
    url: str, channel: str, kind: str, payloads: int, batch: int, codec: Codec, sink: Sink
) -> float:
    """Send `payloads` forgeries of `kind` on `channel`, then a real payload; payloads per second."""
    sink.marker.clear()
    expression = FORGERIES[kind] % {"track": TRACK, "at": "extract(epoch FROM now())"}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as forger:
        began: float | None = None
        for start in range(0, payloads, batch):
            await forger.execute(
                f"SELECT pg_notify(%s, {expression}) FROM generate_series(%s::bigint, %s::bigint) AS i",  # type: ignore[arg-type]
                (channel, start + 1, min(payloads, start + batch)),
            )
            began = began or time.monotonic()
        real = codec.sign(encoder.encode(TopicBatch(topic=MARKER, first=1, last=1, at=time.time())))
        await forger.execute("SELECT pg_notify(%s, %s)", (channel, real.decode()))
    await asyncio.wait_for(sink.marker.wait(), 600)
    assert began is not None
    return payloads / (time.monotonic() - began)


async def run(url: str, payloads: int, batch: int, rounds: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        codec = Codec(await read_channel_key(conn))
    listener = Listener(url, codec)
    sink = Sink()
    listener.attach(sink)
    task = asyncio.create_task(listener.run())
    try:
        channel = codec.track_channel(TRACK)
        await asyncio.wait_for(listener.listen([topic_name(track_topic(TRACK))]), 30)
        for kind in FORGERIES:
            rates = [await flood(url, channel, kind, payloads, batch, codec, sink) for _ in range(rounds)]
            print(
                f"{kind:>12}: {max(rates) / 1e3:.0f} k payloads/s rejected (best of {rounds}:"
                f" {', '.join(f'{r / 1e3:.0f}k' for r in rates)}); {payloads:,} payloads a round"
            )
        print(f"rejected {codec.rejected:,}; delivered {sink.notices} (the markers)")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payloads", type=int, default=400_000, help="forged payloads a round")
    parser.add_argument("--batch", type=int, default=100_000, help="forged payloads a transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (the best is reported)")
    args = parser.parse_args()
    with database() as url:
        asyncio.run(run(url, args.payloads, args.batch, args.rounds))


if __name__ == "__main__":
    main()
