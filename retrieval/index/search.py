"""Search algorithms of the vector index: filtered FAISS search, exact re-ranking, exact fallback.

Everything here works on store *rows*; :class:`~retrieval.index.faiss_index.FaissIndex`
translates catalog ids to rows and back.

Filters: the allowed (and not excluded, not removed) rows become a bitmap handed to FAISS as
``SearchParameters(sel=IDSelectorBitmap)``, so the ANN search itself only returns allowed rows.
A selective filter makes the allowed neighbours sparser, so ``nprobe`` / ``efSearch`` are
scaled by ``sqrt(live / allowed)`` (at most ``filter_boost``). Two exact paths guarantee that
k results come back whenever k allowed vectors exist:

* selections of at most ``exact_below`` rows are searched exactly (brute force over just
  those rows, BLAS via ``faiss.knn``): faster than a graph/IVF walk that finds few of them;
* any query the ANN search returns fewer than ``min(k, allowed)`` results for is redone exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from retrieval.errors import VectorIndexError
from retrieval.index.rowstore import RowStore
from retrieval.index.structures import Structure

_faiss: Any = faiss  # the stubs miss IDSelectorBitmap(ndarray)
EXACT_CHUNK = 32_768  # rows per brute-force block
RERANK_CHUNK = 8_192  # candidate vectors read at once when re-ranking (bounds the transient memory)


@dataclass(frozen=True)
class SearchParams:
    """Knobs of one search. Defaults reach recall@10 >= 0.95 on the bench (see bench/search.py).

    nprobe: IVF lists visited (capped at nlist). ef_search: HNSW candidate list size.
    rerank: compressed kinds fetch ``k * rerank`` candidates and re-rank them exactly.
    filter_boost: max factor on nprobe / ef_search for selective filters.
    exact_below: selections of at most this many vectors are searched exactly.
    """

    nprobe: int = 32
    ef_search: int = 64
    rerank: int = 10
    filter_boost: float = 8.0
    exact_below: int = 4096

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search", "rerank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise VectorIndexError(f"SearchParams.{name} must be an int >= 1, got {value!r}")
        if not self.filter_boost >= 1.0:
            raise VectorIndexError(f"SearchParams.filter_boost must be >= 1, got {self.filter_boost!r}")
        if isinstance(self.exact_below, bool) or not isinstance(self.exact_below, int) or self.exact_below < 0:
            raise VectorIndexError(f"SearchParams.exact_below must be an int >= 0, got {self.exact_below!r}")


def selection_mask(store: RowStore, allowed: np.ndarray | None, exclude: np.ndarray | None) -> np.ndarray:
    """Boolean mask over rows: live, allowed (if given) and not excluded."""
    if allowed is None:
        mask = store.live_mask()
    else:
        mask = np.zeros(store.n_rows, dtype=bool)
        if allowed.size > 1 and bool((allowed[1:] < allowed[:-1]).any()):
            allowed = np.sort(allowed)  # sorted look-ups are ~5x faster
        rows = store.rows_of(allowed)
        mask[rows[rows >= 0]] = True
    if exclude is not None and exclude.size:
        rows = store.rows_of(exclude)
        mask[rows[rows >= 0]] = False
    return mask


def search_rows(
    s: Structure,
    store: RowStore,
    queries: np.ndarray,
    k: int,
    *,
    mask: np.ndarray | None,
    params: SearchParams,
    live_bits: np.ndarray | None = None,
    gpu_index: faiss.Index | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) of each query among the rows of ``mask`` (None: all live rows).

    ``live_bits``: packed live-row bitmap, needed unfiltered when the structure holds tombstones.
    """
    n_avail = store.n_live if mask is None else int(np.count_nonzero(mask))
    if n_avail == 0:
        return padded(queries.shape[0], k)
    if mask is not None and n_avail <= params.exact_below:
        return exact_rows(store, queries, k, np.flatnonzero(mask))
    boost = 1.0 if mask is None else min(params.filter_boost, math.sqrt(store.n_live / n_avail))
    kk = k if s.exact else k * params.rerank
    bits = np.packbits(mask, bitorder="little") if mask is not None else live_bits
    sel = _faiss.IDSelectorBitmap(bits) if bits is not None else None
    fparams = s.params(
        nprobe=math.ceil(params.nprobe * boost), ef_search=max(math.ceil(params.ef_search * boost), kk), sel=sel
    )
    index = gpu_index if gpu_index is not None and sel is None else s.index
    scores, labels = index.search(queries, kk, params=fparams)
    del sel, bits  # the bitmap had to outlive the search
    if not s.exact:
        scores, labels = rerank(store, queries, labels, k)
    short = np.flatnonzero(np.count_nonzero(labels >= 0, axis=1) < min(k, n_avail))
    if short.size:
        rows = np.flatnonzero(mask if mask is not None else store.live_mask())
        scores[short], labels[short] = exact_rows(store, np.ascontiguousarray(queries[short]), k, rows)
    scores[labels < 0] = -np.inf
    return scores, labels


def rerank(store: RowStore, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of the candidate rows (from the stored full vectors); keep the best k."""
    valid = cand >= 0
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    step = max(1, RERANK_CHUNK // max(1, cand.shape[1]))  # queries per block
    for s in range(0, cand.shape[0], step):
        ok = valid[s : s + step]
        if ok.any():
            qi = np.nonzero(ok)[0] + s
            vecs = store.vectors(cand[s : s + step][ok])
            scores[s : s + step][ok] = np.einsum("md,md->m", vecs, queries[qi])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, order, axis=1)
    labels = np.take_along_axis(cand, order, axis=1)
    if labels.shape[1] < k:
        pad_scores, pad_labels = padded(labels.shape[0], k - labels.shape[1])
        best, labels = np.hstack([best, pad_scores]), np.hstack([labels, pad_labels])
    labels[~np.isfinite(best)] = -1
    return np.ascontiguousarray(best), np.ascontiguousarray(labels)


def exact_rows(store: RowStore, queries: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k over ``rows`` (blocks of stored vectors, BLAS inner products)."""
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for start in range(0, rows.shape[0], EXACT_CHUNK):
        part = rows[start : start + EXACT_CHUNK]
        sc, lab = faiss.knn(queries, store.vectors(part), min(k, part.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(sc, np.where(lab >= 0, part[np.maximum(lab, 0)], -1))
    heap.finalize()
    scores, labels = heap.D.astype(np.float32), heap.I.astype(np.int64)
    scores[labels < 0] = -np.inf
    return scores, labels


def padded(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
