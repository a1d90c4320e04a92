"""Catalog functions for browsing the collection: a sorted, filtered page of images, label
facets under the same filter, and the recorded failures under a folder.

Sorts are index walks: ``added`` uses ``(added_at, id)`` (migration 0003), ``exif_time``
the ``coalesce(exif_time, added_at)`` expression index (the time a photo was taken, or
added when it has no EXIF time), ``path`` the path index (uploads, which have no path,
last). Every sort ends with the image id, so pages never overlap or skip a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError
from retrieval.store import tables as t
from retrieval.store._sql import prefix_condition
from retrieval.store.records import FailureRecord, ImageRecord

#: sort name -> what it orders by; a leading "-" is newest / last first
SORTS: tuple[str, ...] = ("added", "-added", "exif_time", "-exif_time", "path")
MAX_PAGE = 1000


@dataclass(frozen=True)
class ImagePage:
    """One page of :func:`list_images`: the images in order, their label names, and the filtered total."""

    items: list[ImageRecord]
    total: int
    labels: dict[int, list[str]] = field(hash=False)


def _order(sort: str) -> list[sa.ColumnElement[Any]]:
    img = t.images.c
    if sort not in SORTS:
        raise CatalogError(f"unknown sort {sort!r}; valid sorts: {', '.join(SORTS)}")
    if sort == "path":
        return [img.path.asc().nulls_last(), img.id.asc()]
    column: sa.ColumnElement[Any] = img.added_at
    if sort.lstrip("-") == "exif_time":
        column = sa.func.coalesce(img.exif_time, img.added_at)
    if sort.startswith("-"):
        return [column.desc(), img.id.desc()]
    return [column.asc(), img.id.asc()]


def _conditions(labels: Sequence[str], prefix: str | None, min_score: float) -> list[sa.ColumnElement[bool]]:
    """Images with every one of ``labels`` (at ``max_score >= min_score``, any source) under ``prefix``."""
    img, lab = t.images.c, t.labels.c
    conditions: list[sa.ColumnElement[bool]] = []
    names = sorted(set(labels))
    if names:
        having_all = (
            sa.select(lab.image_id)
            .where(lab.label.in_(names), lab.max_score >= float(min_score))
            .group_by(lab.image_id)
            .having(sa.func.count(sa.distinct(lab.label)) == len(names))
        )
        conditions.append(img.id.in_(having_all))
    if prefix:
        by_image = sa.select(img.id).where(prefix_condition(img.path, prefix))
        by_file = sa.select(t.files.c.image_id).where(prefix_condition(t.files.c.path, prefix))
        conditions.append(img.id.in_(sa.union(by_image, by_file)))
    return conditions


def list_images(
    session: Session,
    *,
    offset: int = 0,
    limit: int = 60,
    sort: str = "-added",
    labels: Sequence[str] = (),
    prefix: str | None = None,
    min_score: float = 0.0,
) -> ImagePage:
    """The images from ``offset`` (at most ``limit``) in ``sort`` order (one of :data:`SORTS`),
    keeping those that have *every* label of ``labels`` and whose first-seen path or any file
    starts with ``prefix``; with the number of images passing the filter and their label names."""
    if offset < 0:
        raise CatalogError(f"offset must not be negative, got {offset}")
    if not 1 <= limit <= MAX_PAGE:
        raise CatalogError(f"limit must be within 1..{MAX_PAGE}, got {limit}")
    order = _order(sort)
    conditions = _conditions(labels, prefix, min_score)
    query = sa.select(t.images).where(*conditions).order_by(*order).offset(int(offset)).limit(int(limit))
    items = [ImageRecord(**row._mapping) for row in session.execute(query)]
    total = int(session.execute(sa.select(sa.func.count()).select_from(t.images).where(*conditions)).scalar_one())
    names: dict[int, list[str]] = {item.id: [] for item in items}
    if items:
        lab = t.labels.c
        rows = session.execute(
            sa.select(lab.image_id, lab.label, sa.func.max(lab.max_score).label("score"))
            .where(lab.image_id.in_(list(names)), lab.max_score >= float(min_score))
            .group_by(lab.image_id, lab.label)
            .order_by(lab.image_id, sa.desc("score"), lab.label)
        )
        for image_id, label, _ in rows:
            names[int(image_id)].append(str(label))
    return ImagePage(items=items, total=total, labels=names)


def label_facets(
    session: Session, *, labels: Sequence[str] = (), prefix: str | None = None, min_score: float = 0.0
) -> list[tuple[str, int]]:
    """``(label, number of images having it)`` among the images :func:`list_images` keeps under the
    same filter, most frequent first (a selected label counts every image, the others narrow it)."""
    lab = t.labels.c
    conditions = _conditions(labels, prefix, min_score)
    n_images = sa.func.count(sa.distinct(lab.image_id))
    query = sa.select(lab.label, n_images).where(lab.max_score >= float(min_score))
    if conditions:
        query = query.where(lab.image_id.in_(sa.select(t.images.c.id).where(*conditions)))
    query = query.group_by(lab.label).order_by(n_images.desc(), lab.label)
    return [(str(label), int(n)) for label, n in session.execute(query)]


def failures_under(session: Session, *, prefix: str, limit: int = 100) -> list[FailureRecord]:
    """The recorded indexing failures of files under ``prefix`` (a folder or path prefix), by path."""
    if not 1 <= limit <= MAX_PAGE:
        raise CatalogError(f"limit must be within 1..{MAX_PAGE}, got {limit}")
    f = t.failures.c
    query = sa.select(t.failures).where(prefix_condition(f.path, prefix)).order_by(f.path).limit(int(limit))
    return [FailureRecord(**row._mapping) for row in session.execute(query)]
