"""Learned whitening from (photo, edited copy) pairs: rows and groups, seeding, skipped files, and that it helps."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.edits import edited_copy
from retrieval.errors import TrainingError
from retrieval.imageio import decode_image
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.train.copy_whitening import describe_copies, learn_copy_whitening, photo_key
from tests import imagefactory as f

MAX_SIDE = 256


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: small images on cores shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> DescriptorModel:
    return DescriptorModel.create(max_side=MAX_SIDE)


def _copy_pixels(photo: Path, seed: int, index: int, model: DescriptorModel) -> np.ndarray:
    """A copy made the obvious way: decode as the extractor does, edit with the shared edit set."""
    need = int(np.ceil(model.meta.max_side * max(model.meta.scales)))
    img = Image.fromarray(decode_image(photo, max_side=need).pixels)
    return np.asarray(edited_copy(img, seed=seed, key=photo_key(photo), index=index))


def test_rows_and_groups_are_each_photo_then_its_copies(model: DescriptorModel) -> None:
    photos = f.real_photos(3, stride=401)
    x, groups = describe_copies(model, photos, copies=2, seed=5, workers=1, engine="torch")
    assert x.shape == (9, model.meta.channels)
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ex = Extractor(model, batch_size=4, workers=1)
    np.testing.assert_allclose(x[0::3], ex.extract(photos), atol=1e-5)  # the originals, as indexed
    copies = [_copy_pixels(p, 5, j, model) for p in photos for j in range(2)]
    np.testing.assert_allclose(np.delete(x, [0, 3, 6], axis=0), ex.extract(copies), atol=1e-5)


def test_seeded_and_deterministic(model: DescriptorModel) -> None:
    photos = f.real_photos(2, stride=577)
    a, ga = describe_copies(model, photos, copies=1, seed=3, workers=2, engine="torch")
    b, gb = describe_copies(model, list(reversed(photos)), copies=1, seed=3, workers=1, engine="torch")
    c, _ = describe_copies(model, photos, copies=1, seed=4, workers=1, engine="torch")
    np.testing.assert_array_equal(ga, gb)
    np.testing.assert_allclose(a, b[[2, 3, 0, 1]], atol=1e-6)  # a photo's copies do not depend on the order
    np.testing.assert_allclose(a[0::2], c[0::2], atol=1e-6)  # same originals...
    assert np.abs(a[1::2] - c[1::2]).max() > 1e-2  # ...other edits under another seed


def test_regions_are_grouped_by_photo(model: DescriptorModel) -> None:
    photos = f.real_photos(2, stride=577)
    x, groups = describe_copies(model, photos, copies=1, seed=3, workers=1, vectors="regions", engine="torch")
    assert x.shape[0] == groups.size > 8  # several regions per image and scale
    assert set(groups.tolist()) == {0, 1}
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)  # L2-normalized region vectors


def test_undecodable_photo_is_skipped_with_a_log_line(
    model: DescriptorModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    photos = [f.real_photos(1)[0], bad, f.real_photos(2, stride=577)[1]]
    with caplog.at_level(logging.WARNING, logger="retrieval.train.copy_whitening"):
        x, groups = describe_copies(model, photos, copies=1, seed=0, workers=1, engine="torch")
    assert x.shape == (4, model.meta.channels)
    assert groups.tolist() == [0, 0, 2, 2]
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)
    with pytest.raises(TrainingError, match="at least 2 readable photos"):
        learn_copy_whitening(model, [bad, photos[0]], copies=1, workers=1)


def test_improves_copy_matching_on_unseen_photos() -> None:
    """Learned on 24 photos' copies; copies of 10 other photos (another seed) searched among all 34 photos."""
    model = DescriptorModel.create(max_side=MAX_SIDE, scales=(1.0,))  # one scale: quicker
    photos = f.real_photos(34, stride=67)
    train, test = photos[:24], photos[24:]
    params = learn_copy_whitening(model, train, copies=2, seed=0, workers=2)
    assert params.weight.shape == (model.meta.channels, model.meta.channels)
    queries = [_copy_pixels(p, 99, j, model) for p in test for j in range(2)]
    truth = np.repeat(np.arange(len(test)), 2)  # the test photos come first in the database

    def margins(m: DescriptorModel) -> np.ndarray:
        ex = Extractor(m, batch_size=8, workers=2)
        db, q = ex.extract(test + train), ex.extract(queries)
        sims = q @ db.T
        true = sims[np.arange(len(q)), truth]
        sims[np.arange(len(q)), truth] = -np.inf
        return true - sims.max(axis=1)  # > 0: the original comes first

    before = margins(model)
    whitened = DescriptorModel.create(max_side=MAX_SIDE, scales=(1.0,))
    whitened.set_whitening(params, learned_from="test copies")
    after = margins(whitened)
    print(f"copies ranked first: {(before > 0).sum()} -> {(after > 0).sum()} of {len(queries)}; "
          f"mean margin {before.mean():.3f} -> {after.mean():.3f}")
    assert (after > 0).sum() >= (before > 0).sum()
    assert after.mean() > before.mean() + 0.05
