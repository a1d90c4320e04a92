// DOM helpers: elements built with textContent only (never innerHTML with data), status lines,
// result cards, keyboard navigation of a grid.

import { setImage } from "./api.js";

export const $ = (id) => document.getElementById(id);

// el("span", {className: "chip", text: "dog"}, child...): properties, then children (nodes or text).
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function setStatus(node, text, isError) {
  node.textContent = text;
  node.classList.toggle("error", Boolean(isError));
}

export function baseName(path) {
  return path ? path.split(/[\\/]/).pop() : "";
}

export function formatBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}

export function formatDate(text) {
  return text ? new Date(text).toLocaleString() : "—";
}

function chips(labels) {
  const box = el("span", { className: "chips" });
  for (const label of labels) box.append(el("span", { className: "chip", text: label }));
  return box;
}

// A grid card (a button): thumbnail with alt text from the file name, then the lines given.
export function card({ id, path, thumbnail, lines, labels, title, onClick }) {
  const name = baseName(path) || "uploaded image " + id;
  const img = el("img", { alt: name, loading: "lazy", decoding: "async", width: 256, height: 256 });
  setImage(img, thumbnail);
  const meta = el("span", { className: "meta" });
  for (const line of lines || []) meta.append(el("span", { className: line.className || "", text: line.text }));
  if (labels && labels.length) meta.append(chips(labels));
  const node = el(
    "button",
    { type: "button", className: "card", title: title || path || name, dataset: { id: id } },
    el("span", { className: "thumb" }, img),
    meta,
  );
  node.addEventListener("click", onClick);
  return node;
}

// The calibrated match levels as shown on a card (the API's ``match``).
const MATCH_TEXT = { copy: "copy", near: "near duplicate", similar: "similar" };

// Search hits as cards (appended to ``grid``); ``onPick(hit)`` when one is chosen.
export function renderHits(grid, hits, onPick, hint) {
  for (const hit of hits) {
    const seen = [...new Set(hit.labels.map((x) => x.label))];
    const level = hit.match ? " · " + (MATCH_TEXT[hit.match] || hit.match) : "";
    const score = hit.score.toFixed(3) + level + (hit.region_label ? " · object: " + hit.region_label : "");
    grid.append(
      card({
        id: hit.image_id,
        path: hit.path,
        thumbnail: hit.thumbnail_url,
        lines: [
          { className: "score" + (hit.match ? " match-" + hit.match : ""), text: score },
          { className: "name", text: baseName(hit.path) || "uploaded" },
        ],
        labels: seen,
        title: (hit.path || "uploaded image") + (hint ? "\n" + hint : ""),
        onClick: () => onPick(hit),
      }),
    );
  }
}

// Arrow keys move the focus between a grid's cards (up/down by a row), Home/End to the ends;
// Enter and Space activate a card (it is a button).
export function gridKeys(grid) {
  grid.addEventListener("keydown", (event) => {
    const cards = Array.from(grid.querySelectorAll(".card"));
    const at = cards.indexOf(document.activeElement);
    if (at < 0) return;
    const top = (c) => c.getBoundingClientRect().top;
    let columns = cards.findIndex((c) => top(c) > top(cards[0]) + 1);
    if (columns < 1) columns = cards.length;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns };
    let next = null;
    if (event.key in moves) next = at + moves[event.key];
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = cards.length - 1;
    if (next === null) return;
    event.preventDefault();
    next = Math.max(0, Math.min(cards.length - 1, next));
    cards[next].focus();
    grid.dispatchEvent(new CustomEvent("gridmove", { detail: { index: next, count: cards.length } }));
  });
}
