// Who is using the page, and their access token.
//
// Where the token comes from, first match wins:
//   1. window.TRACKTALK_TOKEN — set by a host app that serves its own copy of index.html with a
//      script before app.js (optionally window.TRACKTALK_USER = {id, username, is_creator, is_team}).
//   2. sessionStorage — a token the page got before, in this tab.
//   3. #token=<token> in the address — for a host app that links to or embeds (iframe) this page,
//      to sign the tab in: taken only by a tab that has no token yet, or as a fresh token of the
//      user it already has (the same `sub`). Anyone can write a link, so a tab signed in as one
//      user never becomes another through one (the link would make them post as its author); to
//      switch users, sign out first. The page takes it out of the address bar at once, taken or not.
//   4. The demo sign-in: GET /api/demo/users fills a user picker, POST /api/demo/token/{id} gives the
//      token. Those routes exist only when the server runs with the embedded database or
//      TRACKTALK_DEMO=1; elsewhere they answer 404, and the page is read-only until the host
//      app hands it a token (1 or 2 above, or window.tracktalk.setToken(token) at any time).

import { api, useToken } from "./api.js";

const TOKEN_KEY = "tracktalk.token";
const USER_KEY = "tracktalk.user";

export const session = {
  token: null,
  /** {id, username, is_creator, is_team}; username and flags may be unknown with a host token. */
  user: null,
  /** The demo users, or null when the demo routes are absent. */
  demoUsers: null,
};

/** Read the token from the host, sessionStorage or the address. */
export function loadSession() {
  const own = window.TRACKTALK_TOKEN || sessionStorage.getItem(TOKEN_KEY);
  const fromHash = takeHashToken();
  let token = own;
  if (fromHash && (!own || sameSubject(fromHash, own))) token = fromHash;
  else if (fromHash) console.warn("tracktalk: ignored a #token of another user: this tab is signed in; sign out first");
  if (!token) return session;
  const stored = readStoredUser();
  const hostUser = window.TRACKTALK_USER || null;
  setSession(token, hostUser || (stored && stored.id === tokenUserId(token) ? stored : null));
  return session;
}

function takeHashToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (!token) return null;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return token;
}

function readStoredUser() {
  try {
    return JSON.parse(sessionStorage.getItem(USER_KEY) || "null");
  } catch {
    return null;
  }
}

/** A JWT's claims, unchecked (the signature is the server's business); null when unreadable. */
function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** The user id in a JWT's `sub` claim. */
export function tokenUserId(token) {
  const claims = tokenClaims(token);
  return (claims && Number(claims.sub)) || null;
}

/** Both tokens name the same subject. Unchecked claims suffice: another user's token that
 * says otherwise has no valid signature, and the server refuses it. */
function sameSubject(a, b) {
  const first = tokenClaims(a);
  const second = tokenClaims(b);
  return Boolean(first && second && typeof first.sub === "string" && first.sub !== "" && first.sub === second.sub);
}

/** Use this token (and user, when known) from now on, in this tab. */
export function setSession(token, user) {
  const id = tokenUserId(token);
  session.token = token;
  session.user = user && user.id === id ? user : { id, username: null, is_creator: false, is_team: false };
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, JSON.stringify(session.user));
  useToken(token);
}

/** Forget the token. */
export function signOut() {
  session.token = null;
  session.user = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  useToken(null);
}

/** The demo users (null when the server has no demo sign-in); fills in the signed-in user's name. */
export async function loadDemoUsers() {
  try {
    session.demoUsers = await api("/api/demo/users");
  } catch (error) {
    if (error.status !== 404) console.warn("demo users:", error);
    session.demoUsers = null;
    return null;
  }
  const me = session.user && session.demoUsers.find((u) => u.id === session.user.id);
  if (me) setSession(session.token, me);
  return session.demoUsers;
}

/** Sign in as a demo user. */
export async function demoSignIn(userId) {
  const answer = await api(`/api/demo/token/${encodeURIComponent(userId)}`, { method: "POST" });
  setSession(answer.token, answer.user);
  return answer.user;
}

/** A fresh token for the signed-in user, if the demo can give one; false otherwise. */
export async function refreshToken() {
  if (!session.demoUsers || !session.user) return false;
  try {
    await demoSignIn(session.user.id);
    return true;
  } catch {
    return false;
  }
}

/** A user's display name: the known username, or "user N". */
export function displayName(user) {
  return user.username || `user ${user.id}`;
}
