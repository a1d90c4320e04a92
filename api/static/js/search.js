// Search by example: pick or drop a photo (or search with an indexed one), optionally draw a
// box on it, filter by detected labels; results a page at a time with "more".

import { api, postJson, setImage } from "./api.js";
import { $, baseName, el, gridKeys } from "./dom.js";
import { ResultList } from "./results.js";

const MIN_BOX_PX = 8;
const state = { query: null, box: null, objectUrl: null };
let results = null;

function busy(flag) {
  document.body.dataset.searching = flag ? "true" : "false";
}

async function loadLabels() {
  const list = $("label-list");
  try {
    const data = await api("/labels");
    list.textContent = "";
    if (!data.labels.length) {
      list.append(el("span", { className: "muted", text: "no labels (index with --detect)" }));
      return;
    }
    for (const item of data.labels) {
      const box = el("input", { type: "checkbox", value: item.label, name: "label" });
      box.addEventListener("change", () => runSearch());
      list.append(el("label", { dataset: { label: item.label } }, box, item.label + " (" + item.count + ")"));
    }
  } catch (err) {
    list.textContent = "labels unavailable: " + err.message;
  }
}

function selectedLabels() {
  return Array.from(document.querySelectorAll("#label-list input:checked")).map((x) => x.value);
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

// Size of the original image, in the pixels the server uses for boxes (after EXIF rotation).
function originalSize() {
  const img = $("query-img");
  if (state.query && state.query.kind === "id") return [state.query.width, state.query.height];
  return [img.naturalWidth, img.naturalHeight];
}

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

// The request of one page (``offset``) of the current query, as a function for ResultList.
function sender(query, box, opts) {
  if (query.kind === "file") {
    return (offset) => {
      const form = new FormData();
      form.append("file", query.file, query.name);
      form.append("k", String(opts.k));
      for (const mode of ["any", "all", "none"]) {
        for (const label of opts.labels[mode]) form.append("labels_" + mode, label);
      }
      form.append("min_score", String(opts.minScore));
      form.append("min_area", String(opts.minArea));
      form.append("objects", String(opts.objects));
      form.append("aqe", String(opts.aqe));
      if (box) form.append("box", box.join(","));
      if (offset) form.append("offset", String(offset));
      return api("/search/image", { method: "POST", body: form });
    };
  }
  const body = {
    image_id: query.id,
    k: opts.k,
    filters: { any: opts.labels.any, all: opts.labels.all, none: opts.labels.none, min_score: opts.minScore, min_area: opts.minArea },
    box: box,
    objects: opts.objects,
    rerank: { aqe: opts.aqe },
  };
  // offset only past the first page: the field's default is 0
  return (offset) => postJson("/search/id", offset ? Object.assign({}, body, { offset: offset }) : body);
}

function runSearch() {
  if (!state.query) return;
  const filtered = selectedLabels().length ? " (label filter on)" : "";
  results.start(
    sender(state.query, state.box, options()),
    (result, shown) => shown + " results in " + Math.round(result.took_ms) + " ms" + filtered,
  );
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
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
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
}

export function setup() {
  results = new ResultList({
    grid: $("results"),
    status: $("status"),
    more: $("results-more"),
    pick: useIndexed,
    hint: "click to search with this image",
    busy: busy,
  });
  setupDrop();
  setupOptions();
  setupBoxDrawing();
  gridKeys($("results"));
}

let labelsLoaded = false;

// The label list is loaded when the search view is first shown (and again after a new key).
export function show() {
  if (!labelsLoaded) {
    labelsLoaded = true;
    return loadLabels();
  }
}

export function reload() {
  labelsLoaded = false;
}
