"""The descriptor head in numpy: pool -> [whiten] -> L2, per scale; scales summed -> L2.

The twin of :meth:`retrieval.models.descriptor.DescriptorModel.head` and
:mod:`retrieval.models.pooling` without torch (the tests hold the two to 1e-5 on the same
feature maps). Feature maps are one image's ``(C, H, W)`` float32 array; the arithmetic runs in
float64 and the descriptor comes back as float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from retrieval.quick import QuickUnavailableError

EPS = 1e-6  # the torch head's epsilon (retrieval.models.pooling.EPS)
_RMAC_STEPS = (2, 3, 4, 5, 6, 7)
POOLINGS = ("rmac", "gem", "mac", "spoc")

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
def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> tuple[Region, ...]:
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


@dataclass(frozen=True)
class NumpyHead:
    """Pooling settings and whitening of one model; :meth:`__call__` maps a ``(C, H, W)`` map to ``(dim,)``."""

    pooling: str
    levels: int = 3
    overlap: float = 0.4
    gem_p: float = 3.0
    gem_eps: float = EPS
    whiten_weight: np.ndarray | None = None  # (D, C) float64
    whiten_bias: np.ndarray | None = None  # (D,) float64

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise QuickUnavailableError(f"pooling {self.pooling!r} has no numpy head (known: {', '.join(POOLINGS)})")

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        assert self.whiten_weight is not None and self.whiten_bias is not None
        return x @ self.whiten_weight.T + self.whiten_bias

    def __call__(self, fmap: np.ndarray) -> np.ndarray:
        """One scale's descriptor (L2-normalized, float64) of a ``(C, H, W)`` feature map."""
        x = np.asarray(fmap, dtype=np.float64)
        if x.ndim != 3:
            raise ValueError(f"a feature map is (C, H, W), got shape {x.shape}")
        if self.pooling == "rmac":
            vectors = rmac_vectors(x, self.levels, self.overlap)
            if self.whiten_weight is not None:
                vectors = l2n(self._whiten(vectors))
            return l2n(vectors.sum(axis=0))
        if self.pooling == "mac":
            vec = x.max(axis=(1, 2))
        elif self.pooling == "spoc":
            vec = x.mean(axis=(1, 2))
        else:  # gem
            vec = np.power(np.power(np.maximum(x, self.gem_eps), self.gem_p).mean(axis=(1, 2)), 1.0 / self.gem_p)
        vec = l2n(vec)
        if self.whiten_weight is not None:
            vec = l2n(self._whiten(vec))
        return vec

    def multi_scale(self, fmaps: list[np.ndarray]) -> np.ndarray:
        """The image descriptor: per-scale descriptors summed, L2-normalized, float32."""
        total = np.sum([self(f) for f in fmaps], axis=0)
        return np.ascontiguousarray(l2n(total), dtype=np.float32)
