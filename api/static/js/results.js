// A list of search results with "more": the first page, then the next pages from the API's
// next_offset (the same request with offset = next_offset), appended to the grid.

import { postJson } from "./api.js";
import { renderHits, setStatus } from "./dom.js";

export class ResultList {
  // grid, status line, "more" button; pick(hit) when a result is chosen; busy(flag) around requests
  constructor({ grid, status, more, pick, hint, busy }) {
    Object.assign(this, { grid, status, more, pick, hint, busy: busy || (() => {}) });
    this.seq = 0;
    this.send = null;
    this.next = null;
    this.count = 0;
    more.addEventListener("click", () => this.page());
  }

  // send(offset) -> Promise of a SearchResponse; describe(response, shown) -> the status text
  async start(send, describe) {
    this.send = send;
    this.describe = describe;
    this.next = 0;
    this.count = 0;
    return this.page(true);
  }

  async page(reset) {
    if (this.send === null || this.next === null) return;
    const seq = ++this.seq;
    const offset = reset ? 0 : this.next;
    setStatus(this.status, reset ? "Searching…" : "Loading more…");
    this.busy(true);
    try {
      const result = await this.send(offset);
      if (seq !== this.seq) return;
      if (reset) this.grid.textContent = "";
      renderHits(this.grid, result.hits, this.pick, this.hint);
      this.count += result.hits.length;
      // next_offset: null when there is nothing more (an API without paging has none: no button)
      this.next = result.next_offset === undefined ? null : result.next_offset;
      this.more.hidden = this.next === null;
      setStatus(this.status, this.describe(result, this.count));
    } catch (err) {
      if (seq === this.seq) setStatus(this.status, "Search failed: " + err.message, true);
    } finally {
      if (seq === this.seq) this.busy(false);
    }
  }

  clear() {
    this.seq++;
    this.send = null;
    this.grid.textContent = "";
    this.more.hidden = true;
    setStatus(this.status, "");
  }
}

// A search by an indexed image (optionally a box on it) as a ``send`` for ResultList.start.
export function searchById(body) {
  // offset only when past the first page: the field's default is 0
  return (offset) => postJson("/search/id", offset ? Object.assign({}, body, { offset: offset }) : body);
}
