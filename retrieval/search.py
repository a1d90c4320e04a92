"""The search engine: query -> descriptor -> filtered vector search -> re-rank -> hits with metadata.

One facade for the CLI and the HTTP API alike. A query is an image (bytes or a path),
an indexed image id, or a box on either. Filters are resolved by the catalog into
allowed ids and applied inside the FAISS search, so ``k`` hits come back whenever ``k``
exist. Object search also matches the query against region descriptors (detected
objects) and groups the results per image, returning the matching box.

Match levels (:mod:`retrieval.calibrate`): when the collection is calibrated for its current
model, each hit of a plain image-to-image score carries ``match`` (``copy``, ``near``,
``similar`` or None below ``similar``), and ``min_match`` keeps only hits of that level or
stronger: a minimum score applied to the ranking before the page is cut, like ``threshold``,
so pages stay one ranking. Scores the calibration did not measure (a box query, object
matches, AQE/DBA re-ranking) get ``match`` None, and ``min_match`` refuses them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.calibrate import Calibration, CalibrationCache, min_match_score
from retrieval.collection import Collection
from retrieval.errors import ImsearchError, NotFoundError
from retrieval.files import FilePolicy, IndexedFile, VerifiedFile, first_readable
from retrieval.filters import SearchFilter
from retrieval.imageio import ImageSource
from retrieval.models.descriptor import Box
from retrieval.models.extract import Extractor
from retrieval.rerank import RerankOptions, weighted_average
from retrieval.store import catalog
from retrieval.store.catalog import ImageRecord

logger = logging.getLogger(__name__)

MAX_K = 1000
#: ``duplicates`` without a threshold on an uncalibrated collection
DEFAULT_DUPLICATE_THRESHOLD = 0.95


@dataclass(frozen=True)
class Query:
    """What to search with: an image (bytes/path) or an indexed image id, optionally a box on it."""

    image: ImageSource | None = None
    image_id: int | None = None
    box: Box | None = None

    def __post_init__(self) -> None:
        if (self.image is None) == (self.image_id is None):
            raise ImsearchError("a query needs exactly one of an image or an indexed image id")


@dataclass(frozen=True)
class LabelInfo:
    label: str
    source: str
    score: float
    area: float


@dataclass(frozen=True)
class Hit:
    """One result: an image, its score, and (object search) the region that matched."""

    image_id: int
    score: float
    path: str | None
    width: int
    height: int
    labels: tuple[LabelInfo, ...] = ()
    box: Box | None = None
    region_id: int | None = None
    region_label: str | None = None
    match: str | None = None  # calibrated match level of the score (see the module docstring)


@dataclass
class SearchResult:
    hits: list[Hit]
    took_ms: float
    query_box: Box | None = None
    timings: dict[str, float] = field(default_factory=dict)
    offset: int = 0  # rank (0-based) of hits[0] in the whole ranking
    next_offset: int | None = None  # where the next page starts; None when the ranking has no more


@dataclass(frozen=True)
class DuplicateGroup:
    image_ids: tuple[int, ...]
    paths: tuple[str | None, ...]
    min_score: float


class SearchEngine:
    """Search over one :class:`Collection` with its descriptor model."""

    def __init__(self, collection: Collection, extractor: Extractor | None = None) -> None:
        self.collection = collection
        self.extractor = extractor or Extractor(collection.model, batch_size=8)
        self._calibrations = CalibrationCache(collection.root)

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        db_url: str | None = None,
        model: Any = None,
        writable: bool = False,
        device: str = "auto",
        precision: str = "auto",
        engine: str = "torch",
    ) -> SearchEngine:
        """Open the collection at ``root``; ``engine`` runs the queries' network (see :class:`Extractor`)."""
        collection = Collection.open(root, db_url=db_url, model=model, writable=writable, create=writable)
        try:
            extractor = Extractor(collection.model, device=device, precision=precision, batch_size=8, engine=engine)
        except BaseException:
            collection.close()
            raise
        return cls(collection, extractor)

    def close(self) -> None:
        self.collection.close()

    # ------------------------------------------------------------------ calibration
    @property
    def calibration(self) -> Calibration | None:
        """The collection's calibration for its current model (None: not calibrated, or stale)."""
        return self._calibrations.get(self.collection.model.fingerprint)

    def min_match_score(self, level: str) -> float:
        """The lowest score of match ``level`` (and above); :class:`NotCalibratedError` without a calibration."""
        return min_match_score(self.calibration, level, self.collection.root)

    # ------------------------------------------------------------------ queries
    def describe(self, query: Query) -> tuple[np.ndarray, Box | None]:
        """The query descriptor (the box's region descriptor when a box is given)."""
        if query.image_id is not None and query.box is None:
            if self.collection.read(catalog.get_image, image_id=query.image_id) is None:
                raise NotFoundError(f"no indexed image with id {query.image_id}")
            return self.collection.read(catalog.get_vectors, space="image", ids=[query.image_id])[0], None
        source: ImageSource
        if query.image_id is not None:
            source = self.image_bytes(query.image_id)
        else:
            assert query.image is not None  # checked by Query
            source = query.image
        boxes = [query.box] if query.box is not None else []
        res = self.extractor.extract_one(source, boxes=boxes)
        if res.error is not None or res.descriptor is None:
            from retrieval.errors import ImageDecodeError

            name = str(source) if isinstance(source, (str, os.PathLike)) else "query image"
            raise ImageDecodeError(name, res.error or "no descriptor")
        if query.box is not None:
            assert res.regions is not None
            return res.regions[0], res.boxes[0]
        return res.descriptor, None

    def search(
        self,
        query: Query,
        *,
        k: int = 10,
        offset: int = 0,
        threshold: float | None = None,
        flt: SearchFilter | None = None,
        rerank: RerankOptions | None = None,
        objects: bool = False,
        exclude_query: bool = False,
        min_match: str | None = None,
    ) -> SearchResult:
        """Results ``offset .. offset + k`` of the ranking of ``query``; see the module docstring.

        The ranking is by score, equal scores by image id, so pages are deterministic: the pages
        ``offset = 0, k, 2k ...`` concatenated are the top ``n * k`` of one search with no result
        repeated or skipped (exactly on exact indexes; an approximate index searches deeper for a
        deeper page and may find a neighbour it missed for a shallower one). Filters apply inside
        the vector search on every page. ``result.next_offset`` is where the next page starts,
        None when there are no more results. ``offset + k`` is at most ``MAX_K``. ``min_match``
        (``copy``, ``near``, ``similar``) raises the minimum score to that level's calibrated threshold.
        """
        if not 1 <= k <= MAX_K:
            raise ImsearchError(f"k must be within 1..{MAX_K}, got {k}")
        if offset < 0 or offset + k > MAX_K:
            raise ImsearchError(
                f"offset must be >= 0 and offset + k at most {MAX_K} (got offset {offset}, k {k}); "
                "results deeper than that are not served: narrow the search with filters or a threshold"
            )
        depth = offset + k
        rerank = rerank or RerankOptions()
        plain = query.box is None and not rerank.aqe_n and not rerank.dba_n  # scores the calibration measured
        if min_match is not None:
            if not plain or objects:
                raise ImsearchError(
                    f"min_match={min_match} filters plain image-to-image scores, the ones the calibration measured; "
                    "it does not apply with a box, object search or re-ranking (aqe/dba): use threshold instead"
                )
            floor = self.min_match_score(min_match)
            threshold = floor if threshold is None else max(threshold, floor)
        cal = self.calibration if plain else None
        t0 = time.perf_counter()
        vec, box = self.describe(query)
        t1 = time.perf_counter()
        exclude = np.array([query.image_id], dtype=np.int64) if exclude_query and query.image_id is not None else None
        allowed = self._allowed("image", flt)
        # one more than the page tells whether a next page exists; the index settles ties by id
        scores, ids = self._vector_search(vec, depth + 1, allowed, exclude, rerank)
        found: dict[int, tuple[float, Box | None, int | None, str | None]] = {
            int(i): (float(d), None, None, None) for d, i in zip(scores, ids, strict=True) if i >= 0
        }
        if objects:
            for image_id, (score, rbox, rid, rlabel) in self._object_search(vec, depth, flt, exclude).items():
                if image_id not in found or score > found[image_id][0]:
                    found[image_id] = (score, rbox, rid, rlabel)
        ranked = sorted(found.items(), key=lambda kv: (-kv[1][0], kv[0]))
        if threshold is not None:
            ranked = [kv for kv in ranked if kv[1][0] >= threshold]
        next_offset = depth if len(ranked) > depth else None
        ranked = ranked[offset:depth]
        t2 = time.perf_counter()
        hits = self._hits(ranked, cal)
        t3 = time.perf_counter()
        timings = {"describe_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3, "metadata_ms": (t3 - t2) * 1e3}
        return SearchResult(
            hits=hits, took_ms=(t3 - t0) * 1e3, query_box=box, timings=timings, offset=offset, next_offset=next_offset
        )

    def _allowed(self, space: str, flt: SearchFilter | None) -> np.ndarray | None:
        if flt is None or flt.is_empty:
            return None
        return self.collection.read(catalog.resolve_filter, space=space, flt=flt)

    def _vector_search(
        self, vec: np.ndarray, k: int, allowed: np.ndarray | None, exclude: np.ndarray | None, rerank: RerankOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        col = self.collection
        q = np.ascontiguousarray(vec[None, :], dtype=np.float32)
        first_k = max(k, rerank.aqe_n, rerank.shortlist if rerank.dba_n else 0)
        scores, ids = col.search("image", q, first_k, allowed_ids=allowed, exclude_ids=exclude)
        if rerank.aqe_n:
            top = ids[0, : rerank.aqe_n]
            top = top[top >= 0]
            if len(top):
                neigh = col.reconstruct("image", top)[None]
                q = weighted_average(q, neigh, scores[:, : len(top)], rerank.alpha)
                scores, ids = col.search("image", q, first_k, allowed_ids=allowed, exclude_ids=exclude)
        if rerank.dba_n:
            scores, ids = self._dba(q, scores[0], ids[0], rerank)
            return scores, ids
        return scores[0, :k], ids[0, :k]

    def _dba(
        self, q: np.ndarray, scores: np.ndarray, ids: np.ndarray, rerank: RerankOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        col = self.collection
        cand = ids[(ids >= 0)][: rerank.shortlist]
        if not len(cand):
            return scores, ids
        vectors = col.reconstruct("image", cand)
        nsims, nids = col.search("image", np.ascontiguousarray(vectors), rerank.dba_n + 1)
        neigh = np.zeros((len(cand), rerank.dba_n, vectors.shape[1]), dtype=np.float32)
        sims = np.full((len(cand), rerank.dba_n), np.nan, dtype=np.float32)
        for row in range(len(cand)):
            others = [(s, i) for s, i in zip(nsims[row], nids[row], strict=True) if i >= 0 and i != cand[row]]
            others = others[: rerank.dba_n]
            if others:
                neigh[row, : len(others)] = col.reconstruct("image", np.array([i for _, i in others], dtype=np.int64))
                sims[row, : len(others)] = [s for s, _ in others]
        augmented = weighted_average(vectors, neigh, sims, rerank.alpha)
        new_scores = augmented @ q[0]
        order = np.argsort(-new_scores, kind="stable")
        return new_scores[order].astype(np.float32), cand[order]

    def _object_search(
        self, vec: np.ndarray, k: int, flt: SearchFilter | None, exclude: np.ndarray | None
    ) -> dict[int, tuple[float, Box, int, str | None]]:
        if not self.collection.count("region"):
            return {}
        allowed = self._allowed("region", flt)
        q = np.ascontiguousarray(vec[None, :], dtype=np.float32)
        scores, rids = self.collection.search("region", q, 4 * k, allowed_ids=allowed)
        valid = [(float(s), int(r)) for s, r in zip(scores[0], rids[0], strict=True) if r >= 0]
        if not valid:
            return {}
        records = self.collection.read(catalog.get_regions_by_id, region_ids=[r for _, r in valid])
        best: dict[int, tuple[float, Box, int, str | None]] = {}
        skip = set(exclude.tolist()) if exclude is not None else set()
        for (score, rid), rec in zip(valid, records, strict=True):
            if rec is None or rec.image_id in skip:
                continue
            if rec.image_id not in best or score > best[rec.image_id][0]:
                best[rec.image_id] = (score, rec.box, rid, rec.label)
        return best

    def _hits(
        self, ranked: list[tuple[int, tuple[float, Box | None, int | None, str | None]]], cal: Calibration | None
    ) -> list[Hit]:
        if not ranked:
            return []
        ids = [i for i, _ in ranked]
        images = self.collection.read(catalog.get_images, image_ids=ids)
        labels = self.collection.read(catalog.get_labels, image_ids=ids)
        hits = []
        for (image_id, (score, box, rid, rlabel)), rec in zip(ranked, images, strict=True):
            if rec is None:  # deleted between the vector search and now
                continue
            lab = tuple(
                LabelInfo(lr.label, lr.source, lr.max_score, lr.area_fraction)
                for lr in sorted(labels.get(image_id, []), key=lambda r: -r.max_score)
            )
            match = cal.match_level(score) if cal is not None and box is None else None  # an object match: None
            hits.append(
                Hit(image_id, score, rec.path or rec.stored_path, rec.width, rec.height, lab, box, rid, rlabel, match)
            )
        return hits

    # ------------------------------------------------------------------ collection views
    def image(self, image_id: int) -> ImageRecord:
        rec = self.collection.read(catalog.get_image, image_id=image_id)
        if rec is None:
            raise NotFoundError(f"no indexed image with id {image_id}")
        return rec

    #: where indexed files may be read from; the API confines them to its allowed roots (see retrieval.files)
    file_policy: FilePolicy = FilePolicy()

    def indexed_files(self, image_id: int) -> list[IndexedFile]:
        """Where the original of an image may be read, and what it must still hold there (the upload first).

        A stored upload is confined to the collection's ``uploads/``; files indexed by path
        to ``file_policy.roots``. Each carries the size, SHA-256 and (files) mtime the
        catalog recorded, for :mod:`retrieval.files` to check at every read.
        """
        rec = self.image(image_id)
        root = self.collection.root
        out: list[IndexedFile] = []
        if rec.stored_path:
            out.append(IndexedFile(str(root / rec.stored_path), (root / "uploads",), rec.size_bytes, rec.sha256))
        files = {f.path: f for f in self.collection.read(catalog.get_files, image_id=image_id)}
        for raw in dict.fromkeys([p for p in (rec.path, *files) if p]):
            path = raw if Path(raw).is_absolute() else str(root / raw)
            known = files.get(raw)
            size, mtime = (known.size_bytes, known.mtime_ns) if known is not None else (rec.size_bytes, None)
            out.append(IndexedFile(path, self.file_policy.roots, size, rec.sha256, mtime))
        return out

    def open_image_file(self, image_id: int) -> VerifiedFile:
        """The original of an indexed image, open and checked (confined, unchanged); the caller closes it.

        Raises :class:`~retrieval.files.FileChangedError` when every copy changed since
        indexing, :class:`~retrieval.files.FileAccessError` when none is readable.
        """
        return first_readable(self.indexed_files(image_id), IndexedFile.open, what=f"the original of image {image_id}")

    def image_bytes(self, image_id: int) -> bytes:
        """The checked content of an indexed image's original (see :meth:`open_image_file`)."""
        max_bytes = self.file_policy.max_bytes
        return first_readable(
            self.indexed_files(image_id), lambda f: f.read(max_bytes), what=f"the original of image {image_id}"
        )

    def image_file(self, image_id: int) -> Path:
        """The real path of an indexed image's original, checked as :meth:`open_image_file` does."""
        with self.open_image_file(image_id) as opened:
            return opened.path

    def labels(self, min_score: float = 0.0) -> list[tuple[str, int]]:
        return self.collection.read(catalog.label_counts, min_score=min_score)

    def duplicate_threshold(self) -> tuple[float, str]:
        """``(threshold, where from)`` of :meth:`duplicates` without one: the calibrated ``copy``
        threshold (``"calibration"``), else :data:`DEFAULT_DUPLICATE_THRESHOLD` (``"default"``)."""
        cal = self.calibration
        if cal is not None and cal.copy is not None:
            return cal.copy, "calibration"
        return DEFAULT_DUPLICATE_THRESHOLD, "default"

    def duplicates(
        self, threshold: float | None = None, *, neighbours: int = 16, batch: int = 4096
    ) -> list[DuplicateGroup]:
        """Groups of near-duplicate images: connected components of pairs scoring >= threshold
        (default: :meth:`duplicate_threshold`)."""
        if threshold is None:
            threshold = self.duplicate_threshold()[0]
        if not 0.0 < threshold <= 1.0:
            raise ImsearchError(f"threshold must be within (0, 1], got {threshold}")
        col = self.collection
        ids = col.index_ids("image")
        parent = {int(i): int(i) for i in ids}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        lowest: dict[tuple[int, int], float] = {}
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            sims, nids = col.search("image", col.reconstruct("image", chunk), neighbours)
            for a, row_s, row_i in zip(chunk, sims, nids, strict=True):
                for s, b in zip(row_s, row_i, strict=True):
                    if b < 0 or b == a or s < threshold:
                        continue
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[ra] = rb
                    key = (min(int(a), int(b)), max(int(a), int(b)))
                    lowest[key] = float(s)
        groups: dict[int, list[int]] = {}
        for i in parent:
            groups.setdefault(find(i), []).append(i)
        members = [sorted(g) for g in groups.values() if len(g) > 1]
        out = []
        for group in members:
            recs = self.collection.read(catalog.get_images, image_ids=group)
            scores = [v for (a, _), v in lowest.items() if a in group]
            out.append(
                DuplicateGroup(tuple(group), tuple(r.path if r else None for r in recs), min(scores, default=1.0))
            )
        out.sort(key=lambda g: (-len(g.image_ids), g.image_ids))
        return out

    def stats(self) -> dict[str, Any]:
        st = self.collection.read(catalog.stats)
        return {
            "images": st.images,
            "files": st.files,
            "regions": st.regions,
            "labels": st.labels,
            "failures": st.failures,
            "vectors": dict(st.vectors),
            "model": self.collection.model.meta.describe(),
            "model_fingerprint": self.collection.model.fingerprint,
            "calibration": cal.thresholds() if (cal := self.calibration) is not None else None,
            "dim": self.collection.model.meta.dim,
            "index": self.collection.index_info(),
            "database": self.collection.dialect,
            "data_dir": str(self.collection.root),
        }

    def iter_images(self, batch: int = 1000) -> Iterator[Sequence[ImageRecord]]:
        ids = self.collection.index_ids("image")
        for start in range(0, len(ids), batch):
            yield [r for r in self.collection.read(catalog.get_images, image_ids=ids[start : start + batch]) if r]
