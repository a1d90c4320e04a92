// imsearch web page: one page, a view per address (#/browse, #/image/<id>, #/search,
// #/duplicates, #/add, #/jobs). Plain ES modules, no build step; the JSON API under /api/v1.
// Browse, the default view, is imported up front; another view's module when it is first
// shown, or once the first view is up.

import { api, apiKey, setApiKey } from "./api.js";
import * as browse from "./browse.js"; // the default view: imported up front
import { $ } from "./dom.js";

const LOADERS = {
  browse: () => Promise.resolve(browse),
  image: () => import("./image.js"),
  search: () => import("./search.js"),
  duplicates: () => import("./duplicates.js"),
  add: () => import("./add.js"),
  jobs: () => import("./jobs.js"),
};
const modules = {};

// The module of a view, imported and set up once.
function view(name) {
  if (!modules[name]) {
    modules[name] = LOADERS[name]().then((m) => {
      m.setup(changed);
      return m;
    });
  }
  return modules[name];
}

async function loadStats() {
  try {
    const s = await api("/stats");
    $("stats").textContent = s.images + " images · " + s.model.split(/[,(]/)[0].trim() + " · " + s.database;
  } catch (err) {
    $("stats").textContent = "stats unavailable: " + err.message;
  }
}

// The collection changed (added, deleted, indexed): browse reloads when shown, the counts now.
function changed() {
  view("browse").then((browse) => browse.markStale());
  loadStats();
}

async function route() {
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const shown = name in LOADERS ? name : "browse";
  for (const key of Object.keys(LOADERS)) $("view-" + key).hidden = key !== shown;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === shown) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = shown;
  const module = await view(shown);
  document.body.dataset.ready = shown; // the view's module is set up (tests wait for it)
  return module.show(arg ? decodeURIComponent(arg) : undefined);
}

function setupKey() {
  $("api-key").value = apiKey();
  $("key-state").textContent = apiKey() ? "a key is set" : "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    $("key-state").textContent = apiKey() ? "saved for this tab" : "cleared";
    $("key-box").open = false;
    loadStats();
    if (modules.search) modules.search.then((search) => search.reload());
    route();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  window.addEventListener("hashchange", route);
  // the view's own requests first; the header's counts and the other views' modules after them
  route().finally(() => {
    loadStats();
    for (const name of Object.keys(LOADERS)) view(name);
  });
});
