// The forum: /forum lists the categories, /forum/{slug} a category's threads (live: new threads,
// new posts and changes move them), /forum/threads/{id} a thread's posts (live: new posts, edits,
// likes, deletions, "… is typing", "N here"). A live page holds ONE socket (the client's
// openTopics): its topic (`category:{slug}` or `thread:{id}`), and the user's mentions and
// notifications for the bell, whatever the page shows.

import { CloseCode, openTopics } from "/client/tracktalk.js";
import { api, ApiError } from "./api.js";
import { submitOnEnter, submitText, textForm } from "./comments.js";
import { agoElement, avatar, byId, h, icon, replaceChildren, toast, withMentions } from "./dom.js";
import { refreshToken, session, signOut } from "./session.js";
import { TypingIndicator, TypingSender } from "./typing.js";

const enc = encodeURIComponent;
const FLASH_MS = 2400;

function ignore() {}

function explain(error) {
  const detail = error instanceof ApiError ? error.detail : "the server cannot be reached";
  toast(detail, "error");
  throw error;
}

function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

function isTeam() {
  return Boolean(session.user && session.user.is_team);
}

/** The forum's heading: where the page is, from the forum down. */
function crumbs(...parts) {
  return h(
    "nav",
    { class: "crumbs", "aria-label": "Where you are" },
    h("a", { href: "/forum" }, "Forum"),
    parts.flatMap((part) => [h("span", { class: "sep", "aria-hidden": "true", text: "›" }), part]),
  );
}

function view() {
  const node = byId("forum-view");
  node.hidden = false;
  return node;
}

function showMissing(error, what) {
  const text = error.status === 404 ? `This ${what} does not exist, or it is for the team only.` : error.message;
  replaceChildren(
    view(),
    crumbs(),
    h("div", { class: "missing" }, icon("lock", "icon big"), h("p", { text }), h("a", { href: "/forum" }, "All categories")),
  );
  return null;
}

// ---- /forum ------------------------------------------------------------------------------------

/** The categories the user may see. */
export async function showForum() {
  document.title = "Forum · tracktalk";
  const root = view();
  let categories;
  try {
    categories = await api("/api/forum/categories");
  } catch (error) {
    replaceChildren(root, h("p", { class: "muted", text: `Could not load the forum: ${error.message}` }));
    return null;
  }
  replaceChildren(
    root,
    h("h1", { class: "page-title", text: "Forum" }),
    h("p", { class: "muted lead", text: "Talk about the music, away from the timeline." }),
    h(
      "ol",
      { class: "cards", id: "category-list" },
      categories.map((c) =>
        h(
          "li",
          { class: "card category", dataset: { slug: c.slug } },
          h(
            "a",
            { href: `/forum/${enc(c.slug)}`, class: "card-link" },
            h(
              "span",
              { class: "card-text" },
              h("strong", { class: "card-title" }, c.title, c.is_private ? h("span", { class: "pill private" }, icon("lock"), "team") : null),
              h("span", { class: "muted", text: c.description }),
            ),
            h("span", { class: "card-counts" }, h("span", { class: "thread-count", text: plural(c.thread_count, "thread") })),
          ),
        ),
      ),
    ),
    categories.length ? null : h("p", { class: "muted", text: "No categories yet." }),
  );
  return null;
}

// ---- a live page: one socket, its topic -----------------------------------------------------------

/**
 * What the category and thread pages share: the socket (openTopics) with the page's one topic,
 * loading with GET when the topic is first subscribed (and after a resync), durable messages that
 * arrive meanwhile held and applied after; the connection indicator, the bell's messages, the
 * token's renewal, calls to the API.
 */
class LivePage {
  constructor(app, topic) {
    this.app = app;
    this.topic = topic;
    this.live = null; // the socket (tracktalk.js Topics)
    this.subscription = null;
    this.loaded = false;
    this.buffer = null; // durable messages that arrive while a load is in flight
  }

  async start() {
    if (session.token) this.startLive();
    else await this.reload();
  }

  /** Open the socket; again with a new token (window.tracktalk.setToken), resuming the topic. */
  startLive() {
    const since = this.subscription ? this.subscription.lastSeq : null;
    const tag = this.subscription ? this.subscription.lastTag : null;
    if (this.live) this.live.close();
    this.live = openTopics({
      getToken: async ({ expired }) => (expired && !(await refreshToken()) ? null : session.token),
      onUserMessage: (m) => this.userMessage(m),
      onStatus: (status, detail) => this.status(status, detail),
      onRefused: (refusal) => this.refused(refusal),
    });
    this.subscription = this.live.subscribe(this.topic, {
      since,
      tag: since === null ? null : tag,
      onMessage: (m) => this.receive(m),
      onSubscribed: () => this.subscribed(),
      onResync: () => this.reload(),
      onError: (m) => toast(m.message, "error", 10000),
      onUnsubscribed: (m) => this.lost(m),
    });
    window.addEventListener("pagehide", () => this.live.close(), { once: true });
  }

  userMessage(m) {
    if (m.type === "notification") this.app.bell.add(m.notification);
    else if (m.type === "mention") {
      const text = (m.post || m.comment || {}).content || "";
      toast(`${m.from_user} mentioned you: “${text.slice(0, 80)}”`, "info", 8000);
    }
  }

  status(status, detail) {
    if (status === "closed" && detail.code === CloseCode.NORMAL) return; // closed here
    this.app.setConnection(status, status === "closed" ? detail.reason || "" : "");
    if (status === "live" && this.loaded) this.app.bell.reload().catch(ignore); // hints may have been missed
  }

  subscribed() {
    if (!this.loaded) this.reload(); // the first load follows the topic's seq: nothing missed
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

  lost(m) {
    this.app.setConnection("closed", "no longer visible to you");
    toast(m.reason === "forbidden" ? "You may no longer see this." : "This is gone, or no longer visible to you.", "error", 10000);
  }

  receive(m) {
    if (this.buffer && typeof m.seq === "number") return void this.buffer.push(m);
    this.handle(m);
  }

  /** Load the page's state anew; socket events meanwhile wait and are applied after. */
  async reload() {
    this.buffer = this.buffer || [];
    try {
      await this.load();
      this.loaded = true;
    } catch (error) {
      toast(`Could not load: ${error.message}`, "error");
    } finally {
      const waiting = this.buffer;
      this.buffer = null;
      waiting.forEach((m) => this.handle(m));
    }
  }

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
}

// ---- /forum/{slug} ---------------------------------------------------------------------------------

/** Pinned first, then the newest post first, then the newest thread. */
function threadOrder(a, b) {
  return (
    Number(b.is_pinned) - Number(a.is_pinned) ||
    Date.parse(b.last_post_at) - Date.parse(a.last_post_at) ||
    b.id - a.id
  );
}

export class CategoryPage extends LivePage {
  constructor(category, app) {
    super(app, `category:${category.slug}`);
    this.category = category;
    this.threads = new Map();
    this.list = h("ol", { class: "threads", id: "thread-list" });
    this.empty = h("p", { class: "muted empty-threads", text: "No threads yet: start one." });
  }

  async start() {
    document.title = `${this.category.title} · Forum · tracktalk`;
    replaceChildren(
      view(),
      crumbs(h("span", { text: this.category.title })),
      h(
        "h1",
        { class: "page-title" },
        this.category.title,
        this.category.is_private ? h("span", { class: "pill private" }, icon("lock"), "team") : null,
      ),
      h("p", { class: "muted lead", text: this.category.description }),
      this.newThreadForm(),
      this.list,
      this.empty,
    );
    await super.start();
  }

  newThreadForm() {
    const title = h("input", { id: "new-thread-title", maxlength: 200, placeholder: "Start a thread: its title", "aria-label": "Title of a new thread" });
    const content = h("textarea", { id: "new-thread-content", rows: 3, maxlength: 5000, placeholder: "What do you want to say?", "aria-label": "First post of the new thread" });
    const send = h("button", { id: "new-thread-send", type: "submit", class: "primary" }, "Start thread");
    const form = h("form", { class: "new-thread", autocomplete: "off" }, title, content, h("div", { class: "form-buttons" }, send));
    title.addEventListener("focus", () => this.app.needSignIn(false));
    content.addEventListener("keydown", (event) => submitOnEnter(event, form));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!this.app.needSignIn(true)) return;
      if (!title.value.trim()) return void title.focus();
      const done = () => {
        title.value = "";
        content.value = "";
      };
      submitText(content, send, (text) => this.startThread(title.value.trim(), text), done, { stop: ignore });
    });
    return form;
  }

  async startThread(title, content) {
    const path = `/api/forum/categories/${enc(this.category.slug)}/threads`;
    const thread = await this.call(() => api(path, { method: "POST", body: { title, content } }));
    this.upsert(thread);
    location.href = `/forum/threads/${thread.id}`;
  }

  async load() {
    const threads = await api(`/api/forum/categories/${enc(this.category.slug)}/threads?limit=200`);
    this.threads = new Map(threads.map((t) => [t.id, t]));
    this.render();
  }

  handle(m) {
    if (m.type === "thread_created" || m.type === "thread_updated") this.upsert(m.thread);
    else if (m.type === "thread_deleted") this.remove(m.thread_id);
  }

  upsert(thread) {
    const known = this.threads.get(thread.id);
    this.threads.set(thread.id, { ...known, ...thread });
    this.render();
  }

  remove(id) {
    this.threads.delete(id);
    this.render();
  }

  render() {
    const threads = [...this.threads.values()].sort(threadOrder);
    replaceChildren(this.list, threads.map((t) => this.row(t)));
    this.empty.hidden = threads.length > 0;
  }

  row(t) {
    return h(
      "li",
      { class: `thread${t.is_pinned ? " pinned" : ""}`, id: `thread-${t.id}`, dataset: { id: t.id } },
      avatar(t.user_id, t.username),
      h(
        "div",
        { class: "thread-main" },
        h(
          "a",
          { class: "thread-title", href: `/forum/threads/${t.id}` },
          t.is_pinned ? h("span", { class: "pill pinned-pill", text: "pinned" }) : null,
          t.is_locked ? h("span", { class: "pill locked-pill" }, icon("lock"), "locked") : null,
          h("span", { class: "title-text", text: t.title }),
        ),
        h(
          "div",
          { class: "meta" },
          h("span", { text: `by ${t.username}` }),
          h("span", { class: "post-count", text: plural(t.post_count, "post") }),
          h("span", {}, "last post ", agoElement(t.last_post_at)),
        ),
      ),
    );
  }
}

/** Show the category `slug` (live), or say why not. */
export async function showCategory(slug, app) {
  let categories;
  try {
    categories = await api("/api/forum/categories");
  } catch (error) {
    return showMissing(error, "category");
  }
  const category = categories.find((c) => c.slug === slug);
  if (!category) return showMissing({ status: 404 }, "category");
  const page = new CategoryPage(category, app);
  await page.start();
  return page;
}

// ---- /forum/threads/{id} ---------------------------------------------------------------------------

export class ThreadPage extends LivePage {
  constructor(thread, categoryTitle, app) {
    super(app, `thread:${thread.id}`);
    this.thread = thread;
    this.categoryTitle = categoryTitle;
    this.posts = new Map(); // id -> post
    this.views = new Map(); // id -> PostView
    this.deleted = new Set(); // a late new_post must not bring a deleted post back
    this.list = h("ol", { class: "posts", id: "posts" });
    this.typingNode = h("div", { class: "typing", id: "forum-typing", "aria-live": "polite" });
    this.typingIn = new TypingIndicator(() => session.user, this.typingNode);
    this.typingOut = new TypingSender(() => this.subscription);
    this.here = h("span", { id: "here", class: "metric static listening", title: "People on this thread now", hidden: true }, h("span", { class: "live-dot", "aria-hidden": "true" }), h("span", { id: "here-count" }));
    this.header = h("div", { class: "thread-head" });
  }

  async start() {
    replaceChildren(
      view(),
      crumbs(h("a", { href: `/forum/${enc(this.thread.category_slug)}`, text: this.categoryTitle })),
      this.header,
      this.list,
      this.composer(),
      this.typingNode,
    );
    this.renderHeader();
    await super.start();
  }

  /** What a post's buttons may do. */
  actions() {
    return {
      me: () => session.user,
      needSignIn: () => this.app.needSignIn(true),
      typing: this.typingOut,
      like: (p) => this.like(p).catch(ignore),
      reply: (p, text) => this.post(text, p.id),
      edit: (p, text) => this.edit(p, text),
      remove: (p) => this.remove(p).catch(ignore),
      parent: (id) => this.posts.get(id),
      flash: (id) => this.flash(id),
    };
  }

  renderHeader() {
    const t = this.thread;
    document.title = `${t.title} · Forum · tracktalk`;
    const me = session.user;
    const team = isTeam();
    const mine = Boolean(me && me.id === t.user_id);
    replaceChildren(
      this.header,
      h(
        "div",
        { class: "thread-heading" },
        h("h1", { class: "page-title", id: "thread-title", text: t.title }),
        h(
          "div",
          { class: "meta" },
          t.is_pinned ? h("span", { class: "pill pinned-pill", id: "thread-pinned", text: "pinned" }) : null,
          t.is_locked ? h("span", { class: "pill locked-pill", id: "thread-locked" }, icon("lock"), "locked") : null,
          h("span", { text: `started by ${t.username}` }),
          h("span", { id: "thread-post-count", text: plural(t.post_count, "post") }),
          this.here,
        ),
      ),
      h(
        "div",
        { class: "thread-tools" },
        (mine && !t.is_locked) || team
          ? h("button", { class: "link", id: "thread-rename", type: "button", onclick: () => this.openRename() }, "Rename")
          : null,
        team
          ? h("button", { class: "link", id: "thread-lock", type: "button", onclick: () => this.change({ is_locked: !t.is_locked }).catch(ignore) }, t.is_locked ? "Unlock" : "Lock")
          : null,
        team
          ? h("button", { class: "link", id: "thread-pin", type: "button", onclick: () => this.change({ is_pinned: !t.is_pinned }).catch(ignore) }, t.is_pinned ? "Unpin" : "Pin")
          : null,
      ),
    );
    const closed = t.is_locked && !team;
    this.composerForm.classList.toggle("locked", closed);
    this.input.disabled = closed;
    this.send.disabled = closed;
    this.input.placeholder = closed ? "This thread is locked." : "Write a post…";
    for (const post of this.views.values()) post.update();
  }

  composer() {
    this.input = h("textarea", { id: "post-input", rows: 2, maxlength: 5000, placeholder: "Write a post…", "aria-label": "Write a post" });
    this.send = h("button", { id: "post-send", type: "submit", class: "primary" }, "Post");
    this.composerForm = h("form", { class: "post-composer", autocomplete: "off" }, this.input, this.send);
    this.input.addEventListener("focus", () => this.app.needSignIn(false));
    this.input.addEventListener("input", () => this.typingOut.input());
    this.input.addEventListener("keydown", (event) => submitOnEnter(event, this.composerForm));
    this.composerForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!this.app.needSignIn(true)) return;
      submitText(this.input, this.send, (text) => this.post(text), () => (this.input.value = ""), this.typingOut);
    });
    return this.composerForm;
  }

  openRename() {
    const box = h("div", { class: "rename" });
    const form = textForm(
      {
        kind: "rename",
        placeholder: "The thread's title",
        initial: this.thread.title,
        label: "Rename",
        submit: (title) => this.change({ title }),
      },
      { input: ignore, stop: ignore },
      () => box.remove(),
    );
    form.input.setAttribute("maxlength", "200");
    form.input.rows = 1;
    box.append(form.root);
    this.header.append(box);
    form.input.focus();
  }

  async load() {
    const [thread, posts] = await Promise.all([api(`/api/forum/threads/${this.thread.id}`), allPosts(this.thread.id)]);
    this.thread = thread;
    this.posts = new Map(posts.map((p) => [p.id, p]));
    this.views.clear();
    this.list.replaceChildren();
    for (const post of posts) this.show(post);
    this.renderHeader();
    if (!this.flashed) {
      this.flashed = true;
      const wanted = /^#post-(\d+)$/.exec(location.hash);
      if (wanted) this.flash(Number(wanted[1]));
    }
  }

  handle(m) {
    switch (m.type) {
      case "new_post":
        this.upsert(m.post);
        this.typingIn.posted(m.post.user_id);
        this.counters(m.thread);
        break;
      case "post_edited":
      case "post_liked":
        this.patch(m.post_id, m);
        break;
      case "post_deleted":
        this.drop(m.post_id);
        this.counters(m.thread);
        break;
      case "thread_updated":
        this.thread = { ...this.thread, ...m.thread };
        this.renderHeader();
        break;
      case "user_typing":
        this.typingIn.update(m);
        break;
      case "presence":
        this.here.hidden = false;
        byId("here-count").textContent = `${m.listening} here`;
        break;
    }
  }

  counters(c) {
    this.thread = { ...this.thread, post_count: c.post_count, last_post_at: c.last_post_at };
    byId("thread-post-count").textContent = plural(c.post_count, "post");
  }

  /** A post from the socket or from the page's own answer (whose user_has_liked is the truth). */
  upsert(post, { own = false } = {}) {
    if (this.deleted.has(post.id)) return;
    const known = this.posts.get(post.id);
    const liked = own ? Boolean(post.user_has_liked) : Boolean(known && known.user_has_liked);
    const merged = { ...known, ...post, user_has_liked: liked };
    this.posts.set(post.id, merged);
    this.show(merged);
  }

  patch(id, fields) {
    const known = this.posts.get(id);
    if (!known) return;
    const changed = { ...known };
    for (const key of ["content", "is_edited", "last_edited_at", "like_count", "user_has_liked"]) {
      if (key in fields) changed[key] = fields[key];
    }
    this.posts.set(id, changed);
    this.show(changed);
  }

  drop(id) {
    this.posts.delete(id);
    this.deleted.add(id);
    const gone = this.views.get(id);
    if (gone) gone.root.remove();
    this.views.delete(id);
    for (const view of this.views.values()) if (view.post.parent_id === id) view.update(); // "a deleted post"
  }

  /** Put a post's node in place: posts are in the order they were written (by id). */
  show(post) {
    let view = this.views.get(post.id);
    if (!view) {
      view = new PostView(post, this.actions());
      this.views.set(post.id, view);
      const next = [...this.list.children].find((node) => Number(node.dataset.id) > post.id);
      this.list.insertBefore(view.root, next || null);
    }
    view.post = post;
    view.update();
  }

  flash(id) {
    const view = this.views.get(id);
    if (!view) return;
    view.root.scrollIntoView({ behavior: "smooth", block: "center" });
    view.root.classList.remove("flash");
    void view.root.offsetWidth;
    view.root.classList.add("flash");
    setTimeout(() => view.root.classList.remove("flash"), FLASH_MS);
  }

  // ---- HTTP actions --------------------------------------------------------------------------

  async post(content, parentId = null) {
    const body = { content, ...(parentId === null ? {} : { parent_id: parentId }) };
    const post = await this.call(() => api(`/api/forum/threads/${this.thread.id}/posts`, { method: "POST", body }));
    this.upsert(post, { own: true });
    this.flash(post.id);
  }

  async edit(p, content) {
    const post = await this.call(() => api(`/api/forum/posts/${p.id}`, { method: "PUT", body: { content } }));
    this.upsert(post, { own: true });
  }

  async remove(p) {
    await this.call(() => api(`/api/forum/posts/${p.id}`, { method: "DELETE" }));
    this.drop(p.id);
  }

  async like(p) {
    const method = p.user_has_liked ? "DELETE" : "POST";
    const state = await this.call(() => api(`/api/forum/posts/${p.id}/like`, { method }));
    this.patch(p.id, state);
  }

  async change(fields) {
    const thread = await this.call(() => api(`/api/forum/threads/${this.thread.id}`, { method: "PUT", body: fields }));
    this.thread = { ...this.thread, ...thread };
    this.renderHeader();
  }
}

/** One post's node, updated in place (an open reply or edit form survives live updates). */
class PostView {
  constructor(post, actions) {
    this.post = post;
    this.actions = actions;
    this.form = null;
    this.author = h("strong", { class: "author" });
    this.when = h("span", { class: "when" });
    this.edited = h("span", { class: "edited", text: "edited" });
    this.replyTo = h("button", { class: "reply-to link", type: "button", onclick: () => this.actions.flash(this.post.parent_id) });
    this.content = h("p", { class: "content" });
    this.likeCount = h("span", { class: "like-count" });
    this.likeButton = h("button", { class: "like", type: "button", onclick: () => this.actions.like(this.post) }, icon("heart"), this.likeCount);
    this.buttons = h("span", { class: "own" });
    this.slot = h("div", { class: "slot" });
    this.root = h(
      "li",
      { class: "post", id: `post-${post.id}`, dataset: { id: post.id } },
      h(
        "div",
        { class: "comment-row" },
        avatar(post.user_id, post.username),
        h(
          "div",
          { class: "comment-main" },
          h("div", { class: "meta" }, this.author, this.when, this.edited, this.replyTo),
          this.content,
          h(
            "div",
            { class: "actions" },
            this.likeButton,
            h("button", { class: "reply link", type: "button", onclick: () => this.openReply() }, "Reply"),
            this.buttons,
          ),
          this.slot,
        ),
      ),
    );
  }

  update() {
    const p = this.post;
    const me = this.actions.me();
    this.root.classList.toggle("mine", Boolean(me && me.id === p.user_id));
    this.author.textContent = p.username;
    replaceChildren(this.when, agoElement(p.created_at));
    this.edited.hidden = !p.is_edited;
    const parent = p.parent_id === null ? null : this.actions.parent(p.parent_id);
    this.replyTo.hidden = p.parent_id === null;
    this.replyTo.textContent = parent ? `in reply to ${parent.username}` : "in reply to a deleted post";
    this.replyTo.disabled = !parent;
    replaceChildren(this.content, withMentions(p.content));
    this.likeCount.textContent = String(p.like_count);
    this.likeButton.classList.toggle("liked", Boolean(p.user_has_liked));
    this.likeButton.setAttribute("aria-pressed", String(Boolean(p.user_has_liked)));
    this.likeButton.setAttribute("aria-label", p.user_has_liked ? "Unlike" : "Like");
    this.likeButton.disabled = !me;
    const mine = Boolean(me && me.id === p.user_id);
    replaceChildren(
      this.buttons,
      mine && h("button", { class: "edit link", type: "button", onclick: () => this.openEdit() }, "Edit"),
      (mine || isTeam()) && h("button", { class: "delete link", type: "button", onclick: () => this.actions.remove(this.post) }, "Delete"),
    );
  }

  openReply() {
    if (!this.actions.me()) return this.actions.needSignIn();
    this.openForm({ kind: "reply", placeholder: `Reply to ${this.post.username}…`, initial: "", label: "Reply", submit: (text) => this.actions.reply(this.post, text) });
  }

  openEdit() {
    this.openForm({ kind: "edit", placeholder: "Edit your post", initial: this.post.content, label: "Save", submit: (text) => this.actions.edit(this.post, text) });
  }

  openForm(spec) {
    if (this.form) this.form.root.remove();
    this.form = textForm(spec, this.actions.typing, () => {
      if (this.form) this.form.root.remove();
      this.form = null;
    });
    this.slot.append(this.form.root);
    this.form.input.focus();
  }
}

/** Every post of a thread, following the pages of GET /api/forum/threads/{id}/posts. */
async function allPosts(threadId) {
  const all = [];
  let afterId = 0;
  for (;;) {
    const page = await api(`/api/forum/threads/${threadId}/posts?limit=500&after_id=${afterId}`);
    all.push(...page);
    if (page.length < 500) return all;
    afterId = page[page.length - 1].id;
  }
}

/** Show the thread `threadId` (live), or say why not. */
export async function showThread(threadId, app) {
  let thread, categories;
  try {
    [thread, categories] = await Promise.all([api(`/api/forum/threads/${threadId}`), api("/api/forum/categories")]);
  } catch (error) {
    return showMissing(error, "thread");
  }
  const category = categories.find((c) => c.slug === thread.category_slug);
  const page = new ThreadPage(thread, category ? category.title : thread.category_slug, app);
  await page.start();
  return page;
}
