// A page's use of tracktalk's browser client, typed by /client/v1/tracktalk.d.ts, imported the
// two ways docs/protocol.md gives: from the server's URL (mapped to the downloaded .d.ts by
// "paths" in tsconfig.json) and from a path (tracktalk.js and tracktalk.d.ts copied side by side).
import { CloseCode, connect, PROTOCOL, type Feed, type ServerMessage } from "__TRACKTALK__/client/v1/tracktalk.js";
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
