"""Follow a track from the command line: each message one JSON line on stdout, each reconnect a line
on stderr, until Ctrl-C (or a refusal, exit 1).

    python -m tracktalk http://127.0.0.1:8000 sunrise --token "$(tracktalk token 4)"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

import msgspec

from tracktalk.client import Other, Refused, TrackFeed


async def follow(base_url: str, track_id: str, token: str | None, since: int | None) -> int:
    async with TrackFeed(base_url, track_id, token=token, since=since) as feed:
        try:
            async for message in feed:
                line = msgspec.json.encode(message.data if isinstance(message, Other) else message)
                print(line.decode(), flush=True)
        except Refused as refused:
            print(f"refused: {refused.code} {refused.reason}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracktalk", description="Follow a track's live messages."
    )
    parser.add_argument("base_url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("track_id")
    parser.add_argument(
        "--token", help="an access token (default: none, where anonymous sockets are allowed)"
    )
    parser.add_argument("--since", type=int, help="the last seq you have: the events after it come first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(follow(args.base_url, args.track_id, args.token, args.since))
    return 0


if __name__ == "__main__":
    sys.exit(main())
