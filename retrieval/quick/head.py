"""The descriptor head in numpy: [ReLU+] -> pool -> [whiten] -> L2, per scale; scales combined -> L2.

The twin of :meth:`retrieval.models.descriptor.DescriptorModel.scale_descriptor` /
:meth:`~retrieval.models.descriptor.DescriptorModel.combine_scales` and
:mod:`retrieval.models.pooling` without torch (the tests hold the two to 1e-5 on the same
feature maps), SuperGlobal's options included (GeM+, regional GeM, ReLU+, Scale-GeM). Feature
maps are one image's ``(C, H, W)`` float32 array; the arithmetic runs in float64 and the
descriptor comes back as float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from retrieval.models.pooling_defaults import (
    EPS,
    GEM_P,
    RGEM_PR,
    RGEM_SIZE,
    RMAC_LEVELS,
    RMAC_OVERLAP,
    SCALE_AGGS,
    SCALE_GEM_P,
)
from retrieval.quick import QuickUnavailableError

_RMAC_STEPS = (2, 3, 4, 5, 6, 7)
POOLINGS = ("rmac", "gem", "rgem", "mac", "spoc")

Region = tuple[int, int, int, int]  # (y0, x0, height, width) in feature-map cells


def l2n(x: np.ndarray, axis: int = -1, eps: float = EPS) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=axis, keepdims=True) + eps)


def _long_side_regions(short: int, long: int, overlap: float) -> int:
    if long == short:
        return 1
    best_m, best_err = _RMAC_STEPS[0], math.inf
    for m in _RMAC_STEPS:
        step = (long - short) / (m - 1)
        err = abs((short - step) / short - overlap)
        if err < best_err - 1e-12:
            best_m, best_err = m, err
    return best_m


def _starts(extent: int, size: int, count: int) -> list[int]:
    if count <= 1:
        return [0]
    step = (extent - size) / (count - 1)
    return [math.floor(i * step) for i in range(count)]


@lru_cache(maxsize=1024)
def rmac_regions(
    height: int, width: int, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP
) -> tuple[Region, ...]:
    """The R-MAC grid of :func:`retrieval.models.pooling.rmac_regions` (same rule, tested equal)."""
    short, long = min(height, width), max(height, width)
    m = _long_side_regions(short, long, overlap)
    regions: list[Region] = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            break
        n_short, n_long = level, level + m - 1
        n_h, n_w = (n_long, n_short) if height > width else (n_short, n_long)
        for y0 in dict.fromkeys(_starts(height, side, n_h)):
            for x0 in dict.fromkeys(_starts(width, side, n_w)):
                regions.append((y0, x0, side, side))
    return tuple(regions)


def rmac_vectors(fmap: np.ndarray, levels: int, overlap: float) -> np.ndarray:
    """L2-normalized region MACs ``(R, C)`` of a ``(C, H, W)`` map."""
    _, height, width = fmap.shape
    regions = rmac_regions(int(height), int(width), levels, overlap)
    out = np.stack([fmap[:, y0 : y0 + h, x0 : x0 + w].max(axis=(1, 2)) for y0, x0, h, w in regions])
    return l2n(out)


def gem(x: np.ndarray, p: float, eps: float) -> np.ndarray:
    """GeM of a ``(C, H, W)`` map: ``(C,)``."""
    return np.power(np.power(np.maximum(x, eps), p).mean(axis=(1, 2)), 1.0 / p)


def local_gem(x: np.ndarray, p: float, size: int, eps: float) -> np.ndarray:
    """Power mean of each cell's ``size x size`` neighbourhood, clipped to the map: ``(C, H, W) -> same``
    (:func:`retrieval.models.pooling.local_gem`)."""
    _, height, width = x.shape
    r = size // 2
    padded = np.zeros((x.shape[0], height + 2 * r, width + 2 * r))
    padded[:, r : r + height, r : r + width] = np.power(np.maximum(x, eps), p)
    inside = np.zeros((height + 2 * r, width + 2 * r))
    inside[r : r + height, r : r + width] = 1.0
    total = np.zeros(x.shape)
    count = np.zeros((height, width))
    for dy in range(size):
        for dx in range(size):
            total += padded[:, dy : dy + height, dx : dx + width]
            count += inside[dy : dy + height, dx : dx + width]
    return np.power(total / count, 1.0 / p)


def combine_scales(per_scale: np.ndarray, agg: str, p: float) -> np.ndarray:
    """``(S, D)`` L2-normalized per-scale descriptors -> ``(D,)`` L2-normalized
    (:func:`retrieval.models.pooling.combine_scales`)."""
    if agg == "sum":
        total = per_scale.sum(axis=0)
    elif agg == "max":
        total = per_scale.max(axis=0)
    elif agg == "gem":
        gamma = per_scale.min()
        total = np.power(np.power(per_scale - gamma, p).mean(axis=0), 1.0 / p) + gamma
    else:
        raise QuickUnavailableError(f"scale aggregation {agg!r} has no numpy head (known: {', '.join(SCALE_AGGS)})")
    return l2n(total)


@dataclass(frozen=True)
class NumpyHead:
    """Pooling settings and whitening of one model; :meth:`__call__` maps a ``(C, H, W)`` map to ``(dim,)``."""

    pooling: str
    levels: int = RMAC_LEVELS
    overlap: float = RMAC_OVERLAP
    gem_p: float = GEM_P
    gem_eps: float = EPS
    whiten_weight: np.ndarray | None = None  # (D, C) float64
    whiten_bias: np.ndarray | None = None  # (D,) float64
    relu_eps: float | None = None  # ReLU+ floor (None: off)
    rgem_pr: float = RGEM_PR
    rgem_size: int = RGEM_SIZE
    scale_agg: str = "sum"
    scale_p: float = SCALE_GEM_P

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise QuickUnavailableError(f"pooling {self.pooling!r} has no numpy head (known: {', '.join(POOLINGS)})")
        if self.scale_agg not in SCALE_AGGS:
            raise QuickUnavailableError(
                f"scale aggregation {self.scale_agg!r} has no numpy head (known: {', '.join(SCALE_AGGS)})"
            )
        if self.rgem_size < 1 or self.rgem_size % 2 == 0:
            raise QuickUnavailableError(f"the regional GeM window must be odd and >= 1, got {self.rgem_size}")

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        assert self.whiten_weight is not None and self.whiten_bias is not None
        return x @ self.whiten_weight.T + self.whiten_bias

    def __call__(self, fmap: np.ndarray) -> np.ndarray:
        """One scale's descriptor (L2-normalized, float64) of a ``(C, H, W)`` feature map."""
        x = np.asarray(fmap, dtype=np.float64)
        if x.ndim != 3:
            raise ValueError(f"a feature map is (C, H, W), got shape {x.shape}")
        if self.relu_eps is not None:
            x = np.maximum(x, self.relu_eps)
        if self.pooling == "rmac":
            vectors = rmac_vectors(x, self.levels, self.overlap)
            if self.whiten_weight is not None:
                vectors = l2n(self._whiten(vectors))
            return l2n(vectors.sum(axis=0))
        if self.pooling == "mac":
            vec = x.max(axis=(1, 2))
        elif self.pooling == "spoc":
            vec = x.mean(axis=(1, 2))
        elif self.pooling == "rgem":
            vec = gem(0.5 * (x + local_gem(x, self.rgem_pr, self.rgem_size, self.gem_eps)), self.gem_p, self.gem_eps)
        else:  # gem
            vec = gem(x, self.gem_p, self.gem_eps)
        vec = l2n(vec)
        if self.whiten_weight is not None:
            vec = l2n(self._whiten(vec))
        return vec

    def multi_scale(self, fmaps: list[np.ndarray]) -> np.ndarray:
        """The image descriptor: per-scale descriptors combined (``scale_agg``), L2-normalized, float32."""
        per_scale = np.stack([self(f) for f in fmaps])
        return np.ascontiguousarray(combine_scales(per_scale, self.scale_agg, self.scale_p), dtype=np.float32)
