"""PCA-whitening or learned (supervised) whitening: from descriptors, applied as a shift + linear projection.

Whitening is an ``nn.Linear`` (``y = W x + b`` with ``b = -W mean``), so the same layer is
what the triplet training of Gordo et al. fine-tunes ("shift + projection"), and it saves
and loads with the rest of the model's state dict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from retrieval.errors import ImsearchError

logger = logging.getLogger(__name__)


class CovarianceAccumulator:
    """Streaming mean and covariance in float64 (bounded memory: ``O(C^2)``)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, vectors: np.ndarray | Tensor) -> None:
        """Add a batch of row vectors ``(n, dim)``."""
        if isinstance(vectors, Tensor):
            vectors = vectors.detach().to(torch.float64).cpu().numpy()
        x = np.asarray(vectors, dtype=np.float64).reshape(-1, self.dim)
        if not np.isfinite(x).all():
            raise ImsearchError("whitening data contains NaN or infinite values")
        self.count += x.shape[0]
        self._sum += x.sum(axis=0)
        self._outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(dim,)`` and (biased) covariance ``(dim, dim)`` of everything added."""
        if self.count < 2:
            raise ImsearchError(f"need at least 2 vectors to learn whitening, got {self.count}")
        mean = self._sum / self.count
        cov = self._outer / self.count - np.outer(mean, mean)
        return mean, (cov + cov.T) / 2


@dataclass(frozen=True)
class WhiteningParams:
    """A learned whitening: ``y = weight @ (x - mean)``."""

    mean: np.ndarray  # (C,)
    weight: np.ndarray  # (D, C)
    eigenvalues: np.ndarray  # (D,), descending
    power: float
    n_samples: int


def learn_pca_whitening(
    data: np.ndarray | CovarianceAccumulator,
    dim: int | None = None,
    *,
    power: float = 0.5,
    eps: float = 1e-9,
) -> WhiteningParams:
    """PCA-whitening from descriptors (rows) or an accumulated covariance.

    Keeps the ``dim`` leading principal directions (all when ``None``) and scales each by
    ``eigenvalue ** -power`` (``power = 0.5`` is full whitening; smaller values shrink it).
    """
    if isinstance(data, CovarianceAccumulator):
        acc = data
    else:
        arr = np.asarray(data)
        if arr.ndim != 2:
            raise ImsearchError(f"whitening data must be (n, C), got shape {arr.shape}")
        acc = CovarianceAccumulator(arr.shape[1])
        acc.update(arr)
    mean, cov = acc.mean_cov()
    channels = cov.shape[0]
    out_dim = channels if dim is None else int(dim)
    if not 1 <= out_dim <= channels:
        raise ImsearchError(f"whitening dim must be within 1..{channels}, got {dim}")
    rank_bound = acc.count - 1
    if out_dim > rank_bound:
        logger.warning(
            "whitening: %d output dimensions from only %d samples; the trailing directions are noise "
            "(learn it from more images or ask for dim <= %d)",
            out_dim,
            acc.count,
            rank_bound,
        )
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1][:out_dim]
    eigvals = np.clip(eigvals[order], 0.0, None)
    eigvecs = eigvecs[:, order]
    # fix each direction's sign for determinism: largest |component| positive
    signs = np.sign(eigvecs[np.abs(eigvecs).argmax(axis=0), np.arange(out_dim)])
    eigvecs = eigvecs * np.where(signs == 0, 1.0, signs)
    scale = (eigvals + eps) ** (-power)
    weight = (eigvecs * scale).T
    return WhiteningParams(mean=mean, weight=weight, eigenvalues=eigvals, power=power, n_samples=acc.count)


def learn_lw_whitening(
    descriptors: np.ndarray,
    groups: np.ndarray,
    dim: int | None = None,
    *,
    shrink: float = 0.75,
    eps: float = 1e-9,
) -> WhiteningParams:
    """Learned (supervised) whitening of Radenović et al. (2018), from labelled descriptors.

    Whitens the within-group variation (matching images: the average of the groups'
    covariances, each group weighted equally, shrunk towards the identity by ``shrink``),
    then rotates by PCA of the whitened descriptors: ``weight = V_d^T C_s^(-1/2)``. Directions
    where images of one group differ are damped, those separating groups kept. Only the
    directions matter once the output is L2-normalized; the weight is scaled so that its rows
    have unit RMS norm (the size of a PCA rotation: what training's learning rates expect).
    Measured on Caltech-101 (learned on 25 classes, evaluated on the 25 unseen ones plus
    distractors, default model, R-MAC regions projected): 86.81 mAP vs 84.99 without
    whitening (``python -m bench.train_caltech --whitening lw``) and ~86.35 with the PCA rotation.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    labels = np.asarray(groups)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ImsearchError(f"learned whitening needs (n, C) descriptors and n groups; got {x.shape}, {labels.shape}")
    if not np.isfinite(x).all():
        raise ImsearchError("whitening data contains NaN or infinite values")
    if not 0.0 <= shrink <= 1.0:
        raise ImsearchError(f"shrink must be in [0, 1], got {shrink}")
    n, channels = x.shape
    out_dim = channels if dim is None else int(dim)
    if not 1 <= out_dim <= channels:
        raise ImsearchError(f"whitening dim must be within 1..{channels}, got {dim}")
    within = np.zeros((channels, channels))
    used = 0
    for g in np.unique(labels):
        members = x[labels == g]
        if len(members) < 2:
            continue
        centred = members - members.mean(axis=0)
        within += centred.T @ centred / len(members)
        used += 1
    if used < 2:
        raise ImsearchError(
            f"learned whitening needs at least 2 groups of 2 or more images, got {used}; use PCA-whitening instead"
        )
    within /= used
    within = (1.0 - shrink) * within + shrink * (np.trace(within) / channels) * np.eye(channels)
    ev_s, vec_s = np.linalg.eigh((within + within.T) / 2)
    whiten = (vec_s * (np.clip(ev_s, 0.0, None) + eps) ** -0.5).T
    mean = x.mean(axis=0)
    xw = (x - mean) @ whiten.T
    ev_d, vec_d = np.linalg.eigh(xw.T @ xw / n)
    order = np.argsort(ev_d)[::-1][:out_dim]
    vec_d = vec_d[:, order]
    signs = np.sign(vec_d[np.abs(vec_d).argmax(axis=0), np.arange(out_dim)])
    vec_d = vec_d * np.where(signs == 0, 1.0, signs)
    weight = vec_d.T @ whiten
    weight *= np.sqrt(out_dim) / np.linalg.norm(weight)
    return WhiteningParams(mean=mean, weight=weight, eigenvalues=np.clip(ev_d[order], 0.0, None), power=0.5,
                           n_samples=n)


class Whitening(nn.Linear):
    """Shift + projection layer ``y = W x + b``; initialized from :class:`WhiteningParams`."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, bias=True)

    @classmethod
    def from_params(cls, params: WhiteningParams) -> Whitening:
        layer = cls(params.weight.shape[1], params.weight.shape[0])
        weight = torch.from_numpy(params.weight.astype(np.float32))
        bias = torch.from_numpy((-(params.weight @ params.mean)).astype(np.float32))
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype))
