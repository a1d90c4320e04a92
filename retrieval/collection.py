"""A collection: the catalog, the vector indexes and the descriptor model of one data directory.

Layout of a data directory (``imsearch-data`` by default)::

    catalog.db            SQLite catalog (unless a database URL is given, e.g. PostgreSQL)
    models/<fp>.pt        the descriptor model the collection is built with
    index/image/          FAISS index of whole-image descriptors (ids = image ids)
    index/region/         FAISS index of region descriptors (ids = region ids)
    uploads/              originals added through the API
    .writer.lock          held by the one process allowed to write

The SQL catalog is the source of truth, vectors included. Every write commits to the
catalog first, then updates the in-memory FAISS indexes, which are saved atomically from
time to time. On open, :meth:`Collection.repair` compares the ids in each FAISS index with
the catalog's and adds or removes the difference, so a crash at any point (between the
two writes, in either order, or in the middle of a save) loses nothing and leaves no
duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import numpy as np

from retrieval.errors import CatalogError, ModelFormatError, VectorIndexError
from retrieval.index.contract import VectorIndex
from retrieval.index.factory import create_index, load_index, shard_count
from retrieval.index.search import SearchParams
from retrieval.models.descriptor import Box, DescriptorModel
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, ImageInfo, LabelStat, RegionInfo
from retrieval.store.db import Database, open_database
from retrieval.store.keys import image_key

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SPACES = ("image", "region")
DEFAULT_DATA_DIR = Path("imsearch-data")
_REPAIR_CHUNK = 20_000


@dataclass(frozen=True)
class RegionOut:
    """A region of an image with its descriptor (boxes in original-image pixels)."""

    box: Box
    source: str
    descriptor: np.ndarray
    label: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class IndexedImage:
    """Everything the writer stores for one image: the mapper stage's output."""

    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str
    descriptor: np.ndarray
    exif_time: datetime | None = None
    path: str | None = None
    mtime_ns: int | None = None
    stored_path: str | None = None
    regions: tuple[RegionOut, ...] = ()
    labels: Mapping[str, Sequence[LabelStat]] = field(default_factory=dict)  # source -> labels
    replace_sources: tuple[str, ...] = ()  # region/label sources this write recomputed

    @property
    def image_id(self) -> int:
        return image_key(self.sha256)


@dataclass
class RepairReport:
    added: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPACES, 0))
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPACES, 0))
    rebuilt: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rebuilt) or any(self.added.values()) or any(self.removed.values())


class WriterLock:
    """An exclusive, process-wide claim on a data directory (``flock``; released on exit or crash)."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".writer.lock"
        self._fh: Any = None

    def acquire(self, wait_s: float = 0.0) -> None:
        fh = self.path.open("a+")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    fh.close()
                    raise CatalogError(
                        f"another imsearch process ({holder}) is writing to {self.path.parent}; wait for it "
                        "to finish, or send the work to it (e.g. the API's index jobs), or open read-only"
                    ) from None
                time.sleep(0.1)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Collection:
    """Catalog + vector indexes + descriptor model of one data directory. Thread-safe writes."""

    def __init__(
        self,
        root: Path,
        db: Database,
        model: DescriptorModel,
        model_id: int,
        indexes: dict[str, VectorIndex],
        *,
        writer_lock: WriterLock | None,
        index_kind: str,
    ) -> None:
        self.root = root
        self._db = db
        self.model = model
        self.model_id = model_id
        self._indexes = indexes
        self.index_kind = index_kind
        self._writer_lock = writer_lock
        self._write_mutex = threading.Lock()
        self._dirty = False
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str] = DEFAULT_DATA_DIR,
        *,
        db_url: str | None = None,
        model: ModelArg = None,
        index_kind: str = "auto",
        shards: int | None = None,
        writable: bool = True,
        create: bool = True,
        wait_for_writer_s: float = 0.0,
    ) -> Collection:
        """Open (or create) the collection in ``root``; see the module docstring.

        ``shards``: vector-index shards per space; None = as saved (1 for a new collection); a
        different count than the saved one rebuilds the indexes from the catalog (logged)."""
        root_path = Path(root).expanduser().resolve()
        if not root_path.is_dir():
            if not create:
                raise CatalogError(f"no collection at {root_path}; run `imsearch index PATH` to create one")
            root_path.mkdir(parents=True, exist_ok=True)
        lock = None
        if writable:
            lock = WriterLock(root_path)
            lock.acquire(wait_for_writer_s)
        try:
            db = open_database(db_url or f"sqlite:///{root_path / 'catalog.db'}")
            descriptor_model, model_id = _resolve_model(root_path, db, model, writable)
            indexes: dict[str, VectorIndex] = {
                space: _open_index(root_path, space, descriptor_model, index_kind, writable, shards=shards)
                for space in SPACES
            }
            collection = cls(
                root_path, db, descriptor_model, model_id, indexes, writer_lock=lock, index_kind=index_kind
            )
            report = collection.repair()
            if report.changed and writable:
                collection.save()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return collection

    @property
    def writable(self) -> bool:
        return self._writer_lock is not None

    # ------------------------------------------------------------------ catalog access
    def read(self, fn: Callable[Concatenate[Any, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a catalog repository function (``retrieval.store.catalog``: session first, then
        keyword arguments) in one read-only session: ``collection.read(catalog.get_image, image_id=7)``."""
        with self._db.session(readonly=True) as s:
            return fn(s, *args, **kwargs)

    def write_catalog(self, fn: Callable[Concatenate[Any, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a catalog repository function that writes (jobs, failures) in one committed session.
        Images, files and vectors go through :meth:`write` / :meth:`add_files` / :meth:`remove_images`,
        which keep the vector indexes in step; this is for the catalog's own bookkeeping."""
        with self._db.session() as s:
            return fn(s, *args, **kwargs)

    # ------------------------------------------------------------------ vector access
    def search(
        self,
        space: str,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(D, I)`` in the ``space`` index (``image`` or ``region``); see :class:`VectorIndex`."""
        return self._index(space).search(
            queries, k, allowed_ids=allowed_ids, exclude_ids=exclude_ids, params=params
        )

    def reconstruct(self, space: str, ids: np.ndarray) -> np.ndarray:
        """Stored full-precision vectors of ``ids`` in the ``space`` index."""
        return self._index(space).reconstruct(ids)

    def index_ids(self, space: str = "image") -> np.ndarray:
        """Sorted ids held by the ``space`` index."""
        return self._index(space).ids()

    def count(self, space: str = "image") -> int:
        """Vectors in the ``space`` index (``image``: images)."""
        return len(self._index(space))

    def index_info(self) -> dict[str, dict[str, Any]]:
        """Per space: the kind asked for, what serves searches (factory), size, shards."""
        return {
            space: {"kind": idx.kind, "factory": idx.factory, "size": len(idx), "shards": shard_count(idx)}
            for space, idx in self._indexes.items()
        }

    def _index(self, space: str) -> VectorIndex:
        try:
            return self._indexes[space]
        except KeyError:
            raise CatalogError(f"unknown index space {space!r}; use one of {', '.join(SPACES)}") from None

    @property
    def dialect(self) -> str:
        """The catalog's database dialect (``sqlite``, ``postgresql``)."""
        return self._db.dialect

    def index_dir(self, space: str) -> Path:
        return self.root / "index" / space

    # ------------------------------------------------------------------ consistency
    def repair(self) -> RepairReport:
        """Make each FAISS index hold exactly the catalog's vectors of its space."""
        report = RepairReport()
        for space in SPACES:
            index = self._indexes[space]
            with self._db.session(readonly=True) as s:
                wanted = catalog.vector_ids(s, space=space)
            have = index.ids()
            extra = np.setdiff1d(have, wanted, assume_unique=True)
            missing = np.setdiff1d(wanted, have, assume_unique=True)
            if (len(extra) or len(missing)) and not self.writable and self.index_dir(space).exists():
                # a reader must not touch the writer's files: repair a copy held in memory
                index = load_index(self.index_dir(space), mmap=False)
                self._indexes[space].close()
                self._indexes[space] = index
            if len(extra):
                index.remove(extra)
                report.removed[space] = len(extra)
            for start in range(0, len(missing), _REPAIR_CHUNK):
                chunk = missing[start : start + _REPAIR_CHUNK]
                with self._db.session(readonly=True) as s:
                    vectors = catalog.get_vectors(s, space=space, ids=chunk)
                index.add(chunk, vectors)
            report.added[space] = len(missing)
        if report.changed:
            logger.warning("index repaired from the catalog: added %s, removed %s", report.added, report.removed)
            self._dirty = True
        return report

    # ------------------------------------------------------------------ writes
    def _require_writer(self) -> None:
        if self._writer_lock is None:
            raise CatalogError(f"the collection at {self.root} was opened read-only")

    def write(self, items: Sequence[IndexedImage]) -> np.ndarray:
        """Store images (catalog first, then the indexes); returns their image ids."""
        self._require_writer()
        if not items:
            return np.zeros(0, dtype=np.int64)
        dim = self.model.meta.dim
        by_sha: dict[str, IndexedImage] = {}
        for item in items:
            if item.descriptor.shape != (dim,):
                raise VectorIndexError(f"descriptor of {item.path or item.sha256} has shape {item.descriptor.shape}")
            by_sha.setdefault(item.sha256, item)
        unique = list(by_sha.values())
        with self._write_mutex:
            region_add: tuple[np.ndarray, np.ndarray] | None = None
            with self._db.session() as s:
                known = catalog.get_files_by_path(s, paths=[it.path for it in items if it.path is not None])
                previous = {path: rec.image_id for path, rec in known.items()}
                ids = catalog.upsert_images(
                    s,
                    images=[
                        ImageInfo(
                            sha256=it.sha256,
                            path=it.path,
                            size_bytes=it.size_bytes,
                            width=it.width,
                            height=it.height,
                            format=it.format,
                            exif_time=it.exif_time,
                            stored_path=it.stored_path,
                        )
                        for it in unique
                    ],
                )
                files = [
                    FileInfo(
                        path=it.path,
                        image_id=image_key(it.sha256),
                        size_bytes=it.size_bytes,
                        mtime_ns=int(it.mtime_ns or 0),
                    )
                    for it in items
                    if it.path is not None
                ]
                catalog.upsert_files(s, files=files)
                catalog.clear_failures(s, paths=[f.path for f in files])
                catalog.put_vectors(
                    s,
                    space="image",
                    ids=ids,
                    image_ids=ids,
                    vectors=np.stack([it.descriptor for it in unique]).astype(np.float32),
                    model_id=self.model_id,
                )
                removed_regions, region_add = self._write_regions(s, unique, ids)
                orphans = self._orphans(s, previous, ids)
                removed = catalog.delete_images(s, image_ids=orphans) if len(orphans) else {}
            # catalog committed: now the in-memory indexes (repair() covers a crash right here)
            self._indexes["image"].add(ids, np.stack([it.descriptor for it in unique]).astype(np.float32))
            region_index = self._indexes["region"]
            stale = np.union1d(removed_regions, removed.get("region", np.zeros(0, dtype=np.int64)))
            if len(stale):
                region_index.remove(stale)
            if region_add is not None:
                region_index.add(*region_add)
            if len(removed.get("image", [])):
                self._indexes["image"].remove(removed["image"])
            self._dirty = True
        return ids

    def _write_regions(
        self, s: Any, items: list[IndexedImage], ids: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        removed: list[np.ndarray] = []
        for source in sorted({src for it in items for src in it.replace_sources}):
            targets = [int(i) for it, i in zip(items, ids, strict=True) if source in it.replace_sources]
            if source in ("detector", "grid", "manual", "query"):
                removed.append(catalog.delete_regions(s, image_ids=targets, source=source))
        infos: list[RegionInfo] = []
        vecs: list[np.ndarray] = []
        for it, image_id in zip(items, ids, strict=True):
            for r in it.regions:
                infos.append(RegionInfo(int(image_id), *r.box, source=r.source, label=r.label, score=r.score))
                vecs.append(r.descriptor)
            for source, stats in it.labels.items():
                catalog.put_labels(s, image_id=int(image_id), source=source, labels=list(stats))
        added = None
        if infos:
            region_ids = catalog.add_regions(s, regions=infos)
            owners = np.array([r.image_id for r in infos], dtype=np.int64)
            matrix = np.stack(vecs).astype(np.float32)
            # one box may be listed twice (same key): keep the first
            uniq, first = np.unique(region_ids, return_index=True)
            catalog.put_vectors(
                s, space="region", ids=uniq, image_ids=owners[first], vectors=matrix[first], model_id=self.model_id
            )
            added = (uniq, matrix[first])
        gone = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        if added is not None:
            gone = np.setdiff1d(gone, added[0])
        return gone, added

    @staticmethod
    def _orphans(s: Any, previous: dict[str, int], ids: np.ndarray) -> np.ndarray:
        """Images that lost their last file because a changed file now holds other content."""
        candidates = {old for old in previous.values() if old not in set(ids.tolist())}
        orphans = []
        for old in sorted(candidates):
            image = catalog.get_image(s, image_id=old)
            if image is not None and image.stored_path is None and not catalog.get_files(s, image_id=old):
                orphans.append(old)
        return np.array(orphans, dtype=np.int64)

    def add_files(self, files: Sequence[FileInfo]) -> None:
        """Record files whose content is already indexed (duplicates, renamed or touched files)."""
        self._require_writer()
        if files:
            with self._write_mutex, self._db.session() as s:
                catalog.upsert_files(s, files=list(files))
                catalog.clear_failures(s, paths=[f.path for f in files])

    def remove_images(self, image_ids: Sequence[int] | np.ndarray) -> int:
        """Delete images with their files, regions, labels and vectors."""
        self._require_writer()
        ids = np.asarray(image_ids, dtype=np.int64)
        if not len(ids):
            return 0
        with self._write_mutex:
            with self._db.session() as s:
                removed = catalog.delete_images(s, image_ids=ids)
            for space in SPACES:
                gone = removed.get(space)
                if gone is not None and len(gone):
                    self._indexes[space].remove(gone)
            self._dirty = True
        return len(removed.get("image", []))

    def remove_files(self, paths: Sequence[str]) -> int:
        """Forget files; images left without any file (and not uploads) are deleted. Returns that count."""
        self._require_writer()
        with self._write_mutex, self._db.session() as s:
            orphans = catalog.delete_files(s, paths=list(paths))
            keep = [int(i) for i in orphans if (img := catalog.get_image(s, image_id=int(i))) and img.stored_path]
        return self.remove_images(np.setdiff1d(orphans, np.array(keep, dtype=np.int64)))

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Persist the FAISS indexes (atomic per index)."""
        self._require_writer()
        with self._write_mutex:
            for space, index in self._indexes.items():
                index.save(self.index_dir(space))
            self._dirty = False
            self._last_save = time.monotonic()

    def save_if_due(self, every_s: float = 30.0) -> bool:
        """Save when there are unsaved changes older than ``every_s`` seconds."""
        if self._dirty and time.monotonic() - self._last_save >= every_s:
            self.save()
            return True
        return False

    def close(self) -> None:
        try:
            if self.writable and self._dirty:
                self.save()
        finally:
            for index in self._indexes.values():
                index.close()
            self._db.dispose()
            if self._writer_lock is not None:
                self._writer_lock.release()
                self._writer_lock = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- helpers


def model_path(root: Path, fingerprint: str) -> Path:
    return root / "models" / f"{fingerprint[:16]}.pt"


class ModelFactory(Protocol):
    """The model of a collection not created yet, built only if it is created now (e.g.
    :class:`retrieval.collection_whitening.WhitenOnCreation`); an existing collection keeps its
    own model after :meth:`check_compatible` (which raises when the asked-for model cannot be it)."""

    def __call__(self) -> DescriptorModel: ...

    def check_compatible(self, stored: dict[str, Any] | None, what: str = ...) -> None: ...


#: what :meth:`Collection.open` takes as ``model``
ModelArg = DescriptorModel | str | os.PathLike[str] | ModelFactory | None


def _load_model_arg(model: DescriptorModel | str | os.PathLike[str] | None) -> DescriptorModel | None:
    if model is None or isinstance(model, DescriptorModel):
        return model
    return DescriptorModel.load(Path(model))


def _resolve_model(
    root: Path, db: Database, model: ModelArg, writable: bool
) -> tuple[DescriptorModel, int]:
    """The collection's model: the active one in the catalog, else the given one (or the default)."""
    factory = None if model is None or isinstance(model, (DescriptorModel, str, os.PathLike)) else model
    given = None if factory is not None else _load_model_arg(model)  # type: ignore[arg-type]  # not a factory
    with db.session(readonly=True) as s:
        active = catalog.get_active_model(s)
    if active is not None:
        path = model_path(root, active.fingerprint)
        stored = {"fingerprint": active.fingerprint, "meta": active.meta.get("model")}
        if factory is not None:
            factory.check_compatible(stored)
        if given is not None:
            given.check_compatible(stored)
        if given is None:
            if not path.is_file():
                raise ModelFormatError(
                    f"the collection's model file {path} is missing; restore it, or re-index with a model "
                    "(imsearch reindex --model FILE)"
                )
            given = DescriptorModel.load(path)
            if given.fingerprint != active.fingerprint:
                raise ModelFormatError(f"{path} is not the model the catalog names ({active.fingerprint[:16]})")
        return given, active.id
    if not writable:
        raise CatalogError(f"the collection at {root} is empty (no model yet); index some images first")
    chosen = given or (factory() if factory is not None else DescriptorModel.create())
    path = model_path(root, chosen.fingerprint)
    if not path.is_file():
        chosen.save(path)
    with db.session() as s:
        record = catalog.register_model(
            s,
            fingerprint=chosen.fingerprint,
            name=chosen.meta.name or chosen.meta.backbone,
            meta={"model": chosen.meta.to_dict(), "artifact": str(path.relative_to(root))},
        )
    logger.info("collection model: %s", chosen.meta.describe())
    return chosen, record.id


def _open_index(
    root: Path, space: str, model: DescriptorModel, kind: str, writable: bool, *, shards: int | None = None
) -> VectorIndex:
    """The saved ``space`` index when it was built with ``model`` (and has ``shards`` shards, when
    given); else a new empty one (``shards``, else the saved count, else 1) for repair to fill."""
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise VectorIndexError(f"shards must be None or an int >= 1, got {shards!r}")
    directory = root / "index" / space
    if directory.exists():
        try:
            index = load_index(directory)
            same_model = index.model_info.get("fingerprint") == model.fingerprint and index.dim == model.meta.dim
            on_disk = shard_count(index)
            if same_model and shards in (None, on_disk):
                return index
            if same_model:
                logger.warning(
                    "index %s has %d shard(s), %d asked for: rebuilding it from the catalog", directory, on_disk, shards
                )
            else:
                logger.warning("index %s was built with another model: rebuilding it from the catalog", directory)
            shards = on_disk if shards is None else shards
            index.close()
        except VectorIndexError as exc:
            logger.warning("index %s is unreadable (%s): rebuilding it from the catalog", directory, exc)
        if writable:  # a reader rebuilds in memory and leaves the files to the writer
            shutil.rmtree(directory, ignore_errors=True)
    index = create_index(model.meta.dim, kind=kind, shards=shards or 1)
    index.model_info = {"fingerprint": model.fingerprint, "meta": model.meta.to_dict()}
    return index
