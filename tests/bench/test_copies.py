"""bench.copies' arithmetic: µAP against a slow float64 reference, the copy metrics by hand, and the
shared pass's heads against the model itself."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bench.copies import RegionStore, artifact_head, copy_metrics, head_of, micro_average_precision, shares_backbone
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.whitening import learn_pca_whitening
from tests import imagefactory as f


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _slow_uap(scores: np.ndarray, correct: np.ndarray, n_positives: int) -> float:
    """Distinct scores from the highest; within a tie, the wrong predictions count first."""
    total, seen, hits = 0.0, 0, 0
    for s in sorted(set(scores.tolist()), reverse=True):
        group = [bool(c) for sc, c in zip(scores.tolist(), correct.tolist(), strict=True) if sc == s]
        seen += group.count(False)
        for _ in range(group.count(True)):
            seen += 1
            hits += 1
            total += hits / seen
    return total / n_positives


def test_micro_average_precision_matches_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        scores = np.round(rng.random(n), 1)  # plenty of ties
        correct = rng.random(n) < 0.4
        n_pos = int(correct.sum()) + int(rng.integers(0, 5))
        if n_pos == 0:
            continue
        assert micro_average_precision(scores, correct, n_pos) == pytest.approx(_slow_uap(scores, correct, n_pos))
    # by hand: [0.9 right, 0.8 wrong, 0.8 right, 0.1 right], 4 positives: (1/1 + 2/3 + 3/4) / 4
    got = micro_average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 1], bool), 4)
    assert got == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)


def test_copy_metrics_by_hand() -> None:
    db = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    r1, r2, uap = copy_metrics(queries, db, np.array([0, 0, 1]), k=2)
    assert r1 == pytest.approx(1 / 3)  # only the first query finds its original first
    assert r2 == pytest.approx(2 / 3)  # the second at rank 2; the third's (score 0) loses the tie to image 0
    # pooled top-2, pessimistic ties: 1.0 wrong, 1.0 right, 0.8 wrong, 0.6 right, 0 wrong, 0 wrong
    assert uap == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_shared_pass_heads_match_the_model() -> None:
    """The stored float16 regions with a head give what the model with that whitening gives."""
    base = DescriptorModel.create(max_side=128)
    photos = f.real_photos(4, stride=733)
    store = RegionStore(base)
    ex = Extractor(base, batch_size=4, workers=1, engine="torch")
    ex.feature_hook = store
    plain = np.zeros((len(photos), base.meta.dim), dtype=np.float32)
    for res in ex.iter_extract(ExtractItem(i, p) for i, p in enumerate(photos)):
        assert res.descriptor is not None
        plain[int(res.key)] = res.descriptor  # type: ignore[call-overload]
    keys = list(range(len(photos)))
    np.testing.assert_allclose(store.descriptors(keys, None), plain, atol=2e-3)
    params = learn_pca_whitening(np.concatenate([store.regions(k) for k in keys]), 64)
    whitened = DescriptorModel.create(max_side=128)
    whitened.set_whitening(params, learned_from="test")
    assert shares_backbone(whitened, base)
    expected = Extractor(whitened, batch_size=4, workers=1, engine="torch").extract(photos)
    np.testing.assert_allclose(store.descriptors(keys, head_of(params)), expected, atol=3e-3)
    np.testing.assert_allclose(store.descriptors(keys, artifact_head(whitened)), expected, atol=3e-3)
    assert not shares_backbone(DescriptorModel.create(max_side=256), base)
