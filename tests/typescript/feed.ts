// A page's use of tracktalk's browser client, typed by /client/v1/tracktalk.d.ts, imported the
// two ways docs/protocol.md gives: from the server's URL (mapped to the downloaded .d.ts by
// "paths" in tsconfig.json) and from a path (tracktalk.js and tracktalk.d.ts copied side by side).
import {
  CloseCode,
  connect,
  openTopics,
  PROTOCOL,
  type Feed,
  type ServerMessage,
  type Subscription,
} from "__TRACKTALK__/client/v1/tracktalk.js";
import { connect as connectFromPath, type DurableEvent } from "../vendor/tracktalk.js";

export const protocol: 1 = PROTOCOL;

export function watch(trackId: string, render: (text: string) => void): Feed {
  return connect({
    trackId,
    getToken: async ({ expired }) => (expired ? null : "a token"),
    onMessage: (message) => {
      if (message.type === "new_comment") render(message.comment.content);
      if (message.type === "presence") render(`${message.listening} listening`);
    },
    onStatus: (status, detail) => render(`${status} ${detail.protocol ?? ""}`),
    onRefused: ({ code, reason }) => render(code === CloseCode.POLICY ? reason : `closed ${code}`),
  });
}

export function kinds(message: ServerMessage, event: DurableEvent): string[] {
  return [message.type, event.type, String(event.seq)];
}

// @ts-expect-error: trackId is required
connectFromPath({});

// One socket, many topics.
export function page(render: (text: string) => void): Subscription[] {
  const live = openTopics({
    getToken: async () => "a token",
    onUserMessage: (message) => render(message.type === "mention" ? message.from_user : message.notification.kind),
    onStatus: (status) => render(status),
  });
  const track = live.subscribe("track:sunrise", {
    since: 12,
    tag: "0123456789abcdef",
    onMessage: (message) => render(`${message.topic} ${message.type} ${message.seq ?? ""}`),
    onSubscribed: ({ seq, resumed }) => render(`${seq} ${resumed}`),
    onResync: ({ topic, seq }) => render(`${topic} resync ${seq}`),
    onError: (error) => render(error.type === "subscribe_error" ? error.reason : error.message),
    onUnsubscribed: ({ reason }) => render(reason ?? "asked"),
  });
  track.typing(true);
  // @ts-expect-error: a topic is a string
  live.subscribe(42);
  return [track, live.subscribe("thread:42")];
}
