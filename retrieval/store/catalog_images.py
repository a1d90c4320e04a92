"""Catalog functions for images and the files that hold them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError
from retrieval.store import tables as t
from retrieval.store._sql import chunks, int_list, prefix_condition, upsert, utcnow
from retrieval.store.keys import image_key, normalize_sha256
from retrieval.store.records import FileInfo, FileRecord, ImageInfo, ImageRecord
from retrieval.store.tables import SPACES


def _image_row(info: ImageInfo, now: Any) -> dict[str, Any]:
    if info.width <= 0 or info.height <= 0:
        raise CatalogError(f"image {info.path or info.sha256}: width and height must be positive")
    if info.size_bytes < 0:
        raise CatalogError(f"image {info.path or info.sha256}: size_bytes must not be negative")
    sha = normalize_sha256(info.sha256)
    return {
        "id": image_key(sha),
        "sha256": sha,
        "path": info.path,
        "stored_path": info.stored_path,
        "size_bytes": int(info.size_bytes),
        "width": int(info.width),
        "height": int(info.height),
        "format": info.format,
        "exif_time": info.exif_time,
        "added_at": now,
        "updated_at": now,
    }


def upsert_images(session: Session, *, images: Sequence[ImageInfo]) -> np.ndarray:
    """Insert or update images (keyed by ``image_key(sha256)``); returns their ids in order.

    An existing image keeps its first-seen ``path`` and ``added_at``; ``stored_path`` and
    ``exif_time`` are only replaced by non-null values; the rest is overwritten.
    """
    now = utcnow()
    rows = [_image_row(info, now) for info in images]

    def merge(stmt: Any) -> dict[str, Any]:
        new = stmt.excluded
        return {
            "path": sa.func.coalesce(t.images.c.path, new.path),
            "stored_path": sa.func.coalesce(new.stored_path, t.images.c.stored_path),
            "exif_time": sa.func.coalesce(new.exif_time, t.images.c.exif_time),
        }

    upsert(
        session,
        t.images,
        rows,
        keys=["id"],
        update=["size_bytes", "width", "height", "format", "updated_at"],
        update_expr=merge,
    )
    return np.array([row["id"] for row in rows], dtype=np.int64)


def upsert_image(session: Session, *, image: ImageInfo) -> ImageRecord:
    """Insert or update one image (see :func:`upsert_images`) and return it as stored."""
    image_id = int(upsert_images(session, images=[image])[0])
    record = get_image(session, image_id=image_id)
    if record is None:  # pragma: no cover - just written in this transaction
        raise CatalogError(f"image {image_id} vanished right after being written")
    return record


def get_image(session: Session, *, image_id: int) -> ImageRecord | None:
    row = session.execute(sa.select(t.images).where(t.images.c.id == int(image_id))).first()
    return None if row is None else ImageRecord(**row._mapping)


def get_images(session: Session, *, image_ids: Sequence[int] | np.ndarray) -> list[ImageRecord | None]:
    """The images of ``image_ids`` in the order asked (``None`` where an id is unknown)."""
    ids = int_list(image_ids, "image_ids")
    found: dict[int, ImageRecord] = {}
    for chunk in chunks(sorted(set(ids))):
        for row in session.execute(sa.select(t.images).where(t.images.c.id.in_(chunk))):
            found[row.id] = ImageRecord(**row._mapping)
    return [found.get(i) for i in ids]


def find_image_by_sha(session: Session, *, sha256: str) -> ImageRecord | None:
    sha = normalize_sha256(sha256)
    row = session.execute(sa.select(t.images).where(t.images.c.sha256 == sha)).first()
    return None if row is None else ImageRecord(**row._mapping)


def delete_images(session: Session, *, image_ids: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Delete images with their files, vectors, regions and labels (database cascades).

    Returns the removed vector ids per space (``{"image": ..., "region": ...}``, sorted
    int64 arrays) so the caller can drop them from the FAISS indexes.
    """
    removed: dict[str, list[int]] = {space: [] for space in SPACES}
    for chunk in chunks(sorted(set(int_list(image_ids, "image_ids")))):
        query = sa.select(t.vectors.c.space, t.vectors.c.id).where(t.vectors.c.image_id.in_(chunk))
        for space, vector_id in session.execute(query):
            removed[space].append(vector_id)
        session.execute(sa.delete(t.images).where(t.images.c.id.in_(chunk)))
    return {space: np.unique(np.array(ids, dtype=np.int64)) for space, ids in removed.items()}


def get_file(session: Session, *, path: str) -> FileRecord | None:
    row = session.execute(sa.select(t.files).where(t.files.c.path == path)).first()
    return None if row is None else FileRecord(**row._mapping)


def get_files_by_path(session: Session, *, paths: Sequence[str]) -> dict[str, FileRecord]:
    """The known files among ``paths`` (bulk lookup for the indexer's skip/changed check)."""
    found: dict[str, FileRecord] = {}
    for chunk in chunks(sorted(set(paths))):
        for row in session.execute(sa.select(t.files).where(t.files.c.path.in_(chunk))):
            rec = FileRecord(**row._mapping)
            found[rec.path] = rec
    return found


def existing_images(session: Session, *, image_ids: Sequence[int] | np.ndarray) -> set[int]:
    """Which of ``image_ids`` are in the catalog."""
    found: set[int] = set()
    for chunk in chunks(sorted(set(int_list(image_ids, "image_ids")))):
        found.update(session.execute(sa.select(t.images.c.id).where(t.images.c.id.in_(chunk))).scalars())
    return found


def get_files(session: Session, *, image_id: int) -> list[FileRecord]:
    """Every known file holding image ``image_id`` (duplicates), sorted by path."""
    query = sa.select(t.files).where(t.files.c.image_id == int(image_id)).order_by(t.files.c.path)
    return [FileRecord(**row._mapping) for row in session.execute(query)]


def upsert_files(session: Session, *, files: Sequence[FileInfo]) -> None:
    """Insert or update files (keyed by path) and stamp them as seen now."""
    now = utcnow()
    rows = [
        {
            "path": f.path,
            "image_id": int(f.image_id),
            "size_bytes": int(f.size_bytes),
            "mtime_ns": int(f.mtime_ns),
            "seen_at": now,
        }
        for f in files
    ]
    upsert(session, t.files, rows, keys=["path"], update=["image_id", "size_bytes", "mtime_ns", "seen_at"])


def files_under(session: Session, *, prefix: str, batch_size: int = 1000) -> Iterator[FileRecord]:
    """Every file whose path starts with ``prefix`` (plain string prefix), sorted by path.

    Reads ``batch_size`` rows per query (keyset pagination), so memory stays bounded.
    """
    if batch_size <= 0:
        raise CatalogError(f"batch_size must be positive, got {batch_size}")
    last: str | None = None
    while True:
        query = sa.select(t.files).where(prefix_condition(t.files.c.path, prefix))
        if last is not None:
            query = query.where(t.files.c.path > last)
        rows = session.execute(query.order_by(t.files.c.path).limit(batch_size)).all()
        for row in rows:
            yield FileRecord(**row._mapping)
        if len(rows) < batch_size:
            return
        last = rows[-1].path


def delete_files(session: Session, *, paths: Sequence[str]) -> np.ndarray:
    """Forget files; returns the ids (sorted) of the images now left without any file.

    Images that keep other files get their ``path`` moved to one of those when it pointed
    at a deleted file. Orphaned images are not deleted (uploads have no file either): the
    caller decides, e.g. with :func:`delete_images`.
    """
    touched: set[int] = set()
    unique_paths = sorted(set(paths))
    for path_chunk in chunks(unique_paths):
        query = sa.select(t.files.c.image_id).where(t.files.c.path.in_(path_chunk)).distinct()
        touched.update(session.execute(query).scalars())
        session.execute(sa.delete(t.files).where(t.files.c.path.in_(path_chunk)))
    orphans: list[int] = []
    has_file = sa.exists().where(t.files.c.image_id == t.images.c.id)
    for chunk in chunks(sorted(touched)):
        query = sa.select(t.images.c.id).where(t.images.c.id.in_(chunk), ~has_file)
        orphans.extend(session.execute(query).scalars())
        stale = ~sa.exists().where(t.files.c.path == t.images.c.path)
        first_file = sa.select(sa.func.min(t.files.c.path)).where(t.files.c.image_id == t.images.c.id).scalar_subquery()
        session.execute(sa.update(t.images).where(t.images.c.id.in_(chunk), has_file, stale).values(path=first_file))
    return np.array(sorted(orphans), dtype=np.int64)
