// The comments of one track, keyed by id. Every change is idempotent: the same comment may come
// from the page's own HTTP answer, from the live socket, and from a reload, in any order.

const LIVE_FIELDS = [
  "content",
  "timestamp",
  "is_edited",
  "last_edited_at",
  "like_count",
  "pinned",
  "hearted",
  "deleted",
  "hidden",
  "held",
  "report_count",
];

export class CommentStore {
  constructor() {
    this.byId = new Map();
    this.deleted = new Set(); // ids deleted here: a late new_comment must not bring them back
    this.listeners = [];
  }

  /** listener({kind: "reset"|"upsert"|"remove", comment?, ids?}) */
  subscribe(listener) {
    this.listeners.push(listener);
  }

  emit(change) {
    for (const listener of this.listeners) listener(change);
  }

  /** Replace everything with a fresh list (a load or a resync). */
  reset(comments) {
    this.byId = new Map(comments.map((c) => [c.id, c]));
    this.emit({ kind: "reset" });
  }

  /**
   * Add or update a comment. `own` is true for the caller's HTTP answers, whose `user_has_liked`
   * is the caller's truth; a comment from the socket keeps what the page knew of it.
   */
  upsert(comment, { own = false } = {}) {
    if (this.deleted.has(comment.id)) return;
    const known = this.byId.get(comment.id);
    const liked = own ? Boolean(comment.user_has_liked) : Boolean(known && known.user_has_liked);
    const merged = { ...known, ...comment, user_has_liked: liked };
    this.byId.set(comment.id, merged);
    this.emit({ kind: "upsert", comment: merged });
  }

  /** Change some fields of a known comment (edits, like counts). */
  patch(id, fields) {
    const known = this.byId.get(id);
    if (!known) return;
    const changed = { ...known };
    for (const key of LIVE_FIELDS.concat("user_has_liked")) {
      if (key in fields) changed[key] = fields[key];
    }
    this.byId.set(id, changed);
    this.emit({ kind: "upsert", comment: changed });
  }

  /** A comment hidden from this page (hidden or held by a moderator): it goes, its replies stay; a
   *  later comment_restored brings it back. */
  hide(id) {
    if (!this.byId.delete(id)) return;
    this.emit({ kind: "reset" });
  }

  /** Only one pinned comment per track: the others are unpinned here. */
  pinOnly(id) {
    for (const comment of this.byId.values()) {
      if (comment.pinned && comment.id !== id) this.patch(comment.id, { pinned: false });
    }
    this.patch(id, { pinned: true });
  }

  /** Remove a comment and its replies. */
  remove(id) {
    const ids = [id, ...this.descendants(id)];
    for (const gone of ids) {
      this.byId.delete(gone);
      this.deleted.add(gone);
    }
    this.emit({ kind: "remove", ids });
  }

  descendants(id) {
    const found = [];
    for (const comment of this.byId.values()) {
      if (comment.parent_id === id) found.push(comment.id, ...this.descendants(comment.id));
    }
    return found;
  }

  get(id) {
    return this.byId.get(id);
  }

  /** All comments, in the order of the track (time, then id). */
  all() {
    return [...this.byId.values()].sort(byTrackTime);
  }

  get size() {
    return this.byId.size;
  }
}

/** Order of the list and the timeline: time in the track, then posting order. */
export function byTrackTime(a, b) {
  return a.timestamp - b.timestamp || a.id - b.id;
}
