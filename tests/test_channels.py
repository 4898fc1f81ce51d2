"""app/channels.py: what a replica believes of a NOTIFY payload, whoever sent it.

In-process: the codec never raises, never parses what is not signed with its key, and lets each
sealed notice through once. (tests/test_hostile.py forges payloads through a real PostgreSQL.)
"""

from __future__ import annotations

import hashlib
import os
import time

from app.channels import HINT, Codec, Opened, track_channel
from app.wire import Ephemeral, Revoke, TrackBatch, encoder

KEY = os.urandom(32)


def test_a_signed_payload_opens_and_the_same_body_tampered_or_unsigned_is_only_a_hint() -> None:
    codec = Codec(KEY)
    body = encoder.encode(TrackBatch(track_id="t1", first=1, last=1, at=time.time()))
    opened = codec.open(codec.sign(body))
    assert isinstance(opened, Opened) and isinstance(opened.notice, TrackBatch)
    tampered = codec.sign(body).replace(b'"last":1', b'"last":9')
    assert codec.open(tampered) is HINT
    assert codec.open(body) is HINT
    assert Codec(os.urandom(32)).open(codec.sign(body)) is HINT  # another key
    assert codec.unverified == 2  # (the third was the other codec's)


def test_what_does_not_verify_is_never_parsed() -> None:
    codec = Codec(KEY)
    poison = b'{"k":"track","track_id":"t","first":1,"last":1,"events":' + b"[" * 7000
    assert codec.open(poison) is HINT  # no RecursionError, no decoding at all
    assert codec.open(b"0" * 64 + b" " + poison) is HINT
    assert codec.open(b"e:" + b"!" * 100) is None  # not base64: ignored
    assert codec.open(b"") is HINT
    signed_garbage = codec.sign(b"[" * 7000)  # our key, but no notice: ignored, never raised
    assert codec.open(signed_garbage) is None


def test_a_sealed_notice_opens_once_even_out_of_order_and_not_when_old() -> None:
    sender, receiver = Codec(KEY), Codec(KEY)
    message = b'{"type":"user_typing","track_id":"t1","user_id":2,"username":"b","is_typing":true}'
    sealed = [sender.seal("t1", message) for _ in range(3)]
    assert sealed[0] != sealed[1]  # a nonce each
    for payload in (sealed[2], sealed[0], sealed[1]):  # committed out of order through the pool
        opened = receiver.open(payload.encode())
        assert isinstance(opened, Opened) and isinstance(opened.notice, Ephemeral)
        assert bytes(opened.notice.message) == message
    assert all(receiver.open(p.encode()) is None for p in sealed)  # sent again: dropped
    assert receiver.unverified == 0  # replays are not a sign of a changed key
    outsider = Codec(os.urandom(32))
    assert outsider.open(sender.seal("t1", message).encode()) is None
    assert outsider.unverified == 1


def test_a_sealed_notice_far_behind_its_senders_newest_is_dropped() -> None:
    sender, receiver = Codec(KEY), Codec(KEY)
    first = sender.seal("t1", b"{}")
    for _ in range(100):
        assert isinstance(receiver.open(sender.seal("t1", b"{}").encode()), Opened)
    assert receiver.open(first.encode()) is None  # outside the window


def test_a_new_key_is_used_at_once() -> None:
    codec = Codec(KEY)
    fresh = os.urandom(32)
    body = encoder.encode(Revoke(track_id="t1", at=time.time()))
    signed_by_new = Codec(fresh).sign(body)
    assert codec.open(signed_by_new) is HINT
    codec.rekey(fresh)
    assert isinstance(codec.open(signed_by_new), Opened)


def test_channel_names_are_the_triggers() -> None:
    assert track_channel("t1") == "tracktalk:t:" + hashlib.md5(b"t1").hexdigest()
    assert track_channel("🎵") == "tracktalk:t:" + hashlib.md5("🎵".encode()).hexdigest()
    assert len(track_channel("x" * 200)) < 64  # PostgreSQL's limit on a channel name
