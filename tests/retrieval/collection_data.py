"""Synthetic collections for the collection and search tests: real catalog and FAISS, made-up vectors."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from retrieval.collection import IndexedImage, RegionOut
from retrieval.models.descriptor import DescriptorModel
from retrieval.store.catalog import LabelStat


@lru_cache(maxsize=1)
def tiny_model() -> DescriptorModel:
    """The offline backbone at a small input size: fast, and a real model for queries by image."""
    return DescriptorModel.create("efficientnet_lite0", max_side=96, scales=(1.0,))


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_images(
    n: int, *, dim: int = 1280, seed: int = 0, prefix: str = "img", label_every: int = 10
) -> list[IndexedImage]:
    """``n`` images; every ``label_every``-th one has a "dog" (others "cat"); each has one detector region."""
    vecs = unit_vectors(n, dim, seed)
    regs = unit_vectors(n, dim, seed + 1)
    out = []
    for i in range(n):
        label = "dog" if i % label_every == 0 else "cat"
        out.append(
            IndexedImage(
                sha256=sha(f"{prefix}-{i}"),
                size_bytes=1000 + i,
                width=640,
                height=480,
                format="JPEG",
                descriptor=vecs[i],
                path=f"/photos/{prefix}/{i:05d}.jpg",
                mtime_ns=i,
                regions=(RegionOut((10.0, 20.0, 200.0, 220.0), "detector", regs[i], label, 0.9),),
                labels={"detector": [LabelStat(label, 0.9, 0.25, 1)]},
                replace_sources=("detector",),
            )
        )
    return out
