// A host service's calls of tracktalk's HTTP API through a client generated from
// /schema/openapi.json (openapi-typescript's types, openapi-fetch's client). tsc checks it;
// tests/system/test_typescript.py then runs `run` against a real replica.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

export type Comment = components["schemas"]["Comment"];
export type ErrorBody = components["schemas"]["ErrorBody"];
export type Api = ReturnType<typeof createClient<paths>>;

export async function run(baseUrl: string, token: string, trackId: string): Promise<string[]> {
  const api: Api = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
  const said: string[] = [];
  const posted = await api.POST("/api/tracks/{track_id}/comments", {
    params: { path: { track_id: trackId } },
    body: { content: "from a generated client", timestamp: 4.5 },
  });
  if (posted.error) throw new Error(`POST: ${posted.error.status_code} ${posted.error.detail}`);
  const comment: Comment = posted.data;
  said.push(`posted ${comment.id}: ${comment.content}`);
  const missing = await api.GET("/api/tracks/{track_id}", { params: { path: { track_id: "no-such-track" } } });
  if (missing.error) {
    const error: ErrorBody = missing.error;
    said.push(`GET a missing track: ${error.status_code} ${error.detail}`);
  }
  const page = await api.GET("/api/tracks/{track_id}/comments", {
    params: { path: { track_id: trackId }, query: { limit: 1 } },
  });
  said.push(`listed ${page.data?.length ?? "none"}`);
  const liked = await api.POST("/api/comments/{comment_id}/like", { params: { path: { comment_id: comment.id } } });
  said.push(`liked: ${liked.data?.like_count}`);
  return said;
}

/** What the generated types refuse: each line must be a type error (tsc fails on an unused directive). */
export async function refused(api: Api): Promise<void> {
  await api.POST("/api/tracks/{track_id}/comments", {
    params: { path: { track_id: "t" } },
    // @ts-expect-error: timestamp is a number of seconds
    body: { content: "x", timestamp: "4" },
  });
  // @ts-expect-error: no such route
  await api.GET("/api/nothing");
  const answer = await api.GET("/api/notifications");
  // @ts-expect-error: a page of notifications has `notifications` and `unread`, no `items`
  console.log(answer.data?.items);
}
