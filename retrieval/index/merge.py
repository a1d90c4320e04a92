"""Ordering and merging of ``(D, I)`` search results: the one rule every index and the shard merge keep.

Order: higher inner product first; equal scores by *smaller id* first; padding (``I = -1``,
``D = -inf``) last. :class:`~retrieval.index.faiss_index.FaissIndex` returns its results in
this order (for exact structures the tie at the k-th place is settled by id as well), so a
merge of shard results that keeps the same rule gives exactly what one index over all the
vectors gives.

:class:`ResultMerger` is a top-k accumulator over result blocks of the same queries (the shards'
answers): like ``faiss.ResultHeap`` but with the tie rule above and ``-1`` padding.
"""

from __future__ import annotations

import numpy as np

from retrieval.errors import VectorIndexError

_PAD_KEY = np.iinfo(np.int64).max  # padding sorts after every real id among equal (-inf) scores


def rank(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row of ``(scores, ids)`` in the canonical order, padded to width ``k``."""
    nq, m = scores.shape
    if ids.shape != scores.shape:
        raise VectorIndexError(f"scores {scores.shape} and ids {ids.shape} of a result differ in shape")
    if m < k:
        scores = np.hstack([scores, np.full((nq, k - m), -np.inf, dtype=np.float32)])
        ids = np.hstack([ids, np.full((nq, k - m), -1, dtype=np.int64)])
    valid = ids >= 0
    primary = np.where(valid, -scores.astype(np.float64), np.inf)
    secondary = np.where(valid, ids, _PAD_KEY)
    order = np.lexsort((secondary, primary), axis=1)[:, :k]
    out_ids = np.take_along_axis(ids, order, axis=1).astype(np.int64, copy=False)
    out_scores = np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False)
    out_scores[out_ids < 0] = -np.inf
    return np.ascontiguousarray(out_scores), np.ascontiguousarray(out_ids)


def boundary_ties(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Queries whose ``k``-th result ties with the ``k+1``-th (results ranked, width > ``k``)."""
    if scores.shape[1] <= k:
        return np.zeros(0, dtype=np.int64)
    both = (ids[:, k - 1] >= 0) & (ids[:, k] >= 0)
    return np.flatnonzero(both & (scores[:, k - 1] == scores[:, k]))


class ResultMerger:
    """Top-k over result blocks of the same ``nq`` queries: ``add`` each block, then ``finalize``.

    Blocks may have any width; ids must not repeat across blocks (shards hold disjoint ids).
    Memory stays bounded: buffered blocks are reduced to ``k`` columns once they pass ``4 k``.
    """

    def __init__(self, nq: int, k: int) -> None:
        self.nq, self.k = nq, k
        self._scores: list[np.ndarray] = [np.full((nq, 0), -np.inf, dtype=np.float32)]
        self._ids: list[np.ndarray] = [np.full((nq, 0), -1, dtype=np.int64)]
        self._width = 0

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        if scores.shape[0] != self.nq or ids.shape != scores.shape:
            raise VectorIndexError(
                f"a result block of shape {scores.shape}/{ids.shape} does not answer the {self.nq} queries"
            )
        self._scores.append(np.asarray(scores, dtype=np.float32))
        self._ids.append(np.asarray(ids, dtype=np.int64))
        self._width += scores.shape[1]
        if self._width > 4 * self.k:
            self._reduce()

    def _reduce(self) -> None:
        s, i = rank(np.hstack(self._scores), np.hstack(self._ids), self.k)
        self._scores, self._ids, self._width = [s], [i], self.k

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of shape ``(nq, k)``: the best ``k`` over every block added."""
        self._reduce()
        return self._scores[0], self._ids[0]


def merge_results(parts: list[tuple[np.ndarray, np.ndarray]], nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of several ``(D, I)`` answers to the same queries."""
    merger = ResultMerger(nq, k)
    for scores, ids in parts:
        merger.add(scores, ids)
    return merger.finalize()
