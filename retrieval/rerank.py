"""Re-ranking by neighbourhood averaging: alpha query expansion and database-side augmentation.

Both replace a vector by a weighted sum of itself and its nearest neighbours, weights
``max(similarity, 0) ** alpha`` (Radenović et al. 2018; alpha = 0 is the plain average
query expansion of Chum et al. and the DBA of Arandjelović & Zisserman / Gordo et al.).

* alpha-QE: the query is expanded with its top-n results, then searched again.
* DBA: each database vector is averaged with its own top-n neighbours. Here it is applied
  to the shortlist at query time (the candidates' neighbourhoods come from the index), so
  the stored vectors never change and new images need no re-processing.
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
