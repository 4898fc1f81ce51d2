"""tracktalk's NOTIFY channels, and how a replica tells a real payload from a forged one.

Channels: one per track (`tracktalk:t:` and the md5 of the track id, in hex) and one per user
(`tracktalk:u:` and the id). A replica LISTENs only on the tracks and users it has sockets for,
so an event of a track that nobody watches here costs this replica nothing.

PostgreSQL puts no permission on LISTEN or NOTIFY: any role that can connect may listen on any
channel and send anything on it. So what travels is protected, never the channel names:

- The triggers sign what they send with HMAC-SHA256 under the key in tracktalk.channel_key
  (readable only by tracktalk's roles): `<64 hex digits> <json>`. A payload that fails the check
  is not even parsed: on a track's channel it is only a hint that the track may have news, and
  the replica reads the track's events from its log (at most once a second per track for such
  hints), as it would for a payload too big to carry them. Elsewhere it is dropped.
- They carry no content of private tracks (only the numbers of new events), notification ids but
  no notification, so a listener without the key learns nothing it could not read anyway.
- Replicas seal what they send each other (typing) with ChaCha20-Poly1305 under a key derived
  from the same secret: `e:<base64 of nonce and ciphertext>`. Nobody without the key reads or
  forges them; a counter per sending replica (with a window: a replica's notices may commit out
  of order through its pool) and a time stamp stop replays.

Signed payloads carry the time they were made (`at`): the feed drops revocations and
notifications that are old, and takes an old track payload only as a hint to read the log. A
durable event replayed by a listener is dropped by its seq, a notification by its id.
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

from app.wire import Ephemeral, Notice, encoder, notice_decoder

log = logging.getLogger(__name__)

TRACK_PREFIX = "tracktalk:t:"
USER_PREFIX = "tracktalk:u:"
_MAC_HEX = 64
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


HINT = object()
"""What `Codec.open` gives for a payload that does not verify: on a track's channel, a hint that
the track may have news (its log tells), nothing more."""


def track_channel(track_id: str) -> str:
    """The channel of a track's events (the same name as sql/triggers.sql's)."""
    return TRACK_PREFIX + hashlib.md5(track_id.encode(), usedforsecurity=False).hexdigest()


def user_channel(user_id: int) -> str:
    """The channel of a user's notifications and access changes."""
    return f"{USER_PREFIX}{user_id}"


class Opened(msgspec.Struct, frozen=True):
    """A payload that verified (signed by the triggers, or sealed by a replica)."""

    notice: Notice


class Codec:
    """Checks the triggers' signatures and seals or opens the replicas' own messages."""

    def __init__(self, key: bytes) -> None:
        self._key = b""
        self._aead: ChaCha20Poly1305 | None = None
        self.rekey(key)
        self._sender = os.urandom(8).hex()
        self._counter = itertools.count(1)
        self._seen: dict[str, tuple[int, int]] = {}
        """sender -> (its newest counter, a bit for each of the _WINDOW counters before it seen)"""
        self.rejected = 0
        """Payloads ignored: not signed or sealed with our key, replayed or stale, or malformed."""
        self.unverified = 0
        """Of those, the ones that did not verify with our key (a changed key shows this way)."""

    def rekey(self, key: bytes) -> None:
        """Use `key` (tracktalk.channel_key) from now on."""
        self._key = key
        self._aead = ChaCha20Poly1305(hmac.digest(key, _SEAL_CONTEXT, "sha256"))

    def sign(self, body: bytes) -> bytes:
        """`body` as the triggers send it (signed); for tests and tools."""
        return hmac.new(self._key, body, hashlib.sha256).hexdigest().encode() + b" " + body

    def seal(self, track_id: str, message: bytes) -> str:
        """An ephemeral message for every replica's sockets of a track, sealed."""
        plain = encoder.encode(
            Ephemeral(
                track_id=track_id,
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

    def open(self, payload: bytes) -> Opened | object | None:
        """The notice in `payload`; HINT when it is not signed with our key (forged, or signed
        before a key change: nothing in it is believed, or even parsed); None when it must be
        ignored. Never raises."""
        try:
            if payload.startswith(_SEALED):
                return self._unseal(payload)
            mac, body = payload[:_MAC_HEX], payload[_MAC_HEX + 1 :]
            good = payload[_MAC_HEX : _MAC_HEX + 1] == b" " and hmac.compare_digest(
                hmac.new(self._key, body, hashlib.sha256).hexdigest().encode(), mac
            )
            if not good:
                self.unverified += 1
                self._reject("a payload whose signature does not match tracktalk.channel_key")
                return HINT
            return Opened(notice_decoder.decode(body))
        except Exception:
            self._reject("a payload that does not decode")
            return None

    def _unseal(self, payload: bytes) -> Opened | None:
        try:
            raw = base64.b64decode(payload[len(_SEALED) :], validate=True)
            assert self._aead is not None
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], None)
            notice = notice_decoder.decode(plain)
        except (binascii.Error, InvalidTag, ValueError, msgspec.DecodeError):
            self.unverified += 1
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
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.warning("ignored %s (%d so far)", what, self.rejected)
