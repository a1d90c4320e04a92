// Browse: a grid of the collection a page at a time, label facets with counts under the
// current filter, sort, and a path-prefix filter. A card opens the image page.

import { api, query } from "./api.js";
import { $, baseName, card, el, gridKeys, setStatus } from "./dom.js";

// page size: 60, or ?page=N in the address (1..200)
const PAGE = Math.min(200, Math.max(1, Number(new URLSearchParams(location.search).get("page")) || 60));
const state = { loaded: false, stale: false, next: null, total: 0, seq: 0, labels: new Set(), lastId: null, endInView: false };

function params(offset) {
  return {
    offset: offset,
    limit: PAGE,
    sort: $("browse-sort").value,
    prefix: $("browse-prefix").value.trim(),
    label: [...state.labels].sort(),
    facets: offset === 0 ? "true" : "",
  };
}

function renderFacets(facets) {
  const list = $("facets");
  list.textContent = "";
  const counts = new Map(facets.map((f) => [f.label, f.count]));
  for (const label of state.labels) if (!counts.has(label)) counts.set(label, 0);
  if (!counts.size) {
    list.append(el("span", { className: "muted", text: "no labels here" }));
    return;
  }
  for (const [label, count] of counts) {
    const box = el("input", { type: "checkbox", value: label, checked: state.labels.has(label) });
    box.addEventListener("change", () => {
      if (box.checked) state.labels.add(label);
      else state.labels.delete(label);
      load(true);
    });
    list.append(el("label", { dataset: { label: label } }, box, label + " (" + count + ")"));
  }
}

function renderItems(items) {
  const grid = $("browse-grid");
  for (const item of items) {
    const taken = item.exif_time ? "taken " + new Date(item.exif_time).toLocaleDateString() : "";
    grid.append(
      card({
        id: item.id,
        path: item.path,
        thumbnail: item.thumbnail_url,
        lines: [
          { className: "name", text: baseName(item.path) || "uploaded image" },
          { className: "muted", text: item.width + "×" + item.height + (taken ? " · " + taken : "") },
        ],
        labels: item.labels.slice(0, 4),
        title: (item.path || "uploaded image") + "\nopen this photo",
        onClick: () => {
          state.lastId = item.id;
          location.hash = "#/image/" + item.id;
        },
      }),
    );
  }
}

export async function load(reset) {
  const seq = ++state.seq;
  const offset = reset ? 0 : state.next;
  if (offset === null || (!reset && document.body.dataset.browse === "loading")) return;
  document.body.dataset.browse = "loading";
  setStatus($("browse-status"), "Loading…");
  try {
    const page = await api("/images" + query(params(offset)));
    if (seq !== state.seq) return;
    if (reset) $("browse-grid").textContent = "";
    if (page.facets) renderFacets(page.facets);
    renderItems(page.items);
    if (!state.loaded) performance.mark("imsearch:first-grid"); // for bench/web.py
    state.next = page.next_offset;
    state.total = page.total;
    state.loaded = true;
    state.stale = false;
    const shown = $("browse-grid").children.length;
    const filtered = state.labels.size || $("browse-prefix").value.trim() ? " (filtered)" : "";
    setStatus($("browse-status"), shown + " of " + page.total + " photos" + filtered);
    $("browse-more").hidden = page.next_offset === null;
  } catch (err) {
    if (seq === state.seq) setStatus($("browse-status"), "Could not list the photos: " + err.message, true);
  } finally {
    if (seq === state.seq) {
      document.body.dataset.browse = "ready";
      if (state.endInView && state.next !== null) setTimeout(() => load(false), 0); // the grid still ends in view
    }
  }
}

// The collection changed (an upload, a delete): reload when browse is shown next.
export function markStale() {
  state.stale = true;
}

export function show() {
  if (!state.loaded || state.stale) return load(true);
  const back = state.lastId && $("browse-grid").querySelector(".card[data-id='" + CSS.escape(state.lastId) + "']");
  if (back) back.focus();
}

export function setup() {
  let timer = null;
  $("browse-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load(true);
  });
  $("browse-sort").addEventListener("change", () => load(true));
  $("browse-prefix").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => load(true), 300);
  });
  $("browse-more").addEventListener("click", () => load(false));
  gridKeys($("browse-grid"));
  // load the next page when the grid's end comes into view (the button stays for keyboards)
  if ("IntersectionObserver" in window) {
    const watcher = new IntersectionObserver((entries) => {
      state.endInView = entries[entries.length - 1].isIntersecting;
      if (state.endInView && document.body.dataset.browse === "ready" && state.next !== null) load(false);
    });
    watcher.observe($("browse-more"));
  }
}
