"""WebSocket frames as bytes on the wire (RFC 6455, section 5.2), built once for every socket.

A server's frames are not masked, so a message's frame is the same bytes for every socket that
gets it: the feed builds it once per event and each socket's transport writes it as it is.
"""

from __future__ import annotations

import struct

import msgspec

from app.wire import encoder

_TEXT = 0x81
"""FIN + opcode 1 (text): a whole message in one frame."""


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        return bytes((_TEXT, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", _TEXT, 126, size) + payload
    return struct.pack("!BBQ", _TEXT, 127, size) + payload


def message_frame(message: msgspec.Struct) -> bytes:
    """A wire message (app/wire.py) as one text frame."""
    return text_frame(encoder.encode(message))
