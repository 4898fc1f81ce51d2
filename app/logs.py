"""Logging: plain lines, or one JSON object a line when TRACKTALK_LOG_JSON=1."""

from __future__ import annotations

import logging
import re
import sys

import msgspec

_encoder = msgspec.json.Encoder()
_TOKEN = re.compile(r"(token=|Bearer\s+)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replaces access tokens (a socket's `?token=`, a `Bearer` header) with `***` in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


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


class OneLine(logging.Filter):
    """A message written on one line (psycopg's connection errors take two: `…failed: Connection
    refused` and `\tIs the server running…`); a traceback, if any, stays as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = (
                " ".join(part.strip() for part in message.splitlines() if part.strip()),
                None,
            )
        return True


LIBRARIES = ("psycopg", "psycopg_pool", "httpx", "httpcore")
"""The libraries whose log lines go out like the app's (same handler, same format)."""


def configure_logging(*, json: bool = False, level: int = logging.INFO) -> None:
    """Send the app's logs, and those of the libraries it drives, to stderr in one format, once
    (calling again only changes the format)."""
    app = logging.getLogger("app")
    app.setLevel(level)
    if not any(isinstance(f, RedactTokens) for f in app.filters):
        app.addFilter(RedactTokens())
    handler = next((h for h in app.handlers if getattr(h, "_tracktalk", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._tracktalk = True  # type: ignore[attr-defined]
        handler.addFilter(RedactTokens())  # a logger's filter does not see its children's records
        handler.addFilter(OneLine())
    for logger in (app, *map(logging.getLogger, LIBRARIES)):
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(
        JsonFormatter() if json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )


def tame_uvicorn(*, json: bool = False) -> None:
    """Keep tokens out of uvicorn's lines (its access and WebSocket lines show the query string)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
        if json:
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())


def one_line(exc: BaseException | None) -> str:
    """An exception as a short log line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
