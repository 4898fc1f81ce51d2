// The audio player: a play button, the time, and the <audio> element (which streams with Range).

import { fetchBytes } from "./api.js";
import { byId, formatTime } from "./dom.js";

export class Player {
  constructor(track) {
    this.track = track;
    this.audio = byId("audio");
    this.button = byId("play");
    this.listeners = [];
    this.fallbackDuration = track.duration_seconds || 0;
    this.button.addEventListener("click", () => this.toggle());
    for (const name of ["timeupdate", "durationchange", "play", "pause", "ended", "seeked"]) {
      this.audio.addEventListener(name, () => this.changed());
    }
    this.audio.addEventListener("error", () => this.failed());
    this.audio.addEventListener("loadedmetadata", () => this.applyPendingSeek());
    this.pendingSeek = null;
  }

  /** Point the <audio> at the track (a blob for private tracks: <audio> cannot send a token). */
  async load() {
    const url = this.track.audio_url;
    if (!url) return this.failed("no audio for this track");
    if (this.track.is_private && sameOrigin(url)) {
      const bytes = await fetchBytes(url).catch(() => null);
      if (!bytes) return this.failed();
      this.audio.src = URL.createObjectURL(new Blob([bytes]));
      return bytes;
    }
    this.audio.src = url;
    return null;
  }

  failed(message = "the audio could not be loaded") {
    this.button.disabled = true;
    this.button.title = message;
    byId("player-note").textContent = message;
    return null;
  }

  /** listener(player) on every change of time, duration or state. */
  subscribe(listener) {
    this.listeners.push(listener);
  }

  changed() {
    this.button.classList.toggle("playing", !this.audio.paused);
    this.button.setAttribute("aria-label", this.audio.paused ? "Play" : "Pause");
    byId("time-now").textContent = formatTime(this.currentTime);
    byId("time-total").textContent = formatTime(this.duration);
    for (const listener of this.listeners) listener(this);
  }

  /** Seconds of the track: the audio's own, else the track's, else what the comments need. */
  get duration() {
    const own = this.audio.duration;
    return Number.isFinite(own) && own > 0 ? own : this.fallbackDuration;
  }

  get playing() {
    return !this.audio.paused;
  }

  /** Use at least this duration when the track has no audio (so that every marker fits). */
  fitDuration(seconds) {
    if (!this.track.duration_seconds && seconds > this.fallbackDuration) {
      this.fallbackDuration = Math.ceil(seconds * 1.1 + 5);
      this.changed();
    }
  }

  toggle() {
    if (this.audio.paused) this.audio.play().catch((error) => console.warn("play:", error));
    else this.audio.pause();
  }

  /** Play from `seconds` on (once the audio's metadata is there). */
  seek(seconds) {
    const target = Math.max(0, Math.min(seconds, this.duration || seconds));
    if (this.audio.readyState > 0) this.audio.currentTime = target;
    else this.pendingSeek = target;
    this.changed();
  }

  applyPendingSeek() {
    if (this.pendingSeek === null) return;
    this.audio.currentTime = this.pendingSeek;
    this.pendingSeek = null;
  }

  /** Where playback is, or is about to be. */
  get currentTime() {
    return this.pendingSeek ?? (this.audio.currentTime || 0);
  }
}

export function sameOrigin(url) {
  return new URL(url, location.href).origin === location.origin;
}
