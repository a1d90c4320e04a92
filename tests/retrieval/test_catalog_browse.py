"""Browsing the catalog (``list_images``, ``label_facets``, ``failures_under``) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError
from retrieval.store import catalog
from retrieval.store import tables as t
from retrieval.store.catalog import LabelStat
from retrieval.store.catalog_browse import SORTS
from retrieval.store.db import Database
from tests.retrieval.catalog_data import add_image

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def stat(label: str, score: float = 0.9) -> LabelStat:
    return LabelStat(label=label, max_score=score, area_fraction=0.2, count=1)


def populate(session: Session) -> dict[str, int]:
    """Eight images: added one hour apart (a..h), some with EXIF times, labels and paths; one upload."""
    spec = [
        # name, path, exif hours after T0 (None: no EXIF), labels
        ("a", "/photos/2024/a.jpg", 50, ["dog", "person"]),
        ("b", "/photos/2024/b.jpg", None, ["dog"]),
        ("c", "/photos/2023/c.jpg", -100, ["cat"]),
        ("d", "/photos/2023/d.jpg", 10, ["dog", "person"]),
        ("e", None, None, ["person"]),  # an upload: no path
        ("f", "/other/f.jpg", 2, []),
        ("g", "/photos/2024/sub/g.jpg", None, ["dog"]),
        ("h", "/photos/20240/h.jpg", 7, ["person"]),  # "/photos/2024" is a prefix of its path too
    ]
    ids: dict[str, int] = {}
    for hour, (name, path, exif, labels) in enumerate(spec):
        exif_time = None if exif is None else T0 + timedelta(hours=exif)
        image_id = add_image(session, name, path, exif_time=exif_time)
        session.execute(
            sa.update(t.images).where(t.images.c.id == image_id).values(added_at=T0 + timedelta(hours=hour))
        )
        if labels:
            catalog.put_labels(session, image_id=image_id, source="detector", labels=[stat(x) for x in labels])
        ids[name] = image_id
    # a weak label does not count from min_score 0.5 on
    catalog.put_labels(session, image_id=ids["f"], source="segmenter", labels=[stat("cat", 0.3)])
    return ids


def names(page: catalog.ImagePage, ids: dict[str, int]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[item.id] for item in page.items]


def test_sorts(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        ids = populate(s)
        assert names(catalog.list_images(s, sort="added"), ids) == list("abcdefgh")
        assert names(catalog.list_images(s, sort="-added"), ids) == list("hgfedcba")
        # taken time: EXIF time, else the time added (b: 1 h, e: 4 h, g: 6 h)
        taken = names(catalog.list_images(s, sort="exif_time"), ids)
        assert taken == ["c", "b", "f", "e", "g", "h", "d", "a"]
        assert names(catalog.list_images(s, sort="-exif_time"), ids) == taken[::-1]
        # path: byte order, the upload (no path) last
        assert names(catalog.list_images(s, sort="path"), ids) == list("fcdabghe")
        with pytest.raises(CatalogError, match="valid sorts: added, -added"):
            catalog.list_images(s, sort="size")


def test_pages_cover_everything_once(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        ids = populate(s)
        for sort in SORTS:
            seen: list[int] = []
            offset = 0
            while True:
                page = catalog.list_images(s, sort=sort, offset=offset, limit=3)
                assert page.total == 8
                seen += [item.id for item in page.items]
                offset += len(page.items)
                if len(page.items) < 3:
                    break
            assert sorted(seen) == sorted(ids.values()) and len(seen) == 8
        assert catalog.list_images(s, offset=100).items == []
        with pytest.raises(CatalogError, match="offset must not be negative"):
            catalog.list_images(s, offset=-1)
        with pytest.raises(CatalogError, match="limit must be within"):
            catalog.list_images(s, limit=0)


def test_label_and_prefix_filters_and_their_facets(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        ids = populate(s)
        dogs = catalog.list_images(s, labels=["dog"], sort="added")
        assert names(dogs, ids) == ["a", "b", "d", "g"] and dogs.total == 4
        both = catalog.list_images(s, labels=["dog", "person"], sort="added")  # all must match
        assert names(both, ids) == ["a", "d"] and both.total == 2
        assert both.labels[ids["a"]] == ["dog", "person"]
        under = catalog.list_images(s, prefix="/photos/2024/", sort="path")
        assert names(under, ids) == ["a", "b", "g"] and under.total == 3
        dog_2024 = catalog.list_images(s, prefix="/photos/2024/", labels=["dog"], sort="path", limit=2)
        assert names(dog_2024, ids) == ["a", "b"] and dog_2024.total == 3
        assert catalog.list_images(s, labels=["unicorn"]).total == 0

        everything = dict(catalog.label_facets(s))
        assert everything == {"dog": 4, "person": 4, "cat": 2}
        assert catalog.label_facets(s)[0] == ("dog", 4)  # most frequent first, then by name
        assert dict(catalog.label_facets(s, min_score=0.5)) == {"dog": 4, "person": 4, "cat": 1}
        assert dict(catalog.label_facets(s, labels=["dog"])) == {"dog": 4, "person": 2}
        assert dict(catalog.label_facets(s, prefix="/photos/2023/")) == {"dog": 1, "person": 1, "cat": 1}
        # the page's label names follow min_score too
        f_page = catalog.list_images(s, prefix="/other/", min_score=0.5)
        assert f_page.labels == {ids["f"]: []}


def test_a_second_file_of_an_image_puts_it_under_its_folder(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        ids = populate(s)
        catalog.upsert_files(
            s, files=[catalog.FileInfo(path="/copies/c.jpg", image_id=ids["c"], size_bytes=1000, mtime_ns=1)]
        )
        assert names(catalog.list_images(s, prefix="/copies/"), ids) == ["c"]


def test_failures_under(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        for path in ("/in/a/bad.jpg", "/in/a/sub/worse.png", "/in/ab.jpg", "/elsewhere/x.jpg"):
            catalog.record_failure(s, path=path, reason=f"cannot decode {path}", size_bytes=1, mtime_ns=1)
        found = catalog.failures_under(s, prefix="/in/a/")
        assert [f.path for f in found] == ["/in/a/bad.jpg", "/in/a/sub/worse.png"]
        assert found[0].reason == "cannot decode /in/a/bad.jpg"
        assert len(catalog.failures_under(s, prefix="/in/", limit=2)) == 2
