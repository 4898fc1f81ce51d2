// The track page: player, timeline, comments, metrics, typing; live through the track's socket.

import { CloseCode, connect } from "/client/tracktalk.js";
import { allComments, api, ApiError } from "./api.js";
import { CommentList } from "./comments.js";
import { Moderation } from "./moderation.js";
import { Composer } from "./composer.js";
import { byId, formatTime, replaceChildren, h, toast, icon } from "./dom.js";
import { Player } from "./player.js";
import { refreshToken, session, signOut } from "./session.js";
import { CommentStore } from "./store.js";
import { Timeline } from "./timeline.js";
import { TypingIndicator, TypingSender } from "./typing.js";

const enc = encodeURIComponent;

/** Like/share buttons, the counters, and how many listen now. */
class Metrics {
  constructor(trackId, call) {
    this.trackId = trackId;
    this.call = call;
    this.liked = false;
    this.heard = false; // a `presence` came: the socket's count wins over an HTTP answer's
    this.likeButton = byId("track-like");
    this.likeButton.addEventListener("click", () => this.toggleLike().catch(ignore));
    byId("track-share").addEventListener("click", () => this.share().catch(ignore));
  }

  /** Counters from GET, an HTTP answer, or an event's counters (which have no user_has_liked). */
  set(m) {
    if ("user_has_liked" in m) this.liked = m.user_has_liked;
    if ("listening" in m && !this.heard) this.showListening(m.listening);
    byId("likes-count").textContent = String(m.likes);
    byId("shares-count").textContent = String(m.shares);
    byId("comments-count").textContent = String(m.comments);
    this.likeButton.classList.toggle("liked", this.liked);
    this.likeButton.setAttribute("aria-pressed", String(this.liked));
  }

  /** The track's `presence`: distinct people on it now, on every replica. */
  setListening(count) {
    this.heard = true;
    this.showListening(count);
  }

  showListening(count) {
    byId("listening").hidden = false;
    byId("listening-count").textContent = `${count} listening`;
  }

  async toggleLike() {
    const method = this.liked ? "DELETE" : "POST";
    this.set(await this.call(() => api(`/api/tracks/${enc(this.trackId)}/like`, { method })));
  }

  async share() {
    this.set(await this.call(() => api(`/api/tracks/${enc(this.trackId)}/share`, { method: "POST" })));
    const copied = await navigator.clipboard?.writeText(location.href).then(() => true, () => false);
    toast(copied ? "Link copied — thanks for sharing!" : "Thanks for sharing!");
  }
}

export class TrackPage {
  constructor(track, app) {
    this.track = track;
    this.app = app;
    this.store = new CommentStore();
    this.buffer = null; // durable messages that arrive while a reload is in flight
    this.loaded = false;
    this.live = null; // the track's feed (tracktalk.js)
    this.unloadHooked = false; // pagehide and pageshow are listened to
    this.player = new Player(track);
    this.timeline = new Timeline(this.player, { onPick: (c) => this.list.flash(c.id) });
    this.typingIn = new TypingIndicator(() => session.user);
    this.typingOut = new TypingSender(() => this.live);
    this.metrics = new Metrics(track.id, (fn) => this.call(fn));
    this.sort = "timestamp";
    this.list = new CommentList(byId("comments"), this.store, this.actions());
    this.moderation = new Moderation(track, this.store, (fn) => this.call(fn));
    byId("comment-sort").addEventListener("change", (event) => {
      this.sort = event.target.value;
      this.list.resort();
    });
    this.composer = new Composer(this.player, {
      post: (text, timestamp) => this.post(text, timestamp),
      typing: this.typingOut,
      needSignIn: (loud) => app.needSignIn(loud),
    });
    this.store.subscribe(() => this.commentsChanged());
  }

  /** What the comment list may do. */
  actions() {
    return {
      me: () => session.user,
      needSignIn: () => this.app.needSignIn(true),
      typing: this.typingOut,
      seek: (c) => this.player.seek(c.timestamp),
      like: (c) => this.like(c).catch(ignore),
      reply: (c, text) => this.post(text, c.timestamp, c.id),
      edit: (c, text) => this.edit(c, text),
      remove: (c) => this.remove(c).catch(ignore),
      moderator: () => this.moderator(),
      order: () => this.sort,
      pin: (c, on) => this.moderate(c, "pin", on).catch(ignore),
      heart: (c, on) => this.moderate(c, "heart", on).catch(ignore),
      hide: (c, on) => this.moderate(c, "hide", on).catch(ignore),
      approve: (c) => this.moderate(c, "approve", true).catch(ignore),
      report: (c, reason) => this.report(c, reason),
    };
  }

  /** The track's album creator, or the team: they pin, heart, hide, approve (the API decides). */
  moderator() {
    const me = session.user;
    return Boolean(me && (me.is_team || me.id === this.track.creator_id));
  }

  async start() {
    this.showHeader();
    this.moderation.show(this.moderator());
    this.moderation.settings(this.track);
    this.player.load().then((bytes) => this.timeline.loadWave(this.track, bytes));
    if (session.token) this.startLive();
    else await this.reload();
  }

  showHeader() {
    document.title = `${this.track.title} · tracktalk`;
    byId("track-title").textContent = this.track.title;
    byId("track-album").textContent = this.track.album_title;
    byId("track-private").hidden = !this.track.is_private;
    byId("time-total").textContent = formatTime(this.player.duration);
  }

  // ---- live --------------------------------------------------------------------------------

  /** Open the track's feed; again with a new token (resuming where the last one was). */
  startLive() {
    const since = this.live ? this.live.lastSeq : null;
    if (this.live) this.live.close();
    this.live = connect({
      trackId: this.track.id,
      since,
      getToken: ({ expired }) => this.token(expired),
      onMessage: (m) => this.receive(m),
      onResync: () => this.reload(),
      onStatus: (status, detail) => this.status(status, detail),
      onRefused: (refusal) => this.refused(refusal),
    });
    if (this.unloadHooked) return;
    this.unloadHooked = true;
    window.addEventListener("pagehide", () => this.live.close());
    window.addEventListener("pageshow", (event) => event.persisted && location.reload()); // from the bfcache
  }

  receive(m) {
    if (this.buffer && typeof m.seq === "number") return void this.buffer.push(m);
    this.handle(m);
  }

  status(status, detail) {
    if (status === "live") this.connected();
    if (status === "closed" && detail.code === CloseCode.NORMAL) return; // closed here, e.g. for a new token
    this.app.setConnection(status, statusText(status, detail));
  }

  connected() {
    if (!this.loaded) return this.reload(); // the first load follows the socket's seq: nothing missed
    this.app.bell.reload().catch(() => {}); // hints may have been missed; GET is the truth
  }

  handle(m) {
    const handler = MESSAGE_HANDLERS[m.type];
    if (handler) handler(this, m);
    else console.info("unhandled message", m.type);
  }

  /** The token for the feed's next socket; a fresh one (from the demo sign-in) when it expired. */
  async token(expired) {
    if (expired && !(await refreshToken())) return null;
    return session.token;
  }

  refused({ code, reason }) {
    if (code === CloseCode.TOKEN_EXPIRED || reason.startsWith("token expired")) {
      toast("Your session expired: sign in again.", "error", 10000);
    } else if (reason.startsWith("invalid token") && session.demoUsers) {
      signOut();
      this.app.renderWho();
      toast("Signed out: the token was not accepted. Pick a user.", "error", 10000);
    } else {
      toast(`Live updates are off: ${reason}`, "error", 10000);
    }
  }

  /** Load the comments and metrics anew; socket events meanwhile wait and are applied after. */
  async reload() {
    this.buffer = this.buffer || [];
    const list = byId("comments");
    list.setAttribute("aria-busy", "true"); // until it shows the server's list (tests wait on it too)
    try {
      const [comments, metrics] = await Promise.all([
        allComments(this.track.id),
        api(`/api/tracks/${enc(this.track.id)}/metrics`),
      ]);
      this.store.reset(comments);
      this.metrics.set(metrics);
      this.firstLoad();
    } catch (error) {
      toast(`Could not load the comments: ${error.message}`, "error");
    } finally {
      const waiting = this.buffer;
      this.buffer = null;
      waiting.forEach((m) => this.handle(m));
      list.setAttribute("aria-busy", "false");
    }
  }

  firstLoad() {
    this.moderation.reload();
    if (this.loaded) return;
    this.loaded = true;
    // A deep link: /tracks/{id}?comment={cid} (or #comment-{cid}) opens at the comment, highlighted.
    const wanted = new URLSearchParams(location.search).get("comment") || /^#comment-(\d+)$/.exec(location.hash)?.[1];
    if (wanted && /^\d+$/.test(wanted)) this.openAt(Number(wanted)).catch(ignore);
  }

  /** Show comment `id` (with its thread), scrolled to and highlighted; say so when it is gone. */
  async openAt(id) {
    if (!this.store.get(id)) {
      try {
        const thread = await api(`/api/comments/${id}`);
        for (const c of [thread.parent, thread.comment, ...thread.replies]) if (c) this.store.upsert(c);
      } catch {
        return void toast("That comment is no longer there.", "info");
      }
    }
    this.list.flash(id);
    this.list.nodes.get(id)?.root.classList.add("linked");
  }

  commentsChanged() {
    const all = this.store.all();
    this.timeline.setComments(all.filter((c) => !c.deleted)); // a tombstone has no place in the track
    if (all.length) this.player.fitDuration(all[all.length - 1].timestamp);
    const shown = all.filter((c) => !c.deleted).length; // a tombstone is no comment
    byId("comment-total").textContent = `${shown} ${shown === 1 ? "comment" : "comments"}`;
  }

  // ---- HTTP actions --------------------------------------------------------------------------

  /** Run an API call; on 401 get a fresh demo token and try once more; tell the user on failure. */
  async call(fn) {
    if (!this.app.needSignIn(true)) throw new Error("not signed in");
    try {
      return await fn();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && (await refreshToken())) return fn().catch(explain);
      return explain(error);
    }
  }

  async post(content, timestamp, parentId = null) {
    const path = `/api/tracks/${enc(this.track.id)}/comments`;
    const body = { content, timestamp, ...(parentId === null ? {} : { parent_id: parentId }) };
    const comment = await this.call(() => api(path, { method: "POST", body }));
    this.store.upsert(comment, { own: true });
    if (parentId === null) this.list.flash(comment.id);
  }

  async edit(c, content) {
    const comment = await this.call(() => api(`/api/comments/${c.id}`, { method: "PUT", body: { content } }));
    this.store.upsert(comment, { own: true });
  }

  async remove(c) {
    await this.call(() => api(`/api/comments/${c.id}`, { method: "DELETE" }));
    const hasReplies = this.store.descendants(c.id).length > 0;
    if (hasReplies) this.store.patch(c.id, { deleted: true, content: "", pinned: false });
    else this.store.remove(c.id);
  }

  /** Pin, heart, hide (on or off) or approve; the answer is the comment as moderators see it. */
  async moderate(c, action, on) {
    const method = on ? "POST" : "DELETE";
    const path = `/api/comments/${c.id}/${action}?track_id=${enc(this.track.id)}`;
    const comment = await this.call(() => api(path, { method }));
    if (action === "pin" && comment.pinned) this.store.pinOnly(comment.id);
    this.store.upsert(comment);
    this.moderation.reload();
  }

  async report(c, reason) {
    await this.call(() => api(`/api/comments/${c.id}/report`, { method: "POST", body: { reason } }));
    toast("Thanks: the artist's team will look at it.", "info");
  }

  async like(c) {
    const method = c.user_has_liked ? "DELETE" : "POST";
    const state = await this.call(() => api(`/api/comments/${c.id}/like`, { method }));
    this.store.patch(c.id, state);
  }
}

/** The connection indicator's tooltip: when the next attempt is, or why it stopped. */
function statusText(status, detail) {
  if (status === "reconnecting" && detail.delayMs > 0) return `in ${Math.ceil(detail.delayMs / 1000)} s`;
  if (status === "closed") return detail.reason || "";
  return "";
}

/** For a failure that explain() already showed. */
function ignore() {}

function explain(error) {
  const detail = error instanceof ApiError ? error.detail : "the server cannot be reached";
  toast(detail, "error");
  throw error;
}

/** What each server message does to the page; each is idempotent by comment id. */
const MESSAGE_HANDLERS = {
  new_comment: (page, m) => {
    page.store.upsert(m.comment);
    page.typingIn.posted(m.comment.user_id);
    page.metrics.set(m.metrics);
  },
  comment_edited: (page, m) => page.store.patch(m.comment_id, m),
  comment_deleted: (page, m) => {
    if (m.tombstone) page.store.patch(m.comment_id, { deleted: true, content: "", pinned: false });
    else page.store.remove(m.comment_id);
    page.metrics.set(m.metrics);
  },
  comment_liked: (page, m) => page.store.patch(m.comment_id, { like_count: m.like_count }),
  comment_pinned: (page, m) => (m.pinned ? page.store.pinOnly(m.comment_id) : page.store.patch(m.comment_id, m)),
  comment_hearted: (page, m) => page.store.patch(m.comment_id, { hearted: m.hearted }),
  comment_hidden: (page, m) => page.store.hide(m.comment_id),
  comment_moderated: (page, m) => {
    page.store.upsert(m.comment);
    page.moderation.reload();
  },
  comment_restored: (page, m) => page.store.upsert(m.comment),
  track_settings: (page, m) => page.moderation.settings(m),
  skip: (page, m) => m.metrics && page.metrics.set(m.metrics),
  track_metrics: (page, m) => page.metrics.set(m),
  user_typing: (page, m) => page.typingIn.update(m),
  mention: (page, m) => toast(`${m.from_user} mentioned you: “${(m.comment || m.post).content.slice(0, 80)}”`, "info", 8000),
  notification: (page, m) => page.app.bell.add(m.notification),
  presence: (page, m) => page.metrics.setListening(m.listening),
  error: (page, m) => console.warn("server:", m.message),
};

/** Show the track `trackId`, or say why not. */
export async function showTrack(trackId, app) {
  byId("track-view").hidden = false;
  let track;
  try {
    track = await api(`/api/tracks/${enc(trackId)}`);
  } catch (error) {
    return showMissing(error);
  }
  const page = new TrackPage(track, app);
  await page.start();
  return page;
}

function showMissing(error) {
  const text = error.status === 404 ? "This track does not exist, or it is private." : error.message;
  replaceChildren(
    byId("track-view"),
    h("div", { class: "missing" }, icon("lock", "icon big"), h("p", { text }), h("a", { href: "/" }, "All tracks")),
  );
  return null;
}
