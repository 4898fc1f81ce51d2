// Small DOM and formatting helpers. Everything a user wrote goes into the page as text
// (textContent / text nodes), never as HTML: there is no innerHTML anywhere in this app.

/**
 * Make an element: h("button", {class: "like", onclick: fn, dataset: {id: 1}}, "text", child).
 * Strings become text nodes; null, undefined and false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    setAttr(node, key, value);
  }
  append(node, children);
  return node;
}

function setAttr(node, key, value) {
  if (value === null || value === undefined || value === false) return;
  if (key === "class") node.className = value;
  else if (key === "dataset") Object.assign(node.dataset, value);
  else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
  else if (key === "text") node.textContent = value;
  else if (value === true) node.setAttribute(key, "");
  else node.setAttribute(key, String(value));
}

/** Append children (strings as text nodes). */
export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace all children of `node`. */
export function replaceChildren(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** The element with this id (throws when the page lacks it: a bug, not a user error). */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node;
}

/** An inline SVG icon from the sprite in index.html. */
export function icon(name, cls = "icon") {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("aria-hidden", "true");
  const use = document.createElementNS(ns, "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

/** Seconds as m:ss (or h:mm:ss). */
export function formatTime(seconds) {
  const total = Math.max(0, Math.floor(Number(seconds) || 0));
  const s = String(total % 60).padStart(2, "0");
  const m = Math.floor(total / 60) % 60;
  const hours = Math.floor(total / 3600);
  return hours ? `${hours}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** "1:05", "65", "65.5" or "1:02:03" as seconds; null when it is not a time. */
export function parseTime(text) {
  const value = String(text).trim();
  if (!/^\d+(\.\d+)?$|^\d+(:\d{1,2}){1,2}(\.\d+)?$/.test(value)) return null;
  return value.split(":").reduce((acc, part) => acc * 60 + Number(part), 0);
}

const UNITS = [
  [60, "s"],
  [60, "min"],
  [24, "h"],
  [7, "d"],
  [4.35, "w"],
  [12, "mo"],
  [Infinity, "y"],
];

/** "just now", "5 min ago", "3 h ago"… */
export function timeAgo(iso, now = Date.now()) {
  let amount = (now - Date.parse(iso)) / 1000;
  if (!Number.isFinite(amount) || amount < 45) return "just now";
  for (const [size, unit] of UNITS) {
    if (amount < size) return `${Math.floor(amount)} ${unit} ago`;
    amount /= size;
  }
  return "long ago";
}

/** A <time> that says how long ago, refreshed by refreshTimes(). */
export function agoElement(iso) {
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString(), text: timeAgo(iso) });
}

/** Bring every <time datetime> under `root` up to date. */
export function refreshTimes(root = document) {
  for (const node of root.querySelectorAll("time[datetime]")) {
    node.textContent = timeAgo(node.getAttribute("datetime"));
  }
}

/** A round avatar with the user's initial, coloured by their id. */
export function avatar(userId, username, size = "") {
  const hue = (Number(userId) * 137) % 360;
  const node = h("span", { class: `avatar ${size}`.trim(), title: username, "aria-hidden": "true" });
  node.style.setProperty("--hue", String(hue));
  node.textContent = (username || "?").slice(0, 1).toUpperCase();
  return node;
}

/** Text with @mentions highlighted, built from text nodes only. */
export function withMentions(text) {
  const parts = String(text).split(/(@[A-Za-z0-9_.-]+)/);
  return parts.map((part, i) => (i % 2 ? h("span", { class: "mention", text: part }) : part));
}

/** A short message at the bottom of the page, gone after a while. */
export function toast(message, kind = "info", ms = 5000) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const node = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", text: message });
  box.append(node);
  setTimeout(() => node.remove(), ms);
}
