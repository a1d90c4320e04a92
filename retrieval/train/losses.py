"""Ranking losses on training tuples ``(query, positive, negatives...)`` of L2-normalized descriptors.

Shapes: ``anchor (T, D)``, ``positive (T, D)``, ``negatives (T, K, D)`` and an optional
``mask (T, K)`` (False for padding, when fewer than K negatives were mined). Each tuple's
loss is the SUM over its negatives (and, for contrastive, its positive pair); the batch
loss is the MEAN over tuples.

* **Triplet** (Gordo et al. 2016/2017): ``max(0, m + d(q, p) - d(q, n))`` per negative,
  where ``d`` is the **squared** Euclidean distance by default (``distance="squared"``,
  margin 0.1 as in the paper), or the plain Euclidean distance (``distance="euclidean"``).
  On unit vectors the squared distance is ``2 - 2 cos``, so a 0.1 margin is 0.05 in cosine.
* **Contrastive** (Radenović et al. 2016/2018): ``0.5 d(q, p)^2`` for the positive plus
  ``0.5 max(0, m - d(q, n))^2`` per negative, ``d`` the plain Euclidean distance
  (margin about 0.7 for whitened R-MAC/GeM descriptors).

A regularizer can be added to either (``koleo_weight`` in the training settings):

* **KoLeo** (Kozachenko-Leonenko differential-entropy estimator; Sablayrolles et al. 2019,
  used by SSCD, Pizzi et al. 2022): ``-mean_i log(min_{j != i} ||x_i - x_j||)`` over a set of
  descriptors of *different* photos; it spreads them out over the sphere (uniformity).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from retrieval.errors import UnknownNameError

_EPS = 1e-12


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """``||a - b||^2`` along the last dimension (broadcasting)."""
    return (a - b).pow(2).sum(dim=-1)


def euclidean_distance(a: Tensor, b: Tensor) -> Tensor:
    """``||a - b||`` along the last dimension; the gradient is finite at ``a == b``."""
    return squared_distance(a, b).clamp_min(_EPS).sqrt()


def _mask(negatives: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(negatives.shape[:2], dtype=negatives.dtype, device=negatives.device)
    return mask.to(negatives.dtype)


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    margin: float = 0.1,
    *,
    mask: Tensor | None = None,
    distance: str = "squared",
) -> Tensor:
    """Mean over tuples of ``sum_k max(0, margin + d(a, p) - d(a, n_k))``."""
    if distance not in ("squared", "euclidean"):
        raise UnknownNameError("distance", distance, ["squared", "euclidean"])
    dist = squared_distance if distance == "squared" else euclidean_distance
    d_pos = dist(anchor, positive)  # (T,)
    d_neg = dist(anchor[:, None, :], negatives)  # (T, K)
    hinge = torch.relu(margin + d_pos[:, None] - d_neg) * _mask(negatives, mask)
    return hinge.sum(dim=1).mean()


def contrastive_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    margin: float = 0.7,
    *,
    mask: Tensor | None = None,
    distance: str = "euclidean",
) -> Tensor:
    """Mean over tuples of ``0.5 d(a, p)^2 + sum_k 0.5 max(0, margin - d(a, n_k))^2`` (``d`` Euclidean).

    ``distance`` is accepted for a uniform signature; the contrastive loss always uses the
    Euclidean distance, as in Radenović et al.
    """
    d_pos = euclidean_distance(anchor, positive)
    d_neg = euclidean_distance(anchor[:, None, :], negatives)
    pos_term = 0.5 * d_pos.pow(2)
    neg_term = (0.5 * torch.relu(margin - d_neg).pow(2) * _mask(negatives, mask)).sum(dim=1)
    return (pos_term + neg_term).mean()


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``-mean_i log(eps + min_{j != i} ||x_i - x_j||)`` over the rows of ``x`` (N, D); 0 for N < 2.

    The rows must be descriptors of different photos (copies of one photo would be pushed apart).
    """
    n = x.shape[0]
    if n < 2:
        return x.sum() * 0.0
    dist = squared_distance(x[:, None, :], x[None, :, :])  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    nearest = dist.masked_fill(eye, float("inf")).min(dim=1).values
    return -torch.log(nearest.clamp_min(_EPS).sqrt() + eps).mean()


LossFn = Callable[..., Tensor]
LOSSES: dict[str, LossFn] = {"triplet": triplet_loss, "contrastive": contrastive_loss}


def get_loss(name: str) -> LossFn:
    """The loss function called ``name`` (``triplet`` or ``contrastive``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UnknownNameError("loss", name, list(LOSSES)) from None
