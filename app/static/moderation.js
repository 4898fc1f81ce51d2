// The track's moderation on its page, for its album's creator and the team: the settings (comments
// on or off, slow mode) and the queue of held and reported comments. Everyone sees when comments
// are off. The API decides who may; this only shows the controls to those who can use them.

import { api } from "./api.js";
import { byId, formatTime, h, replaceChildren, toast } from "./dom.js";

const enc = encodeURIComponent;

export class Moderation {
  constructor(track, store, call) {
    this.track = track;
    this.store = store;
    this.call = call;
    this.moderator = false;
    this.loading = null;
    byId("track-settings").addEventListener("submit", (event) => {
      event.preventDefault();
      this.save().catch(() => {});
    });
  }

  show(moderator) {
    this.moderator = moderator;
    byId("moderation").hidden = !moderator;
    byId("moderation").open = moderator; // the settings and the queue at hand; the summary folds them
  }

  /** The track's settings, from the track or a `track_settings` message. */
  settings(s) {
    byId("comments-off").hidden = s.comments_enabled !== false;
    byId("comments-enabled").checked = s.comments_enabled !== false;
    byId("slow-mode").value = String(s.slow_mode_seconds || 0);
  }

  async save() {
    const body = {
      comments_enabled: byId("comments-enabled").checked,
      slow_mode_seconds: Number(byId("slow-mode").value || 0),
    };
    const state = await this.call(() => api(`/api/tracks/${enc(this.track.id)}/settings`, { method: "PUT", body }));
    this.settings(state);
    toast("Settings saved.", "info");
  }

  /** Load the queue again (soon; one load at a time). */
  reload() {
    if (!this.moderator || this.loading) return;
    this.loading = api(`/api/moderation/queue?track_id=${enc(this.track.id)}`)
      .then((items) => this.render(items))
      .catch(() => {})
      .finally(() => {
        this.loading = null;
      });
  }

  render(items) {
    byId("queue-empty").hidden = items.length > 0;
    replaceChildren(
      byId("queue"),
      ...items.map(({ comment, reports }) =>
        h(
          "li",
          { class: "queue-item", dataset: { id: comment.id } },
          h("div", { class: "meta" }, h("strong", { text: comment.username }), ` at ${formatTime(comment.timestamp)}`,
            comment.held ? h("span", { class: "pill", text: "held" }) : null),
          h("p", { class: "content", text: comment.content }),
          h("ul", { class: "reports" }, ...reports.map((r) => h("li", { text: `${r.username}: ${r.reason}` }))),
          h(
            "div",
            { class: "actions" },
            h("button", { class: "primary approve", type: "button", onclick: () => this.act(comment, "approve") }, "Approve"),
            h("button", { class: "danger hide", type: "button", onclick: () => this.act(comment, "hide") }, "Hide"),
          ),
        ),
      ),
    );
  }

  async act(comment, action) {
    const path = `/api/comments/${comment.id}/${action}?track_id=${enc(this.track.id)}`;
    const answer = await this.call(() => api(path, { method: "POST" })).catch(() => null);
    if (answer) this.store.upsert(answer);
    this.reload();
  }
}
