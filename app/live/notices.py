"""tracktalk's NOTIFY channels, and how a replica tells a real payload from a forged one.

PostgreSQL puts no permission on LISTEN or NOTIFY: any role that can connect may listen on any
channel and send anything on a channel whose name it knows. So neither the names nor what travels
is left open:

- Channels are named by the channel key (tracktalk.channel_key, readable only by tracktalk's
  roles): `tracktalk:` and 32 hex digits of HMAC-SHA256(key, name), the name being
  `topic <topic>`, `user <user id>` or `rekey`, the same in sql/triggers.sql. Nobody without the
  key can name a channel a replica listens on, so a flood of NOTIFYs (on the old md5 names, on
  made-up ones) reaches no replica: PostgreSQL's LISTEN session skips it, the replica never sees
  it. A replica LISTENs only on the topics and users it has sockets for.
- The triggers sign what they send with HMAC-SHA256 under the same key: `<64 hex digits> <json>`.
  A payload that fails the check (someone who learned a channel's name) is dropped unparsed, at
  the cost of one HMAC (~1 µs): it never delivers, hides, delays or reorders anything.
- They carry no content of topics that not everyone may see (only the numbers of new events),
  notification ids but
  no notification, so a listener without the key learns nothing it could not read anyway.
- Replicas seal what they send each other (typing) with ChaCha20-Poly1305 under a key derived
  from the same secret: `e:<base64 of nonce and ciphertext>`. Nobody without the key reads or
  forges them; a counter per sending replica (with a window: a replica's notices may commit out
  of order through its pool) and a time stamp stop replays.
- A new key (SELECT tracktalk.rotate_channel_key()) renames every channel. The change itself is
  told, signed with the old key, on the old key's `rekey` channel (a trigger on
  tracktalk.channel_key): each replica reads the new key, LISTENs under the new names and reads
  from the log what it missed meanwhile (app/listener.py).

Signed payloads carry the time they were made (`at`): the feed drops revocations and
notifications that are old, and takes an old topic payload only as a prompt to read the log. A
durable event replayed by a listener is dropped by its seq (and its `prev` tag must be the tag of
the event before it: app/live/cursors.py), a notification by its id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import logging
import os
import time

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from app.live.topics import track_topic
from app.wire import Ephemeral, Notice, encoder, notice_decoder

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "tracktalk:"
_NAME_HEX = 32
"""Hex digits of the HMAC in a channel's name (128 bits; PostgreSQL allows 63 bytes a name)."""
REKEY_NAME = "rekey"
"""The name of the channel on which a change of the key is told (under the old key)."""
_SIGNED_AT = 64
"""Where the space between a signature (64 hex digits) and its body is."""
_BLOCK = 64
"""SHA-256's block size: HMAC's pads are this long."""
_SEALED = b"e:"
_SEAL_CONTEXT = b"tracktalk ephemeral v1"
_NONCE = 12
_STALE = 30.0
"""Seconds after which a sealed message is old news (replays and queued-up typing)."""
_SENDERS_KEPT = 10_000
"""Senders whose last counter is remembered (replicas come and go)."""
_WINDOW = 64
"""A sealed notice may arrive this many behind its sender's newest (its replica sends them through
different pool connections, whose commits can cross); each counter is taken once."""
_NAMES_KEPT = 100_000
"""Channel names remembered (a name costs an HMAC to make)."""


def stale(at: float, seconds: float) -> bool:
    """A signed payload made more than `seconds` ago (or without a time: `at` 0)."""
    return time.time() - at > seconds


def topic_name(topic: str) -> str:
    """What names the channel of a topic's events (see Codec.channel; tracktalk.topic_channel)."""
    return "topic " + topic


def user_name(user_id: int) -> str:
    """What names the channel of a user's notifications and access changes."""
    return f"user {user_id}"


class Opened(msgspec.Struct, frozen=True):
    """A payload that verified (signed by the triggers, or sealed by a replica)."""

    notice: Notice


class Codec:
    """Names the channels, checks the triggers' signatures and seals or opens the replicas' own
    messages, all under the channel key."""

    def __init__(self, key: bytes) -> None:
        self._key = b""
        self._inner = hashlib.sha256()
        self._outer = hashlib.sha256()
        self._aead: ChaCha20Poly1305 | None = None
        self._names: dict[str, str] = {}
        self.rekey(key)
        self._sender = os.urandom(8).hex()
        self._counter = itertools.count(1)
        self._seen: dict[str, tuple[int, int]] = {}
        """sender -> (its newest counter, a bit for each of the _WINDOW counters before it seen)"""
        self.rejected = 0
        """Payloads ignored: not signed or sealed with our key, replayed or stale, or malformed."""

    @property
    def key(self) -> bytes:
        """The channel key in use."""
        return self._key

    def rekey(self, key: bytes) -> None:
        """Use `key` (tracktalk.channel_key) from now on: new names, new signatures."""
        self._key = key
        # HMAC's two hashes, started on the pads once (RFC 2104, as sql/triggers.sql keeps them):
        # checking a payload is then two copies and two updates, half of hmac.digest()'s cost.
        padded = (
            key.ljust(_BLOCK, b"\0")
            if len(key) <= _BLOCK
            else hashlib.sha256(key).digest().ljust(_BLOCK, b"\0")
        )
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
        self._aead = ChaCha20Poly1305(hmac.digest(key, _SEAL_CONTEXT, "sha256"))
        self._names = {}

    def channel(self, name: str) -> str:
        """The channel named `name` (topic_name, user_name, REKEY_NAME) under the key: only holders
        of the key can name it."""
        channel = self._names.get(name)
        if channel is None:
            if len(self._names) >= _NAMES_KEPT:
                self._names.clear()
            channel = self._names[name] = CHANNEL_PREFIX + self._mac(name.encode())[:_NAME_HEX]
        return channel

    def topic_channel(self, topic: str) -> str:
        """The channel of a topic's events (and of the replicas' typing notices)."""
        return self.channel(topic_name(topic))

    def track_channel(self, track_id: str) -> str:
        """The channel of a track's events: its topic's."""
        return self.topic_channel(track_topic(track_id))

    def user_channel(self, user_id: int) -> str:
        """The channel of a user's notifications and access changes."""
        return self.channel(user_name(user_id))

    def sign(self, body: bytes) -> bytes:
        """`body` as the triggers send it (signed); for tests and tools."""
        return self._mac(body).encode() + b" " + body

    def seal(self, topic: str, message: bytes) -> str:
        """An ephemeral message for every replica's sockets of a topic, sealed."""
        plain = encoder.encode(
            Ephemeral(
                topic=topic,
                message=msgspec.Raw(message),
                sender=self._sender,
                n=next(self._counter),
                at=time.time(),
            )
        )
        nonce = os.urandom(_NONCE)
        assert self._aead is not None
        sealed = nonce + self._aead.encrypt(nonce, plain, None)
        return (_SEALED + base64.b64encode(sealed)).decode()

    def open(self, payload: bytes) -> Opened | None:
        """The notice in `payload`, or None when it must be ignored: not signed (or sealed) with
        our key, replayed, stale or malformed. What does not verify is not even parsed. Never
        raises. The cheapest path is a forgery's: one HMAC, and nothing else."""
        if payload[_SIGNED_AT : _SIGNED_AT + 1] == b" ":
            body = payload[_SIGNED_AT + 1 :]
            if not hmac.compare_digest(self._mac(body).encode(), payload[:_SIGNED_AT]):
                self._reject("a payload whose signature does not match tracktalk.channel_key")
                return None
            try:
                return Opened(notice_decoder.decode(body))
            except msgspec.DecodeError:
                self._reject("a signed payload that does not decode")
                return None
        if payload.startswith(_SEALED):
            return self._unseal(payload)
        self._reject("an unsigned payload")
        return None

    def _mac(self, body: bytes) -> str:
        """HMAC-SHA256 of `body` under the key, in hex."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def _unseal(self, payload: bytes) -> Opened | None:
        try:
            raw = base64.b64decode(payload[len(_SEALED) :], validate=True)
            assert self._aead is not None
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], None)
            notice = notice_decoder.decode(plain)
        except (binascii.Error, InvalidTag, ValueError, msgspec.DecodeError):
            self._reject("a sealed payload that does not open with tracktalk's key")
            return None
        if not isinstance(notice, Ephemeral):
            self._reject("a sealed payload of the wrong kind")
            return None
        if time.time() - notice.at > _STALE or not self._first_time(notice.sender, notice.n):
            self._reject("a sealed payload seen before, or too old")
            return None
        return Opened(notice)

    def _first_time(self, sender: str, n: int) -> bool:
        """Whether counter `n` of `sender` is new (and now seen)."""
        high, seen = self._seen.get(sender, (0, 0))
        if n > high:
            shift = n - high
            seen = ((seen << shift) | (1 << (shift - 1))) & ((1 << _WINDOW) - 1) if shift <= _WINDOW else 0
            high = n
        else:
            bit = high - n - 1
            if n == high or bit >= _WINDOW or n <= 0 or seen >> bit & 1:
                return False
            seen |= 1 << bit
        if sender not in self._seen and len(self._seen) >= _SENDERS_KEPT:
            self._seen.clear()
        self._seen[sender] = (high, seen)
        return True

    def _reject(self, what: str) -> None:
        self.rejected += 1
        if self.rejected <= 10 or self.rejected % 100_000 == 0:
            log.warning("ignored %s (%d so far)", what, self.rejected)
