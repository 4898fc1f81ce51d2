// tracktalk's browser client: live messages over a WebSocket, of one track (`connect`) or of many
// topics on one socket (`openTopics`).
//
// A dependency-free ES module; its types are in tracktalk.d.ts beside it. It keeps the seq and
// the tag of the last durable event it delivered (per topic) and resumes with `since` and `tag`
// after every drop, so that each durable event reaches the caller exactly once and in order,
// whichever replica the socket lands on (and a database failover that lost events it has gives
// `resync`). The protocol it speaks is in tracktalk's repository (docs/protocol.md), and as a
// schema at /schema/asyncapi.json.
//
//   import { connect, openTopics } from "https://tracktalk.example/client/tracktalk.js";
//   const feed = connect({
//     trackId: "sunrise",
//     getToken: async ({ expired }) => (expired ? await myApp.freshToken() : myApp.token),
//     onMessage: (message) => render(message),
//     onResync: () => reloadComments(),
//     onStatus: (status, detail) => showConnection(status, detail),
//     onRefused: ({ code, reason }) => showError(reason),
//   });
//   input.oninput = () => feed.typing(true);
//   feed.close();
//
//   // A page with a track, the bell and a forum thread: one socket.
//   const live = openTopics({ getToken, onUserMessage: (m) => bell(m), onStatus });
//   const track = live.subscribe("track:sunrise", { onMessage: render, onResync: reloadComments });
//   const thread = live.subscribe("thread:42", { onMessage: renderPost, onError: (e) => say(e.message) });
//   input.oninput = () => thread.typing(true);
//   thread.unsubscribe();

/** The protocol version this client speaks: `protocol` in `connected` (CHANGELOG.md). */
export const PROTOCOL = 1;

/** WebSocket close codes the server uses (RFC 6455, and 4001 of its own). */
export const CloseCode = Object.freeze({
  /** The client left (or a proxy ended the socket): resume. */
  NORMAL: 1000,
  /** The replica is shutting down: resume at once, another replica takes over. */
  GOING_AWAY: 1001,
  /** A frame that is not JSON text: a client bug; resume. */
  UNSUPPORTED: 1003,
  /** No close frame at all (network, killed replica); set by the browser, never sent. */
  ABNORMAL: 1006,
  /** Refused: bad token, track not found or no longer visible, too many sockets; the reason says. */
  POLICY: 1008,
  /** A frame over 4 KiB: a client bug; resume. */
  TOO_BIG: 1009,
  /** The server failed unforeseen (it is logged): resume after a pause. */
  INTERNAL: 1011,
  /** Too slow to keep up, or the database is unavailable: resume. */
  TRY_AGAIN: 1013,
  /** The access token expired: resume with a fresh one. */
  TOKEN_EXPIRED: 4001,
});

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** A connection that stayed live this long starts the backoff over. */
const STABLE_MS = 10000;
/** Live connections that end sooner than STABLE_MS, one after the other ("flaps"): after the
 *  second, a drop no longer resumes at once, and each one starts the backoff a step higher, up
 *  to this many (a server that accepts and then fails is knocked on every 7.5–15 s at most). */
const MAX_FLAPS = 6;
/** The server relays one typing message per second per user and track and drops the rest. */
const TYPING_GAP_MS = 1100;
/** While typing goes on, say so again this often (others forget a typist after a few seconds). */
const TYPING_REPEAT_MS = 2000;
/** The client's own close code when it saw a gap in the seqs and resumes to fill it. */
const CLOSE_GAP = 4000;
/** Drops after which the client resumes at once when the socket had been live (else: backoff). */
const RESUME_AT_ONCE = new Set([CloseCode.GOING_AWAY, CloseCode.TRY_AGAIN]);

/**
 * Open the live feed of one track and keep it open until `close()`.
 *
 * @param {import("./tracktalk").ConnectOptions} options
 * @returns {import("./tracktalk").Feed}
 */
export function connect(options) {
  return new Feed(options);
}

/**
 * Open one socket for many topics (`/api/ws`) and keep it open until `close()`; `subscribe` to
 * topics on it.
 *
 * @param {import("./tracktalk").TopicsOptions} options
 * @returns {import("./tracktalk").Topics}
 */
export function openTopics(options) {
  return new Topics(options || {});
}

/** The delay before reconnect attempt `attempt` (0, 1, 2…): doubling steps, "equal jitter". */
function backoffDelay(attempt, { firstMs = BACKOFF_FIRST_MS, maxMs = BACKOFF_MAX_MS } = {}) {
  const ceiling = Math.min(maxMs, firstMs * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** Where the server is: `baseUrl`, or by default where this module came from, less its
 *  `client/…` part (…/client/tracktalk.js and …/client/v1/tracktalk.js alike). */
function serverBase(baseUrl) {
  const here = globalThis.location ? globalThis.location.href : undefined;
  const base = new URL(baseUrl ?? moduleServer(), here);
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  return base;
}

function moduleServer() {
  const url = new URL(import.meta.url);
  const at = url.pathname.lastIndexOf("/client/");
  url.pathname = at >= 0 ? url.pathname.slice(0, at + 1) : new URL("../", url).pathname;
  url.search = "";
  url.hash = "";
  return url;
}

/** A socket's address: ws(s)://…/{path}?token=… */
function socketUrl(base, path, token) {
  const url = new URL(path, base);
  if (url.protocol === "https:") url.protocol = "wss:";
  else if (url.protocol === "http:") url.protocol = "ws:";
  if (token) url.searchParams.set("token", token);
  return url;
}

/** The track socket's address: ws(s)://…/api/ws/track/{trackId}?token=…&since=…&tag=… */
function trackUrl(base, trackId, token, since, tag) {
  const url = socketUrl(base, `api/ws/track/${encodeURIComponent(trackId)}`, token);
  if (since !== null) url.searchParams.set("since", String(since));
  if (since !== null && tag) url.searchParams.set("tag", tag);
  return url.href;
}

/** Check a `since` and `tag` given by the caller (`what` names the call). */
function checkResume(what, since, tag) {
  if (since !== null && !(Number.isSafeInteger(since) && since >= 0)) {
    throw new TypeError(`${what}: since must be a whole number >= 0 (the last seq you have), or null`);
  }
  if (tag !== null && !(typeof tag === "string" && /^[0-9a-f]{1,32}$/.test(tag) && since !== null)) {
    throw new TypeError(`${what}: tag must be the tag of the event at since (hex digits), or null`);
  }
}

/** An event's tag as the server gives it (16 hex digits), or null. */
function tagOf(message) {
  return typeof message.tag === "string" && /^[0-9a-f]{1,32}$/.test(message.tag) ? message.tag : null;
}

/** Call a caller's hook; an exception in it is reported, and the feed goes on. */
function callHook(hook, ...args) {
  if (typeof hook !== "function") return undefined;
  try {
    return hook(...args);
  } catch (error) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(error);
    else setTimeout(() => { throw error; });
    return undefined;
  }
}

/**
 * One WebSocket kept open until `close()`: the token before each connection (a fresh one after
 * 4001), the reconnects after each drop (at once after a live socket's 1001 or 1013, else after a
 * backoff that a stable connection starts over), a refusal (1008) that stops it, the status. The
 * track's Feed and the many topics' Topics are made of it; they say where to connect and what
 * the messages mean.
 */
class Live {
  #options;
  #base;
  #socket = null;
  #status = "connecting";
  #attempt = 0; // reconnect attempts since the server last answered (or a flap's head start)
  #flaps = 0; // live connections in a row that ended before STABLE_MS
  #timer = null; // the pending reconnect
  #opening = false; // waiting for getToken()
  #started = false; // the first socket was opened
  #liveAt = 0; // when the current socket got `connected` (0: not live)
  #renewed = false; // reconnected with a fresh token, not yet live again
  #anonymous = false; // the current socket has no token (read-only)
  #closed = false;
  #onWake = () => this.reconnectNow();

  constructor(options) {
    this.#options = options;
    this.#base = serverBase(options.baseUrl);
    if (globalThis.addEventListener) globalThis.addEventListener("online", this.#onWake);
    if (globalThis.document) globalThis.document.addEventListener("visibilitychange", this.#onWake);
  }

  /** "connecting" | "live" | "reconnecting" | "closed". */
  get status() {
    return this.#status;
  }

  /** The WebSocket in use, or null: for diagnostics (send through the client, never on it directly). */
  get socket() {
    return this.#socket;
  }

  /** Reconnect now if waiting to (the client does it itself when the browser comes back online). */
  reconnectNow() {
    if (this.#timer === null || this.#closed) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#open(false);
  }

  /** Close for good: no reconnect; the last hook called is onStatus("closed"). */
  close() {
    if (this.#closed) return;
    this.#shutDown();
    this.#setStatus("closed", { code: CloseCode.NORMAL, reason: "closed by the client" });
  }

  // ---- what the kinds of socket say ------------------------------------------------------

  /** The address of the next socket (`token` may be null). */
  url(token) {
    throw new Error(`url(${token ? "token" : "null"}) is the socket's own`);
  }

  /** A message of the current socket, parsed. */
  receive(message) {
    throw new Error(`receive(${message.type}) is the socket's own`);
  }

  /** A socket ended (dropped, or closed by the client): what it had in flight is done with. */
  ended() {}

  // ---- what they may use -----------------------------------------------------------------

  start() {
    this.#open(false);
  }

  /** The server's address. */
  get base() {
    return this.#base;
  }

  get closed() {
    return this.#closed;
  }

  /** The current socket has no token (read-only). */
  get anonymous() {
    return this.#anonymous;
  }

  /** Send a message on the current socket, if it is open; whether it was. */
  send(message) {
    const socket = this.#socket;
    if (this.#closed || !socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  /** The server said `connected`: the socket is live. */
  wentLive(detail) {
    this.#liveAt = Date.now();
    this.#renewed = false;
    this.#setStatus("live", { ...detail, anonymous: this.#anonymous });
  }

  /** Events were skipped (the server guarantees they are not): drop the socket, resume at once. */
  resumeNow() {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) socket.close(CLOSE_GAP, "gap in seq: resuming");
    this.ended();
    this.#afterDrop({ code: CLOSE_GAP, reason: "gap in seq" }, true);
  }

  // ---- connecting ------------------------------------------------------------------------

  /** Get a token (a fresh one when `expired`), then open a socket. */
  async #open(expired) {
    this.#timer = null;
    if (this.#closed || this.#opening) return;
    this.#opening = true;
    let token;
    try {
      token = await this.#token(expired);
    } catch (error) {
      this.#opening = false;
      if (expired) return this.#refuse({ code: CloseCode.TOKEN_EXPIRED, reason: `token expired; getToken failed: ${error}` });
      return this.#retry(this.#backoff(), { reason: `getToken failed: ${error}` });
    }
    this.#opening = false;
    if (this.#closed) return;
    if (expired && !token) return this.#refuse({ code: CloseCode.TOKEN_EXPIRED, reason: "token expired" });
    if (!this.#started) this.#setStatus("connecting", {}); // later attempts were announced as "reconnecting"
    this.#started = true;
    this.#anonymous = !token;
    const socket = new WebSocket(this.url(token));
    this.#socket = socket;
    socket.addEventListener("message", (event) => this.#message(socket, event));
    socket.addEventListener("close", (event) => this.#dropped(socket, event));
  }

  async #token(expired) {
    const { getToken, token } = this.#options;
    if (typeof getToken === "function") return (await getToken({ expired })) || null;
    return expired ? null : token || null;
  }

  #message(socket, event) {
    if (socket !== this.#socket || this.#closed) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      console.warn("tracktalk: a frame that is not JSON:", String(event.data).slice(0, 200));
      return;
    }
    if (message === null || typeof message !== "object" || typeof message.type !== "string") return;
    this.receive(message);
  }

  // ---- dropping --------------------------------------------------------------------------

  #dropped(socket, event) {
    if (socket !== this.#socket) return;
    this.#socket = null;
    if (this.#closed) return;
    this.ended();
    const why = { code: event.code, reason: event.reason || "" };
    const tokenExpired =
      event.code === CloseCode.TOKEN_EXPIRED || (event.code === CloseCode.POLICY && why.reason.startsWith("token expired"));
    const wasLive = this.#liveAt !== 0;
    if (tokenExpired) return this.#renew(why);
    if (event.code === CloseCode.POLICY) return this.#refuse(why);
    this.#afterDrop(why, wasLive && RESUME_AT_ONCE.has(event.code));
  }

  /** Reconnect: at once when `atOnce` (and the server has not been flapping), else after the
   *  backoff. A socket that was live shows the server answered just now: the attempts count
   *  afresh from there (from 0, or a step up for each short-lived socket before it), so that two
   *  quick restarts do not leave the client waiting 15 s for a server that is back. */
  #afterDrop(why, atOnce) {
    if (this.#liveAt !== 0) {
      const stable = Date.now() - this.#liveAt >= STABLE_MS;
      this.#flaps = stable ? 0 : Math.min(this.#flaps + 1, MAX_FLAPS);
      this.#attempt = Math.max(this.#flaps - 1, 0);
    }
    this.#liveAt = 0;
    if (atOnce && this.#flaps <= 2) {
      this.#attempt += 1;
      return this.#retry(0, why);
    }
    this.#retry(this.#backoff(), why);
  }

  #backoff() {
    const delay = backoffDelay(this.#attempt, this.#options.backoff);
    this.#attempt += 1;
    return delay;
  }

  #retry(delayMs, why) {
    this.#setStatus("reconnecting", { ...why, delayMs });
    this.#timer = setTimeout(() => this.#open(false), delayMs);
  }

  /** The token expired: ask for a fresh one, once; stop if there is none or it did not help. */
  #renew(why) {
    this.#liveAt = 0;
    if (this.#renewed) return this.#refuse(why);
    this.#renewed = true;
    this.#setStatus("reconnecting", { ...why, delayMs: 0 });
    this.#open(true);
  }

  #refuse(refusal) {
    this.#shutDown();
    callHook(this.#options.onRefused, refusal);
    this.#setStatus("closed", refusal);
  }

  #shutDown() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.ended();
    if (globalThis.removeEventListener) globalThis.removeEventListener("online", this.#onWake);
    if (globalThis.document) globalThis.document.removeEventListener("visibilitychange", this.#onWake);
    const socket = this.#socket;
    this.#socket = null;
    if (socket) socket.close(CloseCode.NORMAL, "client closed");
  }

  #setStatus(status, detail) {
    this.#status = status;
    callHook(this.#options.onStatus, status, detail);
  }
}

/**
 * Whether a user is typing, kept to the server's limit: at most one message a second, `true`
 * again every 2 s while the calls keep coming (others forget a silent typist), the final state
 * always. `send(isTyping)` sends it and says whether it could.
 */
class Typist {
  #send;
  #wanted = false;
  #sent = false;
  #changed = false; // the wanted state changed since the last send (true, false, true again)
  #sentAt = -Infinity;
  #timer = null;

  constructor(send) {
    this.#send = send;
  }

  set(isTyping) {
    const wanted = Boolean(isTyping);
    if (wanted !== this.#wanted) this.#changed = true;
    this.#wanted = wanted;
    this.flush();
  }

  /** A new socket: nothing was said on it yet. */
  forget() {
    this.#sent = false;
  }

  /** Say the wanted state if the user is typing (on a new socket). */
  resume() {
    if (this.#wanted) this.flush();
  }

  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Send the wanted state when it is due and the server's limit allows; later otherwise. */
  flush() {
    this.stop();
    const wanted = this.#wanted;
    const now = Date.now();
    // A true that went false and back before the false could be sent is due again: the others
    // forgot the typist meanwhile (their comment came, or their indicator timed out).
    const due = wanted !== this.#sent || (wanted && (this.#changed || now - this.#sentAt >= TYPING_REPEAT_MS));
    if (!due) return;
    const wait = this.#sentAt + TYPING_GAP_MS - now;
    if (wait > 0) {
      this.#timer = setTimeout(() => this.flush(), wait);
      return;
    }
    if (!this.#send(wanted)) return;
    this.#sent = wanted;
    this.#sentAt = now;
    this.#changed = false;
  }
}

/** The live feed of one track: the track socket. */
class Feed extends Live {
  #trackId;
  #onMessage;
  #onResync;
  #lastSeq;
  #lastTag; // the tag of the event #lastSeq (null: unknown)
  #typist = new Typist((isTyping) => !this.anonymous && this.send({ type: "typing", is_typing: isTyping }));

  constructor(options) {
    const { trackId, since = null, tag = null } = options || {};
    if (typeof trackId !== "string" || trackId === "") throw new TypeError("connect: trackId must be a non-empty string");
    checkResume("connect", since, tag);
    super(options);
    this.#trackId = trackId;
    this.#onMessage = options.onMessage;
    this.#onResync = options.onResync;
    this.#lastSeq = since;
    this.#lastTag = tag;
    this.start();
  }

  /** The seq of the last durable event delivered (or given as `since`); null before the first. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** The tag of that event (or given as `tag`); null when unknown. Keep it with lastSeq. */
  get lastTag() {
    return this.#lastTag;
  }

  /**
   * Say whether the user is typing. Call it as often as you like (e.g. true on every keystroke,
   * false when they stop or send): it sends at most one message per second, says `true` again
   * every 2 s while the calls keep coming (others forget a silent typist), and always sends the
   * final state. Ignored on a socket without a token (read-only).
   */
  typing(isTyping) {
    this.#typist.set(isTyping);
  }

  close() {
    this.#typist.stop();
    super.close();
  }

  url(token) {
    return trackUrl(this.base, this.#trackId, token, this.#lastSeq, this.#lastTag);
  }

  receive(message) {
    if (message.type === "connected") return this.#connected(message);
    if (message.type === "resync") {
      this.#lastSeq = message.seq;
      this.#lastTag = tagOf(message);
      return callHook(this.#onResync, message);
    }
    if (typeof message.seq === "number" && this.#lastSeq !== null) {
      if (message.seq <= this.#lastSeq) return; // delivered already (a replay overlapping live frames)
      if (message.seq > this.#lastSeq + 1) return this.#gap(message.seq);
    }
    if (typeof message.seq === "number") {
      this.#lastSeq = message.seq;
      this.#lastTag = tagOf(message);
    }
    callHook(this.#onMessage, message);
  }

  ended() {
    if (this.closed) this.#typist.stop();
  }

  #connected(message) {
    const resumed = this.#lastSeq !== null;
    if (!resumed) {
      this.#lastSeq = message.seq;
      this.#lastTag = tagOf(message);
    }
    this.#typist.forget();
    this.wentLive({ seq: message.seq, resumed, protocol: message.protocol });
    this.#typist.resume();
  }

  /** Events were skipped (the server guarantees they are not): resume from the last one seen. */
  #gap(seq) {
    console.warn(`tracktalk: events ${this.#lastSeq + 1}..${seq - 1} missing; resuming with since=${this.#lastSeq}`);
    this.resumeNow();
  }
}

/**
 * One socket for many topics (`/api/ws`): each subscription keeps the seq and tag of its last
 * durable event, and after every drop the new socket subscribes to each again with `since` and
 * `tag`. The user's own messages (`mention`, `notification`) come once, to `onUserMessage`.
 */
class Topics extends Live {
  #subscriptions = new Map(); // topic -> Subscription
  #onUserMessage;

  constructor(options) {
    super(options);
    this.#onUserMessage = options.onUserMessage;
    this.start();
  }

  /** The topics subscribed to (or being subscribed to). */
  get topics() {
    return [...this.#subscriptions.keys()];
  }

  /**
   * Subscribe to a topic: its messages go to `handlers.onMessage`, durable ones exactly once and
   * in seq order, across every reconnect. A topic already subscribed to is refused (TypeError):
   * keep the one subscription.
   *
   * @param {string} topic
   * @param {import("./tracktalk").SubscribeHandlers} handlers
   * @returns {import("./tracktalk").Subscription}
   */
  subscribe(topic, handlers = {}) {
    if (typeof topic !== "string" || topic === "") throw new TypeError("subscribe: topic must be a non-empty string");
    if (this.#subscriptions.has(topic)) throw new TypeError(`subscribe: already subscribed to ${topic}`);
    const { since = null, tag = null } = handlers;
    checkResume("subscribe", since, tag);
    const subscription = new Subscription(this, topic, handlers, since, tag);
    this.#subscriptions.set(topic, subscription);
    if (this.status === "live") this.ask(subscription);
    return subscription;
  }

  close() {
    for (const subscription of this.#subscriptions.values()) subscription.typist.stop();
    super.close();
  }

  url(token) {
    return socketUrl(this.base, "api/ws", token).href;
  }

  receive(message) {
    const subscription = typeof message.topic === "string" ? this.#subscriptions.get(message.topic) : undefined;
    switch (message.type) {
      case "connected":
        this.wentLive({ protocol: message.protocol });
        for (const each of this.#subscriptions.values()) this.ask(each);
        return;
      case "mention":
      case "notification":
        return callHook(this.#onUserMessage, message);
      case "error":
        if (subscription) return callHook(subscription.handlers.onError, message);
        console.warn("tracktalk:", message.message);
        return;
    }
    if (!subscription) return; // a topic given up on meanwhile
    switch (message.type) {
      case "subscribed":
        return subscription.subscribed(message);
      case "subscribe_error":
        return subscription.refused(message);
      case "unsubscribed":
        return subscription.dropped(message);
      case "resync":
        return subscription.resynced(message);
    }
    if (typeof message.seq === "number" && subscription.lastSeq !== null) {
      if (message.seq <= subscription.lastSeq) return; // delivered already
      if (message.seq > subscription.lastSeq + 1) {
        console.warn(`tracktalk: ${message.topic}: events ${subscription.lastSeq + 1}..${message.seq - 1} missing; resuming`);
        return this.resumeNow();
      }
    }
    subscription.deliver(message);
  }

  ended() {
    for (const subscription of this.#subscriptions.values()) {
      subscription.live = false;
      if (this.closed) subscription.typist.stop();
    }
  }

  /** Send the subscribe of a subscription (with its since and tag, once it has any). */
  ask(subscription) {
    const message = { type: "subscribe", topic: subscription.topic };
    if (subscription.lastSeq !== null) {
      message.since = subscription.lastSeq;
      if (subscription.lastTag) message.tag = subscription.lastTag;
    }
    subscription.live = false;
    this.send(message);
  }

  forget(subscription, tellServer) {
    if (this.#subscriptions.get(subscription.topic) !== subscription) return;
    this.#subscriptions.delete(subscription.topic);
    subscription.typist.stop();
    if (tellServer) this.send({ type: "unsubscribe", topic: subscription.topic });
  }
}

/** One topic of a Topics socket. */
class Subscription {
  #socket;
  #retry = null;
  lastSeq;
  lastTag;
  live = false; // the current socket said `subscribed`

  constructor(socket, topic, handlers, since, tag) {
    this.#socket = socket;
    this.topic = topic;
    this.handlers = handlers;
    this.lastSeq = since;
    this.lastTag = tag;
    this.typist = new Typist(
      (isTyping) => this.live && !socket.anonymous && socket.send({ type: "typing", topic, is_typing: isTyping }),
    );
  }

  /** Whether the user is typing in this topic (tracks and threads): as Feed.typing. */
  typing(isTyping) {
    this.typist.set(isTyping);
  }

  /** Stop getting the topic's messages (for good). */
  unsubscribe() {
    clearTimeout(this.#retry);
    this.#socket.forget(this, true);
  }

  subscribed(message) {
    const resumed = this.lastSeq !== null;
    if (!resumed) {
      this.lastSeq = message.seq;
      this.lastTag = tagOf(message);
    }
    this.live = true;
    this.typist.forget();
    callHook(this.handlers.onSubscribed, { ...message, resumed });
    this.typist.resume();
  }

  refused(message) {
    this.live = false;
    if (message.reason === "too many topics" && typeof message.retry_after === "number") {
      // Subscribing too fast: ask again when the server says one may.
      this.#retry = setTimeout(() => this.#socket.ask(this), message.retry_after * 1000);
      return callHook(this.handlers.onError, message);
    }
    this.#socket.forget(this, false);
    callHook(this.handlers.onError, message);
  }

  dropped(message) {
    this.live = false;
    if (!message.reason) return; // the answer to our own unsubscribe
    this.#socket.forget(this, false);
    callHook(this.handlers.onUnsubscribed, message);
  }

  resynced(message) {
    this.lastSeq = message.seq;
    this.lastTag = tagOf(message);
    callHook(this.handlers.onResync, message);
  }

  deliver(message) {
    if (typeof message.seq === "number") {
      this.lastSeq = message.seq;
      this.lastTag = tagOf(message);
    }
    callHook(this.handlers.onMessage, message);
  }
}
