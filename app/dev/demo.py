"""The demo data: five people, an album by carol, three tracks with real audio and their comments,
and a forum: three categories (one for the team only), a pinned and locked welcome, and a lively
thread with replies, mentions and likes.

`tracktalk demo` and the first run of the embedded server call load_demo(). It writes plain rows in
one transaction; the triggers of sql/triggers.sql make the notifications, counters and events. A
database that has the album but not the forum (made before the forum) gets the forum.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

DEMO_ALBUM_TITLE = "Sunrise Sessions"
"""The demo album; carol's album of this title marks the demo as loaded."""

CREATOR = "carol"
SAMPLE_RATE = 22050
AUDIO_CONTENT_TYPE = "audio/wav"

_AMPLITUDE = 0.4
_ATTACK_SECONDS = 0.02
_RELEASE_SECONDS = 0.04
_SEMITONES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}

Connection = psycopg.Connection[tuple[Any, ...]]


class DemoError(Exception):
    """The database holds rows that clash with the demo's (a track id taken by another album)."""


@dataclass(frozen=True)
class DemoSummary:
    """What load_demo() found or made."""

    users: dict[str, int]
    track_ids: list[str]
    comments: int
    already_loaded: bool
    forum_threads: int = 0
    """Threads of the demo's forum (already there or made now)."""


@dataclass(frozen=True)
class _User:
    """A demo person."""

    username: str
    is_creator: bool = False
    is_team: bool = False


@dataclass(frozen=True)
class _DemoTrack:
    """A demo track: its phrase (note names like "C5" or "G#4", "-" a rest) plays `repeats` times."""

    id: str
    title: str
    seconds: float
    phrase: str
    repeats: int
    is_private: bool = False


@dataclass(frozen=True)
class _Comment:
    """A demo comment; `parent` is the key of the comment it answers."""

    key: str
    track_id: str
    username: str
    timestamp: float
    content: str
    minutes_ago: int
    parent: str | None = None


_USERS = (
    _User("carol", is_creator=True),
    _User("tina", is_team=True),
    _User("alice"),
    _User("bob"),
    _User("dave"),
)

_TRACKS = (
    _DemoTrack(
        "sunrise",
        "Sunrise",
        32.0,
        "C5 E5 G5 E5 D5 F5 A5 F5 E5 G5 C6 G5 F5 E5 D5 - A4 C5 E5 C5 B4 D5 G5 D5 C5 E5 G5 C6 G5 E5 C5 -",
        repeats=2,
    ),
    _DemoTrack(
        "night-drive",
        "Night Drive",
        36.0,
        "A4 C5 E5 A5 E5 C5 A4 C5 F4 A4 C5 F5 C5 A4 F4 A4 G4 B4 D5 G5 D5 B4 G4 B4 E4 G#4 B4 E5 B4 G#4 E5 -",
        repeats=3,
    ),
    _DemoTrack(
        "b-side",
        "B-Side (unreleased)",
        24.0,
        "F4 A4 C5 A4 Bb4 G4 E4 - D4 F4 A4 F4 G4 E4 C4 -",
        repeats=2,
        is_private=True,
    ),
)

_COMMENTS = (
    _Comment("c1", "sunrise", "alice", 2.5, "That opening arpeggio is the sun coming up.", 2880),
    _Comment("c2", "sunrise", "bob", 8.0, "The melody lifts right here, love it.", 2700),
    _Comment("c3", "sunrise", "carol", 2.5, "Thank you! I wrote it at 6 a.m. on the balcony.", 2600, "c1"),
    _Comment("c4", "sunrise", "dave", 16.0, "Second time around it hits even harder.", 1440),
    _Comment("c5", "sunrise", "alice", 24.5, "@bob listen to this part, that high C!", 1300),
    _Comment("c6", "sunrise", "bob", 24.5, "Oh wow, yes. On repeat all morning.", 1250, "c5"),
    _Comment("c7", "sunrise", "tina", 30.0, "The mastered version lands next week.", 1200),
    _Comment("c8", "night-drive", "dave", 4.0, "Headlights on, windows down.", 900),
    _Comment("c9", "night-drive", "alice", 13.5, "This arpeggio loop is hypnotic.", 600),
    _Comment("c10", "night-drive", "carol", 4.0, "Exactly the mood I was going for, dave.", 540, "c8"),
    _Comment("c11", "night-drive", "bob", 27.0, "The turn to major here gives me chills.", 240),
    _Comment("c12", "night-drive", "dave", 27.0, "Same! Best moment of the album.", 180, "c11"),
    _Comment("c13", "b-side", "tina", 6.0, "@carol should this one go on the deluxe edition?", 90),
    _Comment("c14", "b-side", "carol", 6.0, "Maybe! Keep it private until the mix is done.", 30, "c13"),
)

_COMMENT_LIKES = (
    ("bob", "c1"),
    ("carol", "c1"),
    ("dave", "c1"),
    ("alice", "c2"),
    ("tina", "c3"),
    ("carol", "c4"),
    ("alice", "c6"),
    ("bob", "c8"),
    ("carol", "c11"),
    ("alice", "c11"),
    ("carol", "c13"),
)

_TRACK_LIKES = (
    ("alice", "sunrise"),
    ("bob", "sunrise"),
    ("dave", "sunrise"),
    ("alice", "night-drive"),
    ("dave", "night-drive"),
    ("tina", "b-side"),
)

_SHARES = (("bob", "sunrise"),)


@dataclass(frozen=True)
class _Category:
    """A demo forum category."""

    slug: str
    title: str
    description: str
    is_private: bool = False


@dataclass(frozen=True)
class _Thread:
    """A demo thread; its posts are (key, username, content, minutes ago, key of the post replied to)."""

    category: str
    username: str
    title: str
    posts: tuple[tuple[str, str, str, int, str | None], ...]
    is_pinned: bool = False
    is_locked: bool = False


_CATEGORIES = (
    _Category("general", "General", "The music, the gear, the mornings: anything goes."),
    _Category("feedback", "Feedback & ideas", "What would make the albums, or this site, better?"),
    _Category("backstage", "Backstage", "For the team: plans, mixes, release dates.", is_private=True),
)

_THREADS = (
    _Thread(
        "general",
        "tina",
        "Welcome: read me first",
        (
            (
                "w1",
                "tina",
                "Be kind, stay on topic, and tell us what you hear. Threads about one track: name it in the title.",
                4320,
                None,
            ),
        ),
        is_pinned=True,
        is_locked=True,
    ),
    _Thread(
        "general",
        "alice",
        "Your favourite moment on Sunrise?",
        (
            ("s1", "alice", "Mine is the high C at 0:24, every single time. What about you?", 600, None),
            (
                "s2",
                "bob",
                "The arpeggio at the very start. It sounds like light coming through the blinds.",
                540,
                "s1",
            ),
            ("s3", "dave", "@alice the second pass of the melody, it lifts more than the first.", 420, "s1"),
            (
                "s4",
                "carol",
                "You three are making my day. The high C was a happy accident, by the way.",
                300,
                None,
            ),
            ("s5", "alice", "@carol a happy accident! Keep them coming.", 240, "s4"),
            ("s6", "bob", "Is there a longer version planned? @tina", 120, None),
            ("s7", "tina", "Not yet, but the mastered one lands next week.", 60, "s6"),
            ("s8", "dave", "Counting the days.", 20, "s7"),
        ),
    ),
    _Thread(
        "feedback",
        "dave",
        "A dark mode, please",
        (
            (
                "d1",
                "dave",
                "Listening at night, the page is bright. A dark mode would be lovely.",
                1440,
                None,
            ),
            ("d2", "tina", "Noted! It is on the list.", 1400, "d1"),
        ),
    ),
    _Thread(
        "backstage",
        "tina",
        "Deluxe edition: track list",
        (
            ("b1", "tina", "B-Side goes in as the last track. Quiet until @carol announces it!", 90, None),
            ("b2", "tina", "Mastering booked for Thursday.", 45, "b1"),
        ),
    ),
)

_POST_LIKES = (
    ("bob", "s1"),
    ("dave", "s1"),
    ("carol", "s1"),
    ("alice", "s2"),
    ("alice", "s4"),
    ("bob", "s4"),
    ("dave", "s4"),
    ("carol", "s7"),
    ("alice", "d1"),
)


def load_demo(conninfo: str) -> DemoSummary:
    """Load the demo data in one transaction, or report it as already loaded (writing nothing)."""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        # Two first runs at once (say, `tracktalk serve` and `tracktalk demo`) load it once: the
        # second waits here for the first to commit. A lock on a table the loader writes (its
        # mode conflicts with itself, not with readers), which a role without rights on albums
        # cannot take and hold: never an advisory lock, whose keys any role may take.
        conn.execute("LOCK TABLE public.albums IN SHARE ROW EXCLUSIVE MODE")
        creator_id = _user_ids(conn).get(CREATOR)
        album_id = None if creator_id is None else _find_album(conn, creator_id)
        if album_id is not None:
            summary = _existing_summary(conn, album_id)
            threads = _forum_threads(conn)
            if threads is None:  # an album loaded before the forum was
                threads = _insert_forum(conn, summary.users)
            return DemoSummary(summary.users, summary.track_ids, summary.comments, True, threads)
        _check_track_ids_free(conn)
        users = _ensure_users(conn)
        album_id = _insert_album(conn, users[CREATOR])
        for track in _TRACKS:
            _insert_track(conn, album_id, track)
        comment_ids = _insert_comments(conn, users)
        _insert_reactions(conn, users, comment_ids)
        threads = _forum_threads(conn)
        if threads is None:
            threads = _insert_forum(conn, users)
        return DemoSummary(users, [t.id for t in _TRACKS], len(comment_ids), False, threads)


def _one(conn: Connection, query: str, params: Sequence[object]) -> tuple[Any, ...]:
    """The single row a query must return."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"expected a row from: {query}")
    return row


def _user_ids(conn: Connection) -> dict[str, int]:
    """The ids of the demo's users that exist, by username."""
    rows = conn.execute(
        "SELECT username, id FROM users WHERE username = ANY(%s)",
        ([u.username for u in _USERS],),
    ).fetchall()
    return {str(name): int(user_id) for name, user_id in rows}


def _find_album(conn: Connection, creator_id: int) -> int | None:
    """The id of the demo album by `creator_id`, if it exists."""
    row = conn.execute(
        "SELECT id FROM albums WHERE created_by_id = %s AND title = %s ORDER BY id LIMIT 1",
        (creator_id, DEMO_ALBUM_TITLE),
    ).fetchone()
    return None if row is None else int(row[0])


def _existing_summary(conn: Connection, album_id: int) -> DemoSummary:
    """Describe the demo data already in the database."""
    found = {
        str(row[0])
        for row in conn.execute("SELECT id FROM tracks WHERE album_id = %s", (album_id,)).fetchall()
    }
    track_ids = [t.id for t in _TRACKS if t.id in found]
    (count,) = _one(conn, "SELECT count(*) FROM comments WHERE track_id = ANY(%s)", (track_ids,))
    return DemoSummary(_user_ids(conn), track_ids, int(count), already_loaded=True)


def _check_track_ids_free(conn: Connection) -> None:
    """Raise DemoError when one of the demo's track ids is already taken."""
    rows = conn.execute(
        "SELECT id FROM tracks WHERE id = ANY(%s) ORDER BY id", ([t.id for t in _TRACKS],)
    ).fetchall()
    if rows:
        taken = ", ".join(str(row[0]) for row in rows)
        raise DemoError(f"tracks {taken} already exist outside the demo album {DEMO_ALBUM_TITLE!r}")


def _ensure_users(conn: Connection) -> dict[str, int]:
    """Create the demo's users that are missing; return all their ids."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (username, is_creator, is_team) VALUES (%s, %s, %s)"
            " ON CONFLICT (username) DO NOTHING",
            [(u.username, u.is_creator, u.is_team) for u in _USERS],
        )
    return _user_ids(conn)


def _insert_album(conn: Connection, creator_id: int) -> int:
    """Create the demo album; return its id."""
    (album_id,) = _one(
        conn,
        "INSERT INTO albums (title, created_by_id) VALUES (%s, %s) RETURNING id",
        (DEMO_ALBUM_TITLE, creator_id),
    )
    return int(album_id)


def _insert_track(conn: Connection, album_id: int, track: _DemoTrack) -> None:
    """Create a track and its synthesized audio."""
    audio = synthesize_wav(track.seconds, _frequencies(track.phrase.split() * track.repeats))
    conn.execute(
        "INSERT INTO tracks (id, album_id, title, duration_seconds, is_private, audio_url)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            track.id,
            album_id,
            track.title,
            wav_seconds(audio),
            track.is_private,
            "/api/tracks/" + track.id + "/audio",
        ),
    )
    conn.execute(
        "INSERT INTO tracktalk.track_audio (track_id, content_type, data) VALUES (%s, %s, %s)",
        (track.id, AUDIO_CONTENT_TYPE, audio),
    )


def _insert_comments(conn: Connection, users: dict[str, int]) -> dict[str, int]:
    """Create the comments in order (parents before replies); return their ids by key."""
    ids: dict[str, int] = {}
    for c in _COMMENTS:
        (comment_id,) = _one(
            conn,
            "INSERT INTO comments (track_id, user_id, parent_id, content, timestamp, created_at)"
            " VALUES (%s, %s, %s, %s, %s, now() - make_interval(mins => %s::int)) RETURNING id",
            (
                c.track_id,
                users[c.username],
                None if c.parent is None else ids[c.parent],
                c.content,
                c.timestamp,
                c.minutes_ago,
            ),
        )
        ids[c.key] = int(comment_id)
    return ids


def _insert_reactions(conn: Connection, users: dict[str, int], comment_ids: dict[str, int]) -> None:
    """Create the comment likes, track likes and shares, one row a statement, as people make them."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)",
            [(comment_ids[key], users[name]) for name, key in _COMMENT_LIKES],
        )
        cur.executemany(
            "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)",
            [(track_id, users[name]) for name, track_id in _TRACK_LIKES],
        )
        cur.executemany(
            "INSERT INTO track_shares (track_id, user_id) VALUES (%s, %s)",
            [(track_id, users[name]) for name, track_id in _SHARES],
        )


def _forum_threads(conn: Connection) -> int | None:
    """How many threads the demo's categories hold; None when they are not there."""
    row = conn.execute(
        "SELECT count(c.id), count(t.id) FROM forum_categories c LEFT JOIN forum_threads t ON t.category_id = c.id"
        " WHERE c.slug = ANY(%s)",
        ([c.slug for c in _CATEGORIES],),
    ).fetchone()
    return None if row is None or row[0] == 0 else int(row[1])


def _insert_forum(conn: Connection, users: dict[str, int]) -> int:
    """Create the categories, threads, posts (oldest first: the threads' counters follow them) and
    post likes, one statement a row, as people make them; return how many threads."""
    categories: dict[str, int] = {}
    for category in _CATEGORIES:
        (categories[category.slug],) = _one(
            conn,
            "INSERT INTO forum_categories (slug, title, description, is_private) VALUES (%s, %s, %s, %s)"
            " RETURNING id",
            (category.slug, category.title, category.description, category.is_private),
        )
    posts: dict[str, int] = {}
    for thread in _THREADS:
        (thread_id,) = _one(
            conn,
            "INSERT INTO forum_threads (category_id, user_id, title, is_pinned, created_at)"
            " VALUES (%s, %s, %s, %s, now() - make_interval(mins => %s::int)) RETURNING id",
            (
                categories[thread.category],
                users[thread.username],
                thread.title,
                thread.is_pinned,
                thread.posts[0][3],
            ),
        )
        for key, username, content, minutes_ago, parent in thread.posts:
            (posts[key],) = _one(
                conn,
                "INSERT INTO forum_posts (thread_id, user_id, parent_id, content, created_at)"
                " VALUES (%s, %s, %s, %s, now() - make_interval(mins => %s::int)) RETURNING id",
                (thread_id, users[username], None if parent is None else posts[parent], content, minutes_ago),
            )
        if thread.is_locked:  # after its posts: a locked thread takes none through the API
            conn.execute("UPDATE forum_threads SET is_locked = true WHERE id = %s", (thread_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO forum_post_likes (post_id, user_id) VALUES (%s, %s)",
            [(posts[key], users[name]) for name, key in _POST_LIKES],
        )
    return len(_THREADS)


def _frequencies(names: Sequence[str]) -> list[float]:
    """Hertz for note names ("A4" is 440; "-" is a rest, 0)."""
    return [_frequency(name) for name in names]


def _frequency(name: str) -> float:
    """Hertz for one note name such as "C5", "G#4" or "Bb4" ("-" is a rest, 0)."""
    if name == "-":
        return 0.0
    shift = {"#": 1, "b": -1}.get(name[1], 0)
    midi = 12 * (int(name[1 + abs(shift) :]) + 1) + _SEMITONES[name[0]] + shift
    return 440.0 * math.pow(2.0, (midi - 69) / 12)


def synthesize_wav(seconds: float, notes: Sequence[float], sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV of `seconds` playing `notes` (Hz, 0 a rest) one after another, evenly spaced."""
    if not seconds > 0 or not notes or sample_rate <= 0:
        raise ValueError("synthesize_wav needs seconds > 0, at least one note and a sample rate > 0")
    total = round(seconds * sample_rate)
    slot = total // len(notes)
    if slot == 0:
        raise ValueError("too many notes for the duration")
    voices: dict[float, list[int]] = {}
    samples: list[int] = []
    for freq in notes:
        if freq not in voices:
            voices[freq] = _note_samples(freq, slot, sample_rate)
        samples.extend(voices[freq])
    samples.extend([0] * (total - len(samples)))
    return _wav_bytes(samples, sample_rate)


def _note_samples(freq: float, length: int, sample_rate: int) -> list[int]:
    """One note, a blend of sine and triangle under a soft pluck envelope, as 16-bit samples."""
    if freq <= 0:
        return [0] * length
    attack = max(1, int(_ATTACK_SECONDS * sample_rate))
    release = max(1, int(_RELEASE_SECONDS * sample_rate))
    peak = _AMPLITUDE * 32767
    out: list[int] = []
    for i in range(length):
        phase = freq * i / sample_rate
        tone = 0.7 * math.sin(2 * math.pi * phase) + 0.3 * _triangle(phase + 0.25)
        envelope = min(1.0, i / attack, (length - i) / release) * math.exp(-2.5 * i / length)
        out.append(round(peak * envelope * tone))
    return out


def _triangle(phase: float) -> float:
    """A triangle wave in [-1, 1] at `phase` (in cycles): -1 at 0, 1 at 0.5."""
    return 4.0 * abs(phase - math.floor(phase + 0.5)) - 1.0


def _wav_bytes(samples: Sequence[int], sample_rate: int) -> bytes:
    """The WAV file of 16-bit mono `samples`."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return buffer.getvalue()


def wav_seconds(data: bytes) -> float:
    """The duration of a WAV file, in seconds."""
    with wave.open(io.BytesIO(data), "rb") as audio:
        return audio.getnframes() / audio.getframerate()
