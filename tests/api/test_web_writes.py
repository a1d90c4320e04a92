"""The web page's flows that change the collection, in Chromium against a real ``imsearch serve``:
duplicates review (delete one, keep one), adding several photos (one of them broken, one
already there, one dropped), the API key per tab, and index jobs (to completion, cancelled).

Its own server and collection (the library plus two near-duplicates of one photo), so the
read-only flows of ``test_web.py`` never see these changes; the browser fixtures are those.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.api.conftest import API_KEY, BULK_COUNT, Layout, build_collection
from tests.api.test_web import (
    PHONE,
    fits_width,
    get_json,
    ids_in,
    images_loaded,
    key_of,
    launch_chromium,
    open_tab,
    serve,
    shot,
    wait_data,
    wait_js,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory, layout: Layout) -> list[Path]:
    """Two more near-duplicates of the library's Motorbikes_image_0001.jpg (smaller, recompressed)."""
    folder = tmp_path_factory.mktemp("web-copies")
    made = []
    with Image.open(layout.library / "Motorbikes_image_0001.jpg") as im:
        rgb = im.convert("RGB")
        for name, scale, quality in (("copy_small.jpg", 0.7, 70), ("copy_tiny.jpg", 0.5, 60)):
            w, h = rgb.size
            rgb.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS).save(folder / name, quality=quality)
            made.append(folder / name)
    return made


@pytest.fixture(scope="module")
def server(
    layout: Layout, copies: list[Path], small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("api-web-writes")
    build_collection(data_dir, None, small_model, [layout.library, *copies])
    with serve(data_dir, layout, copies[0].parent) as url:
        yield url


def status_of(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, headers={"X-API-Key": API_KEY})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def upload_detail(server: str, path: Path) -> str:
    """The problem ``detail`` the API gives for uploading ``path`` (a file it refuses)."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        server + "/api/v1/images", data=body, method="POST",
        headers={"X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as exc:
        return str(json.loads(exc.read())["detail"])
    raise AssertionError(f"{path} was accepted")


def group_ids(page: Any) -> list[set[str]]:
    raw = page.eval_on_selector_all("#dup-groups .group", "els => els.map(e => e.dataset.ids.split(','))")
    return [set(x) for x in raw]


# ---------------------------------------------------------------------------- duplicates


def test_duplicates_delete_one_then_keep_one(browser: Any, server: str, layout: Layout, copies: list[Path]) -> None:
    original = key_of(layout.library / "Motorbikes_image_0001.jpg")
    family = {original, key_of(layout.duplicate), *(key_of(p) for p in copies)}
    with open_tab(browser, server + "/#/duplicates", viewport=PHONE, key=False) as tab:
        wait_data(tab.page, "duplicates", "ready")
        assert tab.page.locator("#dup-groups .member").count() == 4  # at 0.95 too
        images_loaded(tab.page, "#dup-groups")
        fits_width(tab.page)
        shot(tab.page, "dup-0-375px")

    with open_tab(browser, server + "/#/duplicates") as tab:
        page = tab.page
        wait_data(page, "duplicates", "ready")
        # the threshold slider, by keyboard: 0.95 -> 0.93 (the family scores >= 0.969, the next
        # motorbike <= 0.906 with it)
        page.focus("#dup-threshold")
        for _ in range(2):
            page.keyboard.press("ArrowLeft")
        assert page.inner_text("#dup-threshold-out") == "0.93"
        wait_js(page, "document.getElementById('dup-status').textContent.includes('0.93')")
        wait_data(page, "duplicates", "ready")
        api = get_json(server + "/api/v1/duplicates", threshold=0.93)
        groups = group_ids(page)
        assert groups == [set(g["image_ids"]) for g in api["groups"]] and family in groups
        group = page.locator("#dup-groups .group").nth(groups.index(family))
        assert group.locator(".member").count() == 4
        assert ids_in(page, "#dup-groups .group .member")[0] == original  # the largest first
        meta = get_json(f"{server}/api/v1/images/{original}")
        first = group.locator(".member").nth(0).inner_text()
        assert f"{meta['width']} × {meta['height']} px" in first
        score = min(g["min_score"] for g in api["groups"] if set(g["image_ids"]) == family)
        assert f"similarity ≥ {score:.3f}" in group.locator("h3").inner_text()
        images_loaded(page, "#dup-groups")
        shot(page, "dup-1-groups")

        # delete one: asks once more, then the group shows the other three
        tiny = key_of(copies[1])
        button = page.locator(f"#dup-groups .member[data-id='{tiny}'] button.danger")
        button.click()
        assert button.inner_text() == "Delete this one?"
        with page.expect_response(lambda r: r.request.method == "DELETE") as resp:
            button.click()
        assert resp.value.status == 204 and resp.value.url.endswith(f"/images/{tiny}")
        wait_js(page, f"document.querySelectorAll('#dup-groups .member[data-id=\"{tiny}\"]').length === 0")
        wait_data(page, "duplicates", "ready")
        assert family - {tiny} in group_ids(page)
        assert status_of(f"{server}/api/v1/images/{tiny}") == 404

        # keep one: the two others go, and so does the group
        keep = page.locator(f"#dup-groups .member[data-id='{original}'] button.keep")
        keep.click()
        assert keep.inner_text() == "Delete the 2 others?"
        deleted: list[str] = []
        page.on("request", lambda r: deleted.append(r.url) if r.method == "DELETE" else None)
        keep.click()
        wait_js(page, f"!document.querySelector('#dup-groups .group[data-ids*=\"{original}\"]')")
        wait_data(page, "duplicates", "ready")
        gone = family - {tiny, original}
        assert sorted(u.rsplit("/", 1)[1] for u in deleted) == sorted(gone)
        assert all(status_of(f"{server}/api/v1/images/{i}") == 404 for i in gone)
        assert status_of(f"{server}/api/v1/images/{original}") == 200
        assert not any(original in g for g in group_ids(page))
        shot(page, "dup-2-kept")



# ---------------------------------------------------------------------------- adding photos


def test_add_several_photos_one_broken_one_present_one_dropped(browser: Any, server: str, layout: Layout) -> None:
    broken = layout.incoming / "text.jpg"
    reason = upload_detail(server, broken)
    present = layout.library / "Faces_image_0001.jpg"
    new = [layout.extra / "crab_image_0001.jpg", layout.extra / "wrench_image_0001.jpg"]
    pagoda, lotus = layout.extra / "pagoda_image_0001.jpg", layout.extra / "lotus_image_0001.jpg"

    # without a key: refused, and the page says what to do
    with open_tab(browser, server + "/#/add", key=False) as tab:
        tab.expected_statuses.append(401)
        tab.page.set_input_files("#add-files", str(pagoda))
        wait_data(tab.page, "uploading", "false")
        row = tab.page.locator("#add-list li").nth(0)
        assert row.get_attribute("data-state") == "refused"
        assert "needs an API key" in row.inner_text()

    with open_tab(browser, server + "/#/add") as tab:
        tab.expected_statuses.append(415)
        page = tab.page
        before = get_json(server + "/api/v1/stats")["images"]
        page.set_input_files("#add-files", [str(p) for p in [*new, present, broken, pagoda]])
        wait_data(page, "uploading", "false", timeout=120)
        states = {
            name: (state, text)
            for name, state, text in page.eval_on_selector_all(
                "#add-list li", "els => els.map(e => [e.dataset.name, e.dataset.state, e.innerText])"
            )
        }
        assert {name: s for name, (s, _) in states.items()} == {
            new[0].name: "indexed", new[1].name: "indexed", present.name: "present",
            broken.name: "refused", pagoda.name: "indexed",
        }
        assert f"refused: {reason}" in states[broken.name][1]
        assert "already present" in states[present.name][1]
        assert page.inner_text("#add-status") == "3 indexed · 1 already present · 1 refused"
        assert get_json(server + "/api/v1/stats")["images"] == before + 3
        for path in [*new, pagoda]:
            assert status_of(f"{server}/api/v1/images/{key_of(path)}") == 200
        shot(page, "add-1-several")

        # drag and drop onto the drop zone
        data = page.evaluate_handle(
            """([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
                return dt;
            }""",
            [base64.b64encode(lotus.read_bytes()).decode(), lotus.name],
        )
        page.dispatch_event("#add-drop", "drop", {"dataTransfer": data})
        dropped = f"#add-list li[data-name=\"{lotus.name}\"]"
        wait_js(page, f"document.querySelector('{dropped}')?.dataset.state === 'indexed'")
        assert status_of(f"{server}/api/v1/images/{key_of(lotus)}") == 200
        # the new photos are in the browse grid (it reloads after a change)
        page.click("nav a[data-view='browse']")
        wait_data(page, "browse", "ready")
        wait_js(page, f"!!document.querySelector('#browse-grid .card[data-id=\"{key_of(lotus)}\"]')")
        assert ids_in(page, "#browse-grid .card")[0] == key_of(lotus)  # newest first
        # the key stays for this tab: a reload keeps it
        page.reload()
        wait_js(page, "document.getElementById('key-state').textContent === 'a key is set'")

    with open_tab(browser, server + "/#/add", viewport=PHONE, key=False) as tab:
        fits_width(tab.page)
        shot(tab.page, "add-2-375px")


# ---------------------------------------------------------------------------- index jobs


def test_job_progress_to_completion_then_cancel(browser: Any, server: str, layout: Layout) -> None:
    with open_tab(browser, server + "/#/jobs") as tab:
        page = tab.page
        page.fill("#job-path", str(layout.incoming))
        with page.expect_response(lambda r: r.url.endswith("/api/v1/jobs")) as resp:
            page.click("#job-start")
        assert resp.value.status == 202
        job_id = resp.value.json()["id"]
        # a screenshot on the way (best effort: the job may be quicker than the page's polling)
        wait_js(page, "document.getElementById('job-progress').value > 0 || document.body.dataset.job === 'finished'")
        shot(page, "job-1-running")
        wait_data(page, "job", "finished", timeout=180)
        job = get_json(f"{server}/api/v1/jobs/{job_id}")
        assert job["status"] == "succeeded" and (job["done"], job["failed"]) == (4, 2)
        line = page.inner_text("#job-line")
        assert line.startswith("succeeded · ") and f"{job['total']} / {job['total']} files" in line
        assert "4 indexed" in line and "2 failed" in line and "files/s" in line
        assert page.evaluate("document.getElementById('job-progress').value") == job["total"]
        assert page.is_hidden("#job-cancel")
        wait_js(page, "document.querySelectorAll('#job-failures li').length === 2")
        failures = get_json(server + "/api/v1/failures", prefix=str(layout.incoming))["failures"]
        shown = page.eval_on_selector_all("#job-failures li", "els => els.map(e => e.innerText)")
        assert sorted(Path(f["path"]).name for f in failures) == ["text.jpg", "truncated.jpg"]
        for f, text in zip(failures, shown, strict=True):
            assert f["path"] in text and f["reason"] in text
        shot(page, "job-2-done")

        # a long job, cancelled: it ends as cancelled with what it wrote kept
        page.uncheck("#job-detect")
        page.fill("#job-path", str(layout.bulk))
        with page.expect_response(lambda r: r.url.endswith("/api/v1/jobs")) as resp:
            page.click("#job-start")
        assert resp.value.status == 202 and resp.value.json()["params"]["detect"] is False
        job_id = resp.value.json()["id"]
        wait_data(page, "job", "running")
        with page.expect_response(lambda r: r.url.endswith("/cancel")) as resp:
            page.click("#job-cancel")
        assert resp.value.status == 202
        wait_data(page, "job", "finished", timeout=180)
        job = get_json(f"{server}/api/v1/jobs/{job_id}")
        assert job["status"] == "cancelled" and job["done"] < BULK_COUNT
        assert page.inner_text("#job-line").startswith("cancelled · ")
        assert page.get_attribute("#job-line", "data-status") == "cancelled"
        shot(page, "job-3-cancelled")

    with open_tab(browser, server + "/#/jobs", viewport=PHONE) as tab:
        page = tab.page
        page.fill("#job-path", str(layout.allowed / "no-such-folder"))
        page.click("#job-start")
        tab.expected_statuses.append(404)
        wait_js(page, "document.getElementById('job-status').classList.contains('error')")
        assert "does not exist" in page.inner_text("#job-status")
        fits_width(page)
        shot(page, "job-4-375px")
