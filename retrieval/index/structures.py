"""The FAISS structure behind :class:`~retrieval.index.faiss_index.FaissIndex`.

FAISS labels are *rows* of the sidecar :class:`~retrieval.index.rowstore.RowStore`
(dense integers), never catalog ids: a filter then becomes an ``IDSelectorBitmap`` (one bit per
row), which measured fastest to build and to test for a 10 % selection of 1M vectors.

Which structure serves which kind (constants below; ``n`` = live vectors):

* ``flat``  : ``IndexIDMap2(IndexFlatIP)``, exact.
* ``hnsw``  : ``IndexIDMap(IndexHNSWFlat)`` with M=32. HNSW cannot delete: removed rows stay
  in the graph as tombstones, excluded by the live-row bitmap, until a save rebuilds the graph.
* ``ivf``   : exact (flat) below 1,000 vectors, then ``IVF{nlist},Flat`` with
  ``nlist = min(4*sqrt(n), n/39)``; retrained from the stored vectors when n has grown x4.
* ``ivfpq`` : exact below 10,000 vectors, then ``IVF{nlist},PQ{M}x8`` (compressed) with
  ``nlist = min(2*sqrt(n), n/39)`` and M the largest divisor of d (<= min(64, d/4), >= ~d/16)
  keeping RAM <= 100 B/vector (64 at 1M x 512-d: 97 B); candidates are re-ranked exactly from
  the stored full vectors (memory-mapped, on disk). x4 retrain.
* ``ivfsq`` : exact below 1,000 vectors, then ``IVF{nlist},SQ8`` (one byte per dimension, 4x
  smaller than ``ivf``) with ``nlist`` as ``ivf``; candidates are re-ranked exactly from the
  stored full vectors, so scores are exact. x4 retrain.
* ``auto``  : exact below 50,000 vectors, then like ``ivfsq`` (x4 retrain): at 100k x 1280-d the
  structure holds 128 MB instead of IVF-Flat's 512 MB, at the same recall after re-ranking.
* any FAISS factory string (e.g. ``"OPQ32,IVF1024,PQ32"``, ``"HNSW16"``): built as given;
  if it needs training, exact until it has ``max(1000, 39*nlist)`` vectors, then trained once.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import faiss
import numpy as np

from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index.rowstore import RowStore

logger = logging.getLogger(__name__)
_faiss: Any = faiss  # faiss's stubs lack the keyword constructors and several fields used here

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq")
FLAT = "IDMap2,Flat"
AUTO_FLAT_MAX = 50_000  # auto: exact below this many vectors
IVF_MIN_TRAIN = 1_000  # ivf: exact below this many vectors
IVFPQ_MIN_TRAIN = 10_000  # ivfpq: PQ wants ~39*256 training points per sub-quantizer
FACTORY_MIN_TRAIN = 1_000
RETRAIN_GROWTH = 4.0  # retrain IVF kinds when n >= 4 x the size they were trained at
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
KMEANS_NITER = 10  # coarse and PQ k-means; FAISS default 25 is ~2.5x slower for ~no recall gain
TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39
PQ_RAM_BUDGET = 100  # bytes per vector for ivfpq
PER_VECTOR_FIXED = 8 + 20  # IVF list label + RowStore id maps


def ivf_nlist(n: int, per_sqrt: float) -> int:
    return max(1, min(int(per_sqrt * math.sqrt(n)), n // 39))


def pq_m(dim: int, n: int, nlist: int) -> int:
    """PQ sub-quantizers: the largest divisor of ``dim`` <= min(64, dim/4) within the RAM budget,
    but at least ~dim/16 (codes much smaller than that lose too much recall for re-ranking to fix)."""
    amortised = (nlist * dim * 4 + 256 * dim * 4) / max(n, 1)  # coarse centroids + PQ codebooks
    room = PQ_RAM_BUDGET - PER_VECTOR_FIXED - amortised - 2  # 2 B slack for allocator rounding
    cands = [m for m in range(min(64, max(1, dim // 4)), 0, -1) if dim % m == 0]
    floor = next(m for m in cands if m <= max(1, dim // 16))
    fitting = [m for m in cands if floor <= m <= room]
    if not fitting:
        logger.info("ivfpq at n=%d: %d-byte codes exceed %d B/vector until it grows", n, floor, PQ_RAM_BUDGET)
    return fitting[0] if fitting else floor


class Policy:
    """Decides, from the kind and the collection size, which FAISS structure to (re)build."""

    def __init__(self, kind: str, dim: int) -> None:
        self.kind = kind
        self.dim = dim
        self.needs_training = False
        self.min_train = 0
        if kind in KINDS:
            return
        try:
            probe = create(kind, dim)  # validates the factory string
        except VectorIndexError as exc:
            if kind.isalpha():  # a misspelt kind rather than a factory string
                raise UnknownNameError("index kind", kind, [*KINDS, "<FAISS factory string>"]) from exc
            raise
        self.needs_training = not probe.index.is_trained
        ivf = probe.ivf
        self.min_train = max(FACTORY_MIN_TRAIN, 39 * ivf.nlist if ivf is not None else 0)

    def plan(self, n_live: int, current: Structure | None) -> str | None:
        """Factory string of the structure to build now, or None to keep ``current``."""
        kind = self.kind
        if kind == "flat":
            return FLAT if current is None else None
        if kind == "hnsw":
            return f"HNSW{HNSW_M}" if current is None else None
        if kind in ("auto", "ivf", "ivfsq", "ivfpq"):
            min_n = AUTO_FLAT_MAX if kind == "auto" else IVFPQ_MIN_TRAIN if kind == "ivfpq" else IVF_MIN_TRAIN
            if n_live < min_n:
                return FLAT if current is None else None
            if current is None or current.trained_size == 0 or n_live >= RETRAIN_GROWTH * current.trained_size:
                if kind == "ivfpq":
                    nlist = ivf_nlist(n_live, 2.0)
                    return f"IVF{nlist},PQ{pq_m(self.dim, n_live, nlist)}x8"
                if kind in ("auto", "ivfsq"):
                    return f"IVF{ivf_nlist(n_live, 4.0)},SQ8"
                return f"IVF{ivf_nlist(n_live, 4.0)},Flat"
            return None
        if current is None:
            return FLAT if self.needs_training else kind
        if self.needs_training and current.factory == FLAT and n_live >= self.min_train:
            return kind
        return None


class Structure:
    """A FAISS index whose labels are store rows, plus what the vector index needs to know of it."""

    def __init__(self, index: faiss.Index, factory: str, *, trained_size: int = 0, dead: int = 0) -> None:
        self.index = index
        self.factory = factory
        self.trained_size = trained_size
        self.dead = dead  # tombstoned entries (graph indexes cannot delete)
        top = faiss.downcast_index(index)
        self.ivf: faiss.IndexIVF | None = _find_ivf(top)
        self.removable = not (isinstance(top, faiss.IndexIDMap) and _is_graph(top.index))
        self.exact = _is_exact(top)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        self.index.add_with_ids(vecs, rows)

    def remove(self, rows: np.ndarray) -> None:
        """Drop ``rows`` (all present) from the search structure, or tombstone them."""
        if not self.removable:
            self.dead += int(rows.shape[0])
            return
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(rows)))
        if removed != rows.shape[0]:
            raise VectorIndexError(
                f"FAISS removed {removed} of {rows.shape[0]} vectors: the index and its vector store "
                "disagree; rebuild the index from the catalog"
            )

    def labels(self) -> np.ndarray:
        """Every label held (-1 for compacted tombstones)."""
        if self.ivf is not None:
            return np.concatenate([np.empty(0, np.int64), *[view for _, view in _ivf_label_views(self.ivf)]])
        top: Any = faiss.downcast_index(self.index)
        return faiss.vector_to_array(top.id_map).astype(np.int64)

    def relabel(self, old_to_new: np.ndarray) -> None:
        """Renumber labels after a store compaction (rows mapping to -1 become -1)."""

        def remap(view: np.ndarray) -> None:
            view[:] = np.where(view >= 0, old_to_new[np.maximum(view, 0)], -1)

        if self.ivf is not None:
            for _, view in _ivf_label_views(self.ivf):
                remap(view)
            return
        top: Any = faiss.downcast_index(self.index)
        n = int(top.id_map.size())
        if n:
            remap(faiss.rev_swig_ptr(top.id_map.data(), n))
        if isinstance(top, faiss.IndexIDMap2):
            top.construct_rev_map()

    def params(self, *, nprobe: int, ef_search: int, sel: faiss.IDSelector | None) -> faiss.SearchParameters:
        return _params(faiss.downcast_index(self.index), nprobe, ef_search, sel)

    def ram_bytes(self) -> int:
        """Bytes the FAISS structure holds in RAM (analytic for IVF/flat/HNSW)."""
        top = faiss.downcast_index(self.index)
        if self.ivf is not None:
            ivf: Any = self.ivf
            n = sum(int(ivf.invlists.list_size(i)) for i in range(ivf.nlist))
            other = len(faiss.serialize_index(ivf.quantizer))
            if isinstance(self.ivf, faiss.IndexIVFPQ):
                other += int(ivf.pq.centroids.size()) * 4 + int(ivf.precomputed_table.size()) * 4
            return n * (int(ivf.code_size) + 8) + other
        if isinstance(top, faiss.IndexIDMap):
            sub = faiss.downcast_index(top.index)
            total = self.ntotal * 8 + (self.ntotal * 40 if isinstance(top, faiss.IndexIDMap2) else 0)
            if isinstance(sub, faiss.IndexFlat):
                return total + self.ntotal * int(sub.code_size)
            if isinstance(sub, faiss.IndexHNSW):
                storage: Any = faiss.downcast_index(sub.storage)
                hnsw: Any = sub.hnsw
                links = int(hnsw.neighbors.size()) * 4 + int(hnsw.offsets.size()) * 8 + self.ntotal * 4
                return total + links + self.ntotal * int(storage.code_size)
        return len(faiss.serialize_index(self.index))


def create(factory: str, dim: int) -> Structure:
    """An empty (maybe untrained) structure for ``factory``, labelled by rows."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise VectorIndexError(
            f"invalid FAISS factory string {factory!r} for dim {dim}: {first}; "
            f"use one of {', '.join(KINDS)} or a valid faiss.index_factory string"
        ) from exc
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap):
        return Structure(index, factory)
    ivf = _find_ivf(top)
    if ivf is not None:
        ivf.cp.niter = KMEANS_NITER
        if isinstance(ivf, faiss.IndexIVFPQ):
            _faiss_obj(ivf).do_polysemous_training = False  # only for polysemous search, which is not used; slow
            ivf.pq.cp.niter = KMEANS_NITER
        return Structure(index, factory)
    if isinstance(top, (faiss.IndexPreTransform, faiss.IndexRefine)):
        raise VectorIndexError(
            f"factory string {factory!r}: a pre-transform or refine stage is only supported in front of "
            "an IVF index (e.g. 'OPQ32,IVF1024,PQ32'); re-ranking is built in, drop ',Refine(...)'"
        )
    if isinstance(top, faiss.IndexHNSW):
        top.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    wrapped = faiss.IndexIDMap(index) if _is_graph(top) else faiss.IndexIDMap2(index)
    wrapped.own_fields = True
    _faiss_obj(index).this.disown()  # the wrapper now owns (and frees) the sub-index
    return Structure(wrapped, factory)


def train_sample_size(s: Structure, n: int) -> int:
    """How many of ``n`` vectors train the (untrained) structure ``s``."""
    nlist = s.ivf.nlist if s.ivf is not None else 0
    floor = 16_384 if s.exact else 65_536
    return min(n, max(TRAIN_POINTS_PER_LIST * nlist, floor))


def build_from_store(
    factory: str, store: RowStore, seed: int = 1234, *, trained: np.ndarray | None = None
) -> Structure:
    """Train (from a sample of the stored vectors) and fill a new ``factory`` structure.

    ``trained``: an empty, already trained ``factory`` index (``faiss.serialize_index``), e.g. one
    coarse quantizer shared by the shards of a bulk build; it is copied, not trained again.
    """
    if trained is not None:
        s = Structure(faiss.deserialize_index(trained), factory)
        if s.ntotal or not s.index.is_trained or s.index.d != store.dim:
            raise VectorIndexError(f"the pre-trained {factory} index must be empty, trained and of dim {store.dim}")
        s.trained_size = store.n_live
    else:
        s = create(factory, store.dim)
    n = store.n_live
    if not s.index.is_trained:
        rows = store.sample_rows(train_sample_size(s, n), seed)
        logger.info("training %s on %d of %d vectors", factory, rows.shape[0], n)
        s.index.train(store.vectors(rows))
        s.trained_size = n
    for rows, vecs in store.iter_live():
        s.add(rows, vecs)
    return s


def to_gpu(s: Structure) -> faiss.Index | None:
    """GPU replica used for unfiltered searches of the flat / IVF kinds (None otherwise).

    FAISS GPU indexes do not take IDSelectors, so filtered searches stay on the CPU index.
    """
    top = faiss.downcast_index(s.index)
    if s.ivf is None and not (isinstance(top, faiss.IndexIDMap) and not _is_graph(top.index)):
        return None
    return faiss.index_cpu_to_all_gpus(s.index)


def _params(idx: faiss.Index, nprobe: int, ef: int, sel: faiss.IDSelector | None) -> faiss.SearchParameters:
    extra = {"sel": sel} if sel is not None else {}
    if isinstance(idx, faiss.IndexIDMap):  # IDMap translates the selector to internal ids itself
        return _params(faiss.downcast_index(idx.index), nprobe, ef, sel)
    if isinstance(idx, faiss.IndexPreTransform):
        inner = _params(faiss.downcast_index(idx.index), nprobe, ef, sel)
        return _faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(idx, faiss.IndexIVF):
        return _faiss.SearchParametersIVF(nprobe=min(nprobe, int(idx.nlist)), **extra)
    if isinstance(idx, faiss.IndexHNSW):
        return _faiss.SearchParametersHNSW(efSearch=ef, **extra)
    return _faiss.SearchParameters(**extra)


def _find_ivf(top: faiss.Index) -> faiss.IndexIVF | None:
    while isinstance(top, faiss.IndexPreTransform):
        top = faiss.downcast_index(top.index)
    return top if isinstance(top, faiss.IndexIVF) else None


def _is_graph(idx: faiss.Index) -> bool:
    sub = faiss.downcast_index(idx)
    return isinstance(sub, (faiss.IndexHNSW, faiss.IndexNSG))


def _is_exact(top: faiss.Index) -> bool:
    if isinstance(top, faiss.IndexIDMap):
        top = faiss.downcast_index(top.index)
    if isinstance(top, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        return True
    if isinstance(top, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(top.storage), faiss.IndexFlat)
    return False


def _ivf_label_views(ivf: faiss.IndexIVF) -> list[tuple[int, np.ndarray]]:
    """Writable views on the label arrays of every non-empty inverted list."""
    invlists: Any = ivf.invlists
    out = []
    for i in range(ivf.nlist):
        size = int(invlists.list_size(i))
        if size:
            out.append((i, faiss.rev_swig_ptr(invlists.get_ids(i), size)))
    return out


def _faiss_obj(x: object) -> Any:
    return x
