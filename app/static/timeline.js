// The SoundCloud-style timeline: a waveform that shows and sets the playback position, and a
// marker per comment at its time; hovering a marker shows the comment, clicking it seeks there.

import { fetchBytes } from "./api.js";
import { avatar, byId, formatTime, h, replaceChildren, withMentions } from "./dom.js";
import { sameOrigin } from "./player.js";

const BAR = 3; // px per bar, gap included
const PLAYED = "#d9622b";
const UNPLAYED = "#c9c4bd";
const HOVERED = "#e9a27f";
const RECENT_SECONDS = 3; // markers glow this long after playback passes them

export class Timeline {
  constructor(player, { onPick }) {
    this.player = player;
    this.onPick = onPick;
    this.root = byId("timeline");
    this.canvas = byId("wave");
    this.markers = byId("markers");
    this.tip = byId("marker-tip");
    this.peaks = null;
    this.hoverX = null;
    this.comments = [];
    this.tipFor = null;
    this.wire();
    player.subscribe(() => this.update());
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  wire() {
    this.canvas.addEventListener("click", (event) => this.player.seek(this.timeAt(event)));
    this.canvas.addEventListener("mousemove", (event) => this.hover(event.offsetX));
    this.canvas.addEventListener("mouseleave", () => this.hover(null));
  }

  timeAt(event) {
    return (event.offsetX / this.canvas.clientWidth) * this.player.duration;
  }

  hover(x) {
    this.hoverX = x;
    this.draw();
  }

  /** Peaks from the audio bytes; a pseudo-waveform from the track id when there are none. */
  async loadWave(track, bytes) {
    try {
      const data = bytes || (track.audio_url && sameOrigin(track.audio_url) ? await fetchBytes(track.audio_url) : null);
      this.peaks = data ? await decodePeaks(data) : null;
    } catch (error) {
      console.info("waveform from a pattern:", error.message);
    }
    this.peaks = this.peaks || pseudoPeaks(track.id);
    this.draw();
  }

  /** Show these comments as markers. */
  setComments(comments) {
    this.comments = comments;
    replaceChildren(this.markers, comments.map((c) => this.marker(c)));
    this.update();
    this.refreshTip();
  }

  /** Keep an open tooltip in step with its comment (edited, or gone). */
  refreshTip() {
    if (this.tip.hidden) return;
    const comment = this.comments.find((c) => c.id === this.tipFor);
    const node = comment && this.markers.querySelector(`[data-id="${comment.id}"]`);
    if (node) this.showTip(comment, node);
    else this.hideTip();
  }

  marker(comment) {
    const node = h(
      "button",
      {
        class: "marker",
        type: "button",
        "aria-label": `${comment.username} at ${formatTime(comment.timestamp)}`,
        dataset: { id: comment.id, ts: comment.timestamp },
        onmouseenter: () => this.showTip(comment, node),
        onmouseleave: () => this.hideTip(),
        onfocus: () => this.showTip(comment, node),
        onblur: () => this.hideTip(),
        onclick: () => this.pick(comment),
      },
      avatar(comment.user_id, comment.username, "tiny"),
    );
    return node;
  }

  pick(comment) {
    this.player.seek(comment.timestamp);
    this.onPick(comment);
  }

  showTip(comment, node) {
    this.tipFor = comment.id;
    replaceChildren(
      this.tip,
      h(
        "div",
        { class: "tip-head" },
        h("strong", { text: comment.username }),
        h("span", { class: "muted", text: ` at ${formatTime(comment.timestamp)}` }),
      ),
      h("div", { class: "tip-body" }, withMentions(comment.content)),
    );
    this.tip.hidden = false;
    const left = parseFloat(node.style.left) || 0;
    this.tip.style.left = `${Math.min(Math.max(left, 12), 88)}%`;
  }

  hideTip() {
    this.tip.hidden = true;
  }

  /** Place the markers and redraw the waveform for the current time and duration. */
  update() {
    const duration = this.player.duration;
    const now = this.player.currentTime;
    for (const node of this.markers.children) {
      const ts = Number(node.dataset.ts);
      node.style.left = `${duration ? Math.min(100, (ts / duration) * 100) : 0}%`;
      node.classList.toggle("recent", this.player.playing && ts <= now && now - ts < RECENT_SECONDS);
    }
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.drawBars(ctx, width, height);
  }

  drawBars(ctx, width, height) {
    const peaks = this.peaks || pseudoPeaks("");
    const bars = Math.floor(width / BAR);
    const duration = this.player.duration;
    const playedX = duration ? (this.player.currentTime / duration) * width : 0;
    for (let i = 0; i < bars; i += 1) {
      const x = i * BAR;
      const peak = peaks[Math.floor((i / bars) * peaks.length)] || 0;
      const barHeight = Math.max(2, peak * (height - 4));
      ctx.fillStyle = this.barColor(x, playedX);
      ctx.fillRect(x, (height - barHeight) / 2, BAR - 1, barHeight);
    }
  }

  barColor(x, playedX) {
    if (x < playedX) return PLAYED;
    if (this.hoverX !== null && x < this.hoverX) return HOVERED;
    return UNPLAYED;
  }
}

/** Loudness of 400 slices of the audio, from 0 to 1. */
async function decodePeaks(bytes, count = 400) {
  const context = new OfflineAudioContext(1, 1, 22050);
  const buffer = await context.decodeAudioData(bytes.slice(0));
  const samples = buffer.getChannelData(0);
  const size = Math.max(1, Math.floor(samples.length / count));
  const peaks = [];
  for (let i = 0; i < count; i += 1) {
    let sum = 0;
    for (let j = i * size; j < (i + 1) * size && j < samples.length; j += 1) sum += samples[j] * samples[j];
    peaks.push(Math.sqrt(sum / size));
  }
  return normalise(peaks);
}

/** A calm, repeatable pseudo-waveform for a track without decodable audio. */
function pseudoPeaks(seedText, count = 400) {
  let seed = [...seedText].reduce((acc, ch) => (acc * 31 + ch.charCodeAt(0)) >>> 0, 7);
  const random = () => {
    seed = (seed * 1664525 + 1013904223) >>> 0;
    return seed / 2 ** 32;
  };
  const peaks = [];
  let level = 0.5;
  for (let i = 0; i < count; i += 1) {
    level = Math.min(1, Math.max(0.15, level + (random() - 0.5) * 0.25));
    peaks.push(level * (0.6 + 0.4 * random()));
  }
  return normalise(peaks);
}

function normalise(values) {
  const top = Math.max(...values, 1e-9);
  return values.map((v) => v / top);
}
