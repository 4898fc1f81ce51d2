"""Every shape that crosses a wire: HTTP bodies, WebSocket messages, NOTIFY payloads.

The durable WebSocket messages (new_comment ... track_metrics) are built by the triggers in
sql/triggers.sql and travel as JSON text straight from PostgreSQL to the sockets; the structs
below describe them (for the OpenAPI schema, for clients, and for the tests that decode every
frame with `server_message_decoder`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, Struct

# MAX_CONTENT and MAX_FRAME are here too for the clients of this module: what they may send.
from app.bounds import MAX_BIGINT, MAX_CONTENT, MAX_FRAME, MAX_TOPICS  # noqa: F401

PROTOCOL = 1
"""The protocol's version: `protocol` in `connected`, `info.version` of /schema/openapi.json and
/schema/asyncapi.json, the `v1` of /client/v1/. Fields and messages may be added within a version
(a client ignores what it does not know); a change that would break a client of this version
makes the next one. CHANGELOG.md says what each version has."""

# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

CommentId = Annotated[int, Meta(ge=1, le=MAX_BIGINT)]


class ErrorBody(Struct):
    """What the API answers with an error status: the status again, and what to fix."""

    status_code: int
    detail: str


class CommentIn(Struct, forbid_unknown_fields=False):
    """Body of POST /api/tracks/{track_id}/comments."""

    content: str
    timestamp: float
    parent_id: CommentId | None = None


class CommentEdit(Struct):
    """Body of PUT /api/comments/{comment_id}."""

    content: str


class Comment(Struct, omit_defaults=True):
    """A comment as the API and the WebSocket show it. `hidden`, `held` and `report_count` are
    there only for its author and the track's moderators (left out for everyone else)."""

    id: int
    user_id: int
    username: str
    author_is_creator: bool
    author_is_team: bool
    track_id: str
    parent_id: int | None
    content: str
    timestamp: float
    is_edited: bool
    created_at: datetime
    last_edited_at: datetime | None
    like_count: int
    user_has_liked: bool
    pinned: bool
    """First in every order; one per track (issue 20)."""
    hearted: bool
    """The artist's heart."""
    deleted: bool
    """A tombstone: deleted, its replies kept (content is empty)."""
    hidden: bool | None = None
    """Hidden by a moderator (for its author and the moderators only)."""
    held: bool | None = None
    """Held for review (for its author and the moderators only)."""
    report_count: int | None = None
    """Reports of it (for its author and the moderators only)."""


class CommentThread(Struct):
    """Answer of GET /api/comments/{comment_id} (a deep link): the comment, the one it replies to
    (null for a top-level comment), and its replies (oldest first, at most 500)."""

    comment: Comment
    parent: Comment | None
    replies: list[Comment]


class ReportIn(Struct):
    """Body of POST /api/comments/{comment_id}/report."""

    reason: str


class Report(Struct):
    """A report of a comment (the answer of POST …/report; in the moderation queue)."""

    comment_id: int
    user_id: int
    username: str
    reason: str
    created_at: datetime


class QueueItem(Struct):
    """A comment of GET /api/moderation/queue: held for review, or reported; with its reports."""

    comment: Comment
    reports: list[Report]


class TrackSettingsIn(Struct, forbid_unknown_fields=True):
    """Body of PUT /api/tracks/{track_id}/settings: either or both."""

    comments_enabled: bool | None = None
    slow_mode_seconds: Annotated[int, Meta(ge=0, le=86400)] | None = None


class TrackSettingsState(Struct):
    """A track's settings (the answer of PUT /api/tracks/{track_id}/settings)."""

    track_id: str
    comments_enabled: bool
    slow_mode_seconds: int


class MuteState(Struct):
    """Answer of POST and DELETE /api/users/{user_id}/mute: whether the caller mutes the user."""

    user_id: int
    muted: bool


class LikeState(Struct):
    """Answer of POST and DELETE /api/comments/{comment_id}/like."""

    comment_id: int
    like_count: int
    user_has_liked: bool


class TrackMetrics(Struct):
    """Answer of GET /api/tracks/{track_id}/metrics and of the track like and share routes."""

    track_id: str
    likes: int
    comments: int
    shares: int
    user_has_liked: bool
    listening: int = 0
    """Distinct users with a socket open on the track, on any replica (anonymous sockets count one each)."""


class Track(Struct):
    """A track as the page lists it."""

    id: str
    title: str
    album_id: int
    album_title: str
    duration_seconds: float | None
    is_private: bool
    audio_url: str | None
    creator_id: int
    """The album's creator (with the team, the track's moderators)."""
    comments_enabled: bool
    """False: new comments are refused (403); those there stay."""
    slow_mode_seconds: int
    """A user's next comment on the track waits this long after their last (0: off)."""


class Notification(Struct):
    """One row of the caller's notifications: about a track and a comment of it (`comment`,
    `reply`, `mention`, `comment_like`), or about a forum thread and a post of it (`post_reply`,
    `post_mention`); the fields of the other are null."""

    id: int
    user_id: int
    kind: Literal["comment", "reply", "mention", "comment_like", "post_reply", "post_mention"]
    actor_id: int
    actor_username: str
    track_id: str | None
    track_title: str | None
    comment_id: int | None
    excerpt: str | None
    created_at: datetime
    read_at: datetime | None
    thread_id: int | None = None
    thread_title: str | None = None
    post_id: int | None = None


class NotificationPage(Struct):
    """Answer of GET /api/notifications: newest first, and how many are unread in all."""

    notifications: list[Notification]
    unread: int


NotificationId = Annotated[int, Meta(ge=1, le=MAX_BIGINT)]


class MarkRead(Struct):
    """Body of POST /api/notifications/read: the ids to mark read, or none for all (a form may
    send `ids=1&ids=2`, or a single `ids=1`)."""

    ids: list[NotificationId] | NotificationId | None = None

    def id_list(self) -> list[int] | None:
        """The ids as a list (None: all)."""
        return [self.ids] if isinstance(self.ids, int) else self.ids


class UnreadCount(Struct):
    """Answer of POST /api/notifications/read."""

    unread: int


# ---------------------------------------------------------------------------------------------
# HTTP: the forum
# ---------------------------------------------------------------------------------------------

PostId = Annotated[int, Meta(ge=1, le=MAX_BIGINT)]


class Category(Struct):
    """A forum category the caller may see (a private one is the team's)."""

    id: int
    slug: str
    title: str
    description: str
    is_private: bool
    thread_count: int


class Thread(Struct):
    """A forum thread as the API and the WebSocket show it: `post_count` and `last_post_at` (the
    newest post's time, the thread's own while it has none) are kept by the database."""

    id: int
    category_id: int
    category_slug: str
    user_id: int
    username: str
    title: str
    created_at: datetime
    last_post_at: datetime
    post_count: int
    is_locked: bool
    is_pinned: bool


class Post(Struct):
    """A forum post as the API and the WebSocket show it."""

    id: int
    thread_id: int
    user_id: int
    username: str
    parent_id: int | None
    content: str
    created_at: datetime
    is_edited: bool
    last_edited_at: datetime | None
    like_count: int
    user_has_liked: bool


class NewThread(Thread):
    """Answer of POST /api/forum/categories/{slug}/threads: the thread, with its first post."""

    first_post: Post


class ThreadIn(Struct):
    """Body of POST /api/forum/categories/{slug}/threads: the title, and the first post's content."""

    title: str
    content: str


class ThreadEdit(Struct, forbid_unknown_fields=True):
    """Body of PUT /api/forum/threads/{thread_id}: any of the title (its author, or the team),
    is_locked and is_pinned (the team); at least one."""

    title: str | None = None
    is_locked: bool | None = None
    is_pinned: bool | None = None


class PostIn(Struct):
    """Body of POST /api/forum/threads/{thread_id}/posts."""

    content: str
    parent_id: PostId | None = None


class PostEdit(Struct):
    """Body of PUT /api/forum/posts/{post_id}."""

    content: str


class PostLikeState(Struct):
    """Answer of POST and DELETE /api/forum/posts/{post_id}/like."""

    post_id: int
    like_count: int
    user_has_liked: bool


class DemoUser(Struct):
    """A user the demo sign-in offers."""

    id: int
    username: str
    is_creator: bool
    is_team: bool


class DemoToken(Struct):
    """A token for a demo user."""

    token: str
    user: DemoUser


class QueueHolder(Struct):
    """The session most likely holding PostgreSQL's NOTIFY queue back: the oldest idle in a
    transaction (pg_stat_activity; any database of the server, the queue is the server's)."""

    pid: int
    application_name: str
    role: str | None
    database: str | None
    state: str | None
    since: datetime | None
    """When its transaction began (or, for one stuck writing to its client, when it went idle)."""


class NotifyQueue(Struct, omit_defaults=True):
    """pg_notification_queue_usage() and the limit past which /readyz fails."""

    usage: float
    limit: float
    held_by: QueueHolder | None = None
    server: str | None = None
    """The fan-out node (host:port/dbname) on whose server the queue was read, where the listener
    is on one; absent: the primary's (DATABASE_URL)."""


class Health(Struct):
    """Answer of /healthz."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = msgspec.field(default_factory=dict)


class FanoutNode(Struct):
    """The fan-out node the replica's listener is on (docs/dba.md, "Fan-out nodes")."""

    name: str
    """host:port/dbname of the node."""
    subscription: str | None
    """Its subscription to the primary (null: the node did not answer)."""
    running: bool
    """Its apply worker runs: it receives the primary's changes."""
    sending: bool
    """Its trigger on the event log is on: it sends the events' NOTIFYs."""
    lag_seconds: float | None
    """How far behind the primary it is (their heartbeats compared, in the primary's time; null:
    not known yet)."""
    lag_limit: float
    """TRACKTALK_NODE_LAG_LIMIT: past it /readyz fails."""
    follows: bool = True
    """Its subscription streams from the primary the replica writes to (DATABASE_URL's database: the
    subscription's slot is there); false: it follows another primary, and none of the writes
    reaches it."""


class Readiness(Struct):
    """Answer of /readyz: each check true, false, or null when it could not be made (the schema
    and the NOTIFY queue of a database that does not answer; `node` where the listener is on none)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, bool | None]
    notify_queue: NotifyQueue | None
    """None while the database does not answer."""
    detail: str | None
    """What is wrong and what to do about it; None when all is well."""
    notify_mode: Literal["direct", "fanout"] | None = None
    """Who sends the NOTIFYs (tracktalk.settings.notify_mode); null while the database does not answer."""
    node: FanoutNode | None = None
    """The fan-out node the listener is on; null: it listens on the primary (TRACKTALK_LISTEN_URL)."""


# ---------------------------------------------------------------------------------------------
# WebSocket, server -> client
# ---------------------------------------------------------------------------------------------


EventTag = Annotated[str, Meta(pattern="^[0-9a-f]{1,32}$")]
"""A durable event's `tag`: random, made by the database with the event. Two events with one seq
but different tags are from different histories (a failover that lost commits): resume with
`since=SEQ&tag=TAG` and the server sends `resync` when its event SEQ is not that one."""


class Connected(Struct, tag_field="type", tag="connected"):
    """First message on a socket; `seq` is the track's latest event number, `tag` that event's tag
    (null before the first event, or for an event older than tags), `protocol` the version of the
    protocol the server speaks."""

    track_id: str
    message: str
    seq: int
    tag: EventTag | None = None
    protocol: int = PROTOCOL


class Counters(Struct):
    """A track's counters as they stand after a change (the `metrics` of an event)."""

    likes: int
    comments: int
    shares: int


class NewComment(Struct, tag_field="type", tag="new_comment"):
    """A comment was posted; `metrics` are the track's counters after it (no track_metrics follows)."""

    track_id: str
    seq: int
    comment: Comment
    metrics: Counters
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentEdited(Struct, tag_field="type", tag="comment_edited"):
    """A comment's content or time changed."""

    track_id: str
    seq: int
    comment_id: int
    content: str
    timestamp: float
    is_edited: bool
    last_edited_at: datetime | None
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentDeleted(Struct, tag_field="type", tag="comment_deleted"):
    """A comment is gone (its replies get their own message); `metrics` are the counters after it.
    `tombstone`: it had replies, which stay: it is now shown as deleted, with empty content."""

    track_id: str
    seq: int
    comment_id: int
    metrics: Counters
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""
    tombstone: bool = False


class CommentPinned(Struct, tag_field="type", tag="comment_pinned"):
    """A comment was pinned (first in every order; pinning another unpins it) or unpinned."""

    track_id: str
    seq: int
    comment_id: int
    pinned: bool
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentHearted(Struct, tag_field="type", tag="comment_hearted"):
    """The artist's heart was given to a comment, or taken back."""

    track_id: str
    seq: int
    comment_id: int
    hearted: bool
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentHidden(Struct, tag_field="type", tag="comment_hidden"):
    """A comment was hidden or held for review: remove it (sent to those who may no longer see it)."""

    track_id: str
    seq: int
    comment_id: int
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentModerated(Struct, tag_field="type", tag="comment_moderated"):
    """A comment's moderation changed (hidden, held, restored, reported): the comment with its marks,
    to its author and the track's moderators only."""

    track_id: str
    seq: int
    comment: Comment
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class CommentRestored(Struct, tag_field="type", tag="comment_restored"):
    """A hidden or held comment was made visible: add it (sent to those who did not see it)."""

    track_id: str
    seq: int
    comment: Comment
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class TrackSettings(Struct, tag_field="type", tag="track_settings"):
    """The track's settings changed: comments on or off, slow mode (seconds between a user's
    comments; 0: off)."""

    track_id: str
    seq: int
    comments_enabled: bool
    slow_mode_seconds: int
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class Skip(Struct, tag_field="type", tag="skip"):
    """An event this socket may not see (a hidden or held comment's): nothing to do but note its
    `seq`, so that the numbering stays whole. It may carry the track's counters (`metrics`)."""

    seq: int
    track_id: str | None = None
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""
    metrics: Counters | None = None


class CommentLiked(Struct, tag_field="type", tag="comment_liked"):
    """A comment's like count changed."""

    track_id: str
    seq: int
    comment_id: int
    like_count: int
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class TrackMetricsChanged(Struct, tag_field="type", tag="track_metrics"):
    """A track like, unlike or share: the counters are the change."""

    track_id: str
    seq: int
    likes: int
    comments: int
    shares: int
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class UserTyping(Struct, tag_field="type", tag="user_typing", kw_only=True, omit_defaults=True):
    """Someone on the topic is typing (ephemeral: no seq); a track's carries its `track_id`."""

    track_id: str | None = None
    user_id: int
    username: str
    is_typing: bool


class Presence(Struct, tag_field="type", tag="presence", kw_only=True, omit_defaults=True):
    """How many distinct users have a socket on the topic, on any replica, each anonymous socket
    counting one (ephemeral: no seq): on connect, then on change, at most once a second per topic.
    A track's carries its `track_id`."""

    track_id: str | None = None
    listening: int


class Mention(Struct, tag_field="type", tag="mention", kw_only=True, omit_defaults=True):
    """The socket's user was @mentioned, on whatever track or forum thread it watches: in a
    comment (`track_id`, `comment`) or in a forum post (`thread_id`, `post`)."""

    track_id: str | None = None
    comment: Comment | None = None
    thread_id: int | None = None
    post: Post | None = None
    from_user: str


class NotificationMessage(Struct, tag_field="type", tag="notification", kw_only=True, omit_defaults=True):
    """The socket's user has a new notification: about a track (`track_id`) or a forum thread
    (`thread_id`)."""

    track_id: str | None = None
    thread_id: int | None = None
    notification: Notification


class Resync(Struct, tag_field="type", tag="resync", kw_only=True):
    """Events were missed that can no longer be replayed, or the client's were not the topic's
    (a failover lost them): reload with GET, go on from `seq` (whose tag is `tag`). A track's
    carries its `track_id` (another topic's has none: app/live/cursors.py writes it so)."""

    track_id: str | None = None
    seq: int
    message: str
    tag: EventTag | None = None


class Error(Struct, tag_field="type", tag="error", omit_defaults=True):
    """The client sent something the server did not understand; the socket stays open. On the
    track socket it carries the `track_id`; on /api/ws the `topic` it is about, if any."""

    message: str
    track_id: str | None = None
    topic: str | None = None


ServerMessage = (
    Connected
    | NewComment
    | CommentEdited
    | CommentDeleted
    | CommentLiked
    | TrackMetricsChanged
    | CommentPinned
    | CommentHearted
    | CommentHidden
    | CommentModerated
    | CommentRestored
    | TrackSettings
    | Skip
    | UserTyping
    | Presence
    | Mention
    | NotificationMessage
    | Resync
    | Error
)


# ---------------------------------------------------------------------------------------------
# WebSocket: the forum's topics (on /api/ws, each message with its `topic` added)
# ---------------------------------------------------------------------------------------------


class ThreadCounters(Struct):
    """A thread's counters as they stand after a change (the `thread` of new_post and post_deleted)."""

    id: int
    post_count: int
    last_post_at: datetime


class NewPost(Struct, tag_field="type", tag="new_post"):
    """`thread:{id}`: a post was written; `thread` has the thread's counters after it."""

    seq: int
    post: Post
    thread: ThreadCounters
    tag: EventTag | None = None


class PostEdited(Struct, tag_field="type", tag="post_edited"):
    """`thread:{id}`: a post's content changed."""

    seq: int
    post_id: int
    content: str
    is_edited: bool
    last_edited_at: datetime | None
    tag: EventTag | None = None


class PostDeleted(Struct, tag_field="type", tag="post_deleted"):
    """`thread:{id}`: a post is gone (its replies stay, without their parent); `thread` has the
    thread's counters after it."""

    seq: int
    post_id: int
    thread: ThreadCounters
    tag: EventTag | None = None


class PostLiked(Struct, tag_field="type", tag="post_liked"):
    """`thread:{id}`: a post's like count changed."""

    seq: int
    post_id: int
    like_count: int
    tag: EventTag | None = None


class ThreadUpdated(Struct, tag_field="type", tag="thread_updated"):
    """`thread:{id}` and `category:{slug}`: the thread's title, lock, pin or author changed; on the
    category's topic also its counters (a post written or deleted)."""

    seq: int
    thread: Thread
    tag: EventTag | None = None


class ThreadCreated(Struct, tag_field="type", tag="thread_created"):
    """`category:{slug}`: a thread was started in the category (or moved into it); its first
    post follows as a thread_updated."""

    seq: int
    thread: Thread
    tag: EventTag | None = None


class ThreadDeleted(Struct, tag_field="type", tag="thread_deleted"):
    """`category:{slug}`: a thread is gone from the category (deleted, or moved out of it)."""

    seq: int
    thread_id: int
    tag: EventTag | None = None


ForumMessage = NewPost | PostEdited | PostDeleted | PostLiked | ThreadUpdated | ThreadCreated | ThreadDeleted
"""The durable messages of the forum's topics (built by the triggers of sql/triggers.sql)."""

# ---------------------------------------------------------------------------------------------
# WebSocket /api/ws, server -> client (besides every message of its topics, `topic` added)
# ---------------------------------------------------------------------------------------------

SubscribeFailure = Literal["invalid topic", "not found", "forbidden", "too many topics"]
"""Why a subscribe was refused."""


class SocketConnected(Struct, tag_field="type", tag="connected"):
    """First message on /api/ws: the socket is open, subscribe to topics. `protocol` is the version
    of the protocol the server speaks; `max_topics` how many topics the socket may hold."""

    message: str
    protocol: int = PROTOCOL
    max_topics: int = MAX_TOPICS


class Subscribed(Struct, tag_field="type", tag="subscribed"):
    """A subscribe succeeded: `seq` is the topic's latest event number, `tag` its tag. With
    `since`, the events after it follow (or `resync`), then the live ones."""

    topic: str
    seq: int
    tag: EventTag | None = None


class SubscribeError(Struct, tag_field="type", tag="subscribe_error", omit_defaults=True):
    """A subscribe was refused (the socket stays open, its other topics too): `reason` for
    programs, `message` for people; `retry_after` (seconds) when it was refused for coming too
    fast."""

    topic: str
    reason: SubscribeFailure
    message: str
    retry_after: float | None = None


class Unsubscribed(Struct, tag_field="type", tag="unsubscribed", omit_defaults=True):
    """The socket no longer gets the topic's messages: it asked (no `reason`), or the user lost
    access to it (`forbidden`; `not found`: it was deleted, or may no longer be known of)."""

    topic: str
    reason: Literal["forbidden", "not found"] | None = None


TopicSocketMessage = (
    SocketConnected | Subscribed | SubscribeError | Unsubscribed | Error | Mention | NotificationMessage
)
"""What /api/ws sends of its own (the messages of its topics are those of their kinds, with
`topic`: a track's are ServerMessage's)."""

# ---------------------------------------------------------------------------------------------
# WebSocket /api/ws: the topics of a table made live by its DBA (tracktalk.make_live)
# ---------------------------------------------------------------------------------------------


class RowInserted(Struct, tag_field="type", tag="row_inserted"):
    """A row of a live table was inserted, or came into the topic (an UPDATE changed its
    topic_column, or its primary key): `row` is the row as JSON, every column (times in UTC)."""

    topic: str
    seq: int
    row: dict[str, Any]
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class RowUpdated(Struct, tag_field="type", tag="row_updated"):
    """A row of a live table was updated and stays in the topic: `row` is the row as it is now."""

    topic: str
    seq: int
    row: dict[str, Any]
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


class RowDeleted(Struct, tag_field="type", tag="row_deleted"):
    """A row of a live table was deleted, or left the topic: `row` is its primary key
    (`{"id": 7}`; every column of a composite key)."""

    topic: str
    seq: int
    row: dict[str, Any]
    tag: EventTag | None = None
    """The event's tag (see EventTag)."""


LiveRowMessage = RowInserted | RowUpdated | RowDeleted
"""The durable messages of a live table's topics (built by tracktalk.live_rows_changed in
sql/triggers.sql; /api/ws puts `topic` first)."""

# ---------------------------------------------------------------------------------------------
# WebSocket, client -> server
# ---------------------------------------------------------------------------------------------


class Typing(Struct, tag_field="type", tag="typing"):
    """The client's user started or stopped typing."""

    is_typing: bool


ClientMessage = Typing


class Subscribe(Struct, tag_field="type", tag="subscribe"):
    """/api/ws: subscribe to a topic; with `since` (and `tag`, the tag of that event), resume
    after it, as the track socket's `since=` does."""

    topic: str
    since: Annotated[int, Meta(ge=0, le=MAX_BIGINT)] | None = None
    tag: EventTag | None = None


class Unsubscribe(Struct, tag_field="type", tag="unsubscribe"):
    """/api/ws: stop getting a topic's messages."""

    topic: str


class TopicTyping(Struct, tag_field="type", tag="typing"):
    """/api/ws: the client's user started or stopped typing in a topic (a track's, a thread's)."""

    topic: str
    is_typing: bool


TopicClientMessage = Subscribe | Unsubscribe | TopicTyping


class ClientEnvelope(Struct):
    """Just the `type` of a client frame, to tell an unknown type from a malformed frame."""

    type: str


# ---------------------------------------------------------------------------------------------
# NOTIFY payloads (see app/live/notices.py and the head of sql/triggers.sql)
# ---------------------------------------------------------------------------------------------


class TopicBatch(Struct, tag_field="k", tag="topic"):
    """Events first..last of a topic; `events` is absent when they are not in the payload (a topic
    not everyone may see, events with a restricted variant, or too many to fit): the replica reads
    them from tracktalk.events."""

    topic: str
    first: int
    last: int
    at: float = 0.0
    """When the trigger made the events (seconds since the epoch, the database's clock)."""
    events: list[Raw] | None = None
    tag: str | None = None
    """The tag of these events (one statement's events share it)."""
    prev: str | None = None
    """The tag of event first - 1 (null: none, or older than tags): a replica whose event
    first - 1 had another tag holds events of another history."""


class UserBatch(Struct, tag_field="k", tag="user"):
    """New notifications of one user, by id: the replicas where the user has a socket read the
    messages (tracktalk.user_messages) and send them."""

    user: int
    ids: list[int]
    at: float = 0.0
    x: int | None = None
    """The writer's transaction on the primary, when a fan-out node sent this: the messages are
    read there once it is visible (a node may announce it a moment before the primary's own
    sessions see it)."""


class Revoke(Struct, tag_field="k", tag="revoke"):
    """Who may see what changed: the subscriptions to the topic (a track made private, moved or
    deleted), of the user (no longer on the team, or deleted) or to every topic of the kind (a
    live table's, undone) are checked again. `gone`: what the topic is about was deleted (one
    made again goes on with its numbering: its subscribers that may still see it reload)."""

    topic: str | None = None
    user: int | None = None
    kind: str | None = None
    gone: bool = False
    at: float = 0.0
    """When the change was made (seconds since the epoch, the database's clock)."""
    x: int | None = None
    """The writer's transaction on the primary, when a fan-out node sent this: what the primary is
    asked again is asked once it is visible there (UserBatch.x)."""


class Ephemeral(Struct, tag_field="k", tag="ephemeral"):
    """A message for a topic's sockets that is not kept (typing), sent by a replica, sealed
    (app/live/notices.py): `sender` and `n` (its counter) stop replays, `at` stale ones."""

    topic: str
    message: Raw
    sender: str = ""
    n: int = 0
    at: float = 0.0


class Rekey(Struct, tag_field="k", tag="rekey"):
    """The channel key was changed (sent under the old one, on its `rekey` channel): read the new
    one and LISTEN under the new names."""

    at: float = 0.0


Notice = TopicBatch | UserBatch | Revoke | Ephemeral | Rekey

notice_decoder = msgspec.json.Decoder(Notice)
server_message_decoder = msgspec.json.Decoder(ServerMessage)
forum_message_decoder = msgspec.json.Decoder(ForumMessage)
client_envelope_decoder = msgspec.json.Decoder(ClientEnvelope)
client_message_decoder = msgspec.json.Decoder(ClientMessage)
topic_client_decoder = msgspec.json.Decoder(TopicClientMessage)
topic_socket_decoder = msgspec.json.Decoder(TopicSocketMessage)
live_row_decoder = msgspec.json.Decoder(LiveRowMessage)
encoder = msgspec.json.Encoder()
