"""The command line's calibration: ``imsearch calibrate``, ``imsearch duplicates`` grouping by the calibrated
copy threshold by default, ``imsearch search`` showing the match level, and ``imsearch index`` / ``reindex``
calibrating at their end (a new model: calibrated again). Commands run in-process through ``indexer.cli.main``."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.cli import main
from retrieval import calibrate as cal
from retrieval.models.descriptor import DescriptorModel
from retrieval.store.keys import image_key
from tests import imagefactory as f
from tests.retrieval.test_calibrate import resized_copy
from tests.retrieval.test_fastquery import build


def key_of(path: Path) -> int:
    return image_key(hashlib.sha256(path.read_bytes()).hexdigest())


def imsearch(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    got = main(list(argv))
    out = capsys.readouterr().out
    assert got == code, out
    return out


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("IMSEARCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no imsearch.toml of the developer's


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DescriptorModel, list[Path]]:
    model = DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))
    tmp = tmp_path_factory.mktemp("calibrate-cli")
    photos = f.real_photos(15, stride=173)
    photos.append(resized_copy(photos[0], tmp / "dup.jpg"))
    build(tmp / "data", model, photos)
    return tmp / "data", model, photos


def test_calibrate_and_duplicates(
    small: tuple[Path, DescriptorModel, list[Path]], capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, model, photos = small
    data = ("--data-dir", str(root))
    pair = {key_of(photos[0]), key_of(photos[-1])}
    with caplog.at_level(logging.INFO):
        out = imsearch(capsys, "duplicates", *data)
    assert "(similarity >= 0.9500, uncalibrated default)" in out and "run `imsearch calibrate`" in caplog.text
    assert imsearch(capsys, "calibrate", *data, code=1) == ""
    assert "--min-photos" in caplog.text and "16 images" in caplog.text
    with pytest.raises(SystemExit):  # an unknown level: argparse says which ones exist
        main(["search", str(photos[1]), "--min-match", "dupe", *data])
    assert "invalid choice: 'dupe'" in capsys.readouterr().err

    out = imsearch(capsys, "calibrate", "--sample", "16", "--copies", "2", "--min-photos", "10", *data)
    stored = cal.load_calibration(root, model.fingerprint)
    assert stored is not None and stored.positives == 32
    assert out.splitlines()[:len(cal.describe(stored))] == cal.describe(stored)
    assert "no copy threshold" in out  # 32 copies cannot certify precision 0.99
    assert json.loads(imsearch(capsys, "calibrate", "--show", "--json", *data)) == stored.to_dict()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        out = imsearch(capsys, "duplicates", *data)
    assert "uncalibrated default" in out and "no copy threshold" in caplog.text

    # a calibration with a copy threshold (the sample's own precision, z = 0, on the same scores)
    from retrieval.calibrate_collection import calibrate_collection
    from retrieval.collection import Collection

    with Collection.open(root, model=model, writable=False) as col:
        point = calibrate_collection(col, sample=16, copies_per_photo=4, seed=2, z=0.0)
    assert point.copy is not None
    out = imsearch(capsys, "duplicates", *data)
    assert f"(similarity >= {point.copy:.4f}, the calibrated copy threshold)" in out
    groups = json.loads(imsearch(capsys, "duplicates", "--json", *data))
    assert groups == json.loads(imsearch(capsys, "duplicates", "--json", "--threshold", repr(point.copy), *data))
    assert pair in [set(g["image_ids"]) for g in groups]  # the resized copy, grouped with its photo
    assert "(similarity >= 0.9999)" in imsearch(capsys, "duplicates", "--threshold", "0.9999", *data)  # wins

    # search: the match level in the table and in JSON, on the torch path and the torch-free one
    for n, fast in enumerate((None, None, "--no-fast-query")):  # torch (it exports the model), torch-free, torch
        flags = [fast] if fast else []
        caplog.clear()
        with caplog.at_level(logging.INFO):
            hits = json.loads(imsearch(capsys, "search", str(photos[0]), "-k", "6", "--json", *flags, *data))["hits"]
        assert ("fast query path unavailable" in caplog.text) == (n == 0)
        assert hits[0]["match"] == "copy" and all(h["match"] == point.match_level(h["score"]) for h in hits)
        strict = json.loads(imsearch(capsys, "search", str(photos[0]), "--min-match", "copy", "--json", *flags,
                                     *data))["hits"]
        # the first search exported the model, so this one may take the torch-free path: same hits, scores
        # within the two paths' difference (torch bf16 vs onnxruntime float32)
        copies = [h for h in hits if h["match"] == "copy"]
        assert [h["image_id"] for h in strict] == [h["image_id"] for h in copies]
        assert all(h["match"] == "copy" for h in strict)
        assert np.allclose([h["score"] for h in strict], [h["score"] for h in copies], atol=2e-3)
    table = imsearch(capsys, "search", str(photos[0]), "-k", "3", *data)
    assert "  match  " in table.splitlines()[1] and "  copy  " in table.splitlines()[2]


def test_index_and_reindex_calibrate_at_their_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(f.real_photos(cal.MIN_PHOTOS, stride=83)):
        shutil.copyfile(p, folder / f"{i:03d}_{p.name}")
    data = ("--data-dir", str(tmp_path / "data"), "--device", "cpu")
    tiny = ("--backbone", "efficientnet_lite0", "--max-side", "64", "--scales", "1")
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "index", str(folder), "--no-progress", *tiny, *data)
    assert "calibrating match levels: no calibration for the collection's model" in caplog.text
    first = _only_calibration(tmp_path / "data")
    assert first.photos == cal.MIN_PHOTOS and first.copies_per_photo == cal.DEFAULT_COPIES

    caplog.clear()
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "index", str(folder), "--no-progress", *data)  # nothing new: the calibration holds
    assert "calibrating" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        imsearch(capsys, "reindex", "--backbone", "efficientnet_lite0", "--max-side", "96", "--scales", "1", *data)
    assert "calibrating match levels: no calibration for the collection's model" in caplog.text
    second = cal.load_calibration(tmp_path / "data", _active_fingerprint(tmp_path / "data"))
    assert second is not None and second.model_fingerprint != first.model_fingerprint
    assert cal.stale_calibrations(tmp_path / "data", second.model_fingerprint) == [
        cal.calibration_path(tmp_path / "data", first.model_fingerprint)
    ]


def _only_calibration(root: Path) -> cal.Calibration:
    files = sorted((root / "models").glob("*.calibration.json"))
    assert len(files) == 1, files
    return cal.Calibration.from_json(files[0].read_text())


def _active_fingerprint(root: Path) -> str:
    from retrieval.quick.catalog import SqliteCatalog

    catalog: Any = SqliteCatalog(root / "catalog.db")
    try:
        return str(catalog.active_model().fingerprint)
    finally:
        catalog.close()
