"""The web page in a real headless Chromium against a real ``imsearch serve`` on a loopback port:
search by example (with "more"), browse (facets, sort, prefix, keyboard), the image page
(boxes, find this object, find similar), each at desktop size and at 375 px.

Debian's chromium (``apt-get install chromium``; ``make setup`` does it) driven by PyPI
``playwright``; every request off the loopback interface is aborted (and fails the test),
so is any console error; a screenshot of each step goes to ``test-artifacts/``. The
flows that write (duplicates, uploads, index jobs) are in ``test_web_writes.py``, which
uses the fixtures of this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, MODEL_DIR, Layout, build_collection

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
REPO = Path(__file__).resolve().parents[2]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}


def key_of(path: Path) -> str:
    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"imsearch serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"imsearch serve did not answer on {url} within {timeout} s")


@contextmanager
def serve(data_dir: Path, layout: Layout, *more_roots: Path) -> Iterator[str]:
    """``imsearch serve`` (the real CLI, uvicorn) over ``data_dir`` on a free loopback port
    (default rate limits: a page of thumbnails must fit in them); originals are served from
    the layout's allowed root and ``more_roots`` only."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    roots = ",".join(str(r) for r in (layout.allowed, *more_roots))
    env.update(IMSEARCH_API_KEYS=API_KEY, IMSEARCH_ALLOWED_ROOTS=roots, IMSEARCH_MODEL_DIR=str(MODEL_DIR))
    env.update(IMSEARCH_JOB_NICE="0", IMSEARCH_JOB_BATCH_SIZE="8")
    log = (data_dir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--device", "cpu", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        finally:
            log.close()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -SIGTERM)
        text = (data_dir / "serve.log").read_text()
        assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in text, text


def get_json(url: str, **params: Any) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    req = urllib.request.Request(url + ("?" + query if query else ""), headers={"X-API-Key": API_KEY})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("api-web")
    build_collection(data_dir, None, small_model, [layout.library])
    with serve(data_dir, layout) as url:
        yield url


@contextmanager
def launch_chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does it)", pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as chromium:
        yield chromium


@dataclass
class Tab:
    """A page in its own browser context, with what went wrong in it."""

    page: Any
    errors: list[str] = field(default_factory=list)
    offsite: list[str] = field(default_factory=list)
    #: "Failed to load resource" console lines the test expects (an upload the server refuses)
    expected_statuses: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        left = list(self.errors)
        for status in self.expected_statuses:
            match = next((e for e in left if f"status of {status}" in e), None)
            if match is None:
                return [*left, f"expected a refused request with status {status}"]
            left.remove(match)
        return left + [f"request off the loopback interface: {u}" for u in self.offsite]


@contextmanager
def open_tab(browser: Any, url: str, *, viewport: dict[str, int] = DESKTOP, key: bool = True) -> Iterator[Tab]:
    """A fresh tab on ``url`` (every non-loopback request aborted); the API key entered once."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    tab = Tab(page)

    def guard(route: Any) -> None:
        host = urllib.parse.urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost", "::1"):
            route.continue_()
        else:
            tab.offsite.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    page.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    wait_js(page, "document.body.dataset.ready !== undefined")  # the first view's module is set up
    if key:
        page.click("#key-box summary")
        page.fill("#api-key", API_KEY)
        page.click("#save-key")
        assert page.text_content("#key-state") == "saved for this tab"
    try:
        yield tab
    except BaseException as exc:
        exc.add_note(f"in the page: {tab.errors + tab.offsite}")
        raise
    finally:
        context.close()
    assert not tab.problems(), tab.problems()


def wait_js(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll ``expression`` in the page (not wait_for_function: the page's CSP forbids its eval)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        time.sleep(0.05)


def wait_data(page: Any, name: str, value: str, timeout: float = 60.0) -> None:
    wait_js(page, f"document.body.dataset.{name} === '{value}'", timeout)


def ids_in(page: Any, selector: str) -> list[str]:
    return [str(x) for x in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.id)")]


def card_labels(page: Any, grid: str = "#results") -> list[set[str]]:
    raw = page.eval_on_selector_all(
        f"{grid} .card", "els => els.map(e => Array.from(e.querySelectorAll('.chip')).map(c => c.textContent))"
    )
    return [set(x) for x in raw]


def images_loaded(page: Any, selector: str) -> None:
    every = "every(i => i.complete && i.naturalWidth > 0)"
    wait_js(page, f"Array.from(document.querySelectorAll('{selector} img')).{every}")


def scroll_through(page: Any) -> None:
    """Scroll the page from top to bottom a window at a time (lazy images below the fold load)."""
    height = int(page.evaluate("document.documentElement.scrollHeight"))
    for y in range(0, height, int(page.viewport_size["height"]) // 2):
        page.evaluate(f"window.scrollTo(0, {y})")
        time.sleep(0.05)
    page.evaluate("window.scrollTo(0, 0)")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def fits_width(page: Any) -> None:
    """Nothing wider than the window (no sideways scrolling at 375 px)."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width


# ---------------------------------------------------------------------------- search


def test_search_upload_filter_click_box_and_more(browser: Any, server: str, layout: Layout) -> None:
    with open_tab(browser, server + "/#/search", key=False) as tab:
        page = tab.page
        page.wait_for_selector("#label-list label[data-label='person']")
        wait_js(page, "document.getElementById('stats').textContent.includes(' images · ')")  # after the view's own

        # 1. pick a photo: a first page of 12 results, the photo itself first, then "more"
        page.select_option("#k", "12")
        query = layout.library / "Motorbikes_image_0002.jpg"
        with page.expect_response(lambda r: "/api/v1/search/image" in r.url) as resp:
            page.set_input_files("#file", str(query))
        first = resp.value.json()
        wait_data(page, "searching", "false")
        ids = ids_in(page, "#results .card")
        n_photos = len(layout.library_photos())
        assert ids[0] == key_of(query) and len(ids) == 12 and first["next_offset"] == 12
        # indexed with torch bf16, searched with onnxruntime fp32 (model_engine=auto): the same photo scores >= 0.999
        assert float(page.inner_text("#results .card .score").split()[0]) >= 0.999
        images_loaded(page, "#results")
        shot(page, "search-1-upload")
        with page.expect_request(lambda r: "/api/v1/search/image" in r.url) as req:
            page.click("#results-more")
        assert "offset" in (req.value.post_data or "")
        wait_js(page, f"document.querySelectorAll('#results .card').length === {n_photos}")
        more = ids_in(page, "#results .card")
        assert more[:12] == ids and len(set(more)) == n_photos and page.is_hidden("#results-more")
        assert page.inner_text("#status").startswith(f"{n_photos} results")
        shot(page, "search-2-more")

        # 2. a label filter: only images with a person
        page.select_option("#k", "24")
        wait_data(page, "searching", "false")
        with page.expect_response(lambda r: "/api/v1/search/image" in r.url) as resp:
            page.click("#label-list label[data-label='person']")
        assert resp.value.ok
        wait_data(page, "searching", "false")
        labels = card_labels(page)
        assert labels and all("person" in found for found in labels)
        chip = page.inner_text("#label-list label[data-label='person']")  # "person (N)": N images have it
        assert len(labels) == int(chip.split("(")[1].rstrip(")"))
        assert "label filter on" in page.inner_text("#status")

        # 3. click a result: search with that indexed image (it is left out of its own results)
        clicked = ids_in(page, "#results .card")[0]
        with page.expect_response(lambda r: "/api/v1/search/id" in r.url) as resp:
            page.click(f"#results .card[data-id='{clicked}']")
        assert resp.value.ok and resp.value.json()["query"]["image_id"] == clicked
        wait_data(page, "searching", "false")
        assert "indexed image" in page.inner_text("#query-caption")
        assert clicked not in ids_in(page, "#results .card")
        assert all("person" in found for found in card_labels(page))

        # 4. draw a box on the query: the search is sent with it
        page.click("#label-list label[data-label='person']")  # filter off again
        wait_data(page, "searching", "false")
        img = page.locator("#query-img")
        wait_js(page, "document.getElementById('query-img').naturalWidth > 0")
        bb = img.bounding_box()
        assert bb is not None
        with page.expect_request(lambda r: "/api/v1/search/id" in r.url) as req:
            page.mouse.move(bb["x"] + bb["width"] * 0.2, bb["y"] + bb["height"] * 0.2)
            page.mouse.down()
            page.mouse.move(bb["x"] + bb["width"] * 0.7, bb["y"] + bb["height"] * 0.8, steps=5)
            page.mouse.up()
        sent = req.value.post_data_json
        assert sent["image_id"] == clicked and sent["box"] is not None and "offset" not in sent
        x0, y0, x1, y1 = sent["box"]
        assert 0 <= x0 < x1 and 0 <= y0 < y1
        wait_data(page, "searching", "false")
        assert page.is_visible("#box") and page.is_visible("#clear-box") and ids_in(page, "#results .card")
        shot(page, "search-3-box")

    with open_tab(browser, server + "/#/search", viewport=PHONE, key=False) as tab:
        tab.page.set_input_files("#file", str(query))
        tab.page.wait_for_selector("#results .card")
        wait_data(tab.page, "searching", "false")
        scroll_through(tab.page)
        images_loaded(tab.page, "#results")
        fits_width(tab.page)
        shot(tab.page, "search-4-375px")


# ---------------------------------------------------------------------------- browse


def test_browse_pages_facets_sort_prefix_and_keyboard(browser: Any, server: str, layout: Layout) -> None:
    api = server + "/api/v1/images"
    everything = get_json(api, sort="-added", limit=200, facets="true")
    assert everything["total"] == len(layout.library_photos()) and everything["next_offset"] is None
    with open_tab(browser, server + "/?page=5#/browse") as tab:
        page = tab.page
        # pages of 5 follow each other as the end of the grid comes into view (or "Show more")
        wait_js(page, f"document.querySelectorAll('#browse-grid .card').length === {everything['total']}")
        wait_data(page, "browse", "ready")
        assert ids_in(page, "#browse-grid .card") == [x["id"] for x in everything["items"]]
        assert page.inner_text("#browse-status") == f"{everything['total']} of {everything['total']} photos"
        names = page.eval_on_selector_all("#browse-grid .card img", "els => els.map(e => e.alt)")
        assert sorted(names) == sorted(p.name for p in layout.library_photos())  # alt text: the file names
        facets = {f["label"]: f["count"] for f in everything["facets"]}
        assert page.inner_text("#facets label[data-label='person']") == f"person ({facets['person']})"
        images_loaded(page, "#browse-grid")
        shot(page, "browse-1-grid")

        # a facet: only photos with a person; the other facets count within them
        page.click("#facets label[data-label='person']")
        people = get_json(api, sort="-added", limit=200, label="person", facets="true")
        wait_js(page, f"document.querySelectorAll('#browse-grid .card').length === {people['total']}")
        wait_data(page, "browse", "ready")
        assert ids_in(page, "#browse-grid .card") == [x["id"] for x in people["items"]]
        assert people["total"] == facets["person"] < everything["total"]
        assert "(filtered)" in page.inner_text("#browse-status")
        for f in people["facets"]:
            assert page.inner_text(f"#facets label[data-label='{f['label']}']") == f"{f['label']} ({f['count']})"
        page.click("#facets label[data-label='person']")  # off again

        # sort by path, then a path prefix
        page.select_option("#browse-sort", "path")
        wait_js(page, f"document.querySelectorAll('#browse-grid .card').length === {everything['total']}")
        wait_data(page, "browse", "ready")
        by_path = [x["id"] for x in get_json(api, sort="path", limit=200)["items"]]
        assert ids_in(page, "#browse-grid .card") == by_path == [key_of(p) for p in layout.library_photos()]
        prefix = str(layout.library / "Motorbikes_")
        page.fill("#browse-prefix", prefix)
        motorbikes = sorted(p for p in layout.library_photos() if p.name.startswith("Motorbikes_"))
        wait_js(page, f"document.querySelectorAll('#browse-grid .card').length === {len(motorbikes)}")
        wait_data(page, "browse", "ready")
        assert ids_in(page, "#browse-grid .card") == [key_of(p) for p in motorbikes]
        shot(page, "browse-2-prefix")

        # keyboard: arrows move between cards, Enter opens the photo; back returns to the same card
        page.focus("#browse-grid .card")
        page.keyboard.press("ArrowRight")
        second = ids_in(page, "#browse-grid .card")[1]
        assert page.evaluate("document.activeElement.dataset.id") == second
        page.keyboard.press("End")
        assert page.evaluate("document.activeElement.dataset.id") == key_of(motorbikes[-1])
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view-image:not([hidden])")
        assert page.url.endswith(f"#/image/{key_of(motorbikes[-2])}")
        wait_js(page, f"document.body.dataset.image === '{key_of(motorbikes[-2])}'")
        page.go_back()
        page.wait_for_selector("#view-browse:not([hidden])")
        assert page.evaluate("document.activeElement.dataset.id") == key_of(motorbikes[-2])

    with open_tab(browser, server + "/#/browse", viewport=PHONE, key=False) as tab:
        page = tab.page
        wait_js(page, f"document.querySelectorAll('#browse-grid .card').length === {everything['total']}")
        scroll_through(page)
        images_loaded(page, "#browse-grid")
        fits_width(page)
        shot(page, "browse-3-375px")


# ---------------------------------------------------------------------------- the image page


def test_image_page_boxes_find_this_object_and_similar(browser: Any, server: str, layout: Layout) -> None:
    photo = layout.library / "umbrella_image_0002.jpg"  # an umbrella and a person
    image_id = key_of(photo)
    meta = get_json(f"{server}/api/v1/images/{image_id}")
    detected = [r for r in meta["regions"] if r["source"] == "detector"]
    assert detected, meta
    with open_tab(browser, f"{server}/#/image/{image_id}") as tab:
        page = tab.page
        wait_js(page, f"document.body.dataset.image === '{image_id}'")
        assert page.inner_text("#image-title") == photo.name
        assert page.get_attribute("#image-img", "alt") == photo.name
        wait_js(page, "document.getElementById('image-img').naturalWidth > 0")
        boxes = page.locator("#image-boxes .region")
        assert boxes.count() == len(detected)
        tags = page.eval_on_selector_all("#image-boxes .region .tag", "els => els.map(e => e.textContent)")
        assert sorted(t.split()[0] for t in tags) == sorted(str(r["label"]) for r in detected)
        # each box sits where the detector put it, relative to the photo shown
        stage = page.locator("#image-img").bounding_box()
        first = boxes.nth(0).bounding_box()
        x0, y0, x1, y1 = detected[0]["box"]
        assert abs(first["x"] - stage["x"] - x0 / meta["width"] * stage["width"]) < 3
        assert abs(first["width"] - (x1 - x0) / meta["width"] * stage["width"]) < 3
        assert abs(first["height"] - (y1 - y0) / meta["height"] * stage["height"]) < 3
        assert f"{meta['width']} × {meta['height']} px" in page.inner_text("#image-meta")
        assert str(photo) in page.inner_text("#image-meta")
        areas = page.eval_on_selector_all("#image-labels li", "els => els.map(e => e.dataset.label)")
        assert areas == [lab["label"] for lab in meta["labels"]]
        shot(page, "image-1-boxes")

        # find this object: click a box, search with it (objects inside photos too)
        with page.expect_response(lambda r: "/api/v1/search/id" in r.url) as resp:
            boxes.nth(0).click()
        sent = resp.value.request.post_data_json
        assert sent["image_id"] == image_id and sent["box"] == detected[0]["box"] and sent["objects"] is True
        assert resp.value.ok and resp.value.json()["query"]["box"] is not None
        wait_data(page, "searching", "false")
        hits = ids_in(page, "#image-results .card")
        assert hits and hits == [h["image_id"] for h in resp.value.json()["hits"]]
        assert page.inner_text("#image-results-title") == f"Photos with this {detected[0]['label']}"
        assert "active" in (boxes.nth(0).get_attribute("class") or "")
        images_loaded(page, "#image-results")
        shot(page, "image-2-find-object")

        # find similar: the whole photo
        with page.expect_response(lambda r: "/api/v1/search/id" in r.url) as resp:
            page.click("#find-similar")
        assert resp.value.request.post_data_json.get("box") is None
        wait_data(page, "searching", "false")
        similar = ids_in(page, "#image-results .card")
        assert similar == [h["image_id"] for h in resp.value.json()["hits"]] and image_id not in similar
        # a result opens its own page
        page.click(f"#image-results .card[data-id='{similar[0]}']")
        wait_js(page, f"document.body.dataset.image === '{similar[0]}'")

    with open_tab(browser, f"{server}/#/image/{image_id}", viewport=PHONE, key=False) as tab:
        page = tab.page
        wait_js(page, f"document.body.dataset.image === '{image_id}'")
        wait_js(page, "document.getElementById('image-img').naturalWidth > 0")
        fits_width(page)
        shot(page, "image-3-375px")


def test_unknown_image_and_bad_browse_requests_say_what_to_do(browser: Any, server: str) -> None:
    with open_tab(browser, f"{server}/#/image/12345", key=False) as tab:
        tab.expected_statuses.append(404)
        wait_js(tab.page, "document.getElementById('image-status').textContent.length > 0")
        assert tab.page.inner_text("#image-title") == "Photo not available"
        assert "12345" in tab.page.inner_text("#image-status")
    for params, words in (({"sort": "size"}, "sort"), ({"limit": 500}, "limit"), ({"offset": -1}, "offset")):
        try:
            get_json(server + "/api/v1/images", **params)
        except urllib.error.HTTPError as exc:
            assert exc.code == 422 and words in exc.read().decode()
        else:
            raise AssertionError(f"{params} was accepted")
