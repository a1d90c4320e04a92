// Add photos: drop or choose several files; each is uploaded (keyed) and shows what became of
// it: indexed, already present, or refused with the server's reason.

import { call } from "./api.js";
import { $, el, formatBytes, setStatus } from "./dom.js";

let changed = () => {};
let pending = 0;

function row(file) {
  const state = el("span", { className: "state", text: "waiting" });
  const node = el(
    "li",
    { dataset: { name: file.name, state: "waiting" } },
    el("span", { className: "name", text: file.name }),
    el("span", { className: "muted", text: formatBytes(file.size) }),
    state,
  );
  const set = (kind, text, link) => {
    node.dataset.state = kind;
    state.textContent = text;
    if (link) {
      state.append(" · ", el("a", { href: "#/image/" + link, text: "open" }));
    }
  };
  return { node, set };
}

async function upload(file, view) {
  view.set("uploading", "uploading…");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const { status, body } = await call("/images", { method: "POST", body: form });
    if (status === 201) view.set("indexed", "indexed", body.id);
    else view.set("present", "already present", body.id);
    changed();
  } catch (err) {
    view.set("refused", "refused: " + err.message);
  }
}

async function addFiles(files) {
  const list = Array.from(files);
  if (!list.length) return;
  const views = list.map((file) => {
    const view = row(file);
    $("add-list").prepend(view.node);
    return view;
  });
  pending += list.length;
  document.body.dataset.uploading = "true";
  setStatus($("add-status"), "Adding " + pending + " photos…");
  for (let i = 0; i < list.length; i++) {
    await upload(list[i], views[i]); // one at a time: the server indexes one upload at a time anyway
    pending--;
  }
  if (!pending) {
    const states = Array.from($("add-list").children).map((li) => li.dataset.state);
    const count = (s) => states.filter((x) => x === s).length;
    setStatus(
      $("add-status"),
      count("indexed") + " indexed · " + count("present") + " already present · " + count("refused") + " refused",
    );
    document.body.dataset.uploading = "false";
  }
}

export function setup(onChange) {
  changed = onChange;
  const drop = $("add-drop");
  $("add-files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
}

export function show() {}
