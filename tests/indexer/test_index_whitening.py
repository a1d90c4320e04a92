"""A new collection learns its model's whitening from copies of its own photos before indexing
(``imsearch index --whitening copies``, the default), ``reindex --learn-whitening`` the same for an
existing one; the stored descriptors are the final model's. Commands run in-process."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.cli import main
from retrieval.collection import Collection
from retrieval.collection_whitening import WhitenOnCreation, sample_photos
from retrieval.errors import ModelMismatchError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.store import catalog
from retrieval.store.catalog_vectors import get_vectors
from tests import imagefactory as f

TINY = ("--backbone", "efficientnet_lite0", "--max-side", "64", "--scales", "1")


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMSEARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whiten-photos")
    for i, p in enumerate(f.real_photos(24, stride=97)):
        shutil.copyfile(p, out / f"{i:03d}_{p.name}")
    return out


def imsearch(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    got = main(list(argv))
    out = capsys.readouterr().out
    assert got == 0, out
    return out


def stored(root: Path) -> tuple[DescriptorModel, dict[str, np.ndarray]]:
    with Collection.open(root, writable=False) as col:
        ids = col.index_ids("image")
        records = col.read(catalog.get_images, image_ids=ids)
        rows = col.read(get_vectors, space="image", ids=ids)
        vectors = {Path(r.path).name: row for r, row in zip(records, rows, strict=True) if r is not None}
        return col.model, vectors


def test_sample_is_seeded_and_order_free() -> None:
    photos = [Path(f"/p/{i:03d}.jpg") for i in range(50)]
    a = sample_photos(photos, 10)
    assert a == sample_photos(list(reversed(photos)), 10) and len(set(a)) == 10
    assert a != sample_photos(photos, 10, seed=1)
    assert sample_photos(photos[:5], 10) == photos[:5]


def test_new_collection_learns_whitening_then_indexes_with_it(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = ("--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-calibrate", "--no-progress")
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "index", str(folder), *TINY, "--whiten-min", "20", "--whiten-sample", "20", *data)
    assert "learning the collection's whitening from 20 of its 24 photos" in caplog.text
    assert "whitening: " in caplog.text and "images/s" in caplog.text  # progress lines (stderr is no TTY)
    model, vectors = stored(tmp_path / "data")
    assert model.meta.whitening is not None and "20 photos of the collection" in model.meta.whitening["learned_from"]
    assert len(vectors) == 24
    # every photo described once, by the final (whitened) model
    names = sorted(vectors)[:4]
    again = Extractor(model, device="cpu", batch_size=4).extract([folder / n for n in names])
    for name, vec in zip(names, again, strict=True):
        assert float(vec @ vectors[name]) > 0.999, name

    # the collection exists: its own model is used, nothing is learned again, the same --backbone is accepted
    caplog.clear()
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "index", str(folder), *TINY, "--whiten-min", "20", *data)
    assert "learning the collection's whitening" not in caplog.text
    assert stored(tmp_path / "data")[0].fingerprint == model.fingerprint
    # another backbone setting is refused, as before
    caplog.clear()
    assert main(["index", str(folder), "--backbone", "efficientnet_lite0", "--max-side", "96", "--scales", "1",
                 *data]) != 0
    assert "built with another descriptor model (max_side: 64 there vs 96 here" in caplog.text


def test_no_whitening_below_the_minimum_or_when_asked(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    common = ("--device", "cpu", "--no-calibrate", "--no-progress", *TINY)
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "index", str(folder), "--data-dir", str(tmp_path / "a"), *common)  # 24 < 200
    assert "24 photos found, fewer than 200" in caplog.text
    assert stored(tmp_path / "a")[0].meta.whitening is None
    imsearch(capsys, "index", str(folder), "--data-dir", str(tmp_path / "b"), "--whitening", "none",
             "--whiten-min", "2", *common)
    assert stored(tmp_path / "b")[0].meta.whitening is None


def test_a_bad_sample_size_is_refused_before_anything_is_made(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["index", str(folder), "--data-dir", str(tmp_path / "x"), "--whiten-sample", "1", *TINY]) != 0
    assert "--whiten-sample must be at least 2 photos, got 1" in caplog.text
    assert not (tmp_path / "x" / "catalog.db").exists()


def test_reindex_learns_whitening_from_copies(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ("--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-calibrate")
    imsearch(capsys, "index", str(folder), *TINY, "--whitening", "none", "--no-progress", *data)
    before, _ = stored(tmp_path / "data")
    out = imsearch(capsys, "reindex", "--learn-whitening", "--whiten-sample", "12", *data)
    assert "whitening learned from copies of 12 photos of the collection" in out
    after, vectors = stored(tmp_path / "data")
    assert after.fingerprint != before.fingerprint and after.meta.whitening is not None
    name = sorted(vectors)[0]
    again = Extractor(after, device="cpu").extract([folder / name])[0]
    assert float(again @ vectors[name]) > 0.999


def test_factory_compatibility_ignores_only_the_whitening() -> None:
    base = DescriptorModel.create("efficientnet_lite0", max_side=64, scales=(1.0,))
    whitened = DescriptorModel.create("efficientnet_lite0", max_side=64, scales=(1.0,))
    rng = np.random.default_rng(0)
    from retrieval.models.whitening import learn_pca_whitening

    whitened.set_whitening(learn_pca_whitening(rng.standard_normal((3000, 1280)).astype(np.float32)))
    factory = WhitenOnCreation(lambda: [], base=base)
    factory.check_compatible(whitened.identity())  # same backbone settings: the collection's own is used
    other = WhitenOnCreation(lambda: [], base=DescriptorModel.create("efficientnet_lite0", max_side=96, scales=(1.0,)))
    with pytest.raises(ModelMismatchError):
        other.check_compatible(whitened.identity())
    WhitenOnCreation(lambda: []).check_compatible(whitened.identity())  # no model asked for
