"""PCA-whitening against a float64 numpy reference, and its round trip through the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.errors import ImsearchError
from retrieval.models.whitening import CovarianceAccumulator, Whitening, learn_lw_whitening, learn_pca_whitening


def _data(n: int = 2000, c: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(c, c)) * np.linspace(3, 0.2, c)
    return rng.normal(size=(n, c)) @ mix.T + rng.normal(size=c) * 5


def test_full_whitening_gives_identity_covariance() -> None:
    x = _data()
    params = learn_pca_whitening(x)
    y = (x - params.mean) @ params.weight.T
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(x.shape[1]), atol=1e-6)


def test_matches_a_slow_reference() -> None:
    x = _data(500, 6, seed=1)
    n, c = x.shape
    mean = [sum(x[i, j] for i in range(n)) / n for j in range(c)]
    cov = np.zeros((c, c))
    for a in range(c):
        for b in range(c):
            cov[a, b] = sum((x[i, a] - mean[a]) * (x[i, b] - mean[b]) for i in range(n)) / n
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:4]
    params = learn_pca_whitening(x, dim=4)
    np.testing.assert_allclose(params.mean, mean, atol=1e-9)
    np.testing.assert_allclose(params.eigenvalues, vals[order], rtol=1e-8)
    for k, idx in enumerate(order):  # same directions up to sign, scaled by lambda^-1/2
        row = params.weight[k] * np.sqrt(vals[idx])
        assert abs(abs(float(row @ vecs[:, idx])) - 1) < 1e-8


def test_streaming_equals_batch_and_power_shrinks() -> None:
    x = _data()
    acc = CovarianceAccumulator(x.shape[1])
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    a, b = learn_pca_whitening(acc, 5), learn_pca_whitening(x, 5)
    np.testing.assert_allclose(a.weight, b.weight, atol=1e-9)
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-12)
    half = learn_pca_whitening(x, 5, power=0.25)
    np.testing.assert_allclose(np.abs(half.weight) * half.eigenvalues[:, None] ** 0.25,
                               np.abs(b.weight) * b.eigenvalues[:, None] ** 0.5, atol=1e-6)


def test_layer_round_trip() -> None:
    x = _data(1000, 8)
    params = learn_pca_whitening(x, 3)
    layer = Whitening.from_params(params)
    got = layer(torch.from_numpy(x[:10]).float()).detach().numpy()
    want = (x[:10] - params.mean) @ params.weight.T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    clone = Whitening(8, 3)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone(torch.ones(2, 8)), layer(torch.ones(2, 8)))


def test_errors() -> None:
    with pytest.raises(ImsearchError, match="at least 2"):
        learn_pca_whitening(np.zeros((1, 4)))
    with pytest.raises(ImsearchError, match=r"within 1\.\.4"):
        learn_pca_whitening(np.random.default_rng(0).normal(size=(10, 4)), dim=9)
    with pytest.raises(ImsearchError, match="NaN"):
        CovarianceAccumulator(2).update(np.array([[np.nan, 1.0]]))


def _grouped(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """6 groups whose centres differ along axis 0 only; images of a group vary a lot along axis 1."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(6), 40)
    x = rng.normal(size=(len(groups), 5)) * np.array([0.1, 4.0, 0.5, 0.5, 0.5])
    x[:, 0] += groups * 1.5
    return x, groups


def test_learned_whitening_matches_a_slow_reference() -> None:
    x, groups = _grouped()
    n, c = x.shape
    shrink = 0.3
    # within-group covariance from every pair of matching images (float64 loops), groups weighted equally
    within = np.zeros((c, c))
    names = sorted(set(groups.tolist()))
    for g in names:
        members = [x[i] for i in range(n) if groups[i] == g]
        for a in members:
            for b in members:
                within += np.outer(a - b, a - b) / (2 * len(members) ** 2)
    within /= len(names)
    within = (1 - shrink) * within + shrink * np.trace(within) / c * np.eye(c)
    params = learn_lw_whitening(x, groups, shrink=shrink)
    w = params.weight
    np.testing.assert_allclose(params.mean, x.mean(axis=0), atol=1e-12)
    # it whitens the within-group variation (up to the overall scale) ...
    white = w @ within @ w.T
    np.testing.assert_allclose(white, np.eye(c) * white[0, 0], atol=1e-8 * white[0, 0])
    # ... and its rows are the principal directions of the whitened data, largest first
    y = (x - x.mean(axis=0)) @ w.T
    cov = y.T @ y / n
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8 * cov[0, 0])
    assert np.all(np.diff(np.diag(cov)) <= 1e-12)
    np.testing.assert_allclose(np.linalg.norm(w) ** 2 / c, 1.0, rtol=1e-9)  # rows of unit RMS norm


def test_learned_whitening_keeps_what_separates_groups() -> None:
    x, groups = _grouped()
    pca = learn_pca_whitening(x, 1, power=0.0)
    lw = learn_lw_whitening(x, groups, 1, shrink=0.0)
    assert abs(pca.weight[0, 1]) > 0.9 * np.linalg.norm(pca.weight[0])  # PCA: the within-group noise
    assert abs(lw.weight[0, 0]) > 0.9 * np.linalg.norm(lw.weight[0])  # LW: the axis the groups differ on
    # with full shrinkage it is the PCA rotation
    full = learn_lw_whitening(x, groups, 3, shrink=1.0)
    rotation = learn_pca_whitening(x, 3, power=0.0)
    np.testing.assert_allclose(np.abs(full.weight), np.abs(rotation.weight), atol=1e-8)


def test_learned_whitening_errors() -> None:
    x, groups = _grouped()
    with pytest.raises(ImsearchError, match="at least 2 groups"):
        learn_lw_whitening(x, np.arange(len(x)))  # every image alone: no matching pair
    with pytest.raises(ImsearchError, match="shrink"):
        learn_lw_whitening(x, groups, shrink=1.5)
    with pytest.raises(ImsearchError, match="n groups"):
        learn_lw_whitening(x, groups[:-1])
