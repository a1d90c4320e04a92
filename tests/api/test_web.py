"""The web page in a real headless Chromium against a real ``imsearch serve`` on a loopback port.

Debian's chromium (``apt-get install chromium``; ``make setup`` does it) driven by PyPI
``playwright``; a screenshot of each step goes to ``test-artifacts/``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, Layout, build_collection

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


@pytest.fixture(scope="module")
def server(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``imsearch serve`` (the real CLI, uvicorn) on a free loopback port."""
    data_dir = tmp_path_factory.mktemp("api-web")
    build_collection(data_dir, None, small_model, [layout.library])
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    env["IMSEARCH_API_KEYS"] = API_KEY
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


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make setup does it)", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        pg.goto(server + "/")
        yield pg
        browser.close()
        assert not errors, errors


def wait_js(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll ``expression`` in the page (not wait_for_function: the page's CSP forbids its eval)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        time.sleep(0.05)


def wait_idle(page: Any) -> None:
    wait_js(page, "document.body.dataset.searching === 'false'")


def card_ids(page: Any) -> list[str]:
    return [str(x) for x in page.eval_on_selector_all("#results .card", "els => els.map(e => e.dataset.id)")]


def card_labels(page: Any) -> list[set[str]]:
    raw = page.eval_on_selector_all(
        "#results .card", "els => els.map(e => Array.from(e.querySelectorAll('.chip')).map(c => c.textContent))"
    )
    return [set(x) for x in raw]


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def test_upload_filter_click_and_box(page: Any, layout: Layout) -> None:
    page.wait_for_selector("#label-list label[data-label='person']")
    assert "images" in page.inner_text("#stats")

    # 1. pick a photo: results appear, the photo itself first
    query = layout.library / "Motorbikes_image_0002.jpg"
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#results .card")
    wait_idle(page)
    ids = card_ids(page)
    assert ids[0] == key_of(query) and len(ids) == len(layout.library_photos())
    # indexed with torch bf16, searched with onnxruntime fp32 (model_engine=auto): the same photo scores >= 0.999
    assert float(page.inner_text("#results .card .score").split()[0]) >= 0.999
    wait_js(page, "Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "1-upload")

    # 2. a label filter: only images with a person
    with page.expect_response(lambda r: "/api/v1/search/image" in r.url) as resp:
        page.click("#label-list label[data-label='person']")
    assert resp.value.ok
    wait_idle(page)
    labels = card_labels(page)
    assert labels and all("person" in found for found in labels)
    chip = page.inner_text("#label-list label[data-label='person']")  # "person (N)": N images have it
    assert len(labels) == int(chip.split("(")[1].rstrip(")"))
    assert "label filter on" in page.inner_text("#status")
    shot(page, "2-filter")

    # 3. click a result: search with that indexed image (it is left out of its own results)
    clicked = card_ids(page)[0]
    with page.expect_response(lambda r: "/api/v1/search/id" in r.url) as resp:
        page.click(f"#results .card[data-id='{clicked}']")
    assert resp.value.ok and resp.value.json()["query"]["image_id"] == clicked
    wait_idle(page)
    assert "indexed image" in page.inner_text("#query-caption")
    assert clicked not in card_ids(page) and all("person" in found for found in card_labels(page))
    shot(page, "3-click")

    # 4. draw a box on the query: the search is sent with it
    page.click("#label-list label[data-label='person']")  # filter off again
    wait_idle(page)
    img = page.locator("#query-img")
    img.wait_for()
    wait_js(page, "document.getElementById('query-img').naturalWidth > 0")
    bb = img.bounding_box()
    assert bb is not None
    with page.expect_request(lambda r: "/api/v1/search/id" in r.url) as req:
        page.mouse.move(bb["x"] + bb["width"] * 0.2, bb["y"] + bb["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(bb["x"] + bb["width"] * 0.7, bb["y"] + bb["height"] * 0.8, steps=5)
        page.mouse.up()
    sent = req.value.post_data_json
    assert sent["image_id"] == clicked and sent["box"] is not None
    x0, y0, x1, y1 = sent["box"]
    assert 0 <= x0 < x1 and 0 <= y0 < y1
    wait_idle(page)
    assert page.is_visible("#box") and page.is_visible("#clear-box") and card_ids(page)
    shot(page, "4-box")
