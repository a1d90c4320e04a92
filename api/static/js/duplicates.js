// Duplicates review: groups of near-duplicate photos side by side with their sizes; keep one
// (delete the others) or delete one; a similarity threshold slider. Deleting needs the key.
// Until the slider is moved, the server picks the threshold: the collection's calibrated "copy"
// threshold when it has one (else its default), and the slider is set to it.

import { api, call, query, setImage } from "./api.js";
import { $, baseName, el, formatBytes, setStatus } from "./dom.js";

let seq = 0;
let changed = () => {};
let touched = false; // the slider was moved: its value is the threshold

function busy(flag) {
  document.body.dataset.duplicates = flag ? "loading" : "ready";
}

async function remove(ids) {
  for (const id of ids) await call("/images/" + encodeURIComponent(id), { method: "DELETE" });
  changed();
}

// A button that asks once more before acting ("Keep this" -> "Delete 2 others?").
function confirmButton(text, confirmText, className, action) {
  const button = el("button", { type: "button", className: className, text: text });
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = confirmText;
      button.classList.add("armed");
      return;
    }
    button.disabled = true;
    try {
      await action();
      await load();
    } catch (err) {
      setStatus($("dup-status"), "Delete failed: " + err.message, true);
      button.disabled = false;
    }
  });
  button.addEventListener("blur", () => {
    armed = false;
    button.textContent = text;
    button.classList.remove("armed");
  });
  return button;
}

function member(image, group) {
  const others = group.filter((x) => x.id !== image.id).map((x) => x.id);
  const name = baseName(image.path) || "uploaded image " + image.id;
  const img = el("img", { alt: name, loading: "lazy" });
  setImage(img, image.thumbnail_url);
  const plural = others.length === 1 ? "the other" : "the " + others.length + " others";
  return el(
    "figure",
    { className: "member", dataset: { id: image.id } },
    el("span", { className: "thumb" }, img),
    el(
      "figcaption",
      {},
      el("span", { className: "name", text: name, title: image.path || "" }),
      el("span", { className: "muted", text: image.width + " × " + image.height + " px · " + formatBytes(image.size_bytes) }),
      el("span", { className: "muted", text: image.format }),
      el(
        "span",
        { className: "actions" },
        confirmButton("Keep this", "Delete " + plural + "?", "keep", () => remove(others)),
        confirmButton("Delete", "Delete this one?", "danger small", () => remove([image.id])),
      ),
    ),
  );
}

async function renderGroup(group) {
  const images = await Promise.all(group.image_ids.map((id) => api("/images/" + encodeURIComponent(id))));
  // the largest first: usually the one to keep
  images.sort((a, b) => b.width * b.height - a.width * a.height || b.size_bytes - a.size_bytes);
  return el(
    "section",
    { className: "group", dataset: { ids: group.image_ids.join(",") } },
    el("h3", { text: images.length + " photos · similarity ≥ " + group.min_score.toFixed(3) }),
    el("div", { className: "members" }, ...images.map((image) => member(image, images))),
  );
}

// The slider at the server's threshold (its range widened when the threshold is below it).
function follow(data) {
  const slider = $("dup-threshold");
  if (data.threshold < Number(slider.min)) slider.min = String(Math.floor(data.threshold * 100) / 100);
  slider.value = String(data.threshold);
  $("dup-threshold-out").textContent = data.threshold.toFixed(2);
}

export async function load() {
  const mine = ++seq;
  const asked = touched ? Number($("dup-threshold").value) : null;
  busy(true);
  setStatus($("dup-status"), "Looking for near-duplicates…");
  try {
    const data = await api("/duplicates" + query({ threshold: asked, limit: 50 }));
    const groups = await Promise.all(data.groups.map(renderGroup));
    if (mine !== seq) return;
    if (!touched) follow(data);
    $("dup-groups").replaceChildren(...groups);
    const at = data.threshold_source === "calibration"
      ? data.threshold.toFixed(3) + " (the calibrated copy threshold)"
      : data.threshold.toFixed(2);
    const more = data.total_groups > data.groups.length ? " (the largest " + data.groups.length + " shown)" : "";
    const text = data.total_groups
      ? data.total_groups + (data.total_groups === 1 ? " group" : " groups") + " of near-duplicates at similarity ≥ " + at + more
      : "No near-duplicates at similarity ≥ " + at;
    setStatus($("dup-status"), text);
  } catch (err) {
    if (mine === seq) setStatus($("dup-status"), "Could not look for duplicates: " + err.message, true);
  } finally {
    if (mine === seq) busy(false);
  }
}

export function setup(onChange) {
  changed = onChange;
  const slider = $("dup-threshold");
  slider.addEventListener("input", () => ($("dup-threshold-out").textContent = Number(slider.value).toFixed(2)));
  slider.addEventListener("change", () => {
    touched = true;
    load();
  });
}

export function show() {
  return load();
}
