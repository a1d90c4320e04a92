"""Speed of the catalog: bulk writes, and ``resolve_filter`` (SQL) against a naive Python filter.

Builds a synthetic catalog of N images (labels from a 20-word vocabulary with a skewed
frequency, 0-3 labels per image from detector and segmenter, paths under 200 folders,
EXIF dates over 5 years, one image vector each, a region vector for half of them), then
times each filter resolved in SQL by :func:`catalog.resolve_filter` and by a naive
reference that loads the images, files and labels rows into Python and filters them
there (the two must agree; the ratio is what to read).

    /tmp/venv/bin/python -m bench.catalog_filter [--n 100000] [--dim 512] [--url postgresql://...]

Without ``--url`` it uses a SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from retrieval.filters import SearchFilter
from retrieval.store import catalog
from retrieval.store import tables as t
from retrieval.store.catalog import FileInfo, ImageInfo, LabelStat, RegionInfo
from retrieval.store.db import Database, open_database

VOCAB = [f"label{i:02d}" for i in range(20)]
T0 = datetime(2019, 1, 1, tzinfo=UTC)


def build(db: Database, n: int, dim: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(VOCAB) + 1)
    weights /= weights.sum()
    timings: dict[str, float] = defaultdict(float)
    with db.session() as s:
        model_id = catalog.register_model(s, fingerprint="bench", name="bench", meta={}).id
    for start in range(0, n, 5000):
        idx = range(start, min(start + 5000, n))
        infos = [
            ImageInfo(
                sha256=hashlib.sha256(b"img%d" % i).hexdigest(),
                path=f"/photos/d{i % 200:03d}/{i}.jpg",
                size_bytes=100_000,
                width=640,
                height=480,
                format="JPEG",
                exif_time=T0 + timedelta(minutes=int(rng.integers(0, 5 * 365 * 24 * 60))),
            )
            for i in idx
        ]
        with db.session() as s:
            tick = time.perf_counter()
            ids = catalog.upsert_images(s, images=infos)
            files = [
                FileInfo(path=info.path or "", image_id=int(k), size_bytes=1, mtime_ns=1)
                for info, k in zip(infos, ids, strict=True)
            ]
            catalog.upsert_files(s, files=files)
            timings["images+files"] += time.perf_counter() - tick
            by_source: dict[str, dict[int, list[LabelStat]]] = {"detector": {}, "segmenter": {}}
            for by_image in by_source.values():
                for image_id in ids.tolist():
                    names = rng.choice(VOCAB, size=int(rng.integers(0, 3)), replace=False, p=weights)
                    by_image[image_id] = [
                        LabelStat(str(x), float(rng.uniform()), float(rng.uniform()), 1) for x in names
                    ]
            tick = time.perf_counter()
            for source, by_image in by_source.items():
                catalog.put_labels_bulk(s, source=source, labels_by_image=by_image)
            timings["labels"] += time.perf_counter() - tick
            tick = time.perf_counter()
            vecs = rng.standard_normal((len(ids), dim)).astype(np.float32)
            catalog.put_vectors(s, space="image", ids=ids, image_ids=ids, vectors=vecs, model_id=model_id)
            half = ids[::2]
            rids = catalog.add_regions(s, regions=[RegionInfo(int(k), 0, 0, 10, 10, "grid") for k in half])
            catalog.put_vectors(s, space="region", ids=rids, image_ids=half, vectors=vecs[::2], model_id=model_id)
            timings["vectors+regions"] += time.perf_counter() - tick
    return dict(timings)


def load_naive(db: Database) -> dict[str, Any]:
    """Everything the naive filter needs, loaded once into Python (not timed per filter)."""
    with db.session(readonly=True) as s:
        images = {row.id: (row.path, row.exif_time or row.added_at) for row in s.execute(sa.select(t.images))}
        files: dict[int, list[str]] = defaultdict(list)
        for path, image_id in s.execute(sa.select(t.files.c.path, t.files.c.image_id)):
            files[image_id].append(path)
        labels: dict[int, list[tuple[str, float, float]]] = defaultdict(list)
        for row in s.execute(sa.select(t.labels)):
            labels[row.image_id].append((row.label, row.max_score, row.area_fraction))
        vectors = {
            space: [
                (vid, iid)
                for vid, iid in s.execute(
                    sa.select(t.vectors.c.id, t.vectors.c.image_id).where(t.vectors.c.space == space)
                )
            ]
            for space in ("image", "region")
        }
    return {"images": images, "files": files, "labels": labels, "vectors": vectors}


def naive(data: dict[str, Any], space: str, flt: SearchFilter) -> np.ndarray:
    allowed_ids = set(flt.image_ids) if flt.image_ids is not None else None
    passing = set()
    for image_id, (path, taken) in data["images"].items():
        if allowed_ids is not None and image_id not in allowed_ids:
            continue
        labs = data["labels"].get(image_id, [])
        ok = {n for n, sc, ar in labs if sc >= flt.min_score and ar >= flt.min_area}
        present = {n for n, sc, _ in labs if sc >= flt.min_score}
        if flt.labels_any and not ok & set(flt.labels_any):
            continue
        if not set(flt.labels_all) <= ok or present & set(flt.labels_none):
            continue
        if flt.path_prefix:
            paths = [p for p in [path, *data["files"].get(image_id, [])] if p]
            if not any(p.startswith(flt.path_prefix) for p in paths):
                continue
        if (flt.date_from and taken < flt.date_from) or (flt.date_to and taken > flt.date_to):
            continue
        passing.add(image_id)
    return np.array(sorted(vid for vid, iid in data["vectors"][space] if iid in passing), dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--url", default=None, help="catalog URL (an empty database); default: temporary SQLite")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        db = open_database(url)
        tick = time.perf_counter()
        parts = build(db, args.n, args.dim)
        total = time.perf_counter() - tick
        print(
            f"backend {db.dialect}, {args.n} images, dim {args.dim}: built in {total:.1f} s "
            + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
            + f" ({args.n / parts['images+files']:.0f} images+files/s,"
            + f" {args.n / parts['vectors+regions']:.0f} image+region vector pairs/s)"
        )
        tick = time.perf_counter()
        db.optimize()
        print(f"optimize (statistics after the bulk load): {time.perf_counter() - tick:.1f} s")
        rng = np.random.default_rng(1)
        with db.session(readonly=True) as s:
            some_ids = tuple(int(x) for x in rng.choice(catalog.vector_ids(s, space="image"), 10_000, replace=False))
        mid = T0 + timedelta(days=700)
        filters: list[tuple[str, str, SearchFilter]] = [
            ("none (all ids)", "image", SearchFilter()),
            ("any=[common]", "image", SearchFilter(labels_any=("label00",))),
            ("any=[rare] score>=.5", "image", SearchFilter(labels_any=("label19",), min_score=0.5)),
            ("all=[2 common] area>=.2", "image", SearchFilter(labels_all=("label00", "label01"), min_area=0.2)),
            ("none=[common]", "image", SearchFilter(labels_none=("label00",))),
            ("path prefix (0.5%)", "image", SearchFilter(path_prefix="/photos/d042/")),
            ("date range (~10%)", "image", SearchFilter(date_from=mid, date_to=mid + timedelta(days=180))),
            (
                "any+none+path+date",
                "image",
                SearchFilter(
                    labels_any=("label00", "label02"), labels_none=("label03",), path_prefix="/photos/d1", date_from=mid
                ),
            ),
            ("10k image_ids + any", "image", SearchFilter(image_ids=some_ids, labels_any=("label00",))),
            ("region: any=[common]", "region", SearchFilter(labels_any=("label00",))),
        ]
        data = load_naive(db)
        print(f"{'filter':28s} {'space':6s} {'ids':>8s} {'SQL ms':>8s} {'naive ms':>9s} {'naive/SQL':>9s}")
        for name, space, flt in filters:
            sql_times, naive_times = [], []
            for _ in range(args.repeat):
                tick = time.perf_counter()
                with db.session(readonly=True) as s:
                    got = catalog.resolve_filter(s, space=space, flt=flt)
                sql_times.append(time.perf_counter() - tick)
                tick = time.perf_counter()
                want = naive(data, space, flt)
                naive_times.append(time.perf_counter() - tick)
            if not np.array_equal(got, want):
                raise SystemExit(f"MISMATCH for {name}: SQL {len(got)} ids, naive {len(want)} ids")
            sql_ms, naive_ms = 1000 * min(sql_times), 1000 * min(naive_times)
            print(f"{name:28s} {space:6s} {len(got):8d} {sql_ms:8.1f} {naive_ms:9.1f} {naive_ms / sql_ms:9.2f}")
        db.dispose()


if __name__ == "__main__":
    main()
