// The notification bell: the unread count (live on `notification` messages); opening it lists
// the notifications and marks the shown ones read.

import { api } from "./api.js";
import { agoElement, avatar, byId, h, replaceChildren, toast } from "./dom.js";

const VERBS = {
  comment: "commented on",
  reply: "replied to you on",
  mention: "mentioned you on",
  comment_like: "liked your comment on",
  post_reply: "replied to you in",
  post_mention: "mentioned you in",
};

export class Bell {
  constructor({ onOpenComment }) {
    this.onOpenComment = onOpenComment;
    this.button = byId("bell");
    this.badge = byId("bell-count");
    this.panel = byId("bell-panel");
    this.list = byId("bell-list");
    this.items = new Map(); // id -> notification
    this.unread = 0;
    this.button.addEventListener("click", () => this.toggle());
    document.addEventListener("click", (event) => this.clickOutside(event));
    document.addEventListener("keydown", (event) => event.key === "Escape" && this.close());
  }

  /** Show the bell for a signed-in user and load the count. */
  async start() {
    this.button.hidden = false;
    await this.reload().catch((error) => console.warn("notifications:", error));
  }

  async reload() {
    const page = await api("/api/notifications?limit=30");
    this.items = new Map(page.notifications.map((n) => [n.id, n]));
    this.setUnread(page.unread);
    this.render();
  }

  /** A `notification` message from the socket (idempotent by id). */
  add(notification) {
    if (this.items.has(notification.id)) return;
    this.items.set(notification.id, notification);
    if (!notification.read_at) this.setUnread(this.unread + 1);
    this.render();
    if (this.panel.hidden) this.button.classList.add("ring");
  }

  setUnread(count) {
    this.unread = Math.max(0, count);
    this.badge.textContent = this.unread > 99 ? "99+" : String(this.unread);
    this.badge.hidden = this.unread === 0;
    this.button.setAttribute("aria-label", `Notifications (${this.unread} unread)`);
  }

  toggle() {
    if (this.panel.hidden) this.open();
    else this.close();
  }

  async open() {
    this.panel.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.button.classList.remove("ring");
    await this.reload().catch((error) => toast(`Notifications: ${error.message}`, "error"));
    await this.markShownRead();
  }

  close() {
    this.panel.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }

  clickOutside(event) {
    if (!this.panel.hidden && !this.panel.contains(event.target) && !this.button.contains(event.target)) {
      this.close();
    }
  }

  /** Mark read exactly the unread ones on show (one arriving meanwhile stays unread). */
  async markShownRead() {
    const ids = [...this.items.values()].filter((n) => !n.read_at).map((n) => n.id);
    if (ids.length === 0) return;
    const answer = await api("/api/notifications/read", { method: "POST", body: { ids } });
    const now = new Date().toISOString();
    for (const id of ids) this.items.get(id).read_at = now;
    this.setUnread(answer.unread);
  }

  render() {
    const items = [...this.items.values()].sort((a, b) => b.id - a.id);
    if (items.length === 0) {
      replaceChildren(this.list, h("li", { class: "muted empty-note", text: "Nothing yet." }));
      return;
    }
    replaceChildren(this.list, items.map((n) => this.item(n)));
  }

  item(n) {
    return h(
      "li",
      { class: n.read_at ? "note" : "note unread" },
      h(
        "button",
        { type: "button", class: "note-button", onclick: () => this.pick(n) },
        avatar(n.actor_id, n.actor_username, "small"),
        h(
          "span",
          { class: "note-text" },
          h("strong", { text: n.actor_username }),
          ` ${VERBS[n.kind] || n.kind} `,
          h("strong", { text: n.track_title || n.thread_title }),
          n.excerpt ? h("span", { class: "excerpt", text: `“${n.excerpt}”` }) : null,
          h("span", { class: "muted" }, agoElement(n.created_at)),
        ),
      ),
    );
  }

  pick(n) {
    this.close();
    if (n.thread_id) location.href = `/forum/threads/${n.thread_id}${n.post_id ? `#post-${n.post_id}` : ""}`;
    else this.onOpenComment(n.track_id, n.comment_id);
  }
}
