"""app/live/notices.py: what a replica believes of a NOTIFY payload, whoever sent it, and the names
of the channels it listens on.

In-process: the codec never raises, never parses what is not signed with its key, lets each
sealed notice through once, and names channels that only holders of the key can name. (The
names are checked against sql/triggers.sql's, and payloads forged through a real PostgreSQL, in
tests/integration/test_hostile.py.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from app.listener import Listener
from app.live.notices import Codec, Opened
from app.wire import Ephemeral, Rekey, Revoke, TopicBatch, encoder

KEY = os.urandom(32)


def test_a_signed_payload_opens_and_the_same_body_tampered_unsigned_or_signed_otherwise_does_not() -> None:
    codec = Codec(KEY)
    body = encoder.encode(TopicBatch(topic="track:t1", first=1, last=1, at=time.time()))
    assert codec.sign(body) == hmac.new(KEY, body, hashlib.sha256).hexdigest().encode() + b" " + body
    opened = codec.open(codec.sign(body))
    assert isinstance(opened, Opened) and isinstance(opened.notice, TopicBatch)
    tampered = codec.sign(body).replace(b'"last":1', b'"last":9')
    assert codec.open(tampered) is None
    assert codec.open(body) is None
    assert codec.open(Codec(os.urandom(32)).sign(body)) is None  # another key
    assert codec.rejected == 3


def test_what_does_not_verify_is_never_parsed() -> None:
    codec = Codec(KEY)
    poison = b'{"k":"topic","topic":"track:t","first":1,"last":1,"events":' + b"[" * 7000
    assert codec.open(poison) is None  # no RecursionError, no decoding at all
    assert codec.open(b"0" * 64 + b" " + poison) is None
    assert codec.open(b"e:" + b"!" * 100) is None  # not base64: ignored
    assert codec.open(b"") is None
    signed_garbage = codec.sign(b"[" * 7000)  # our key, but no notice: ignored, never raised
    assert codec.open(signed_garbage) is None
    assert codec.rejected == 5


def test_a_sealed_notice_opens_once_even_out_of_order_and_not_when_old() -> None:
    sender, receiver = Codec(KEY), Codec(KEY)
    message = b'{"type":"user_typing","track_id":"t1","user_id":2,"username":"b","is_typing":true}'
    sealed = [sender.seal("track:t1", message) for _ in range(3)]
    assert sealed[0] != sealed[1]  # a nonce each
    for payload in (sealed[2], sealed[0], sealed[1]):  # committed out of order through the pool
        opened = receiver.open(payload.encode())
        assert isinstance(opened, Opened) and isinstance(opened.notice, Ephemeral)
        assert bytes(opened.notice.message) == message
    assert all(receiver.open(p.encode()) is None for p in sealed)  # sent again: dropped
    outsider = Codec(os.urandom(32))
    assert outsider.open(sender.seal("track:t1", message).encode()) is None


def test_a_sealed_notice_far_behind_its_senders_newest_is_dropped() -> None:
    sender, receiver = Codec(KEY), Codec(KEY)
    first = sender.seal("track:t1", b"{}")
    for _ in range(100):
        assert isinstance(receiver.open(sender.seal("track:t1", b"{}").encode()), Opened)
    assert receiver.open(first.encode()) is None  # outside the window


def test_a_new_key_is_used_at_once_and_the_old_one_no_longer() -> None:
    codec = Codec(KEY)
    fresh = os.urandom(32)
    body = encoder.encode(Revoke(topic="track:t1", at=time.time()))
    signed_by_new, signed_by_old = Codec(fresh).sign(body), codec.sign(body)
    assert codec.open(signed_by_new) is None
    old_name = codec.track_channel("t1")
    codec.rekey(fresh)
    assert isinstance(codec.open(signed_by_new), Opened)
    assert codec.open(signed_by_old) is None
    assert codec.track_channel("t1") != old_name and codec.track_channel("t1") == Codec(fresh).track_channel(
        "t1"
    )


def test_channel_names_come_from_the_key_and_from_nothing_public() -> None:
    codec = Codec(KEY)
    mac = hmac.new(KEY, "topic track:🎵".encode(), hashlib.sha256).hexdigest()
    assert codec.track_channel("🎵") == "tracktalk:" + mac[:32]
    assert codec.user_channel(7) == "tracktalk:" + hmac.new(KEY, b"user 7", hashlib.sha256).hexdigest()[:32]
    names = {codec.track_channel("t1"), codec.user_channel(1), codec.channel("rekey")}
    assert len(names) == 3
    public = {"tracktalk", "tracktalk:t:" + hashlib.md5(b"t1").hexdigest(), "tracktalk:u:1"}
    assert not names & public  # the names an outsider could compute before
    assert Codec(os.urandom(32)).track_channel("t1") != codec.track_channel("t1")
    assert len(codec.track_channel("x" * 200).encode()) < 64  # PostgreSQL's limit on a channel name
    long_key = os.urandom(64)  # the longest tracktalk.channel_key allows
    assert Codec(long_key).sign(b"x") == hmac.new(long_key, b"x", hashlib.sha256).hexdigest().encode() + b" x"


class _Sink:
    def __init__(self) -> None:
        self.notices: list[Opened] = []

    def on_listen(self) -> None:
        pass

    def on_notice(self, opened: Opened) -> None:
        self.notices.append(opened)

    def catch_up(self) -> None:
        pass


def test_the_listener_drops_what_does_not_verify_and_takes_a_signed_rekey_for_itself() -> None:
    codec = Codec(KEY)
    listener = Listener("", codec)
    sink = _Sink()
    listener.attach(sink)
    rekey = encoder.encode(Rekey(at=time.time()))
    listener.deliver(rekey)  # unsigned: nobody may make the replicas read the key
    listener.deliver(Codec(os.urandom(32)).sign(rekey))
    assert not listener._rekey_due and codec.rejected == 2
    listener.deliver(codec.sign(rekey))
    assert listener._rekey_due and sink.notices == []
    batch = codec.sign(encoder.encode(TopicBatch(topic="track:t1", first=1, last=1, at=time.time())))
    listener.deliver(batch)
    assert [type(o.notice) for o in sink.notices] == [TopicBatch]
