// imsearch web page: pick or drop a photo, optionally draw a box, filter by labels, browse results.
// Plain browser JavaScript, no build step; talks to the JSON API under /api/v1.
"use strict";

const API = "/api/v1";
const KEY_STORAGE = "imsearch-api-key";
const MIN_BOX_PX = 8;

const $ = (id) => document.getElementById(id);

const state = {
  query: null, // {kind: "file", file, name} | {kind: "id", id, width, height, name}
  box: null, // [x0, y0, x1, y1] in pixels of the original image
  objectUrl: null,
  searchSeq: 0,
};

// ------------------------------------------------------------------ HTTP

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(API + path, opts);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
    throw new Error(detail);
  }
  return body;
}

// Images: plain URLs, or fetched with the key header when the server wants one for reads.
async function setImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  const response = await fetch(url, { headers: headers() });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------------ status, stats, labels

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function loadStats() {
  try {
    const s = await api("/stats");
    $("stats").textContent = s.images + " images · " + s.model.split(",")[0] + " · " + s.database;
  } catch (err) {
    $("stats").textContent = "stats unavailable: " + err.message;
  }
}

async function loadLabels() {
  const list = $("label-list");
  try {
    const data = await api("/labels");
    list.textContent = "";
    if (!data.labels.length) {
      list.innerHTML = '<span class="muted">no labels (index with --detect)</span>';
      return;
    }
    for (const item of data.labels) {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = item.label;
      box.name = "label";
      box.addEventListener("change", () => runSearch());
      label.append(box, item.label + " (" + item.count + ")");
      label.dataset.label = item.label;
      list.append(label);
    }
  } catch (err) {
    list.textContent = "labels unavailable: " + err.message;
  }
}

function selectedLabels() {
  return Array.from(document.querySelectorAll("#label-list input:checked")).map((el) => el.value);
}

// ------------------------------------------------------------------ the query

function showQuery(caption) {
  $("query-view").hidden = false;
  $("query-caption").textContent = caption;
  $("search-btn").disabled = false;
  clearBox();
}

function useFile(file) {
  if (!file) return;
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  state.query = { kind: "file", file: file, name: file.name };
  $("query-img").src = state.objectUrl;
  showQuery("Query: " + file.name);
  runSearch();
}

function useIndexed(hit) {
  state.query = { kind: "id", id: hit.image_id, width: hit.width, height: hit.height, name: baseName(hit.path) };
  setImage($("query-img"), hit.thumbnail_url + "?size=512");
  showQuery("Query: indexed image " + (state.query.name || hit.image_id));
  window.scrollTo({ top: 0, behavior: "smooth" });
  runSearch();
}

function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

// Size of the original image, in the pixels the server uses for boxes (after EXIF rotation).
function originalSize() {
  const img = $("query-img");
  if (state.query && state.query.kind === "id") return [state.query.width, state.query.height];
  return [img.naturalWidth, img.naturalHeight];
}

// ------------------------------------------------------------------ drawing a box

function clearBox() {
  state.box = null;
  $("box").hidden = true;
  $("clear-box").hidden = true;
}

function setupBoxDrawing() {
  const stage = $("stage");
  const boxEl = $("box");
  let start = null;

  const point = (event) => {
    const rect = $("query-img").getBoundingClientRect();
    return {
      x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
      y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
      rect: rect,
    };
  };
  const place = (a, b) => {
    boxEl.style.left = Math.min(a.x, b.x) + "px";
    boxEl.style.top = Math.min(a.y, b.y) + "px";
    boxEl.style.width = Math.abs(a.x - b.x) + "px";
    boxEl.style.height = Math.abs(a.y - b.y) + "px";
  };

  stage.addEventListener("pointerdown", (event) => {
    if (!state.query) return;
    start = point(event);
    stage.setPointerCapture(event.pointerId);
    place(start, start);
    boxEl.hidden = false;
  });
  stage.addEventListener("pointermove", (event) => {
    if (start) place(start, point(event));
  });
  stage.addEventListener("pointerup", (event) => {
    if (!start) return;
    const end = point(event);
    const a = start;
    start = null;
    if (Math.abs(a.x - end.x) < MIN_BOX_PX || Math.abs(a.y - end.y) < MIN_BOX_PX) {
      clearBox();
      return;
    }
    const [width, height] = originalSize();
    const sx = width / a.rect.width;
    const sy = height / a.rect.height;
    state.box = [
      Math.round(Math.min(a.x, end.x) * sx),
      Math.round(Math.min(a.y, end.y) * sy),
      Math.round(Math.max(a.x, end.x) * sx),
      Math.round(Math.max(a.y, end.y) * sy),
    ];
    $("clear-box").hidden = false;
    runSearch();
  });
}

// ------------------------------------------------------------------ searching

function options() {
  const mode = $("label-mode").value;
  const labels = selectedLabels();
  return {
    k: Number($("k").value),
    labels: { any: mode === "any" ? labels : [], all: mode === "all" ? labels : [], none: mode === "none" ? labels : [] },
    minScore: Number($("min-score").value),
    minArea: Number($("min-area").value),
    objects: $("objects").checked,
    aqe: $("aqe").checked ? 3 : 0,
  };
}

function request(opts) {
  const q = state.query;
  if (q.kind === "file") {
    const form = new FormData();
    form.append("file", q.file, q.name);
    form.append("k", String(opts.k));
    for (const mode of ["any", "all", "none"]) {
      for (const label of opts.labels[mode]) form.append("labels_" + mode, label);
    }
    form.append("min_score", String(opts.minScore));
    form.append("min_area", String(opts.minArea));
    form.append("objects", String(opts.objects));
    form.append("aqe", String(opts.aqe));
    if (state.box) form.append("box", state.box.join(","));
    return api("/search/image", { method: "POST", body: form });
  }
  const body = {
    image_id: q.id,
    k: opts.k,
    filters: { any: opts.labels.any, all: opts.labels.all, none: opts.labels.none, min_score: opts.minScore, min_area: opts.minArea },
    box: state.box,
    objects: opts.objects,
    rerank: { aqe: opts.aqe },
  };
  return api("/search/id", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function runSearch() {
  if (!state.query) return;
  const seq = ++state.searchSeq;
  setStatus("Searching…");
  document.body.dataset.searching = "true";
  try {
    const result = await request(options());
    if (seq !== state.searchSeq) return; // a newer search started meanwhile
    renderResults(result);
    const filtered = selectedLabels().length ? " (label filter on)" : "";
    setStatus(result.hits.length + " results in " + Math.round(result.took_ms) + " ms" + filtered);
  } catch (err) {
    if (seq === state.searchSeq) setStatus("Search failed: " + err.message, true);
  } finally {
    if (seq === state.searchSeq) document.body.dataset.searching = "false";
  }
}

function renderResults(result) {
  const grid = $("results");
  grid.textContent = "";
  for (const hit of result.hits) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.id = hit.image_id;
    card.title = (hit.path || "uploaded image") + "\nclick to search with this image";

    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.alt = baseName(hit.path) || "result " + hit.image_id;
    img.loading = "lazy";
    setImage(img, hit.thumbnail_url);
    thumb.append(img);

    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3) + (hit.region_label ? " · object: " + hit.region_label : "");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = baseName(hit.path) || "uploaded";
    const chips = document.createElement("span");
    chips.className = "chips";
    const seen = new Set();
    for (const lab of hit.labels) {
      if (seen.has(lab.label)) continue;
      seen.add(lab.label);
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = lab.label;
      chips.append(chip);
    }
    meta.append(score, name, chips);
    card.append(thumb, meta);
    card.addEventListener("click", () => useIndexed(hit));
    grid.append(card);
  }
}

// ------------------------------------------------------------------ wiring

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
  });
}

function setupOptions() {
  $("options").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  for (const id of ["k", "label-mode", "objects", "aqe"]) $(id).addEventListener("change", () => runSearch());
  for (const id of ["min-score", "min-area"]) {
    $(id).addEventListener("input", () => ($(id + "-out").textContent = $(id).value));
    $(id).addEventListener("change", () => runSearch());
  }
  $("clear-box").addEventListener("click", () => {
    clearBox();
    runSearch();
  });
  $("api-key").value = apiKey();
  $("save-key").addEventListener("click", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadStats();
    loadLabels();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupDrop();
  setupOptions();
  setupBoxDrawing();
  loadStats();
  loadLabels();
});
