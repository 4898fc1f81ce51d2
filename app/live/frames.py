"""WebSocket frames as bytes on the wire (RFC 6455, section 5.2), built once for every socket.

A server's frames are not masked, so a message's frame is the same bytes for every socket that
gets it: the feed builds it once per message and form, and each socket's transport writes it as
it is. A message of a topic has up to four forms (`Frames`): as the track socket gets it, as
/api/ws gets it (`"topic"` spliced in), and the same two of its restricted variant, which only the
topic's moderators and the event's author get. Each is built the first time a socket needs it.
"""

from __future__ import annotations

import struct
from decimal import Decimal

import msgspec

from app.live.topics import splice
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


_read_exact = msgspec.json.Decoder(float_hook=Decimal)
"""JSON as PostgreSQL wrote it, numbers kept digit for digit (a numeric column of a live table)."""
_write_compact = msgspec.json.Encoder(decimal_format="number")


def compact(message: bytes) -> bytes:
    """`message` (JSON) without the spaces PostgreSQL's jsonb text puts after every `:` and `,`:
    the same values, about a tenth fewer bytes in every frame of every socket (the kernel's send
    of those bytes is most of a hot track's cost: docs/performance.md). Done once per message,
    never per socket; a message without such spaces (msgspec's own), or one that is not JSON
    (never seen: it would be sent as it came rather than stop the fan-out), is returned as it is."""
    if b'": ' not in message and b', "' not in message:
        return message
    try:
        return _write_compact.encode(_read_exact.decode(message))
    except msgspec.DecodeError:
        return message


def message_frame(message: msgspec.Struct) -> bytes:
    """A wire message (app/wire.py) as one text frame."""
    return text_frame(encoder.encode(message))


class Frames:
    """One message of a topic, and the frames its sockets get, each form built once, when a
    socket first needs it: `plain` (the track socket's), `tagged` (/api/ws: the topic spliced in),
    and the same of the restricted variant (`restricted`, for the topic's moderators and
    `author`; None: one form for everyone)."""

    __slots__ = (
        "_compacted",
        "_prefix",
        "author",
        "message",
        "plain",
        "r_plain",
        "r_tagged",
        "restricted",
        "seq",
        "tagged",
    )

    def __init__(
        self,
        seq: int,
        message: bytes,
        prefix: bytes,
        restricted: bytes | None = None,
        author: int | None = None,
    ) -> None:
        self.seq = seq
        """The event's seq (EPHEMERAL: not kept)."""
        self.message = message
        self._prefix = prefix
        """The topic's `{"topic":"…",` (app/live/topics.py)."""
        self.restricted = restricted
        self.author = author
        self._compacted = False
        self.plain: bytes | None = None
        """The frames, once built (read them directly: the hub's loop does, then calls `form`)."""
        self.tagged: bytes | None = None
        self.r_plain: bytes | None = None
        self.r_tagged: bytes | None = None

    def form(self, tagged: bool, restricted: bool = False) -> bytes:
        """The frame of this message for a socket with (`tagged`) or without the topic, of the
        restricted variant or not; built the first time it is asked for."""
        if not self._compacted:  # once, for whichever form is built first
            self.message = compact(self.message)
            if self.restricted is not None:
                self.restricted = compact(self.restricted)
            self._compacted = True
        if restricted and self.restricted is not None:
            if tagged:
                if self.r_tagged is None:
                    self.r_tagged = text_frame(splice(self._prefix, self.restricted))
                return self.r_tagged
            if self.r_plain is None:
                self.r_plain = text_frame(self.restricted)
            return self.r_plain
        if tagged:
            if self.tagged is None:
                self.tagged = text_frame(splice(self._prefix, self.message))
            return self.tagged
        if self.plain is None:
            self.plain = text_frame(self.message)
        return self.plain

    @property
    def size(self) -> int:
        """Bytes of the message (what a held frame is counted for)."""
        return len(self.message)
