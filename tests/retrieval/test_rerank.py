"""Re-ranking arithmetic against an explicit loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.errors import ImsearchError
from retrieval.rerank import RerankOptions, weighted_average


def test_weighted_average_matches_loop() -> None:
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(3, 5)).astype(np.float32)
    neigh = rng.normal(size=(3, 4, 5)).astype(np.float32)
    sims = rng.uniform(-0.5, 1, size=(3, 4)).astype(np.float32)
    sims[2, 3] = np.nan  # padding
    got = weighted_average(anchors, neigh, sims, alpha=3.0)
    for m in range(3):
        acc = [float(v) for v in anchors[m]]
        for j in range(4):
            s = float(sims[m, j])
            if math.isnan(s):
                continue
            w = max(s, 0.0) ** 3.0
            acc = [a + w * float(x) for a, x in zip(acc, neigh[m, j], strict=True)]
        norm = math.sqrt(sum(a * a for a in acc))
        np.testing.assert_allclose(got[m], [a / norm for a in acc], atol=1e-6)


def test_alpha_zero_is_plain_average() -> None:
    a = np.array([[1.0, 0.0]], dtype=np.float32)
    n = np.array([[[0.0, 1.0], [0.0, 1.0]]], dtype=np.float32)
    got = weighted_average(a, n, np.array([[0.1, 0.9]], dtype=np.float32), alpha=0.0)
    np.testing.assert_allclose(got, [[1 / math.sqrt(5), 2 / math.sqrt(5)]], atol=1e-6)


def test_options_validate() -> None:
    assert not RerankOptions().enabled and RerankOptions(aqe_n=2).enabled
    with pytest.raises(ImsearchError):
        RerankOptions(aqe_n=-1)
    with pytest.raises(ImsearchError):
        RerankOptions(alpha=100)
