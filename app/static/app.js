// tracktalk's page. `/` lists the tracks, `/tracks/{id}` plays one with its comments, live;
// `/forum` lists the forum's categories, `/forum/{slug}` a category's threads and
// `/forum/threads/{id}` a thread's posts, both live (forum.js).
// Plain ES modules, no build step. How the page gets its token: see session.js.

import { api } from "./api.js";
import { avatar, byId, h, refreshTimes, replaceChildren, toast } from "./dom.js";
import { showCategory, showForum, showThread } from "./forum.js";
import { Bell } from "./notifications.js";
import {
  demoSignIn,
  displayName,
  loadDemoUsers,
  loadSession,
  refreshToken,
  session,
  setSession,
  signOut,
} from "./session.js";
import { showTrack } from "./track.js";
import { showTrackList } from "./tracks.js";

const STATE_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  closed: "offline",
  readonly: "read-only",
};

const app = {
  page: null,
  bell: null,

  /** Show the socket's state: connecting / live / reconnecting / closed. */
  setConnection(state, detail = "") {
    const node = byId("conn");
    node.dataset.state = state;
    byId("conn-text").textContent = STATE_TEXT[state] || state;
    node.title = detail ? `${STATE_TEXT[state] || state}: ${detail}` : STATE_TEXT[state] || state;
  },

  /** True when signed in; otherwise point at the sign-in (and say so when `loud`). */
  needSignIn(loud = true) {
    if (session.token) return true;
    const who = byId("who");
    who.classList.remove("nudge");
    void who.offsetWidth;
    who.classList.add("nudge");
    if (loud) toast(session.demoUsers ? "Pick a user (top right) to take part." : "Sign in through your app to take part.");
    return false;
  },

  /** The signed-in user, or the demo picker, or a note that the host app signs people in. */
  renderWho() {
    const who = byId("who");
    const picker = session.demoUsers ? userPicker() : null;
    const me = session.user
      ? h("span", { class: "me" }, avatar(session.user.id, displayName(session.user), "small"), h("span", { text: displayName(session.user) }))
      : null;
    const note = !me && !picker ? h("span", { class: "muted", text: "read-only" }) : null;
    replaceChildren(who, me, picker, note);
  },
};

function userPicker() {
  const me = session.user;
  const others = session.demoUsers.filter((u) => !me || u.id !== me.id);
  return h(
    "select",
    { id: "user-picker", "aria-label": "Sign in as a demo user", onchange: (e) => switchUser(e.target.value) },
    h("option", { value: "", selected: true, disabled: true }, me ? "Switch user…" : "Sign in as…"),
    others.map((u) => h("option", { value: u.id }, `${u.username}${role(u)}`)),
    me && h("option", { value: "out" }, "Sign out"),
  );
}

function role(user) {
  if (user.is_creator) return " (artist)";
  return user.is_team ? " (team)" : "";
}

async function switchUser(value) {
  try {
    if (value === "out") signOut();
    else await demoSignIn(Number(value));
  } catch (error) {
    toast(`Sign-in failed: ${error.message}`, "error");
    return;
  }
  location.reload(); // a clean page for the new user: their likes, notifications and socket
}

function openComment(trackId, commentId) {
  const here = app.page && app.page.track && app.page.track.id === trackId;
  if (here && commentId) return app.page.list.flash(commentId);
  location.href = `/tracks/${encodeURIComponent(trackId)}${commentId ? `#comment-${commentId}` : ""}`;
}

/** Hooks for tests and host apps: window.tracktalk.socket, .setToken(token). */
function expose() {
  window.tracktalk = {
    get socket() {
      return app.page && app.page.live ? app.page.live.socket : null;
    },
    get page() {
      return app.page;
    },
    session,
    /** A host app hands the page a (fresh) token. */
    setToken(token) {
      setSession(token, window.TRACKTALK_USER || null);
      app.renderWho();
      if (app.page) app.page.startLive();
    },
  };
}

/** Drop a token the API does not accept (after trying a fresh demo one), so that reading works. */
async function checkToken() {
  if (!session.token) return;
  try {
    await api("/api/notifications?limit=1");
  } catch (error) {
    if (error.status !== 401 || (await refreshToken())) return;
    signOut();
    toast(`Signed out: ${error.detail}`, "error", 10000);
  }
}

async function main() {
  loadSession();
  expose();
  app.bell = new Bell({ onOpenComment: openComment });
  await loadDemoUsers();
  await checkToken();
  app.renderWho();
  if (session.token) app.bell.start();
  setInterval(() => refreshTimes(), 30000);
  const path = location.pathname;
  const forum = /^\/forum\/?$/.test(path);
  const thread = /^\/forum\/threads\/(\d+)\/?$/.exec(path);
  const category = /^\/forum\/([^/]+)\/?$/.exec(path);
  const track = /^\/tracks\/([^/]+)\/?$/.exec(path);
  byId(forum || thread || category ? "nav-forum" : "nav-tracks").setAttribute("aria-current", "page");
  if (forum) return showForum();
  if (!thread && !category && !track) return showTrackList();
  byId("conn").hidden = false;
  app.setConnection(session.token ? "connecting" : "readonly", session.token ? "" : "sign in to talk live");
  if (thread) app.page = await showThread(Number(thread[1]), app);
  else if (category) app.page = await showCategory(decodeURIComponent(category[1]), app);
  else app.page = await showTrack(decodeURIComponent(track[1]), app);
}

main()
  .then(() => document.body.classList.add("ready"))
  .catch((error) => {
    console.error(error);
    toast(`Something went wrong: ${error.message}`, "error", 15000);
  });
