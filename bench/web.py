"""The web page: its total size (HTML + JS + CSS bytes, as served) and the time to the first
grid of the browse view on a large collection, on loopback, in Debian's chromium.

The collection (built once, then reused from ``--out``): ``--real`` photos indexed for real
by :func:`bench.api_collection.build` (the model, real descriptors), then every other photo
of ../shared/data/caltech101-half and caltech101-distractors (4,487 in all) written as a
real catalog row of its real file (sha256, size, dimensions, path: thumbnails are made from
it) with a stand-in descriptor (a real one plus noise): browsing reads rows and thumbnails,
never descriptors, so their quality does not matter here.

Printed, for a cold server thumbnail cache (first load) and then warm (median of
``--runs``, each in a fresh browser context, so the browser's cache is empty): the time from
navigation start to the first page of cards in the DOM (the page's ``imsearch:first-grid``
mark: the target), and to the last visible thumbnail received.

    python -m bench.web                      # 4,487 photos (first run builds: minutes)
    python -m bench.web --photos 300 --out /tmp/imsearch-bench-web-small
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.api import start_server
from bench.api_collection import SHARED, build

TARGET_FIRST_GRID_MS = 300.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def all_photos() -> list[Path]:
    return sorted(SHARED.glob("caltech101-half/*/*.jpg")) + sorted(SHARED.glob("caltech101-distractors/**/*.jpg"))


def add_rows(data_dir: Path, photos: list[Path], batch: int = 500) -> None:
    """Real catalog rows for ``photos`` not yet in the collection, with stand-in descriptors."""
    from retrieval.collection import Collection, IndexedImage
    from retrieval.store import catalog
    from retrieval.store.keys import image_key

    collection = Collection.open(data_dir)
    try:
        ids = collection.read(catalog.vector_ids, space="image")
        base = collection.read(catalog.get_vectors, space="image", ids=ids)
        rng = np.random.default_rng(0)
        t0, written = time.perf_counter(), 0
        for start in range(0, len(photos), batch):
            items = []
            for path in photos[start : start + batch]:
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                with Image.open(path) as im:  # the header only
                    width, height, fmt = im.width, im.height, im.format or "JPEG"
                vec = base[rng.integers(0, len(base))] + rng.normal(0, 0.02, base.shape[1])
                items.append(IndexedImage(
                    sha256=sha, size_bytes=len(data), width=width, height=height, format=fmt,
                    descriptor=(vec / np.linalg.norm(vec)).astype(np.float32), path=str(path),
                    mtime_ns=path.stat().st_mtime_ns,
                ))
            known = collection.read(catalog.existing_images, image_ids=[image_key(it.sha256) for it in items])
            fresh = [it for it in items if image_key(it.sha256) not in known]
            collection.write(fresh)
            written += len(fresh)
        collection.save()
        print(f"wrote {written} catalog rows of real photos in {time.perf_counter() - t0:.0f} s")
    finally:
        collection.close()


def build_collection(data_dir: Path, n_photos: int, n_real: int) -> None:
    marker = data_dir / "bench-web.json"
    want = {"photos": n_photos, "real": n_real}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        print(f"reusing the collection in {data_dir}")
        return
    build(data_dir, n_real, n_real)
    photos = all_photos()
    if n_photos > len(photos):
        raise SystemExit(f"--photos {n_photos}: only {len(photos)} photos under {SHARED}")
    add_rows(data_dir, [photos[int(i * len(photos) / n_photos)] for i in range(n_photos)])
    marker.write_text(json.dumps(want))


def page_bytes(url: str) -> dict[str, tuple[int, int]]:
    """Bytes (raw, gzipped) of the page and every script and style sheet it loads (or imports
    when another view is shown), as served."""
    sizes: dict[str, tuple[int, int]] = {}
    html = httpx.get(url + "/").content
    sizes["/"] = (len(html), len(gzip.compress(html)))
    todo = re.findall(rb'(?:src|href)="(/static/[^"]+)"', html)
    seen: set[str] = set()
    while todo:
        path = todo.pop().decode()
        if path in seen:
            continue
        seen.add(path)
        body = httpx.get(url + path).content
        sizes[path] = (len(body), len(gzip.compress(body)))
        if path.endswith(".js"):  # ES modules: follow their imports
            folder = path.rsplit("/", 1)[0]
            imports = re.findall(rb'(?:from |import\()"(\./[^"]+)"', body)
            todo += [f"{folder}/{m.decode().removeprefix('./')}".encode() for m in imports]
    return sizes


def first_grid(browser: Any, url: str) -> tuple[float, float, int]:
    """(ms to the first grid's cards, ms to its last visible thumbnail, cards) in a fresh context."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    offsite: list[str] = []  # watched, not intercepted: a route handler would add its round trips to the timing
    page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
    page.goto(url + "/#/browse")
    visible = """() => Array.from(document.querySelectorAll('#browse-grid .card img'))
                       .filter(i => i.getBoundingClientRect().top < innerHeight)"""
    deadline = time.monotonic() + 120
    while not page.evaluate(f"""() => performance.getEntriesByName('imsearch:first-grid').length > 0
                                      && ({visible})().every(i => i.complete && i.naturalWidth > 0)"""):
        if time.monotonic() > deadline:
            raise SystemExit("the first grid did not show in 120 s")
        time.sleep(0.02)
    grid_ms, thumbs_ms, cards = page.evaluate(f"""() => {{
        const urls = new Set(({visible})().map(i => i.src));
        const ends = performance.getEntriesByType('resource').filter(e => urls.has(e.name)).map(e => e.responseEnd);
        return [performance.getEntriesByName('imsearch:first-grid')[0].startTime, Math.max(...ends),
                document.querySelectorAll('#browse-grid .card').length];
    }}""")
    context.close()
    if offsite:
        raise SystemExit(f"the page asked for something off the server: {offsite}")
    return float(grid_ms), float(thumbs_ms), int(cards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/imsearch-bench-web", help="work folder (the collection is kept)")
    parser.add_argument("--photos", type=int, default=4487, help="photos in the collection")
    parser.add_argument("--real", type=int, default=40, help="of them, indexed for real (the model's descriptors)")
    parser.add_argument("--runs", type=int, default=5, help="warm runs (after the cold one)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} (figures on a busy machine are slower)")
    build_collection(data_dir, args.photos, args.real)
    for old in (data_dir / "thumbnails").glob("*.jpg"):  # a cold thumbnail cache for the first load
        old.unlink()
    proc, url = start_server(data_dir, out, [f"allowed_roots={SHARED}"])  # thumbnails are made from the photos
    try:
        sizes = page_bytes(url)
        images = httpx.get(url + "/api/v1/stats").json()["images"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            cold = first_grid(browser, url)
            warm = [first_grid(browser, url) for _ in range(args.runs)]
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    raw, packed = sum(s[0] for s in sizes.values()), sum(s[1] for s in sizes.values())
    print(f"\npage: {len(sizes)} files, {raw} bytes (HTML+JS+CSS as served; {packed} gzipped)")
    for path, (n, z) in sorted(sizes.items()):
        print(f"  {path:32} {n:7d} B  ({z} gzipped)")
    print(f"collection: {images} images; first page {cold[2]} cards")
    print(f"  cold thumbnail cache: first grid {cold[0]:.0f} ms, visible thumbnails {cold[1]:.0f} ms")
    grid = statistics.median(w[0] for w in warm)
    thumbs = statistics.median(w[1] for w in warm)
    print(f"  warm (median of {len(warm)}): first grid {grid:.0f} ms, visible thumbnails {thumbs:.0f} ms")
    verdict = "met" if grid <= TARGET_FIRST_GRID_MS else "MISSED"
    print(f"  target first grid <= {TARGET_FIRST_GRID_MS:.0f} ms (warm): {verdict}; cold {cold[0]:.0f} ms")


if __name__ == "__main__":
    main()
