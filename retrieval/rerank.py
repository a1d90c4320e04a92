"""Re-ranking by neighbourhood averaging: alpha query expansion and database-side augmentation.

Both replace a vector by a weighted sum of itself and its nearest neighbours, weights
``max(similarity, 0) ** alpha`` (Radenović et al. 2018; alpha = 0 is the plain average
query expansion of Chum et al. and the DBA of Arandjelović & Zisserman / Gordo et al.).

* alpha-QE: the query is expanded with its top-n results, then searched again.
* DBA: each database vector is averaged with its own top-n neighbours. Here it is applied
  to the shortlist at query time (the candidates' neighbourhoods come from the index), so
  the stored vectors never change and new images need no re-processing.

SuperGlobal's re-ranking (Shao et al., ICCV 2023) works on one query's first-round shortlist
only (top M, no further index searches):

* MDescAug (:func:`mdescaug`): each shortlisted descriptor is averaged with its K nearest
  neighbours *within the shortlist*;
* RerankwMDA (:func:`rerank_wmda`): the query is refined by the element-wise maximum of the
  best augmented descriptors and the shortlist re-scored by the mean of the two similarities.
  :func:`superglobal_rerank` runs both. They are measured by ``bench.descriptors``; the engine
  (:mod:`retrieval.search`) does not call them yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.errors import ImsearchError


@dataclass(frozen=True)
class RerankOptions:
    """Which re-ranking to run. ``None`` numbers mean off."""

    aqe_n: int = 0  # expand the query with its top-n results (0: off)
    dba_n: int = 0  # average each shortlisted result with its top-n neighbours (0: off)
    alpha: float = 3.0
    shortlist: int = 100  # how many first-round results DBA re-scores

    def __post_init__(self) -> None:
        if self.aqe_n < 0 or self.dba_n < 0:
            raise ImsearchError("aqe_n and dba_n must be >= 0")
        if not 0.0 <= self.alpha <= 50.0:
            raise ImsearchError(f"alpha must be within [0, 50], got {self.alpha}")
        if self.shortlist < 1:
            raise ImsearchError("shortlist must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.aqe_n > 0 or self.dba_n > 0


def weighted_average(
    anchors: np.ndarray, neighbours: np.ndarray, similarities: np.ndarray, alpha: float
) -> np.ndarray:
    """``L2(anchor + sum_j max(s_j, 0)^alpha * neighbour_j)`` for each row.

    anchors ``(m, d)``, neighbours ``(m, n, d)``, similarities ``(m, n)``; rows of
    ``neighbours`` with a NaN similarity (padding) are ignored.
    """
    sims = np.nan_to_num(similarities.astype(np.float64), nan=0.0)
    weights = np.clip(sims, 0.0, None) ** alpha if alpha > 0 else (~np.isnan(similarities)).astype(np.float64)
    out = anchors.astype(np.float64) + np.einsum("mn,mnd->md", weights, neighbours.astype(np.float64))
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
    return out.astype(np.float32)


# --------------------------------------------------------------------------- SuperGlobal re-ranking
#: SuperGlobal's settings (Shao et al., ICCV 2023): how many first-round results are re-ranked (M),
#: neighbours each of them is augmented with (K), the weight of a neighbour per unit of similarity
#: (beta), and how many augmented results are max-pooled into the refined query (K + 1 in the paper)
MDA_SHORTLIST = 400
MDA_K = 9
MDA_BETA = 0.15
MDA_QUERY_K = MDA_K + 1


def _shortlist(shortlist: np.ndarray) -> np.ndarray:
    """float32 stays float32 (the engine's vectors; half the memory traffic), anything else float64."""
    x = np.asarray(shortlist)
    if x.ndim != 3 or x.shape[1] < 1:
        raise ImsearchError(f"a shortlist is (queries, M >= 1, dim) descriptors, got shape {x.shape}")
    return x if x.dtype == np.float32 else x.astype(np.float64)


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(..., k)`` of the ``k`` largest entries of each row, ties to the lower index (in index order)."""
    size = sims.shape[-1]
    kth = np.partition(sims, size - k, axis=-1)[..., size - k, None]  # the k-th largest value of each row
    above = sims > kth
    ties = sims == kth
    need = k - above.sum(axis=-1, keepdims=True)
    chosen = above | (ties & (np.cumsum(ties, axis=-1) <= need))
    return np.nonzero(chosen)[-1].reshape(*sims.shape[:-1], k)


def _mda_neighbours(
    x: np.ndarray, k: int, beta: float, gram: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """MDescAug's neighbours ``(m, M, kk)`` (positions in the shortlist) and their weights (float64)."""
    if k < 0 or not beta >= 0:
        raise ImsearchError(f"MDescAug needs k >= 0 and beta >= 0, got k={k}, beta={beta}")
    m, size, _ = x.shape
    kk = min(int(k), size - 1)
    if kk == 0:
        return np.zeros((m, size, 0), dtype=np.int64), np.zeros((m, size, 0))
    sims = np.einsum("amd,and->amn", x, x) if gram is None else gram
    sims = np.array(sims, dtype=np.float64)  # a copy: the diagonal is overwritten
    if sims.shape != (m, size, size):
        raise ImsearchError(f"gram must be (queries, M, M) = {(m, size, size)}, got {sims.shape}")
    sims[:, np.arange(size), np.arange(size)] = -np.inf  # never one's own neighbour
    nearest = _top_k(sims, kk)
    return nearest, beta * np.clip(np.take_along_axis(sims, nearest, axis=2), 0.0, None)


def _augment(x: np.ndarray, nearest: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The augmented descriptors ``(m, r, d)`` of the shortlist positions ``rows`` ``(m, r)``."""
    m, size, _ = x.shape
    idx = np.take_along_axis(nearest, rows[:, :, None], axis=1)  # (m, r, kk)
    w = np.take_along_axis(weights, rows[:, :, None], axis=1)
    flat = x.reshape(m * size, -1)
    offset = (np.arange(m) * size)[:, None]
    own = np.take(flat, (rows + offset).reshape(-1), axis=0).reshape(m, rows.shape[1], x.shape[2])
    neighbours = np.take(flat, (idx + offset[:, :, None]).reshape(-1), axis=0).reshape(*idx.shape, x.shape[2])
    total = own + np.einsum("ark,arkd->ard", w.astype(x.dtype), neighbours)
    return total / (1.0 + w.sum(axis=2))[:, :, None].astype(x.dtype)


def mdescaug(
    shortlist: np.ndarray, *, k: int = MDA_K, beta: float = MDA_BETA, gram: np.ndarray | None = None
) -> np.ndarray:
    """MDescAug, top-M descriptor augmentation: ``(m, M, d)`` shortlists -> augmented ``(m, M, d)`` float32.

    Each query's first-round top-M descriptors (``shortlist[i]``, best first) are augmented
    among themselves: descriptor ``j`` becomes the weighted mean of itself (weight 1) and its
    ``k`` most similar *other* members of the same shortlist (weight ``beta * max(s, 0)``,
    ``s`` the dot product; ties go to the better first-round rank). ``gram`` ``(m, M, M)``: the
    similarities among each shortlist, when the caller has them (e.g. from a database-by-database
    matrix); computed otherwise. The means are not re-normalized (as in the paper).
    """
    x = _shortlist(shortlist)
    nearest, weights = _mda_neighbours(x, k, beta, gram)
    every = np.broadcast_to(np.arange(x.shape[1]), x.shape[:2])
    return _augment(x, nearest, weights, every).astype(np.float32)


def _check_query(query: np.ndarray, shortlist: np.ndarray, k: int) -> np.ndarray:
    q = np.asarray(query, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != shortlist.shape[0] or q.shape[1] != shortlist.shape[2]:
        raise ImsearchError(f"query {q.shape} does not fit the shortlists {shortlist.shape}")
    if k < 1:
        raise ImsearchError(f"RerankwMDA needs k >= 1, got {k}")
    return q


def _final_order(s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score = 0.5 * (s1 + s2)
    order = np.argsort(-score, axis=1, kind="stable")
    return order, np.take_along_axis(score, order, axis=1).astype(np.float32)


def rerank_wmda(
    query: np.ndarray, augmented: np.ndarray, *, k: int = MDA_QUERY_K
) -> tuple[np.ndarray, np.ndarray]:
    """RerankwMDA, re-ranking with the maximum of the top augmented descriptors.

    ``query`` ``(m, d)``; ``augmented`` ``(m, M, d)`` (:func:`mdescaug` of the query's shortlist).
    Each shortlisted result is scored ``s1 = q . a_j``; the ``k`` best by ``s1`` are max-pooled
    element-wise into a refined query ``r``, and the final score is ``(s1 + r . a_j) / 2``.
    Returns ``(order, scores)``, both ``(m, M)``: positions in the shortlist, best first (ties
    to the better first-round rank), and their scores (float32). Results past the shortlist
    keep their first-round order after it.
    """
    a = _shortlist(augmented)
    q = _check_query(query, a, k)
    s1 = np.einsum("ad,amd->am", q, a)
    top = np.argsort(-s1, axis=1, kind="stable")[:, : min(int(k), a.shape[1])]
    refined = np.take_along_axis(a, top[:, :, None], axis=1).max(axis=1)  # (m, d)
    return _final_order(s1, np.einsum("ad,amd->am", refined, a))


def superglobal_rerank(
    query: np.ndarray,
    shortlist: np.ndarray,
    *,
    k: int = MDA_K,
    beta: float = MDA_BETA,
    query_k: int = MDA_QUERY_K,
    gram: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MDescAug then RerankwMDA of each query's shortlist: ``(order, scores)`` as :func:`rerank_wmda`.

    The same numbers as ``rerank_wmda(query, mdescaug(shortlist))`` without building every augmented
    descriptor: an augmented descriptor is a weighted mean, so its dot product with any vector is
    the same weighted mean of the shortlist's dot products; only the ``query_k`` max-pooled into
    the refined query are built. Cost ``O(M d + M k)`` per query besides the similarities
    among the shortlist (``gram``, when the caller has them, e.g. a database-by-database matrix).
    """
    x = _shortlist(shortlist)
    q = _check_query(query, x, query_k)
    nearest, weights = _mda_neighbours(x, k, beta, gram)
    norm = 1.0 + weights.sum(axis=2)
    picks = np.arange(x.shape[0])[:, None, None], nearest

    def augmented_dots(v: np.ndarray) -> np.ndarray:  # (m, d) -> (m, M) dot products with the augmented
        dots = np.einsum("ad,amd->am", v, x)
        return (dots + np.einsum("amk,amk->am", weights, dots[picks])) / norm

    s1 = augmented_dots(q)
    top = np.argsort(-s1, axis=1, kind="stable")[:, : min(int(query_k), x.shape[1])]
    refined = _augment(x, nearest, weights, top).max(axis=1)
    return _final_order(s1, augmented_dots(refined.astype(np.float64)))
