"""``catalog.resolve_filter`` on SQLite and PostgreSQL: a hand-built catalog with exact
expectations, and random filters against a naive Python reference."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from retrieval.filters import SearchFilter
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, LabelStat, RegionInfo
from retrieval.store.db import Database
from tests.retrieval.catalog_data import add_image, model_id


def _build_filter_fixture(s: Session) -> dict[str, int]:
    mid = model_id(s)
    d = datetime
    specs: dict[str, tuple[str | None, datetime | None, list[tuple[str, str, float, float]]]] = {
        "A": ("/photos/2020/a.jpg", d(2020, 6, 1), [("dog", "detector", 0.9, 0.30), ("person", "detector", 0.6, 0.1)]),
        "B": ("/photos/2020/b.jpg", None, [("dog", "segmenter", 0.4, 0.50), ("car", "detector", 0.95, 0.05)]),
        "C": ("/photos/2021/c.jpg", d(2021, 1, 15), [("cat", "detector", 0.8, 0.25)]),
        "D": (
            "/photos/20201/d.jpg",
            d(2019, 12, 31, 23, 59, 59),
            [("person", "detector", 0.3, 0.6), ("person", "segmenter", 0.7, 0.05)],
        ),
        "E": (None, d(2020, 6, 1, 12), []),
        "F": (
            "/other/f.jpg",
            d(2022, 3, 3),
            [("dog", "detector", 0.55, 0.2), ("cat", "segmenter", 0.51, 0.21), ("car", "detector", 0.2, 0.9)],
        ),
    }
    ids: dict[str, int] = {}
    for name, (path, exif, labels) in specs.items():
        ids[name] = add_image(s, name, path, exif_time=exif, stored_path=None if path else "/store/e.jpg")
        for source in ("detector", "segmenter"):
            stats = [LabelStat(lab, sc, ar, 1) for lab, src, sc, ar in labels if src == source]
            catalog.put_labels(s, image_id=ids[name], source=source, labels=stats)
    catalog.upsert_files(s, files=[FileInfo(path="/backup/c-copy.jpg", image_id=ids["C"], size_bytes=1, mtime_ns=1)])
    all_ids = list(ids.values())
    catalog.put_vectors(s, space="image", ids=all_ids, image_ids=all_ids, vectors=np.eye(6, 4), model_id=mid)
    for name in ("A", "C", "F"):
        rids = catalog.add_regions(
            s, regions=[RegionInfo(ids[name], 0, 0, 9, 9, "grid"), RegionInfo(ids[name], 1, 1, 9, 9, "grid")]
        )
        catalog.put_vectors(s, space="region", ids=rids, image_ids=[ids[name]] * 2, vectors=np.eye(2, 4), model_id=mid)
    return ids


def test_resolve_filter_hand_built(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        ids = _build_filter_fixture(s)
    cet = timezone(timedelta(hours=2))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"labels_any": ["dog"]}, "ABF"),
        ({"labels_any": ["DOG"], "min_score": 0.5}, "AF"),
        ({"labels_any": ["dog"], "min_area": 0.25}, "AB"),
        ({"labels_any": ["dog"], "min_score": 0.5, "min_area": 0.25}, "A"),
        ({"labels_any": ["dog", "cat"]}, "ABCF"),
        ({"labels_all": ["dog", "cat"]}, "F"),
        ({"labels_all": ["dog", "cat"], "min_score": 0.52}, ""),
        ({"labels_all": ["person"], "min_score": 0.5, "min_area": 0.5}, ""),  # both on one label row
        ({"labels_all": ["person"], "min_score": 0.5}, "AD"),
        ({"labels_none": ["car"]}, "ACDE"),
        ({"labels_none": ["car"], "min_score": 0.5}, "ACDEF"),
        ({"labels_any": ["dog"], "labels_none": ["car"]}, "A"),
        ({"labels_any": ["person"], "labels_all": ["dog"], "labels_none": ["cat"]}, "A"),
        ({"path_prefix": "/photos/2020/"}, "AB"),
        ({"path_prefix": "/photos/2020"}, "ABD"),
        ({"path_prefix": "/backup/"}, "C"),
        ({"path_prefix": "/store"}, ""),
        ({"date_from": datetime(2020, 1, 1), "date_to": datetime(2020, 12, 31)}, "AE"),
        ({"date_to": datetime(2019, 12, 31, 23, 59, 59)}, "D"),
        ({"date_from": datetime(2020, 6, 1, 14, tzinfo=cet), "date_to": datetime(2020, 6, 2, tzinfo=UTC)}, "E"),
        ({"date_from": datetime.now(UTC) - timedelta(hours=1)}, "B"),  # no EXIF: added_at
        ({"image_ids": (ids["A"], ids["C"], 4242), "labels_any": ["dog"]}, "A"),
        ({"image_ids": ()}, ""),
        ({"image_ids": (ids["A"], ids["B"], *range(1, 6000)), "labels_any": ["dog"]}, "AB"),  # > one IN list
        ({"image_ids": (ids["E"], ids["B"])}, "BE"),
        ({"labels_any": ["dog"], "path_prefix": "/photos/", "date_to": datetime(2021, 1, 1)}, "A"),
        ({}, "ABCDEF"),
    ]
    with catalog_db.session(readonly=True) as s:
        regions_of = {name: {r.id for r in catalog.get_regions(s, image_ids=[ids[name]])} for name in ids}
        for kwargs, expected in cases:
            flt = SearchFilter(**kwargs)
            got = catalog.resolve_filter(s, space="image", flt=flt)
            assert got.dtype == np.int64, kwargs
            assert got.tolist() == sorted(ids[n] for n in expected), kwargs
            want_regions = sorted(r for n in expected for r in regions_of[n])
            assert catalog.resolve_filter(s, space="region", flt=flt).tolist() == want_regions, kwargs


def test_resolve_filter_matches_naive_reference(catalog_db: Database) -> None:
    rng = np.random.default_rng(7)
    names, dirs = ["dog", "cat", "car", "person", "tree"], ["/r/x/", "/r/y/", "/s/"]
    truth: dict[int, tuple[str, datetime, list[tuple[str, float, float]]]] = {}
    with catalog_db.session() as s:
        mid = model_id(s)
        for i in range(150):
            path = f"{dirs[i % 3]}{i}.jpg"
            taken = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 1000)))
            image_id = add_image(s, f"n{i}", path, exif_time=taken)
            picked = rng.choice(names, size=int(rng.integers(0, 4)), replace=False)
            stats = [LabelStat(str(n), float(rng.uniform()), float(rng.uniform()), 1) for n in picked]
            catalog.put_labels(s, image_id=image_id, source="detector", labels=stats)
            truth[image_id] = (path, taken, [(st.label, st.max_score, st.area_fraction) for st in stats])
        with_vectors = sorted(truth)[::2]  # images without a vector are never returned
        vecs = np.ones((len(with_vectors), 4))
        catalog.put_vectors(s, space="image", ids=with_vectors, image_ids=with_vectors, vectors=vecs, model_id=mid)

    def naive(flt: SearchFilter) -> list[int]:
        out = []
        for image_id in with_vectors:
            path, taken, labs = truth[image_id]
            ok = {n for n, sc, ar in labs if sc >= flt.min_score and ar >= flt.min_area}
            present = {n for n, sc, _ in labs if sc >= flt.min_score}
            if flt.labels_any and not ok & set(flt.labels_any):
                continue
            if not set(flt.labels_all) <= ok or present & set(flt.labels_none):
                continue
            if flt.path_prefix and not path.startswith(flt.path_prefix):
                continue
            if (flt.date_from and taken < flt.date_from) or (flt.date_to and taken > flt.date_to):
                continue
            out.append(image_id)
        return out

    with catalog_db.session(readonly=True) as s:
        for _ in range(40):
            pick = lambda k: tuple(str(n) for n in rng.choice(names, size=int(rng.integers(0, k)), replace=False))  # noqa: E731
            start = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=int(rng.integers(0, 800)))
            flt = SearchFilter(
                labels_any=pick(3),
                labels_all=pick(2),
                labels_none=pick(2),
                min_score=float(rng.choice([0.0, 0.3, 0.6])),
                min_area=float(rng.choice([0.0, 0.4])),
                path_prefix=str(rng.choice(["", "/r/", "/r/x", "/s/"])) or None,
                date_from=start if rng.uniform() < 0.4 else None,
                date_to=start + timedelta(days=300) if rng.uniform() < 0.4 else None,
            )
            assert catalog.resolve_filter(s, space="image", flt=flt).tolist() == naive(flt), flt
