"""Re-ranking arithmetic (alpha-QE/DBA averaging, SuperGlobal's MDescAug + RerankwMDA) against explicit loops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from retrieval.errors import ImsearchError
from retrieval.rerank import (
    MDA_BETA,
    MDA_K,
    MDA_QUERY_K,
    RerankOptions,
    mdescaug,
    rerank_wmda,
    superglobal_rerank,
    weighted_average,
)


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


# ----------------------------------------------------------------------------- SuperGlobal


def _dot(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def ref_mdescaug(x: np.ndarray, k: int, beta: float) -> np.ndarray:
    """One shortlist (M, d): each row averaged with its k most similar other rows (ties: lower index)."""
    out = np.zeros(x.shape)
    for j in range(len(x)):
        others = sorted((i for i in range(len(x)) if i != j), key=lambda i: (-_dot(x[j], x[i]), i))[:k]
        num = [float(v) for v in x[j]]
        den = 1.0
        for i in others:
            w = beta * max(_dot(x[j], x[i]), 0.0)
            num = [a + w * float(b) for a, b in zip(num, x[i], strict=True)]
            den += w
        out[j] = [a / den for a in num]
    return out


def ref_rerank_wmda(q: np.ndarray, a: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    s1 = [_dot(q, row) for row in a]
    top = sorted(range(len(a)), key=lambda j: (-s1[j], j))[:k]
    refined = [max(float(a[t][c]) for t in top) for c in range(a.shape[1])]
    score = [(s1[j] + _dot(refined, a[j])) / 2 for j in range(len(a))]
    order = sorted(range(len(a)), key=lambda j: (-score[j], j))
    return order, [score[j] for j in order]


def _shortlists(seed: int, m: int = 3, size: int = 12, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, size, d)) + 0.5  # mostly positive similarities, some negative
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    q = rng.normal(size=(m, d)) + 0.5
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize(("k", "beta"), [(MDA_K, MDA_BETA), (3, 0.5), (0, 0.15), (40, 1.0)])
def test_mdescaug_matches_loop(k: int, beta: float) -> None:
    _, x = _shortlists(1)
    got = mdescaug(x, k=k, beta=beta)
    assert got.shape == x.shape and got.dtype == np.float32
    for i in range(len(x)):
        np.testing.assert_allclose(got[i], ref_mdescaug(x[i], k, beta), atol=1e-6)
    gram = np.einsum("amd,and->amn", x.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(mdescaug(x, k=k, beta=beta, gram=gram), got, atol=1e-6)


def test_mdescaug_ties_go_to_the_better_first_round_rank() -> None:
    e = np.eye(4, dtype=np.float32)
    r = np.float32(1 / np.sqrt(2))
    x = np.stack([e[0], (e[0] + e[1]) * r, (e[0] + e[2]) * r, e[3]])[None]  # rows 1 and 2 tie for row 0
    got = mdescaug(x, k=1, beta=1.0)
    want = ref_mdescaug(x[0], 1, 1.0)
    np.testing.assert_allclose(got[0], want, atol=1e-7)
    w = float(r)
    np.testing.assert_allclose(got[0, 0], (x[0, 0] + w * x[0, 1]) / (1 + w), atol=1e-7)  # row 1, not row 2


@pytest.mark.parametrize("k", [MDA_QUERY_K, 1, 3, 50])
def test_rerank_wmda_matches_loop(k: int) -> None:
    q, x = _shortlists(2)
    aug = mdescaug(x)
    order, scores = rerank_wmda(q, aug, k=k)
    assert order.shape == scores.shape == (3, 12) and scores.dtype == np.float32
    for i in range(3):
        want_order, want_scores = ref_rerank_wmda(q[i], aug[i], k)
        assert order[i].tolist() == want_order
        np.testing.assert_allclose(scores[i], want_scores, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize(("k", "beta", "query_k"), [(MDA_K, MDA_BETA, MDA_QUERY_K), (4, 0.3, 5), (0, 0.15, 2)])
def test_superglobal_rerank_is_mdescaug_then_rerank_wmda(k: int, beta: float, query_k: int) -> None:
    """The fast path (dot products through the weights) against both loops, one after the other."""
    q, x = _shortlists(3, m=2, size=30, d=8)
    order, scores = superglobal_rerank(q, x, k=k, beta=beta, query_k=query_k)
    want_order, want_scores = rerank_wmda(q, mdescaug(x, k=k, beta=beta), k=query_k)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    for i in range(2):
        ref_order, ref_scores = ref_rerank_wmda(q[i], ref_mdescaug(x[i], k, beta), query_k)
        assert order[i].tolist() == ref_order
        np.testing.assert_allclose(scores[i], ref_scores, atol=1e-6)
    gram = np.einsum("amd,and->amn", x, x)
    np.testing.assert_array_equal(superglobal_rerank(q, x, k=k, beta=beta, query_k=query_k, gram=gram)[0], order)


def test_superglobal_rerank_refuses_bad_input() -> None:
    q, x = _shortlists(4)
    with pytest.raises(ImsearchError, match="shortlist"):
        mdescaug(x[0])
    with pytest.raises(ImsearchError, match="gram"):
        mdescaug(x, gram=np.zeros((3, 5, 5)))
    with pytest.raises(ImsearchError, match="k >= 0"):
        mdescaug(x, k=-1)
    with pytest.raises(ImsearchError, match="does not fit"):
        rerank_wmda(q[:2], x)
    with pytest.raises(ImsearchError, match="k >= 1"):
        rerank_wmda(q, x, k=0)


def test_top_k_with_many_ties_keeps_the_lower_indices() -> None:
    from retrieval.rerank import _top_k

    rng = np.random.default_rng(5)
    sims = rng.integers(0, 4, size=(3, 7, 20)).astype(np.float64)  # many exact ties
    for k in (1, 3, 10, 20):
        got = _top_k(sims, k)
        for idx in np.ndindex(*sims.shape[:2]):
            row = sims[idx]
            want = sorted(sorted(range(20), key=lambda i: (-row[i], i))[:k])
            assert got[idx].tolist() == want
