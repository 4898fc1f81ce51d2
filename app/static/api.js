// The HTTP API, with `Authorization: Bearer <token>` whenever the page has a token.

let currentToken = null;

/** Use this token for every call from now on (null: anonymous). */
export function useToken(token) {
  currentToken = token || null;
}

/** An answer other than 2xx; `detail` is the API's explanation. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/**
 * Call the API: api("/api/tracks"), api(path, {method: "POST", body: {...}}).
 * Answers the decoded JSON (null for 204); throws ApiError (or TypeError when offline).
 */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (currentToken) headers.Authorization = `Bearer ${currentToken}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (answer.status === 204) return null;
  const data = await answer.json().catch(() => null);
  if (!answer.ok) throw new ApiError(answer.status, errorDetail(data, answer));
  return data;
}

function errorDetail(data, answer) {
  if (data && typeof data.detail === "string") return data.detail;
  return `${answer.status} ${answer.statusText}`.trim();
}

/** Every comment of a track, following the pages of GET /api/tracks/{id}/comments. */
export async function allComments(trackId) {
  const all = [];
  let afterId = 0;
  for (;;) {
    const page = await api(`/api/tracks/${encodeURIComponent(trackId)}/comments?limit=500&after_id=${afterId}`);
    all.push(...page);
    if (page.length < 500) return all;
    afterId = page[page.length - 1].id;
  }
}

/** A fetch for bytes (audio), with the token. */
export async function fetchBytes(url) {
  const headers = currentToken ? { Authorization: `Bearer ${currentToken}` } : {};
  const answer = await fetch(url, { headers });
  if (!answer.ok) throw new ApiError(answer.status, `audio: ${answer.status}`);
  return answer.arrayBuffer();
}
