// Index a folder: start a job on a server folder (keyed), follow its progress (done/total,
// rate, time left, failures with their reasons) until it ends, or cancel it.

import { api, apiKey, postJson, query } from "./api.js";
import { $, el, setStatus } from "./dom.js";

const POLL_MS = 500;
let job = null; // the JobPublic followed
let timer = null;
let changed = () => {};
let failuresShown = -1;

function seconds(a, b) {
  return Math.max(0.001, (new Date(b) - new Date(a)) / 1000);
}

function duration(s) {
  if (!isFinite(s)) return "—";
  if (s < 60) return Math.ceil(s) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

function render(j) {
  const processed = j.done + j.skipped + j.failed;
  const progress = $("job-progress");
  progress.max = Math.max(1, j.total);
  progress.value = processed;
  const elapsed = seconds(j.created_at, j.updated_at);
  const rate = processed / elapsed;
  const parts = [
    processed + " / " + j.total + " files",
    j.done + " indexed",
    j.skipped + " skipped",
    j.failed + " failed",
    rate.toFixed(1) + " files/s",
  ];
  if (!j.finished && rate > 0) parts.push("about " + duration((j.total - processed) / rate) + " left");
  $("job-line").textContent = (j.finished ? j.status + " · " : "") + parts.join(" · ");
  $("job-line").dataset.status = j.status;
  $("job-message").textContent = j.message || "";
  $("job-cancel").hidden = j.finished;
  document.body.dataset.job = j.finished ? "finished" : "running";
}

async function showFailures(j) {
  if (j.failed === failuresShown) return;
  failuresShown = j.failed;
  const root = j.params.path;
  const data = await api("/failures" + query({ prefix: root, limit: 200 }));
  // under the folder only (not a sibling that shares the prefix, "/photos2" for "/photos")
  const failures = data.failures.filter((f) => f.path === root || f.path.startsWith(root.replace(/\/$/, "") + "/"));
  const list = $("job-failures");
  list.textContent = "";
  for (const f of failures) {
    list.append(el("li", { dataset: { path: f.path } }, el("span", { className: "name", text: f.path }), el("span", { text: f.reason })));
  }
  $("job-failures-title").hidden = !failures.length;
}

async function poll() {
  timer = null;
  if (!job) return;
  try {
    job = await api("/jobs/" + encodeURIComponent(job.id));
    render(job);
    if (job.failed || job.finished) await showFailures(job);
    if (job.done) changed();
    if (!job.finished) timer = setTimeout(poll, POLL_MS);
    else setStatus($("job-status"), "Job " + job.status + ".");
  } catch (err) {
    setStatus($("job-status"), "Could not follow the job: " + err.message, true);
    timer = setTimeout(poll, POLL_MS * 4);
  }
}

function follow(j) {
  job = j;
  failuresShown = -1;
  $("job-failures").textContent = "";
  $("job-failures-title").hidden = true;
  $("job-view").hidden = false;
  render(j);
  if (timer) clearTimeout(timer);
  timer = setTimeout(poll, POLL_MS);
}

async function start(event) {
  event.preventDefault();
  setStatus($("job-status"), "Starting…");
  try {
    const body = { path: $("job-path").value.trim(), detect: $("job-detect").checked };
    follow(await postJson("/jobs", body));
    setStatus($("job-status"), "Job " + job.id + " started.");
  } catch (err) {
    setStatus($("job-status"), "Could not start: " + err.message, true);
  }
}

async function cancel() {
  if (!job) return;
  try {
    job = await api("/jobs/" + encodeURIComponent(job.id) + "/cancel", { method: "POST" });
    render(job);
    setStatus($("job-status"), "Cancelling: the work in flight is written first.");
  } catch (err) {
    setStatus($("job-status"), "Could not cancel: " + err.message, true);
  }
}

export function setup(onChange) {
  changed = onChange;
  $("job-form").addEventListener("submit", start);
  $("job-cancel").addEventListener("click", cancel);
}

// Shown: follow the running job, if any (the job list needs the key; without one, nothing to follow).
export async function show() {
  if (job && !job.finished) return;
  if (!apiKey()) {
    setStatus($("job-status"), "Index jobs need the API key: enter it above (API key).");
    return;
  }
  try {
    const data = await api("/jobs" + query({ limit: 1 }));
    if (data.jobs.length && !data.jobs[0].finished) follow(data.jobs[0]);
  } catch (err) {
    setStatus($("job-status"), err.status === 401 || err.status === 403 ? "Enter the API key to index folders." : err.message);
  }
}
