"""Logging: plain lines, or one JSON object a line when TRACKTALK_LOG_JSON=1."""

from __future__ import annotations

import logging
import sys

import msgspec

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Send the app's logs to stderr, once (calling again only changes the format)."""
    root = logging.getLogger("app")
    root.setLevel(level)
    handler = next((h for h in root.handlers if getattr(h, "_tracktalk", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._tracktalk = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
