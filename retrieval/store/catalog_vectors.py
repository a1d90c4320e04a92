"""Catalog functions for descriptor vectors, the source of truth of the FAISS indexes.

Vectors live in two spaces: ``"image"`` (id = image id) and ``"region"`` (id = region id),
plus their staging twins ``"image_next"`` / ``"region_next"`` while `imsearch reindex` runs;
each row keeps its image id, the model that computed it and its float32 data as
little-endian bytes. All vectors of a space share one dimension.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError, NotFoundError
from retrieval.store import tables as t
from retrieval.store._sql import check_space, chunks, int_list, rowcount, upsert
from retrieval.store.tables import STAGING

_F32 = np.dtype("<f4")


def _as_matrix(vectors: np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] != n or array.shape[1] == 0:
        raise CatalogError(f"vectors must be an (n, d) array with n = {n} and d > 0, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise CatalogError(f"vectors must be floating point (float32), got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=_F32)
    if not np.isfinite(array).all():
        raise CatalogError("vectors contain NaN or infinite values; refusing to store them")
    return array


def vector_dim(session: Session, *, space: str) -> int | None:
    """The dimension of the vectors stored in ``space`` (``None`` when it is empty)."""
    query = sa.select(t.vectors.c.dim).where(t.vectors.c.space == check_space(space)).limit(1)
    return session.execute(query).scalar()


def put_vectors(
    session: Session,
    *,
    space: str,
    ids: Sequence[int] | np.ndarray,
    image_ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    model_id: int,
) -> None:
    """Insert or replace vectors ``vectors[i]`` under ``ids[i]`` (image ``image_ids[i]``)."""
    check_space(space)
    keys, owners = int_list(ids, "ids"), int_list(image_ids, "image_ids")
    if len(keys) != len(owners):
        raise CatalogError(f"put_vectors got {len(keys)} ids but {len(owners)} image_ids")
    matrix = _as_matrix(vectors, len(keys))
    if not keys:
        return
    dim = int(matrix.shape[1])
    other = session.execute(
        sa.select(t.vectors.c.dim).where(t.vectors.c.space == space, t.vectors.c.dim != dim).limit(1)
    ).scalar()
    if other is not None:
        raise CatalogError(
            f"space {space!r} holds {other}-dimensional vectors, cannot add {dim}-dimensional ones; "
            "delete the old vectors (delete_vectors) before re-indexing with another model"
        )
    model_id = int(model_id)
    if session.execute(sa.select(t.models.c.id).where(t.models.c.id == model_id)).first() is None:
        raise CatalogError(f"model {model_id} is not registered; call register_model first")
    rows = [
        {
            "space": space,
            "id": key,
            "image_id": owner,
            "model_id": model_id,
            "dim": dim,
            "data": row.tobytes(),
        }
        for key, owner, row in zip(keys, owners, matrix, strict=True)
    ]
    try:
        upsert(session, t.vectors, rows, keys=["space", "id"], update=["image_id", "model_id", "dim", "data"])
    except IntegrityError as exc:
        raise CatalogError(
            f"cannot store {space} vectors: some image_ids are not in the catalog (upsert the images first): {exc.orig}"
        ) from exc


def _decode(blobs: Sequence[bytes], dims: Sequence[int], what: str) -> np.ndarray:
    if not blobs:
        return np.empty((0, 0), dtype=np.float32)
    dim = dims[0]
    if any(d != dim for d in dims) or any(len(b) != 4 * dim for b in blobs):
        raise CatalogError(f"{what}: stored vectors disagree on their dimension; the catalog is inconsistent")
    return np.frombuffer(b"".join(blobs), dtype=_F32).reshape(len(blobs), dim).astype(np.float32)


def get_vectors(session: Session, *, space: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """The vectors of ``ids`` as a float32 ``(n, d)`` array, rows in the order asked.

    Raises :class:`NotFoundError` naming the ids that have no vector in ``space``.
    """
    check_space(space)
    keys = int_list(ids, "ids")
    found: dict[int, tuple[bytes, int]] = {}
    for chunk in chunks(sorted(set(keys))):
        query = sa.select(t.vectors.c.id, t.vectors.c.data, t.vectors.c.dim).where(
            t.vectors.c.space == space, t.vectors.c.id.in_(chunk)
        )
        for vector_id, data, dim in session.execute(query):
            found[vector_id] = (bytes(data), dim)
    missing = [k for k in keys if k not in found]
    if missing:
        raise NotFoundError(f"no {space} vector for {len(missing)} id(s), e.g. {missing[:5]}; index them")
    if not keys:
        return np.empty((0, vector_dim(session, space=space) or 0), dtype=np.float32)
    return _decode([found[k][0] for k in keys], [found[k][1] for k in keys], f"{space} vectors")


def vector_ids(session: Session, *, space: str) -> np.ndarray:
    """Every vector id of ``space``, sorted, as int64."""
    query = sa.select(t.vectors.c.id).where(t.vectors.c.space == check_space(space)).order_by(t.vectors.c.id)
    return np.fromiter(session.execute(query).scalars(), dtype=np.int64)


def iter_vectors(session: Session, *, space: str, batch_size: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All vectors of ``space`` as ``(ids int64 (b,), vectors float32 (b, d))`` batches in id order.

    Each batch is one keyset-paginated query, so memory is bounded by ``batch_size``.
    """
    check_space(space)
    if batch_size <= 0:
        raise CatalogError(f"batch_size must be positive, got {batch_size}")
    v = t.vectors.c
    last: int | None = None
    while True:
        query: Any = sa.select(v.id, v.data, v.dim).where(v.space == space)
        if last is not None:
            query = query.where(v.id > last)
        rows = session.execute(query.order_by(v.id).limit(batch_size)).all()
        if not rows:
            return
        ids = np.array([row.id for row in rows], dtype=np.int64)
        yield ids, _decode([bytes(row.data) for row in rows], [row.dim for row in rows], f"{space} vectors")
        if len(rows) < batch_size:
            return
        last = int(ids[-1])


def delete_vectors(session: Session, *, space: str, ids: Sequence[int] | np.ndarray | None = None) -> int:
    """Delete the vectors of ``ids`` in ``space`` (the whole space when ``ids`` is None); returns how many."""
    check_space(space)
    if ids is None:
        return rowcount(session.execute(sa.delete(t.vectors).where(t.vectors.c.space == space)))
    removed = 0
    for chunk in chunks(sorted(set(int_list(ids, "ids")))):
        stmt = sa.delete(t.vectors).where(t.vectors.c.space == space, t.vectors.c.id.in_(chunk))
        removed += rowcount(session.execute(stmt))
    return removed


def promote_staged_vectors(session: Session) -> dict[str, int]:
    """Replace each space's vectors by its staged ones (``image_next`` -> ``image`` ...), in this transaction.

    Used by `imsearch reindex` once every vector of the new model is staged; returns the
    number of vectors now in each space.
    """
    counts: dict[str, int] = {}
    for space, staged in STAGING.items():
        session.execute(sa.delete(t.vectors).where(t.vectors.c.space == space))
        result = session.execute(sa.update(t.vectors).where(t.vectors.c.space == staged).values(space=space))
        counts[space] = rowcount(result)
    return counts
