// "alice is typing…": tell the others while this user types, and show who else does.

import { byId } from "./dom.js";

const IDLE_MS = 2500; // no key for this long: "stopped typing"
const SHOW_MS = 4000; // someone else's indicator goes away this long after their last message

/** Tells the track's feed (or a thread's subscription) while the user types; the client keeps to
 *  the server's rate limit. */
export class TypingSender {
  /** @param {() => object | null} feed  the page's current feed or subscription (tracktalk.js), or null */
  constructor(feed) {
    this.feed = feed;
    this.idle = null;
  }

  /** A keystroke in one of the page's text fields. */
  input() {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.stop(), IDLE_MS);
    this.feed()?.typing(true);
  }

  /** The user stopped (sent, cancelled, or paused). */
  stop() {
    clearTimeout(this.idle);
    this.feed()?.typing(false);
  }
}

/** Shows the others who are typing (in `node`, the track page's #typing by default); each entry
 *  fades SHOW_MS after its last update. */
export class TypingIndicator {
  constructor(me, node = null) {
    this.me = me;
    this.node = node || byId("typing");
    this.typers = new Map(); // user_id -> {username, timer}
  }

  update(message) {
    const me = this.me();
    if (me && message.user_id === me.id) return;
    const known = this.typers.get(message.user_id);
    if (known) clearTimeout(known.timer);
    if (message.is_typing) {
      const timer = setTimeout(() => this.forget(message.user_id), SHOW_MS);
      this.typers.set(message.user_id, { username: message.username, timer });
    } else {
      this.typers.delete(message.user_id);
    }
    this.render();
  }

  /** Someone's comment arrived: they are done typing. */
  posted(userId) {
    if (this.typers.has(userId)) this.forget(userId);
  }

  forget(userId) {
    const known = this.typers.get(userId);
    if (known) clearTimeout(known.timer);
    this.typers.delete(userId);
    this.render();
  }

  render() {
    const names = [...this.typers.values()].map((t) => t.username);
    this.node.textContent = typingText(names);
    this.node.classList.toggle("visible", names.length > 0);
  }
}

export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}
