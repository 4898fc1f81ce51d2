"""`tracktalk serve` with per-message deflate turned on, for the bench's comparison only.

    python -m bench.serve --deflate --port P      (same environment as `tracktalk serve`)

app/server.py turns deflate off; this wraps its `config` to turn it on, and changes nothing else.
"""

from __future__ import annotations

import sys
from typing import Any

import app.server
from app.cli import main


def _with_deflate(original: Any) -> Any:
    def config(*args: Any, **kwargs: Any) -> Any:
        settings = original(*args, **kwargs)
        settings.ws_per_message_deflate = True
        return settings

    return config


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--deflate" in argv:
        argv.remove("--deflate")
        app.server.config = _with_deflate(app.server.config)
    main(["serve", *argv])
