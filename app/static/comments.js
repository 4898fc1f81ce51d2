// The comment list: replies nested under their parent, one DOM node per comment id, updated in
// place (so that an open reply or edit form survives live updates of other comments).

import { agoElement, avatar, formatTime, h, icon, replaceChildren, withMentions } from "./dom.js";
import { byTrackTime } from "./store.js";

/** The orders of the list's top-level comments: the pinned one first in every one. */
export const ORDERS = {
  timestamp: byTrackTime,
  newest: (a, b) => b.id - a.id,
  top: (a, b) => b.like_count - a.like_count || a.id - b.id,
};

function pinnedFirst(order) {
  return (a, b) => Number(Boolean(b.pinned)) - Number(Boolean(a.pinned)) || order(a, b);
}

const FLASH_MS = 2400;

export class CommentList {
  /**
   * @param {HTMLElement} root  the <ol> of top-level comments
   * @param {object} actions    {like, reply, edit, remove, seek, typing, me, moderator, order,
   *                             pin, heart, hide, approve, report}
   */
  constructor(root, store, actions) {
    this.root = root;
    this.store = store;
    this.actions = actions;
    this.nodes = new Map();
    store.subscribe((change) => this.apply(change));
  }

  apply(change) {
    if (change.kind === "reset") this.renderAll();
    else if (change.kind === "upsert") this.upsert(change.comment);
    else if (change.kind === "remove") change.ids.forEach((id) => this.removeNode(id));
    this.root.classList.toggle("empty", this.store.size === 0);
  }

  renderAll() {
    this.nodes.clear();
    this.root.replaceChildren();
    const byId = [...this.store.byId.values()].sort((a, b) => a.id - b.id); // parents first
    for (const comment of byId) this.upsert(comment);
  }

  upsert(comment) {
    const view = this.nodes.get(comment.id) || this.create(comment);
    this.fill(view, comment);
    this.place(view, comment);
  }

  create(comment) {
    const view = new CommentView(comment, this.actions);
    this.nodes.set(comment.id, view);
    return view;
  }

  fill(view, comment) {
    view.comment = comment;
    view.update(this.actions.me());
  }

  /** Put the node in its parent's replies (or the top list) at its sorted place. */
  place(view, comment) {
    const parent = comment.parent_id === null ? null : this.nodes.get(comment.parent_id);
    const container = parent ? parent.replies : this.root;
    view.root.classList.toggle("orphan", comment.parent_id !== null && !parent);
    const compare = parent ? (a, b) => a.id - b.id : pinnedFirst(ORDERS[this.actions.order()] || byTrackTime);
    const next = [...container.children].find(
      (node) => node !== view.root && compare(this.nodes.get(Number(node.dataset.id))?.comment || {}, comment) > 0,
    );
    if (view.root.parentNode === container && view.root.nextElementSibling === (next || null)) return;
    container.insertBefore(view.root, next || null);
  }

  removeNode(id) {
    const view = this.nodes.get(id);
    if (!view) return;
    view.root.remove();
    this.nodes.delete(id);
  }

  /** Place the top-level comments again (the order changed). */
  resort() {
    this.renderAll();
  }

  /** Scroll to a comment and make it glow for a moment. */
  flash(id) {
    const view = this.nodes.get(id);
    if (!view) return;
    view.root.scrollIntoView({ behavior: "smooth", block: "center" });
    view.root.classList.remove("flash");
    void view.root.offsetWidth; // restart the animation
    view.root.classList.add("flash");
    setTimeout(() => view.root.classList.remove("flash"), FLASH_MS);
  }
}

/** One comment's node. */
class CommentView {
  constructor(comment, actions) {
    this.comment = comment;
    this.actions = actions;
    this.form = null;
    this.build();
  }

  build() {
    const c = this.comment;
    this.author = h("strong", { class: "author" });
    this.badge = h("span", { class: "badge" });
    this.at = h("button", { class: "at link", type: "button", onclick: () => this.actions.seek(this.comment) });
    this.when = h("span", { class: "when" });
    this.edited = h("span", { class: "edited", text: "edited" });
    this.pinMark = h("span", { class: "pill pinned-mark", text: "pinned" });
    this.heartMark = h("span", { class: "artist-heart", title: "The artist's heart" }, icon("heart"), "by the artist");
    this.modMark = h("span", { class: "pill mod-mark" });
    this.content = h("p", { class: "content" });
    this.likeCount = h("span", { class: "like-count" });
    this.likeButton = h(
      "button",
      { class: "like", type: "button", onclick: () => this.actions.like(this.comment) },
      icon("heart"),
      this.likeCount,
    );
    this.buttons = h("span", { class: "own" });
    this.slot = h("div", { class: "slot" });
    this.replies = h("ol", { class: "replies" });
    this.root = h(
      "li",
      { class: "comment", id: `comment-${c.id}`, dataset: { id: c.id } },
      h(
        "div",
        { class: "comment-row" },
        avatar(c.user_id, c.username),
        h(
          "div",
          { class: "comment-main" },
          h("div", { class: "meta" }, this.pinMark, this.author, this.badge, this.at, this.when, this.edited, this.modMark),
          this.content,
          h("div", { class: "actions" }, this.likeButton, this.replyButton(), this.heartMark, this.buttons),
          this.slot,
        ),
      ),
      this.replies,
    );
  }

  replyButton() {
    return h("button", { class: "reply link", type: "button", onclick: () => this.openReply() }, "Reply");
  }

  update(me) {
    const c = this.comment;
    this.root.dataset.ts = String(c.timestamp);
    this.root.classList.toggle("mine", Boolean(me && me.id === c.user_id));
    this.author.textContent = c.username;
    this.badge.textContent = c.author_is_creator ? "artist" : c.author_is_team ? "team" : "";
    this.badge.hidden = !this.badge.textContent;
    this.at.textContent = `at ${formatTime(c.timestamp)}`;
    this.at.title = `Play from ${formatTime(c.timestamp)}`;
    replaceChildren(this.when, agoElement(c.created_at));
    this.edited.hidden = !c.is_edited;
    if (c.last_edited_at) this.edited.title = `edited ${new Date(c.last_edited_at).toLocaleString()}`;
    replaceChildren(this.content, c.deleted ? "This comment was deleted." : withMentions(c.content));
    this.root.classList.toggle("tombstone", Boolean(c.deleted));
    this.root.classList.toggle("pinned", Boolean(c.pinned));
    this.pinMark.hidden = !c.pinned;
    this.heartMark.hidden = !c.hearted;
    // Hidden and held are for the moderators' eyes: the author is not told (issue 20).
    const moderator = this.actions.moderator();
    const marks = moderator
      ? [c.hidden && "hidden", c.held && "held for review", c.report_count > 0 && `${c.report_count} reported`]
      : [];
    this.modMark.textContent = marks.filter(Boolean).join(" · ");
    this.modMark.hidden = !this.modMark.textContent;
    this.root.classList.toggle("moderated", Boolean(moderator && (c.hidden || c.held)));
    this.likeCount.textContent = String(c.like_count);
    this.likeButton.classList.toggle("liked", c.user_has_liked);
    this.likeButton.setAttribute("aria-pressed", String(c.user_has_liked));
    this.likeButton.setAttribute("aria-label", c.user_has_liked ? "Unlike" : "Like");
    this.likeButton.disabled = !me || Boolean(c.deleted);
    this.likeButton.hidden = Boolean(c.deleted);
    this.updateOwnButtons(me);
  }

  updateOwnButtons(me) {
    const c = this.comment;
    if (c.deleted) return void replaceChildren(this.buttons);
    const mine = Boolean(me && me.id === c.user_id);
    const moderator = this.actions.moderator();
    const mayDelete = mine || moderator;
    const act = (cls, label, fn) => h("button", { class: `${cls} link`, type: "button", onclick: fn }, label);
    replaceChildren(
      this.buttons,
      mine && act("edit", "Edit", () => this.openEdit()),
      mayDelete && act("delete", "Delete", () => this.confirmDelete()),
      moderator && act("pin", c.pinned ? "Unpin" : "Pin", () => this.actions.pin(c, !c.pinned)),
      moderator && act("heart", c.hearted ? "Unheart" : "Heart", () => this.actions.heart(c, !c.hearted)),
      moderator && act("hide", c.hidden ? "Unhide" : "Hide", () => this.actions.hide(c, !c.hidden)),
      moderator && (c.held || c.report_count > 0) && act("approve", "Approve", () => this.actions.approve(c)),
      me && !mine && !moderator && act("report", "Report", () => this.openReport()),
    );
  }

  openReport() {
    this.openForm({
      kind: "report",
      placeholder: "Why report this comment?",
      initial: "",
      label: "Report",
      submit: (text) => this.actions.report(this.comment, text),
    });
  }

  openReply() {
    if (!this.actions.me()) return this.actions.needSignIn();
    this.openForm({
      kind: "reply",
      placeholder: `Reply to ${this.comment.username}…`,
      initial: "",
      label: "Reply",
      submit: (text) => this.actions.reply(this.comment, text),
    });
  }

  openEdit() {
    this.openForm({
      kind: "edit",
      placeholder: "Edit your comment",
      initial: this.comment.content,
      label: "Save",
      submit: (text) => this.actions.edit(this.comment, text),
    });
  }

  openForm(spec) {
    this.closeForm();
    this.form = textForm(spec, this.actions.typing, () => this.closeForm());
    this.root.classList.toggle("editing", spec.kind === "edit");
    this.slot.append(this.form.root);
    this.form.input.focus();
  }

  closeForm() {
    if (this.form) this.form.root.remove();
    this.form = null;
    this.root.classList.remove("editing");
  }

  confirmDelete() {
    if (this.form && this.form.kind === "confirm") return;
    this.closeForm();
    const root = h(
      "div",
      { class: "confirm" },
      h("span", { text: this.comment.parent_id === null ? "Delete this comment? Its replies stay." : "Delete this reply?" }),
      h("button", { class: "danger", type: "button", onclick: () => this.actions.remove(this.comment) }, "Delete"),
      h("button", { class: "link", type: "button", onclick: () => this.closeForm() }, "Cancel"),
    );
    this.form = { root, kind: "confirm" };
    this.slot.append(root);
  }
}

/**
 * A small form with a textarea, used for replies and edits.
 * spec: {kind, placeholder, initial, label, submit(text) -> Promise}
 */
export function textForm(spec, typing, close) {
  const input = h("textarea", { rows: 2, maxlength: 5000, placeholder: spec.placeholder, "aria-label": spec.placeholder });
  input.value = spec.initial;
  const send = h("button", { type: "submit", class: "primary" }, spec.label);
  const root = h(
    "form",
    { class: `inline-form ${spec.kind}` },
    input,
    h("div", { class: "form-buttons" }, h("button", { type: "button", class: "link", onclick: close }, "Cancel"), send),
  );
  input.addEventListener("input", () => typing.input());
  input.addEventListener("keydown", (event) => submitOnEnter(event, root));
  root.addEventListener("submit", (event) => {
    event.preventDefault();
    submitText(input, send, spec.submit, close, typing);
  });
  return { root, input, kind: spec.kind };
}

/** Enter sends, Shift+Enter makes a new line. */
export function submitOnEnter(event, form) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
}

/** Send the text once; keep the form when the API refuses it. */
export async function submitText(input, button, submit, done, typing) {
  const text = input.value.trim();
  if (!text || button.disabled) return;
  button.disabled = true;
  try {
    await submit(text);
    typing.stop();
    done();
  } catch {
    // the page already told the user why
  } finally {
    button.disabled = false;
  }
}
