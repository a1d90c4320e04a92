"""Resolution of a :class:`~retrieval.filters.SearchFilter` into allowed vector ids, in SQL.

The result feeds the FAISS ``IDSelector`` of a search, so the filter is applied inside
the search. One statement per call (more than 5,000 ``image_ids`` travel as one
PostgreSQL array or through a SQLite temporary table). Label conditions are ``IN`` /
``NOT IN`` sub-selects answered from the covering ``(label, max_score, area_fraction,
image_id)`` index, path prefixes are index ranges, dates use the ``coalesce(exif_time,
added_at)`` expression index, and vector ids come from the covering ``(space, image_id,
id)`` index without reading vector data; only the matching ids travel back to Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from retrieval.filters import SearchFilter
from retrieval.store import tables as t
from retrieval.store._sql import CHUNK, check_space, chunks, int_list, prefix_condition
from retrieval.store.catalog_vectors import vector_ids

# Per-connection scratch table for long image id lists on SQLite (outside the schema).
_TEMP_IDS = sa.Table("imsearch_filter_ids", sa.MetaData(), sa.Column("id", sa.BigInteger(), primary_key=True))


def _label_conditions(flt: SearchFilter, image_id: Any) -> list[sa.ColumnElement[bool]]:
    lab = t.labels.c
    qualified = (lab.max_score >= flt.min_score, lab.area_fraction >= flt.min_area)
    conditions: list[sa.ColumnElement[bool]] = []
    if flt.labels_any:
        names = sorted(set(flt.labels_any))
        conditions.append(image_id.in_(sa.select(lab.image_id).where(lab.label.in_(names), *qualified)))
    if flt.labels_all:
        names = sorted(set(flt.labels_all))
        having_all = (
            sa.select(lab.image_id)
            .where(lab.label.in_(names), *qualified)
            .group_by(lab.image_id)
            .having(sa.func.count(sa.distinct(lab.label)) == len(names))
        )
        conditions.append(image_id.in_(having_all))
    if flt.labels_none:
        names = sorted(set(flt.labels_none))
        present = sa.select(lab.image_id).where(lab.label.in_(names), lab.max_score >= flt.min_score)
        conditions.append(image_id.not_in(present))
    return conditions


def _image_conditions(flt: SearchFilter, image_id: Any) -> list[sa.ColumnElement[bool]]:
    img = t.images.c
    conditions: list[sa.ColumnElement[bool]] = []
    if flt.path_prefix:
        by_image = sa.select(img.id).where(prefix_condition(img.path, flt.path_prefix))
        by_file = sa.select(t.files.c.image_id).where(prefix_condition(t.files.c.path, flt.path_prefix))
        conditions.append(image_id.in_(sa.union(by_image, by_file)))
    taken = sa.func.coalesce(img.exif_time, img.added_at)
    dates = []
    if flt.date_from is not None:
        dates.append(taken >= flt.date_from)
    if flt.date_to is not None:
        dates.append(taken <= flt.date_to)
    if dates:
        conditions.append(image_id.in_(sa.select(img.id).where(*dates)))
    return conditions


def filter_query(space: str, flt: SearchFilter) -> sa.Select[Any]:
    """The ``SELECT`` of the vector ids of ``space`` whose image passes ``flt`` (without ``image_ids``)."""
    v = t.vectors.c
    conditions = [*_label_conditions(flt, v.image_id), *_image_conditions(flt, v.image_id)]
    return sa.select(v.id).where(v.space == check_space(space), *conditions)


def resolve_filter(session: Session, *, space: str, flt: SearchFilter) -> np.ndarray:
    """Sorted int64 vector ids of ``space`` allowed by ``flt``.

    For ``space="image"`` these are the ids of the images passing the filter; for
    ``space="region"`` the ids of the regions whose image passes it. Only ids that have a
    vector in ``space`` are returned. Label conditions: an image matches ``labels_any`` /
    ``labels_all`` through label rows with ``max_score >= min_score`` and
    ``area_fraction >= min_area`` (any source); ``labels_none`` rejects an image with such a
    label at ``max_score >= min_score``. ``path_prefix`` is a plain string prefix of the
    image's first-seen path or of any of its files. Dates bound ``exif_time`` (or
    ``added_at`` when there is none), both inclusive, naive datetimes taken as UTC.
    """
    check_space(space)
    if flt.is_empty:
        return vector_ids(session, space=space)
    query = filter_query(space, flt)
    if flt.image_ids is None:
        return np.unique(np.fromiter(session.execute(query).scalars(), dtype=np.int64))
    wanted = sorted(set(int_list(flt.image_ids, "image_ids")))
    query = query.where(t.vectors.c.image_id.in_(_id_set(session, wanted)))
    return np.unique(np.fromiter(session.execute(query).scalars(), dtype=np.int64))


def _id_set(session: Session, ids: list[int]) -> Any:
    """Something ``column.in_()`` takes for ``ids``: a plain list up to 5,000 ids; beyond, a
    PostgreSQL array parameter or a SQLite temporary table (one parameter, any size)."""
    if len(ids) <= CHUNK:
        return ids
    if session.get_bind().dialect.name == "postgresql":
        array = sa.bindparam("filter_image_ids", ids, type_=postgresql.ARRAY(sa.BigInteger()))
        return sa.select(sa.func.unnest(array))
    session.execute(sa.text(f"CREATE TEMP TABLE IF NOT EXISTS {_TEMP_IDS.name} (id INTEGER PRIMARY KEY)"))
    session.execute(sa.delete(_TEMP_IDS))
    for chunk in chunks(ids):
        session.execute(sa.insert(_TEMP_IDS), [{"id": i} for i in chunk])
    return sa.select(_TEMP_IDS.c.id)
