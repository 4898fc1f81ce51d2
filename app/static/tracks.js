// The front page: every track the user may see, album by album, with its counters.

import { api } from "./api.js";
import { byId, formatTime, h, icon, replaceChildren } from "./dom.js";

export async function showTrackList() {
  const view = byId("list-view");
  view.hidden = false;
  document.title = "tracktalk";
  let tracks;
  try {
    tracks = await api("/api/tracks");
  } catch (error) {
    replaceChildren(byId("track-list"), h("p", { class: "muted", text: `Could not load the tracks: ${error.message}` }));
    return;
  }
  renderAlbums(tracks);
  tracks.forEach((track) => loadCounters(track));
}

function renderAlbums(tracks) {
  const albums = new Map();
  for (const track of tracks) {
    if (!albums.has(track.album_id)) albums.set(track.album_id, { title: track.album_title, tracks: [] });
    albums.get(track.album_id).tracks.push(track);
  }
  const sections = [...albums.values()].map((album) =>
    h("section", { class: "album" }, h("h2", { text: album.title }), h("ol", { class: "cards" }, album.tracks.map(card))),
  );
  replaceChildren(byId("track-list"), sections.length ? sections : h("p", { class: "muted", text: "No tracks yet." }));
}

function card(track) {
  return h(
    "li",
    { class: "card" },
    h(
      "a",
      { href: `/tracks/${encodeURIComponent(track.id)}`, class: "card-link" },
      h("span", { class: "card-play" }, icon("play")),
      h(
        "span",
        { class: "card-text" },
        h("strong", { class: "card-title", text: track.title }),
        h(
          "span",
          { class: "muted" },
          track.duration_seconds ? formatTime(track.duration_seconds) : "",
          track.is_private ? h("span", { class: "pill private" }, icon("lock"), "private") : null,
        ),
      ),
      h("span", { class: "card-counts", id: `counts-${track.id}` }),
    ),
  );
}

async function loadCounters(track) {
  const node = document.getElementById(`counts-${track.id}`);
  const m = await api(`/api/tracks/${encodeURIComponent(track.id)}/metrics`).catch(() => null);
  if (!node || !m) return;
  replaceChildren(
    node,
    h("span", { title: "likes" }, icon("heart"), String(m.likes)),
    h("span", { title: "comments" }, icon("comment"), String(m.comments)),
    m.listening ? h("span", { class: "listening", title: "people on it now" }, `${m.listening} listening`) : null,
  );
}
