// HTTP helpers: the JSON API under /api/v1, the API key (one per tab), images that may need the key.

export const API = "/api/v1";
const KEY_STORAGE = "imsearch-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

// An error with the API's problem document (RFC 9457): .status, .detail, .problem.
export class ApiError extends Error {
  constructor(status, detail, problem) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.problem = problem;
  }
}

// The raw response and its parsed body; throws ApiError on an HTTP error (detail from the problem JSON).
export async function call(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  let response;
  try {
    response = await fetch(path.startsWith(API) ? path : API + path, opts);
  } catch (err) {
    throw new ApiError(0, "the server did not answer (" + err.message + ")", null);
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
    throw new ApiError(response.status, detail, body);
  }
  return { status: response.status, body: body };
}

export async function api(path, options) {
  return (await call(path, options)).body;
}

export function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// A query string from an object; arrays repeat the field, null/undefined/"" are left out.
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (Array.isArray(value)) for (const v of value) q.append(name, String(v));
    else if (value !== null && value !== undefined && value !== "") q.append(name, String(value));
  }
  const text = q.toString();
  return text ? "?" + text : "";
}

// Plain image URLs, or fetched with the key header (as a blob: URL) when a key is set.
export async function setImage(img, url) {
  if (!apiKey()) {
    img.src = url;
    return;
  }
  try {
    const response = await fetch(url, { headers: headers() });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch (err) {
    img.title = "could not load: " + err.message;
  }
}
