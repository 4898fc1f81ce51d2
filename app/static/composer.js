// The new-comment form: posts at the current playback position, or at a typed time.
// The time follows playback until the user starts typing (it then stays where they reacted) or
// types a time of their own; after posting it follows playback again.

import { byId, formatTime, parseTime, toast } from "./dom.js";
import { submitText } from "./comments.js";

export class Composer {
  constructor(player, { post, typing, needSignIn }) {
    this.player = player;
    this.post = post;
    this.typing = typing;
    this.needSignIn = needSignIn;
    this.form = byId("composer");
    this.input = byId("comment-input");
    this.time = byId("comment-time");
    this.button = byId("comment-send");
    this.pinned = false;
    this.wire();
    player.subscribe(() => this.follow());
    this.follow();
  }

  wire() {
    this.input.addEventListener("focus", () => this.needSignIn(false));
    this.input.addEventListener("input", () => this.typed());
    this.time.addEventListener("input", () => (this.pinned = true));
    this.time.addEventListener("change", () => this.checkTime());
    byId("comment-time-follow").addEventListener("click", () => this.unpin());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
  }

  typed() {
    if (this.input.value) this.pinned = true;
    else this.unpin();
    this.typing.input();
  }

  follow() {
    if (!this.pinned) this.time.value = formatTime(this.player.currentTime);
    this.form.classList.toggle("pinned", this.pinned);
  }

  unpin() {
    this.pinned = false;
    this.follow();
  }

  checkTime() {
    const ok = parseTime(this.time.value) !== null;
    this.time.setCustomValidity(ok ? "" : "Type a time like 1:05");
    return ok;
  }

  async send() {
    if (!this.needSignIn(true)) return;
    if (!this.checkTime()) {
      toast("Type the time in the track as m:ss, e.g. 1:05", "error");
      return;
    }
    const timestamp = parseTime(this.time.value);
    await submitText(this.input, this.button, (text) => this.post(text, timestamp), () => this.done(), this.typing);
  }

  done() {
    this.input.value = "";
    this.unpin();
  }
}
