// The image page: the photo with its detected boxes drawn and labelled, the labels' areas,
// the metadata; "find similar" and "find this object" (click a box) show results in place.

import { api, setImage } from "./api.js";
import { $, baseName, el, formatBytes, formatDate, gridKeys, setStatus } from "./dom.js";
import { ResultList, searchById } from "./results.js";

let current = null; // the ImagePublic shown
let results = null;

function busy(flag) {
  document.body.dataset.searching = flag ? "true" : "false";
}

function meta(image) {
  const list = $("image-meta");
  list.textContent = "";
  const rows = [
    ["File", image.path || "uploaded (kept by the server)"],
    ["Size", image.width + " × " + image.height + " px · " + formatBytes(image.size_bytes) + " · " + image.format],
    ["Taken", formatDate(image.exif_time)],
    ["Added", formatDate(image.added_at)],
    ["Id", image.id],
  ];
  if (image.files.length > 1) rows.push(["Also at", image.files.filter((f) => f !== image.path).join("\n")]);
  for (const [name, value] of rows) list.append(el("dt", { text: name }), el("dd", { text: value }));
}

function areas(image) {
  const list = $("image-labels");
  list.textContent = "";
  if (!image.labels.length) list.append(el("li", { className: "muted", text: "no labels detected" }));
  for (const lab of image.labels) {
    const pct = Math.round(lab.area * 100);
    const bar = el("span", { className: "bar" }, el("span", { className: "fill", dataset: { pct: pct } }));
    bar.firstChild.style.width = pct + "%";
    list.append(
      el(
        "li",
        { dataset: { label: lab.label, source: lab.source } },
        el("span", { text: lab.label + " · " + lab.source + " · score " + lab.score.toFixed(2) + " · " + pct + "% of the photo" }),
        bar,
      ),
    );
  }
}

function boxes(image) {
  const layer = $("image-boxes");
  layer.textContent = "";
  const regions = image.regions.filter((r) => r.source === "detector" || r.source === "manual");
  regions.forEach((region, i) => {
    const [x0, y0, x1, y1] = region.box;
    const name = region.label || "region";
    const score = region.score === null ? "" : " " + Math.round(region.score * 100) + "%";
    const button = el(
      "button",
      {
        type: "button",
        className: "region hue-" + (i % 6),
        title: "find this " + name + " in other photos",
        dataset: { regionId: region.id, label: name },
      },
      el("span", { className: "tag", text: name + score }),
    );
    button.setAttribute("aria-label", "find this " + name + " in other photos");
    button.style.left = (100 * x0) / image.width + "%";
    button.style.top = (100 * y0) / image.height + "%";
    button.style.width = (100 * (x1 - x0)) / image.width + "%";
    button.style.height = (100 * (y1 - y0)) / image.height + "%";
    button.addEventListener("click", () => findObject(region));
    layer.append(button);
  });
}

function describe(what) {
  return (result, shown) => shown + " " + what + " · " + Math.round(result.took_ms) + " ms";
}

function findSimilar() {
  $("image-results-title").hidden = false;
  $("image-results-title").textContent = "Similar photos";
  for (const b of document.querySelectorAll("#image-boxes .region")) b.classList.remove("active");
  results.start(searchById({ image_id: current.id, k: 24 }), describe("similar photos"));
}

function findObject(region) {
  const name = region.label || "region";
  $("image-results-title").hidden = false;
  $("image-results-title").textContent = "Photos with this " + name;
  for (const b of document.querySelectorAll("#image-boxes .region")) {
    b.classList.toggle("active", b.dataset.regionId === region.id);
  }
  const body = { image_id: current.id, k: 24, box: region.box, objects: true };
  results.start(searchById(body), describe("matches for the " + name));
}

export async function show(id) {
  delete document.body.dataset.image; // set again once this photo is shown
  $("image-title").textContent = "Loading…";
  $("image-boxes").textContent = "";
  $("image-img").removeAttribute("src");
  $("image-results-title").hidden = true;
  results.clear();
  try {
    const image = await api("/images/" + encodeURIComponent(id));
    current = image;
    const name = baseName(image.path) || "uploaded image " + image.id;
    $("image-title").textContent = name;
    $("image-img").alt = name;
    $("image-stage").style.maxWidth = "calc(75vh * " + (image.width / image.height).toFixed(4) + ")";
    setImage($("image-img"), image.thumbnail_url + "?size=1024");
    meta(image);
    areas(image);
    boxes(image);
    document.body.dataset.image = image.id;
  } catch (err) {
    $("image-title").textContent = "Photo not available";
    setStatus($("image-status"), err.message, true);
  }
}

export function setup() {
  results = new ResultList({
    grid: $("image-results"),
    status: $("image-status"),
    more: $("image-more"),
    pick: (hit) => (location.hash = "#/image/" + hit.image_id),
    hint: "open this photo",
    busy: busy,
  });
  $("find-similar").addEventListener("click", findSimilar);
  $("show-boxes").addEventListener("change", () => ($("image-boxes").hidden = !$("show-boxes").checked));
  $("image-back").addEventListener("click", (event) => {
    if (history.length > 1) {
      event.preventDefault();
      history.back();
    }
  });
  gridKeys($("image-results"));
}
