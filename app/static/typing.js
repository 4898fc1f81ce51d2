// "alice is typing…": tell the others while this user types (throttled), and show who else does.

import { byId } from "./dom.js";

const SEND_EVERY_MS = 2000; // repeat "typing" this often while typing goes on (the server keeps 1/s)
const IDLE_MS = 2500; // no key for this long: "stopped typing"
const SERVER_GAP_MS = 1100; // the server drops a second message from a user within a second
const SHOW_MS = 4000; // someone else's indicator goes away this long after their last message

/** Sends {"type": "typing", "is_typing": …} for the user's keystrokes. */
export class TypingSender {
  constructor(send) {
    this.send = send;
    this.typing = false;
    this.lastSent = 0;
    this.idle = null;
    this.stopTimer = null;
  }

  /** A keystroke in one of the page's text fields. */
  input() {
    clearTimeout(this.idle);
    clearTimeout(this.stopTimer);
    this.idle = setTimeout(() => this.stop(), IDLE_MS);
    const now = Date.now();
    if (!this.typing || now - this.lastSent >= SEND_EVERY_MS) this.post(true);
  }

  /** The user stopped (sent, cancelled, or paused). */
  stop() {
    clearTimeout(this.idle);
    if (!this.typing) return;
    this.typing = false;
    const wait = Math.max(0, this.lastSent + SERVER_GAP_MS - Date.now());
    this.stopTimer = setTimeout(() => this.post(false), wait);
  }

  post(isTyping) {
    if (this.send({ type: "typing", is_typing: isTyping })) this.lastSent = Date.now();
    this.typing = isTyping;
  }
}

/** Shows the others who are typing; each entry fades SHOW_MS after its last update. */
export class TypingIndicator {
  constructor(me) {
    this.me = me;
    this.node = byId("typing");
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
