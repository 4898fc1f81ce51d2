// The track's WebSocket: connect, deliver each durable event once and in order, reconnect with
// exponential backoff + jitter and `since=<last seq seen>` so that nothing is missed.

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STABLE_MS = 10000; // a connection that lasted this long resets the backoff
const CLOSE_POLICY = 1008;
const CLOSE_TOKEN_EXPIRED = 4001;

/** Close codes after which reconnecting with the same token is pointless. */
const FATAL = new Set([CLOSE_POLICY, CLOSE_TOKEN_EXPIRED]);

/** The delay before reconnect attempt `attempt` (0, 1, 2…): 2^attempt steps, "equal jitter". */
export function backoffDelay(attempt, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

export class LiveSocket {
  /**
   * @param {object} options
   * @param {string} options.trackId
   * @param {() => string|null} options.token   the current token
   * @param {(message: object) => void} options.onMessage   every message, durable ones once each
   * @param {(state: string, detail?: string) => void} options.onState  connecting|live|reconnecting|closed
   * @param {(code: number, reason: string) => Promise<boolean>} options.onRefused
   *        a 1008/4001 close: answer true to reconnect (with a fresh token), false to stop
   */
  constructor({ trackId, token, onMessage, onState, onRefused }) {
    Object.assign(this, { trackId, token, onMessage, onState, onRefused });
    this.lastSeq = null; // the seq of the last durable event delivered
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.openedAt = 0;
  }

  /** Open the socket (again). */
  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    this.onState(this.lastSeq === null && this.attempt === 0 ? "connecting" : "reconnecting");
    const socket = new WebSocket(this.url());
    this.socket = socket;
    socket.addEventListener("message", (event) => this.receive(socket, event));
    socket.addEventListener("close", (event) => this.closed(socket, event));
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ token: this.token() || "" });
    if (this.lastSeq !== null) query.set("since", String(this.lastSeq));
    return `${scheme}//${location.host}/api/ws/track/${encodeURIComponent(this.trackId)}?${query}`;
  }

  receive(socket, event) {
    if (socket !== this.socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      console.warn("not JSON from the server:", event.data);
      return;
    }
    if (message.type === "connected") this.opened(message);
    else if (message.type === "resync") this.lastSeq = message.seq;
    else if (!this.inOrder(message)) return;
    this.onMessage(message);
  }

  opened(message) {
    this.openedAt = Date.now();
    if (this.lastSeq === null) this.lastSeq = message.seq;
    this.onState("live");
  }

  /** True for a message to deliver: ephemeral, or the next durable event. */
  inOrder(message) {
    if (typeof message.seq !== "number") return true;
    if (this.lastSeq !== null && message.seq <= this.lastSeq) return false; // seen already
    if (this.lastSeq !== null && message.seq > this.lastSeq + 1) {
      console.warn(`missed events ${this.lastSeq + 1}..${message.seq - 1}: reconnecting with since`);
      this.socket.close(4000, "gap");
      return false;
    }
    this.lastSeq = message.seq;
    return true;
  }

  async closed(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (this.stopped) return;
    if (this.openedAt && Date.now() - this.openedAt > STABLE_MS) this.attempt = 0;
    this.openedAt = 0;
    if (FATAL.has(event.code)) {
      const retry = await this.onRefused(event.code, event.reason || "refused");
      if (!retry) return this.onState("closed", event.reason);
      this.attempt = 0;
      return this.connect();
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    this.onState("reconnecting", `in ${Math.ceil(delay / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect now (e.g. when the browser comes back online), if waiting to. */
  nudge() {
    if (this.timer !== null) this.connect();
  }

  /** Send a JSON message if the socket is open; false otherwise. */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Close for good. */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "page closed");
    this.socket = null;
  }
}
