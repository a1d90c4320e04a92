"""Catalog functions for regions (boxes on images) and per-image labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError
from retrieval.store import tables as t
from retrieval.store._sql import chunks, int_list, upsert
from retrieval.store.keys import region_key
from retrieval.store.records import LabelRecord, LabelStat, RegionInfo, RegionRecord
from retrieval.store.tables import LABEL_SOURCES, REGION_SOURCES, REGION_SPACE


def _region_row(region: RegionInfo) -> dict[str, Any]:
    if region.source not in REGION_SOURCES:
        valid = ", ".join(REGION_SOURCES)
        raise CatalogError(f"unknown region source {region.source!r}; valid sources: {valid}")
    key = region_key(region.image_id, region.box, region.source)  # also checks the numbers are finite
    if not (region.x1 > region.x0 and region.y1 > region.y0):
        raise CatalogError(f"region box {region.box} of image {region.image_id} is empty; need x0<x1, y0<y1")
    return {
        "id": key,
        "image_id": int(region.image_id),
        "x0": float(region.x0),
        "y0": float(region.y0),
        "x1": float(region.x1),
        "y1": float(region.y1),
        "source": region.source,
        "label": region.label,
        "score": None if region.score is None else float(region.score),
    }


def add_regions(session: Session, *, regions: Sequence[RegionInfo]) -> np.ndarray:
    """Insert regions (re-adding the same box updates its label and score); returns their ids in order."""
    rows = [_region_row(region) for region in regions]
    upsert(session, t.regions, rows, keys=["id"], update=["label", "score"])
    return np.array([row["id"] for row in rows], dtype=np.int64)


def get_regions(session: Session, *, image_ids: Sequence[int] | np.ndarray) -> list[RegionRecord]:
    """All regions of ``image_ids``, grouped in the order of ``image_ids``, then by region id."""
    ids = int_list(image_ids, "image_ids")
    by_image: dict[int, list[RegionRecord]] = {}
    for chunk in chunks(sorted(set(ids))):
        query = sa.select(t.regions).where(t.regions.c.image_id.in_(chunk)).order_by(t.regions.c.id)
        for row in session.execute(query):
            by_image.setdefault(row.image_id, []).append(RegionRecord(**row._mapping))
    return [region for image_id in dict.fromkeys(ids) for region in by_image.get(image_id, [])]


def get_regions_by_id(session: Session, *, region_ids: Sequence[int] | np.ndarray) -> list[RegionRecord | None]:
    """The regions of ``region_ids`` in the order asked (``None`` where an id is unknown)."""
    ids = int_list(region_ids, "region_ids")
    found: dict[int, RegionRecord] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in session.execute(sa.select(t.regions).where(t.regions.c.id.in_(chunk))):
            found[row.id] = RegionRecord(**row._mapping)
    return [found.get(i) for i in ids]


def delete_regions(
    session: Session,
    *,
    region_ids: Sequence[int] | np.ndarray | None = None,
    image_ids: Sequence[int] | np.ndarray | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Delete regions given by id, or all regions of ``image_ids`` (optionally of one ``source``).

    Their vectors in the ``"region"`` space go too; returns the removed region ids (sorted),
    which are the vector ids to drop from the region FAISS index.
    """
    if (region_ids is None) == (image_ids is None):
        raise CatalogError("delete_regions needs exactly one of region_ids or image_ids")
    column = t.regions.c.id if region_ids is not None else t.regions.c.image_id
    keys = int_list(region_ids if region_ids is not None else image_ids, "region_ids or image_ids")
    removed: list[int] = []
    for chunk in chunks(sorted(set(keys))):
        where: list[sa.ColumnElement[bool]] = [column.in_(chunk)]
        if source is not None:
            where.append(t.regions.c.source == source)
        ids = list(session.execute(sa.select(t.regions.c.id).where(*where)).scalars())
        for id_chunk in chunks(ids):
            session.execute(sa.delete(t.vectors).where(t.vectors.c.space == REGION_SPACE, t.vectors.c.id.in_(id_chunk)))
            session.execute(sa.delete(t.regions).where(t.regions.c.id.in_(id_chunk)))
        removed.extend(ids)
    return np.array(sorted(removed), dtype=np.int64)


def _label_row(image_id: int, source: str, stat: LabelStat) -> dict[str, Any]:
    name = str(stat.label).strip().lower()
    if not name:
        raise CatalogError(f"image {image_id}: empty label name")
    for what, value in (("max_score", stat.max_score), ("area_fraction", stat.area_fraction)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise CatalogError(f"image {image_id} label {name!r}: {what} must be within [0, 1], got {value}")
    if stat.count < 0:
        raise CatalogError(f"image {image_id} label {name!r}: count must not be negative, got {stat.count}")
    return {
        "image_id": int(image_id),
        "label": name,
        "source": source,
        "max_score": float(stat.max_score),
        "area_fraction": float(stat.area_fraction),
        "count": int(stat.count),
    }


def put_labels(session: Session, *, image_id: int, source: str, labels: Sequence[LabelStat]) -> None:
    """Replace the labels of ``image_id`` written by ``source`` with ``labels`` (names lower-cased)."""
    put_labels_bulk(session, source=source, labels_by_image={image_id: labels})


def put_labels_bulk(session: Session, *, source: str, labels_by_image: Mapping[int, Sequence[LabelStat]]) -> None:
    """:func:`put_labels` for many images at once (one ``DELETE`` and one bulk ``INSERT`` per 5,000)."""
    if source not in LABEL_SOURCES:
        raise CatalogError(f"unknown label source {source!r}; valid sources: {', '.join(LABEL_SOURCES)}")
    rows = []
    for image_id, stats in labels_by_image.items():
        image_rows = [_label_row(image_id, source, stat) for stat in stats]
        names = [row["label"] for row in image_rows]
        if len(set(names)) != len(names):
            raise CatalogError(f"image {image_id}: labels from {source} repeat a name: {sorted(names)}")
        rows.extend(image_rows)
    for chunk in chunks(sorted({int(i) for i in labels_by_image})):
        session.execute(sa.delete(t.labels).where(t.labels.c.image_id.in_(chunk), t.labels.c.source == source))
    for row_chunk in chunks(rows):
        session.execute(sa.insert(t.labels), list(row_chunk))


def get_labels(session: Session, *, image_ids: Sequence[int] | np.ndarray) -> dict[int, list[LabelRecord]]:
    """Labels of each image asked (every id is a key; lists sorted by label, then source)."""
    ids = int_list(image_ids, "image_ids")
    result: dict[int, list[LabelRecord]] = {i: [] for i in ids}
    for chunk in chunks(sorted(set(ids))):
        query = (
            sa.select(t.labels)
            .where(t.labels.c.image_id.in_(chunk))
            .order_by(t.labels.c.image_id, t.labels.c.label, t.labels.c.source)
        )
        for row in session.execute(query):
            result[row.image_id].append(LabelRecord(**row._mapping))
    return result


def label_counts(session: Session, *, min_score: float = 0.0) -> list[tuple[str, int]]:
    """``(label, number of images having it with score >= min_score)``, most frequent first."""
    n_images = sa.func.count(sa.distinct(t.labels.c.image_id))
    query = (
        sa.select(t.labels.c.label, n_images)
        .where(t.labels.c.max_score >= float(min_score))
        .group_by(t.labels.c.label)
        .order_by(n_images.desc(), t.labels.c.label)
    )
    return [(label, int(n)) for label, n in session.execute(query)]
