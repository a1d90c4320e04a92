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
    if k < 0 or not beta >= 0:
        raise ImsearchError(f"MDescAug needs k >= 0 and beta >= 0, got k={k}, beta={beta}")
    m, size, _ = x.shape
    kk = min(int(k), size - 1)
    if kk == 0:
        return x.astype(np.float32)
    sims = np.einsum("amd,and->amn", x, x) if gram is None else gram
    sims = np.array(sims, dtype=np.float64)  # a copy: the diagonal is overwritten
    if sims.shape != (m, size, size):
        raise ImsearchError(f"gram must be (queries, M, M) = {(m, size, size)}, got {sims.shape}")
    sims[:, np.arange(size), np.arange(size)] = -np.inf  # never one's own neighbour
    nearest = _top_k(sims, kk)  # (m, M, kk)
    weights = beta * np.clip(np.take_along_axis(sims, nearest, axis=2), 0.0, None)
    rows = (nearest + (np.arange(m) * size)[:, None, None]).reshape(-1)  # into the (m * M, d) rows
    neighbours = np.take(x.reshape(m * size, -1), rows, axis=0).reshape(m, size, kk, -1)  # (m, M, kk, d)
    total = x + np.einsum("amk,amkd->amd", weights.astype(x.dtype), neighbours)
    return (total / (1.0 + weights.sum(axis=2))[:, :, None].astype(x.dtype)).astype(np.float32)


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
    q = np.asarray(query, dtype=np.float64)
    a = _shortlist(augmented)
    if q.ndim != 2 or q.shape[0] != a.shape[0] or q.shape[1] != a.shape[2]:
        raise ImsearchError(f"query {q.shape} does not fit the shortlists {a.shape}")
    if k < 1:
        raise ImsearchError(f"RerankwMDA needs k >= 1, got {k}")
    s1 = np.einsum("ad,amd->am", q, a)
    top = np.argsort(-s1, axis=1, kind="stable")[:, : min(int(k), a.shape[1])]
    refined = np.take_along_axis(a, top[:, :, None], axis=1).max(axis=1)  # (m, d)
    score = 0.5 * (s1 + np.einsum("ad,amd->am", refined, a))
    order = np.argsort(-score, axis=1, kind="stable")
    return order, np.take_along_axis(score, order, axis=1).astype(np.float32)


def superglobal_rerank(
    query: np.ndarray,
    shortlist: np.ndarray,
    *,
    k: int = MDA_K,
    beta: float = MDA_BETA,
    query_k: int = MDA_QUERY_K,
    gram: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MDescAug then RerankwMDA of each query's shortlist: ``(order, scores)`` as :func:`rerank_wmda`."""
    return rerank_wmda(query, mdescaug(shortlist, k=k, beta=beta, gram=gram), k=query_k)
