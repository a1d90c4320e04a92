"""A query by example without torch: exported model, saved FAISS index, read-only SQLite catalog.

:meth:`QuickSearch.open` opens nothing for writing and repairs nothing: when the saved image
index does not match the catalog (another model, another number of vectors) or the catalog is
not SQLite at the newest schema, it raises :class:`QuickUnavailableError` and the caller uses
:class:`retrieval.search.SearchEngine`, which repairs in memory. :meth:`QuickSearch.search`
ranks exactly like :meth:`SearchEngine.search` without boxes, objects or re-ranking (score, then
image id; label and path filters inside the vector search; ``offset`` paging; ``next_offset``),
and gives hits with the fields of :class:`retrieval.search.Hit`, ``match`` from the same stored
calibration (:mod:`retrieval.calibrate`, numpy only), ``min_match`` as a minimum score.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from retrieval.calibrate import Calibration, load_calibration, min_match_score
from retrieval.errors import ImsearchError, NotFoundError
from retrieval.filters import SearchFilter
from retrieval.imageio import ImageSource
from retrieval.quick import QuickUnavailableError
from retrieval.quick.catalog import SqliteCatalog
from retrieval.quick.model import QuickModel, artifact_paths, export_failure, failure_path

logger = logging.getLogger(__name__)

MAX_K = 1000  # retrieval.search.MAX_K (tested equal)


@dataclass(frozen=True)
class QuickLabel:
    """The fields of :class:`retrieval.search.LabelInfo`."""

    label: str
    source: str
    score: float
    area: float


@dataclass(frozen=True)
class QuickHit:
    """The fields of :class:`retrieval.search.Hit` (a quick search never matches boxes)."""

    image_id: int
    score: float
    path: str | None
    width: int
    height: int
    labels: tuple[QuickLabel, ...] = ()
    box: tuple[float, float, float, float] | None = None
    region_id: int | None = None
    region_label: str | None = None
    match: str | None = None


@dataclass
class QuickResult:
    """The fields of :class:`retrieval.search.SearchResult`."""

    hits: list[QuickHit]
    took_ms: float
    query_box: tuple[float, float, float, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    offset: int = 0
    next_offset: int | None = None


def sqlite_path(root: Path, db_url: str | None) -> Path:
    """The catalog file of a collection; :class:`QuickUnavailableError` for a server database."""
    if db_url is None:
        return root / "catalog.db"
    if not db_url.startswith("sqlite:///") or "?" in db_url:
        raise QuickUnavailableError("the catalog is not a plain SQLite file")
    return Path(db_url[len("sqlite:///") :]).expanduser()


class QuickSearch:
    """Searches of one collection by image or by id, with no torch, SQLAlchemy or repair."""

    def __init__(self, root: Path, catalog: SqliteCatalog, index: Any, fingerprint: str) -> None:
        self.root = root
        self.catalog = catalog
        self.index = index
        self.fingerprint = fingerprint
        self._model: QuickModel | None = None
        self.calibration: Calibration | None = load_calibration(root, fingerprint)

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, db_url: str | None = None) -> QuickSearch:
        """Open the collection at ``root`` read-only, or raise :class:`QuickUnavailableError` saying why not."""
        path = Path(root).expanduser().resolve()
        catalog = SqliteCatalog(sqlite_path(path, db_url))
        try:
            active = catalog.active_model()
            if active is None:
                raise QuickUnavailableError(f"the collection at {path} has no model yet")
            index = _load_index(path / "index" / "image", active.fingerprint, catalog.vector_count("image"))
        except BaseException:
            catalog.close()
            raise
        return cls(path, catalog, index, active.fingerprint)

    @property
    def model(self) -> QuickModel:
        """The exported model (loaded on the first query by image; a query by id needs none)."""
        if self._model is None:
            failed = export_failure(self.root, self.fingerprint)
            if failed is not None:
                raise QuickUnavailableError(f"{failed} (recorded in {failure_path(self.root, self.fingerprint)})")
            onnx_path, head_path = artifact_paths(self.root, self.fingerprint)
            if not head_path.is_file():
                raise QuickUnavailableError(f"the model has not been exported for fast queries yet ({head_path})")
            model = QuickModel(onnx_path, head_path)
            if model.fingerprint != self.fingerprint:
                raise QuickUnavailableError("the exported model is not the collection's")
            self._model = model
        return self._model

    def close(self) -> None:
        self.index.close()
        self.catalog.close()

    def __enter__(self) -> QuickSearch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, query: ImageSource | int) -> np.ndarray:
        """The query's descriptor: the stored vector of an indexed id, else the exported model's."""
        if isinstance(query, int):
            vec = self.catalog.vector("image", query)
            if vec is None:
                raise NotFoundError(f"no indexed image with id {query}")
            return vec
        return self.model.describe(query)

    def search(
        self,
        query: ImageSource | int,
        *,
        k: int = 10,
        offset: int = 0,
        threshold: float | None = None,
        flt: SearchFilter | None = None,
        exclude_query: bool = False,
        min_match: str | None = None,
    ) -> QuickResult:
        """Results ``offset .. offset + k`` for an image (path or bytes) or an indexed image id; ``flt``
        is resolved by the catalog (:func:`retrieval.store.catalog.resolve_filter`, read-only) and
        applied inside the vector search, as the engine does."""
        if not 1 <= k <= MAX_K:
            raise ImsearchError(f"k must be within 1..{MAX_K}, got {k}")
        if offset < 0 or offset + k > MAX_K:
            raise ImsearchError(f"offset must be >= 0 and offset + k at most {MAX_K} (got offset {offset}, k {k})")
        depth = offset + k
        if min_match is not None:
            floor = self.min_match_score(min_match)
            threshold = floor if threshold is None else max(threshold, floor)
        t0 = time.perf_counter()
        vec = self.describe(query)
        t1 = time.perf_counter()
        exclude = np.array([query], dtype=np.int64) if exclude_query and isinstance(query, int) else None
        allowed = self.allowed_ids(flt)
        scores, ids = self.index.search(np.ascontiguousarray(vec[None, :], dtype=np.float32), depth + 1,
                                        allowed_ids=allowed, exclude_ids=exclude)
        ranked = sorted(((int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0),
                        key=lambda kv: (-kv[1], kv[0]))
        if threshold is not None:
            ranked = [kv for kv in ranked if kv[1] >= threshold]
        next_offset = depth if len(ranked) > depth else None
        ranked = ranked[offset:depth]
        t2 = time.perf_counter()
        hits = self._hits(ranked)
        t3 = time.perf_counter()
        timings = {"describe_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3, "metadata_ms": (t3 - t2) * 1e3}
        return QuickResult(hits, (t3 - t0) * 1e3, None, timings, offset, next_offset)

    def min_match_score(self, level: str) -> float:
        """The lowest score of match ``level`` (as :meth:`retrieval.search.SearchEngine.min_match_score`)."""
        return min_match_score(self.calibration, level, self.root)

    def allowed_ids(self, flt: SearchFilter | None) -> np.ndarray | None:
        """The image ids ``flt`` allows (None: no filter). Imports SQLAlchemy (~0.7 s), never torch."""
        if flt is None or flt.is_empty:
            return None
        import sqlalchemy as sa
        from sqlalchemy.orm import Session

        from retrieval.store import catalog

        url = f"sqlite+pysqlite:///file:{quote(str(self.catalog.path))}?mode=ro&uri=true"
        engine = sa.create_engine(url)
        try:
            with Session(engine) as session:
                allowed: np.ndarray = catalog.resolve_filter(session, space="image", flt=flt)
                return allowed
        except sa.exc.DBAPIError as exc:
            raise QuickUnavailableError(f"the filter could not be resolved read-only: {exc.orig}") from exc
        finally:
            engine.dispose()

    def _hits(self, ranked: list[tuple[int, float]]) -> list[QuickHit]:
        ids = [i for i, _ in ranked]
        images = self.catalog.images(ids)
        missing = [i for i, rec in zip(ids, images, strict=True) if rec is None]
        if missing:
            raise QuickUnavailableError(f"the saved index holds {len(missing)} image(s) the catalog no longer has")
        labels = self.catalog.labels(ids)
        hits = []
        for (image_id, score), rec in zip(ranked, images, strict=True):
            assert rec is not None
            lab = tuple(
                QuickLabel(r.label, r.source, r.max_score, r.area_fraction)
                for r in sorted(labels[image_id], key=lambda r: -r.max_score)
            )
            match = self.calibration.match_level(score) if self.calibration is not None else None
            hits.append(QuickHit(image_id, score, rec.path or rec.stored_path, rec.width, rec.height, lab,
                                 match=match))
        return hits


def _load_index(directory: Path, fingerprint: str, catalog_count: int) -> Any:
    from retrieval.errors import VectorIndexError
    from retrieval.index.factory import load_index

    if not directory.is_dir():
        raise QuickUnavailableError(f"no saved image index at {directory}")
    try:  # single or sharded (shards in this process), read-only, vectors left on disk
        index = load_index(directory, mmap=True, gpu=False)
    except VectorIndexError as exc:
        raise QuickUnavailableError(f"the saved index {directory} is unreadable ({exc})") from exc
    if index.model_info.get("fingerprint") != fingerprint:
        index.close()
        raise QuickUnavailableError(f"the saved index {directory} was built with another model than the catalog's")
    if len(index) != catalog_count:
        index.close()
        raise QuickUnavailableError(
            f"the saved index {directory} holds {len(index)} vectors, the catalog {catalog_count} (stale: the "
            "normal path repairs it in memory; the next write saves it)"
        )
    return index
