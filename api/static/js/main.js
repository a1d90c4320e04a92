// imsearch web page: one page, a view per address (#/browse, #/image/<id>, #/search,
// #/duplicates, #/add, #/jobs). Plain ES modules, no build step; the JSON API under /api/v1.

import { api, apiKey, setApiKey } from "./api.js";
import { $ } from "./dom.js";
import * as add from "./add.js";
import * as browse from "./browse.js";
import * as duplicates from "./duplicates.js";
import * as image from "./image.js";
import * as jobs from "./jobs.js";
import * as search from "./search.js";

const VIEWS = { browse, image, search, duplicates, add, jobs };

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
  browse.markStale();
  loadStats();
}

function route() {
  const [name, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const view = name in VIEWS ? name : "browse";
  for (const key of Object.keys(VIEWS)) $("view-" + key).hidden = key !== view;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
  return VIEWS[view].show(arg ? decodeURIComponent(arg) : undefined);
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
    search.reload();
    route();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  browse.setup();
  image.setup();
  search.setup();
  duplicates.setup(changed);
  add.setup(changed);
  jobs.setup(changed);
  window.addEventListener("hashchange", route);
  // the view's own requests first: the counts in the header wait for them (one server, two cores)
  Promise.resolve(route()).finally(loadStats);
});
