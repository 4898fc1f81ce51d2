// Types of tracktalk's browser client (/client/tracktalk.js) and of the messages it delivers.
// The message shapes are the server's (app/wire.py); tests/unit/test_client.py checks that every
// interface here names exactly the fields of its wire type.

// ---- HTTP answers ------------------------------------------------------------------------

/** A comment as the API and the socket show it. */
export interface Comment {
  id: number;
  user_id: number;
  username: string;
  author_is_creator: boolean;
  author_is_team: boolean;
  track_id: string;
  parent_id: number | null;
  content: string;
  /** Seconds into the track. */
  timestamp: number;
  is_edited: boolean;
  /** RFC 3339 in UTC: "2026-11-30T00:47:54.698605Z" (no fraction when the microseconds are zero). */
  created_at: string;
  last_edited_at: string | null;
  like_count: number;
  /** Whether the caller liked it; false in socket messages (they are the same for everyone). */
  user_has_liked: boolean;
  /** Pinned by the track's creator or team: first in every order (one per track). */
  pinned: boolean;
  /** The artist's heart. */
  hearted: boolean;
  /** A tombstone: deleted, its replies kept (`content` is empty). */
  deleted: boolean;
  /** Hidden by a moderator: only for its author and the track's moderators. */
  hidden?: boolean;
  /** Held for review: only for its author and the track's moderators. */
  held?: boolean;
  /** How many reported it: only for its author and the track's moderators. */
  report_count?: number;
}

/** A forum post (GET /api/forum/threads/{id}/posts, `new_post`). */
export interface Post {
  id: number;
  thread_id: number;
  user_id: number;
  username: string;
  parent_id: number | null;
  content: string;
  created_at: string;
  is_edited: boolean;
  last_edited_at: string | null;
  like_count: number;
  user_has_liked: boolean;
}

/** GET /api/tracks/{track_id}/metrics, and the answer of the track like and share routes. */
export interface TrackMetrics {
  track_id: string;
  likes: number;
  comments: number;
  shares: number;
  user_has_liked: boolean;
  /** Distinct users with a socket open on the track, on any replica (anonymous sockets count one each). */
  listening: number;
}

/** POST and DELETE /api/comments/{comment_id}/like. */
export interface LikeState {
  comment_id: number;
  like_count: number;
  user_has_liked: boolean;
}

/** One of the caller's notifications. */
export interface Notification {
  id: number;
  user_id: number;
  /** About a comment (comment, reply, mention, comment_like) or a forum post (post_reply, post_mention). */
  kind: "comment" | "reply" | "mention" | "comment_like" | "post_reply" | "post_mention";
  actor_id: number;
  actor_username: string;
  track_id: string | null;
  track_title: string | null;
  comment_id: number | null;
  excerpt: string | null;
  created_at: string;
  read_at: string | null;
  thread_id?: number | null;
  thread_title?: string | null;
  post_id?: number | null;
}

/** GET /api/notifications: newest first, and how many are unread in all. */
export interface NotificationPage {
  notifications: Notification[];
  unread: number;
}

/** A track's counters after a change (the `metrics` of an event). */
export interface Counters {
  likes: number;
  comments: number;
  shares: number;
}

// ---- server -> client ----------------------------------------------------------------------

/** First message on every socket; `seq` is the track's latest event number, `tag` that event's tag
 *  (null before the first event), `protocol` the server's protocol version. Reported through
 *  onStatus("live"). */
export interface Connected {
  type: "connected";
  track_id: string;
  message: string;
  seq: number;
  tag?: string | null;
  protocol: number;
}

/** A comment was posted; `metrics` are the track's counters after it. Durable. */
export interface NewComment {
  type: "new_comment";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment: Comment;
  metrics: Counters;
}

/** A comment's content or time changed. Durable. */
export interface CommentEdited {
  type: "comment_edited";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
  content: string;
  timestamp: number;
  is_edited: boolean;
  last_edited_at: string | null;
}

/** A comment is gone (its replies get their own message); `metrics` are the counters after it. Durable. */
export interface CommentDeleted {
  type: "comment_deleted";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
  metrics: Counters;
  /** It had replies, which stay: show it as deleted, with empty content. */
  tombstone?: boolean;
}

/** A comment's like count changed. Durable. */
export interface CommentLiked {
  type: "comment_liked";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
  like_count: number;
}

/** A track like, unlike or share: the counters after it. Durable. */
export interface TrackMetricsChanged {
  type: "track_metrics";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  likes: number;
  comments: number;
  shares: number;
}

/** A comment was pinned (pinning another unpins it) or unpinned. Durable. */
export interface CommentPinned {
  type: "comment_pinned";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
  pinned: boolean;
}

/** The artist's heart given to a comment, or taken back. Durable. */
export interface CommentHearted {
  type: "comment_hearted";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
  hearted: boolean;
}

/** A comment was hidden or held for review: remove it. Durable. */
export interface CommentHidden {
  type: "comment_hidden";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment_id: number;
}

/** A comment's moderation changed (hidden, held, restored, reported): the comment with its marks,
 *  to its author and the track's moderators only. Durable. */
export interface CommentModerated {
  type: "comment_moderated";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment: Comment;
}

/** A hidden or held comment was made visible: add it. Durable. */
export interface CommentRestored {
  type: "comment_restored";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comment: Comment;
}

/** The track's settings changed: comments on or off, slow mode (0: off). Durable. */
export interface TrackSettings {
  type: "track_settings";
  track_id: string;
  seq: number;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  comments_enabled: boolean;
  slow_mode_seconds: number;
}

/** An event this socket may not see (a hidden or held comment's): only its seq counts. Durable. */
export interface Skip {
  type: "skip";
  seq: number;
  track_id?: string | null;
  /** The event's tag: resume with since=seq&tag=tag (the feed does). */
  tag?: string | null;
  /** The track's counters after the event, when it changed them. */
  metrics?: Counters | null;
}

/** Someone on the track started or stopped typing. Ephemeral (no seq). */
export interface UserTyping {
  type: "user_typing";
  track_id: string;
  user_id: number;
  username: string;
  is_typing: boolean;
}

/** How many distinct users have a socket on the track, on any replica: on connect and on change. Ephemeral. */
export interface Presence {
  type: "presence";
  track_id: string;
  listening: number;
}

/** The socket's user was @mentioned, in a comment (`track_id`, `comment`) or a forum post
 *  (`thread_id`, `post`), whatever the socket watches. A live hint: GET /api/notifications is the truth. */
export interface Mention {
  type: "mention";
  track_id?: string;
  comment?: Comment;
  thread_id?: number;
  post?: Post;
  from_user: string;
}

/** The socket's user has a new notification, about a track (`track_id`) or a forum thread
 *  (`thread_id`). A live hint: GET /api/notifications is the truth. */
export interface NotificationMessage {
  type: "notification";
  track_id?: string;
  thread_id?: number;
  notification: Notification;
}

/** Events were missed that can no longer be replayed, or the ones the feed had were lost by a
 *  database failover: reload with GET; the feed goes on after `seq` (whose tag is `tag`). */
export interface Resync {
  type: "resync";
  track_id: string;
  seq: number;
  tag?: string | null;
  message: string;
}

/** The server did not understand a frame the client sent; the socket stays open. */
export interface ErrorMessage {
  type: "error";
  message: string;
  track_id?: string | null;
  /** On /api/ws: the topic the error is about, if any. */
  topic?: string;
}

/** Every message the server sends. */
export type ServerMessage =
  | Connected
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
  | ErrorMessage;

/** The durable events: each has the track's `seq`, and is delivered exactly once, in order. */
export type DurableEvent =
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
  | Skip;

/** What onMessage gets: everything but `connected` (onStatus) and `resync` (onResync). */
export type FeedMessage = Exclude<ServerMessage, Connected | Resync>;

// ---- /api/ws: one socket, many topics --------------------------------------------------------

/** First message on /api/ws. Reported through onStatus("live"). */
export interface SocketConnected {
  type: "connected";
  message: string;
  protocol: number;
  /** How many topics the socket may hold (100). */
  max_topics: number;
}

/** A subscribe succeeded: `seq` is the topic's latest event number; with `since`, the events after
 *  it follow (or `resync`), then the live ones. */
export interface Subscribed {
  type: "subscribed";
  topic: string;
  seq: number;
  tag?: string | null;
}

/** A subscribe was refused; the socket and its other topics go on. */
export interface SubscribeError {
  type: "subscribe_error";
  topic: string;
  reason: "invalid topic" | "not found" | "forbidden" | "too many topics";
  /** For people. */
  message: string;
  /** Seconds: it was refused for coming too fast (the client subscribes again then). */
  retry_after?: number | null;
}

/** The socket no longer gets the topic's messages: it asked (no `reason`), or the user lost access. */
export interface Unsubscribed {
  type: "unsubscribed";
  topic: string;
  reason?: "forbidden" | "not found" | null;
}

/** A message of a topic on /api/ws: the topic's message (a track's are the track socket's) with
 *  `topic` added. Durable ones have the topic's `seq`. */
export type TopicMessage = { topic: string; type: string; seq?: number; tag?: string | null } & Record<string, unknown>;

// ---- the forum's topics (on /api/ws: `thread:{id}`, `category:{slug}`) ----------------------

/** A forum thread (GET /api/forum/threads/{id}); `post_count` and `last_post_at` are kept by the
 *  database. */
export interface Thread {
  id: number;
  category_id: number;
  category_slug: string;
  user_id: number;
  username: string;
  title: string;
  created_at: string;
  last_post_at: string;
  post_count: number;
  is_locked: boolean;
  is_pinned: boolean;
}

/** A forum category (GET /api/forum/categories); a private one is the team's. */
export interface Category {
  id: number;
  slug: string;
  title: string;
  description: string;
  is_private: boolean;
  thread_count: number;
}

/** POST and DELETE /api/forum/posts/{id}/like. */
export interface PostLikeState {
  post_id: number;
  like_count: number;
  user_has_liked: boolean;
}

/** A thread's counters after a change (the `thread` of new_post and post_deleted). */
export interface ThreadCounters {
  id: number;
  post_count: number;
  last_post_at: string;
}

/** `thread:{id}`: a post was written. */
export interface NewPost {
  type: "new_post";
  seq: number;
  tag?: string | null;
  post: Post;
  thread: ThreadCounters;
}

/** `thread:{id}`: a post's content changed. */
export interface PostEdited {
  type: "post_edited";
  seq: number;
  tag?: string | null;
  post_id: number;
  content: string;
  is_edited: boolean;
  last_edited_at: string | null;
}

/** `thread:{id}`: a post is gone (its replies stay, without their parent). */
export interface PostDeleted {
  type: "post_deleted";
  seq: number;
  tag?: string | null;
  post_id: number;
  thread: ThreadCounters;
}

/** `thread:{id}`: a post's like count changed. */
export interface PostLiked {
  type: "post_liked";
  seq: number;
  tag?: string | null;
  post_id: number;
  like_count: number;
}

/** `thread:{id}` and `category:{slug}`: the thread changed (title, lock, pin; on a category's
 *  topic also its counters). */
export interface ThreadUpdated {
  type: "thread_updated";
  seq: number;
  tag?: string | null;
  thread: Thread;
}

/** `category:{slug}`: a thread was started in the category, or moved into it. */
export interface ThreadCreated {
  type: "thread_created";
  seq: number;
  tag?: string | null;
  thread: Thread;
}

/** `category:{slug}`: a thread left the category (deleted, or moved out). */
export interface ThreadDeleted {
  type: "thread_deleted";
  seq: number;
  tag?: string | null;
  thread_id: number;
}

/** The durable messages of the forum's topics, as onMessage gets them (`topic` added). A thread's
 *  topic also has `user_typing` and `presence`. */
export type ForumMessage = (
  | NewPost
  | PostEdited
  | PostDeleted
  | PostLiked
  | ThreadUpdated
  | ThreadCreated
  | ThreadDeleted
) & { topic: string };
/** A row of a table its DBA made live (tracktalk.make_live) was inserted, or came into the topic
 *  (an UPDATE changed the column its topics are named by): `row` is the row, every column. */
export interface RowInserted {
  topic: string;
  type: "row_inserted";
  seq: number;
  row: Record<string, unknown>;
  tag?: string | null;
}

/** A row of a live table was updated and stays in the topic: `row` as it is now. */
export interface RowUpdated {
  topic: string;
  type: "row_updated";
  seq: number;
  row: Record<string, unknown>;
  tag?: string | null;
}

/** A row of a live table was deleted, or left the topic: `row` is its primary key (`{id: 7}`). */
export interface RowDeleted {
  topic: string;
  type: "row_deleted";
  seq: number;
  row: Record<string, unknown>;
  tag?: string | null;
}

/** The durable messages of a live table's topics (a kind of TopicMessage). */
export type LiveRowMessage = RowInserted | RowUpdated | RowDeleted;

// ---- client -> server ----------------------------------------------------------------------

/** The only message a client sends; use `feed.typing()`, which keeps to the server's limit. */
export interface Typing {
  type: "typing";
  is_typing: boolean;
}

export type ClientMessage = Typing;

/** /api/ws: subscribe to a topic, resuming after `since` (and its `tag`) if given. */
export interface Subscribe {
  type: "subscribe";
  topic: string;
  since?: number | null;
  tag?: string | null;
}

/** /api/ws: stop getting a topic's messages. */
export interface Unsubscribe {
  type: "unsubscribe";
  topic: string;
}

/** /api/ws: the user is typing in a topic (tracks and threads); use `subscription.typing()`. */
export interface TopicTyping {
  type: "typing";
  topic: string;
  is_typing: boolean;
}

export type TopicClientMessage = Subscribe | Unsubscribe | TopicTyping;

// ---- the client ----------------------------------------------------------------------------

/** The protocol version this client speaks (CHANGELOG.md); the server says its own in `connected`. */
export declare const PROTOCOL: 1;

/** WebSocket close codes the server uses (RFC 6455, and 4001 of its own). */
export declare const CloseCode: Readonly<{
  /** The client left (or a proxy ended the socket): resume. */
  NORMAL: 1000;
  /** The replica is shutting down: resume at once, another replica takes over. */
  GOING_AWAY: 1001;
  /** A frame that is not JSON text: a client bug; resume. */
  UNSUPPORTED: 1003;
  /** No close frame at all (network, killed replica); set by the browser, never sent. */
  ABNORMAL: 1006;
  /** Refused: bad token, track not found or no longer visible, too many sockets; the reason says. */
  POLICY: 1008;
  /** A frame over 4 KiB: a client bug; resume. */
  TOO_BIG: 1009;
  /** The server failed unforeseen (it is logged): resume after a pause. */
  INTERNAL: 1011;
  /** Too slow to keep up, or the database is unavailable: resume. */
  TRY_AGAIN: 1013;
  /** The access token expired: resume with a fresh one. */
  TOKEN_EXPIRED: 4001;
}>;

export type Status = "connecting" | "live" | "reconnecting" | "closed";

/** Open one socket for many topics (/api/ws) and keep it open until `close()`. */
export declare function openTopics(options?: TopicsOptions): Topics;


/** What goes with a status: `seq`, `resumed` and `anonymous` with "live"; why with the others. */
export interface StatusDetail {
  /** live: the track's latest seq, as the server said in `connected`. */
  seq?: number;
  /** live: true when this socket continues from a seq the caller has (a reconnect, or `since`);
   *  false on the first connection without `since`: load the comments with GET now. */
  resumed?: boolean;
  /** live: the socket has no token (read-only; typing is not sent). */
  anonymous?: boolean;
  /** live: the server's protocol version (`connected.protocol`); this client speaks PROTOCOL. */
  protocol?: number;
  /** reconnecting, closed: the close code of the socket that ended (4000: the client saw a gap). */
  code?: number;
  /** reconnecting, closed: the server's close reason. */
  reason?: string;
  /** reconnecting: milliseconds until the next attempt (0: at once). */
  delayMs?: number;
}

/** Why the feed stopped for good: 1008 (with the server's reason), or 4001 without a fresh token. */
export interface Refusal {
  code: number;
  reason: string;
}

export interface ConnectOptions {
  /** The track to watch. */
  trackId: string;
  /** The tracktalk server, e.g. "https://tracktalk.example/" (http(s) or ws(s)); relative ones
   *  resolve against the page. Default: the server this module was loaded from (the address
   *  of the module less its `client/…`). */
  baseUrl?: string | URL;
  /**
   * The access token for the next connection, called before each one. With `expired: true` the
   * last one expired (4001): return a fresh one, or null to stop (onRefused is called then).
   * Return null for no token: a read-only socket where the server allows anonymous sockets.
   */
  getToken?: (context: { expired: boolean }) => string | null | undefined | Promise<string | null | undefined>;
  /** A fixed token, when there is no getToken (it cannot be renewed: 4001 stops the feed). */
  token?: string | null;
  /** The last seq the caller already has (e.g. kept from an earlier feed): the first socket
   *  replays every durable event after it. Default: none, start from now. */
  since?: number | null;
  /** The tag of the event at `since` (its message's `tag`, or `lastTag` of an earlier feed): when
   *  the server's event at `since` is another (a failover lost it), the feed gets `resync`. */
  tag?: string | null;
  /** Every message but `connected` and `resync`: durable events exactly once and in seq order,
   *  ephemeral ones (typing, presence, mention, notification, error) as they come. */
  onMessage?: (message: FeedMessage) => void;
  /** Events were missed that cannot be replayed: reload the track's state with GET. */
  onResync?: (message: Resync) => void;
  /** The connection's state changed. */
  onStatus?: (status: Status, detail: StatusDetail) => void;
  /** The server refused the socket (1008), or a token expired and no fresh one came: the feed
   *  has stopped. `reason` is the server's, e.g. "invalid token", "track not found". */
  onRefused?: (refusal: Refusal) => void;
  /** Reconnect delays: the first ceiling and the largest (defaults 500 and 15000 ms); each
   *  attempt waits a random time between half the ceiling and the ceiling, which doubles. */
  backoff?: { firstMs?: number; maxMs?: number };
}

/** A track's live feed, open until `close()`. */
export interface Feed {
  /** The seq of the last durable event delivered (or `since`); null before the first `connected`. */
  readonly lastSeq: number | null;
  /** The tag of that event (or `tag`); null when unknown. Keep it with lastSeq, for `tag`. */
  readonly lastTag: string | null;
  readonly status: Status;
  /** The WebSocket in use, or null: for diagnostics only. */
  readonly socket: WebSocket | null;
  /** Whether the user is typing; call it freely (true on every keystroke, false on a pause or a
   *  send): at most one message a second goes out, `true` again every 2 s while the calls keep
   *  coming, and the final state always does. Ignored without a token. */
  typing(isTyping: boolean): void;
  /** Reconnect now if waiting to (done by itself when the browser comes back online or the tab is shown). */
  reconnectNow(): void;
  /** Close for good. */
  close(): void;
}

/** Open the live feed of one track. */
export declare function connect(options: ConnectOptions): Feed;

export interface TopicsOptions {
  /** The tracktalk server (as ConnectOptions.baseUrl). */
  baseUrl?: string | URL;
  /** As ConnectOptions.getToken. */
  getToken?: (context: { expired: boolean }) => string | null | undefined | Promise<string | null | undefined>;
  /** As ConnectOptions.token. */
  token?: string | null;
  /** The user's `mention` and `notification` messages: once per socket, whatever it subscribes to. */
  onUserMessage?: (message: Mention | NotificationMessage) => void;
  /** The socket's state changed (`seq` and `resumed` are per subscription: onSubscribed). */
  onStatus?: (status: Status, detail: StatusDetail) => void;
  /** The server refused the socket (1008), or a token expired and no fresh one came: it has stopped. */
  onRefused?: (refusal: Refusal) => void;
  /** As ConnectOptions.backoff. */
  backoff?: { firstMs?: number; maxMs?: number };
}

export interface SubscribeHandlers {
  /** The last seq the caller already has of this topic: the subscribe replays what follows it. */
  since?: number | null;
  /** The tag of the event at `since` (resync if the server's is another). */
  tag?: string | null;
  /** The topic's messages, `topic` included: durable events exactly once and in seq order across
   *  every reconnect, ephemeral ones (typing, presence) as they come. */
  onMessage?: (message: TopicMessage) => void;
  /** Each `subscribed` (after every reconnect too); `resumed`: it went on from a seq the caller has. */
  onSubscribed?: (message: Subscribed & { resumed: boolean }) => void;
  /** Events were missed that cannot be replayed: reload the topic's state with GET. */
  onResync?: (message: Resync & { topic: string }) => void;
  /** A subscribe was refused (the subscription ends, unless it came too fast: it is asked again
   *  after `retry_after`), or the server said an `error` about the topic. */
  onError?: (message: SubscribeError | ErrorMessage) => void;
  /** The user lost access to the topic (`reason`): the subscription has ended. */
  onUnsubscribed?: (message: Unsubscribed) => void;
}

/** One socket of many topics, open until `close()`. */
export interface Topics {
  readonly status: Status;
  readonly socket: WebSocket | null;
  /** The topics subscribed to (or being subscribed to). */
  readonly topics: string[];
  /** Subscribe to a topic (`track:{id}`, `thread:{id}`, `category:{slug}`, a live table's); at most
   *  100 per socket. Throws TypeError for a topic already subscribed to. */
  subscribe(topic: string, handlers?: SubscribeHandlers): Subscription;
  reconnectNow(): void;
  close(): void;
}

/** One topic of a Topics socket. */
export interface Subscription {
  readonly topic: string;
  /** The seq of the last durable event delivered (or `since`); null before the first `subscribed`. */
  readonly lastSeq: number | null;
  readonly lastTag: string | null;
  /** Whether the user is typing here (tracks and threads), kept to the server's limit as Feed.typing. */
  typing(isTyping: boolean): void;
  /** Stop getting the topic's messages, for good. */
  unsubscribe(): void;
}
