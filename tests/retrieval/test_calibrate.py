"""Calibrated match levels: the numbers against slow float64 references and known answers, the stored
file, and a real collection calibrated from edited copies of its photos (and again after a new model)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval import calibrate as cal
from retrieval.calibrate import Calibration, CalibrationCache, NotCalibratedError, fit_thresholds, wilson_lower
from retrieval.errors import ImsearchError

# ---------------------------------------------------------------------------- slow references


def reference_wilson(k: int, n: int, z: float) -> float:
    if n == 0:
        return 0.0
    p = k / n
    return max(0.0, (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n))


def reference_threshold(pos: list[float], neg: list[float], target: float, z: float) -> float | None:
    """Every positive score as a candidate, counted in float64 one by one; the lowest that qualifies."""
    best = None
    for t in sorted(set(pos)):
        tp = sum(1 for p in pos if p >= t)
        fp = sum(1 for q in neg if q >= t)
        if reference_wilson(tp, tp + fp, z) >= target and (best is None or t < best):
            best = t
    return best


def test_wilson_matches_the_formula_and_known_values() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(0, 500, size=300)
    k = (rng.random(300) * (n + 1)).astype(int).clip(0, n)
    for z in (0.0, 1.0, 1.96):
        got = wilson_lower(k, n, z)
        want = [reference_wilson(int(a), int(b), z) for a, b in zip(k, n, strict=True)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert float(wilson_lower(100, 100, 1.0)) == pytest.approx(100 / 101, abs=1e-12)  # all correct: n / (n + z^2)
    assert float(wilson_lower(7, 10, 0.0)) == pytest.approx(0.7)  # z = 0: the ratio itself


@pytest.mark.parametrize("z", [0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_the_slow_reference(seed: int, z: float) -> None:
    rng = np.random.default_rng(seed)
    # rounded scores: many ties, within and across the two sets
    pos = np.round(rng.normal(0.85, 0.08, size=800), 2)
    neg = np.round(rng.normal(0.55, 0.1, size=2000), 2)
    for target in (0.5, 0.9, 0.99):
        got = cal.lowest_threshold(pos, neg, target, z)
        want = reference_threshold(pos.tolist(), neg.tolist(), target, z)
        assert got == want, (target, got, want)
    fit = fit_thresholds(pos, neg, neg[:50], z=z)
    assert fit.threshold("copy") == reference_threshold(pos.tolist(), neg.tolist(), 0.99, z)
    assert fit.threshold("near") == reference_threshold(pos.tolist(), neg.tolist(), 0.90, z)
    copy = fit.levels[0]
    assert copy.threshold is not None
    assert copy.positives_above == sum(p >= copy.threshold for p in pos.tolist())
    assert copy.negatives_above == sum(q >= copy.threshold for q in neg.tolist())
    assert copy.recall == pytest.approx(copy.positives_above / len(pos))


def test_separable_scores_put_copy_at_the_lowest_copy() -> None:
    rng = np.random.default_rng(3)
    pos = rng.uniform(0.8, 1.0, size=500)
    neg = rng.uniform(0.0, 0.6, size=5000)
    neighbours = rng.uniform(0.3, 0.5, size=101)
    fit = fit_thresholds(pos, neg, neighbours)
    assert fit.threshold("copy") == fit.threshold("near") == pos.min()  # never lowered into the negatives
    assert fit.threshold("similar") == pytest.approx(float(np.median(neighbours)))
    copy = fit.levels[0]
    assert copy.precision == 1.0 and copy.recall == 1.0 and copy.negatives_above == 0


def _precision(t: float, mu_pos: float, mu_neg: float, sigma: float, ratio: float) -> float:
    def above(mu: float) -> float:  # P(score >= t) of a normal
        return 0.5 * math.erfc((t - mu) / (sigma * math.sqrt(2)))

    return above(mu_pos) / (above(mu_pos) + ratio * above(mu_neg))


def _solve(target: float, mu_pos: float, mu_neg: float, sigma: float, ratio: float) -> float:
    lo, hi = mu_neg - 5 * sigma, mu_pos + 5 * sigma  # precision rises with t for equal variances
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _precision(mid, mu_pos, mu_neg, sigma, ratio) >= target else (mid, hi)
    return hi


def test_overlapping_normals_recover_the_analytic_threshold() -> None:
    rng = np.random.default_rng(4)
    mu_pos, mu_neg, sigma, n_pos, ratio = 0.8, 0.6, 0.05, 100_000, 3
    pos = rng.normal(mu_pos, sigma, size=n_pos)
    neg = rng.normal(mu_neg, sigma, size=ratio * n_pos)
    fit = fit_thresholds(pos, neg, neg[:100], z=0.0)
    for level, target in (("copy", 0.99), ("near", 0.90)):
        want = _solve(target, mu_pos, mu_neg, sigma, ratio)
        assert fit.threshold(level) == pytest.approx(want, abs=0.004), level
    # the Wilson bound is a little stricter than the ratio, on big samples hardly
    strict = fit_thresholds(pos, neg, neg[:100], z=1.0)
    assert fit.threshold("copy") <= strict.threshold("copy") <= fit.threshold("copy") + 0.004  # type: ignore[operator]


def test_few_samples_need_the_bound_to_hold() -> None:
    neg = np.linspace(0.0, 0.5, 1000)
    few = np.linspace(0.8, 0.9, 50)  # all above every negative, but only 50 of them
    assert cal.lowest_threshold(few, neg, 0.99, 0.0) == pytest.approx(0.8)  # the ratio alone: 1.0
    assert cal.lowest_threshold(few, neg, 0.99, 1.0) is None  # the bound: 50 / 51 < 0.99
    enough = np.linspace(0.8, 0.9, 100)
    assert cal.lowest_threshold(enough, neg, 0.99, 1.0) == pytest.approx(0.8)  # 100 / 101 >= 0.99
    fit = fit_thresholds(few, neg, [0.95, 0.97, 0.99])
    assert fit.threshold("copy") is None and fit.levels[0].recall == 0.0
    assert fit.threshold("similar") == fit.threshold("near")  # capped: the levels stay ordered


def test_inputs_are_checked() -> None:
    with pytest.raises(ImsearchError, match="finite"):
        fit_thresholds([0.9, float("nan")], [0.1], [0.2])
    with pytest.raises(ImsearchError, match="near_precision"):
        fit_thresholds([0.9], [0.1], [0.2], copy_precision=0.8, near_precision=0.9)
    with pytest.raises(ImsearchError, match="unknown match level 'dupe'; use one of copy, near, similar"):
        cal.check_level("dupe")
    assert fit_thresholds([], [0.1], []).threshold("copy") is None


# ---------------------------------------------------------------------------- the stored calibration


def make_calibration(fingerprint: str = "ab" * 32, **kw: object) -> Calibration:
    rng = np.random.default_rng(5)
    fit = fit_thresholds(rng.normal(0.85, 0.05, 2000), rng.normal(0.6, 0.07, 20000), rng.uniform(0.4, 0.6, 150))
    defaults: dict[str, object] = dict(model_fingerprint=fingerprint, photos=150, collection_size=400, seed=7,
                                       copies_per_photo=2, negatives_per_query=10)
    defaults.update(kw)
    return Calibration.from_fit(fit, **defaults)  # type: ignore[arg-type]


def test_calibration_json_round_trip_and_match_levels() -> None:
    c = make_calibration()
    again = Calibration.from_json(c.to_json())
    assert again == c
    assert json.loads(c.to_json())["levels"][0]["level"] == "copy"
    assert c.similar is not None and c.near is not None and c.copy is not None
    assert c.similar < c.near < c.copy
    assert c.match_level(c.copy) == "copy" and c.match_level(1.0) == "copy"
    assert c.match_level(float(np.nextafter(c.copy, 0))) == "near" and c.match_level(c.near) == "near"
    assert c.match_level(float(np.nextafter(c.near, 0))) == "similar" and c.match_level(c.similar) == "similar"
    assert c.match_level(float(np.nextafter(c.similar, 0))) is None
    assert c.min_score("near") == c.near
    with pytest.raises(ImsearchError, match="unknown match level"):
        c.min_score("exact")
    with pytest.raises(ImsearchError, match="format version"):
        Calibration.from_dict({**c.to_dict(), "version": 99})
    with pytest.raises(ImsearchError, match="unreadable calibration"):
        Calibration.from_json("{not json")


def test_a_level_without_threshold_says_what_to_do() -> None:
    fit = fit_thresholds(np.linspace(0.8, 0.9, 20), np.linspace(0, 0.5, 100), [0.3])
    c = Calibration.from_fit(fit, model_fingerprint="cd" * 32, photos=10, collection_size=60, seed=0,
                             copies_per_photo=2, negatives_per_query=10)
    assert c.copy is None and c.near == pytest.approx(0.8)  # 20 / 21 >= 0.9 but < 0.99
    assert c.match_level(0.95) == "near" and c.match_level(0.3) == "similar" and c.match_level(0.2) is None
    with pytest.raises(NotCalibratedError, match="a larger --sample or --copies"):
        c.min_score("copy")
    with pytest.raises(NotCalibratedError, match="run `imsearch calibrate`"):
        cal.min_match_score(None, "copy", Path("/data"))


def test_save_load_is_keyed_by_the_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = make_calibration("12" * 32)
    path = cal.save_calibration(tmp_path, c)
    assert path == tmp_path / "models" / "1212121212121212.calibration.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert cal.load_calibration(tmp_path, "12" * 32) == c
    assert cal.load_calibration(tmp_path, "34" * 32) is None  # another model: no calibration
    assert cal.stale_calibrations(tmp_path, "34" * 32) == [path]
    # the same 16-digit file name, another full fingerprint: refused
    assert cal.load_calibration(tmp_path, "12" * 8 + "ff" * 24) is None
    path.write_text("{broken")
    with caplog.at_level(logging.WARNING):
        assert cal.load_calibration(tmp_path, "12" * 32) is None
    assert "run `imsearch calibrate`" in caplog.text


def test_the_cache_sees_a_new_file(tmp_path: Path) -> None:
    cache = CalibrationCache(tmp_path)
    assert cache.get("56" * 32) is None
    first = make_calibration("56" * 32, seed=1)
    cal.save_calibration(tmp_path, first)
    assert cache.get("56" * 32) == first
    second = make_calibration("56" * 32, seed=22, photos=99)
    cal.save_calibration(tmp_path, second)
    assert cache.get("56" * 32) == second


def test_recalibration_reasons() -> None:
    c = make_calibration("78" * 32, collection_size=100)
    assert cal.recalibration_reason(None, "78" * 32, 100) == "no calibration for the collection's model"
    assert "another model" in str(cal.recalibration_reason(c, "9a" * 32, 100))
    assert cal.recalibration_reason(c, "78" * 32, 200) is None
    assert "grew from 100 to 201" in str(cal.recalibration_reason(c, "78" * 32, 201))


def test_describe_prints_each_level() -> None:
    lines = cal.describe(make_calibration())
    assert lines[0].startswith("calibration of model abababababababab")
    assert [ln.split()[0] for ln in lines[2:]] == ["copy", "near", "similar"]


def test_numeric_module_needs_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, retrieval.calibrate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert out == "False"


# ---------------------------------------------------------------------------- a real collection


def key_of(path: Path) -> int:
    import hashlib

    from retrieval.store.keys import image_key

    return image_key(hashlib.sha256(path.read_bytes()).hexdigest())


@dataclass(frozen=True)
class Small:
    root: Path
    model: Any
    extractor: Any
    photos: list[Path]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """16 real photos at 128 px, one scale (the machine is small); one extractor shared by the tests."""
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.models.extract import Extractor
    from tests import imagefactory as f
    from tests.retrieval.test_fastquery import build

    model = DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))
    photos = f.real_photos(15, stride=167)
    tmp = tmp_path_factory.mktemp("calibrate")
    photos.append(resized_copy(photos[0], tmp / "dup.jpg"))  # a duplicate the collection holds
    build(tmp / "data", model, photos)
    return Small(tmp / "data", model, Extractor(model, batch_size=8, workers=2), photos)


def resized_copy(src: Path, out: Path) -> Path:
    from PIL import Image

    with Image.open(src) as im:
        w, h = im.size
        im.convert("RGB").resize((w * 9 // 10, h * 9 // 10), Image.Resampling.LANCZOS).save(out, quality=80)
    return out


def test_the_same_photo_resized_is_told_from_other_photos(tmp_path: Path) -> None:
    from retrieval.calibrate_collection import photo_signature, same_photo
    from retrieval.imageio import decode_image
    from tests import imagefactory as f

    a, b = f.real_photos(2, stride=301)
    sig = {p: photo_signature(decode_image(p, max_side=64).pixels) for p in (a, b, resized_copy(a, tmp_path / "r.jpg"))}
    assert float(sig[a] @ sig[a]) == pytest.approx(1.0)
    assert same_photo(sig[a], sig[tmp_path / "r.jpg"]) and not same_photo(sig[a], sig[b])
    flat = photo_signature(np.full((40, 60, 3), 128, dtype=np.uint8))
    assert not flat.any() and not same_photo(flat, flat)


def test_calibrate_a_collection_from_copies_of_its_photos(small: Small) -> None:
    from retrieval.calibrate_collection import calibrate_collection, sample_photos, score_copies
    from retrieval.collection import Collection
    from retrieval.search import Query, SearchEngine

    root, photos, ex = small.root, small.photos, small.extractor
    with Collection.open(root, model=small.model, writable=False) as col:
        ids = sample_photos(col, 8, seed=3)
        assert len(ids) == 8 and list(ids) == list(sample_photos(col, 8, seed=3))
        assert list(sample_photos(col, 99, seed=3)) == list(col.index_ids("image"))  # all of a small collection
        first, dup = (key_of(p) for p in (photos[0], photos[-1]))
        picked = np.array([first, *[i for i in ids if i not in (first, dup)][:2]], dtype=np.int64)
        a = score_copies(col, picked, seed=3, copies_per_photo=2, negatives_per_query=5, extractor=ex)
        b = score_copies(col, picked, seed=3, copies_per_photo=2, negatives_per_query=5, extractor=ex)
        assert a.photos == 3 and len(a.positives) == 6 and len(a.negatives) == 6 * 5 and len(a.neighbours) == 3
        np.testing.assert_array_equal(a.positives, b.positives)  # seeded: the same copies every time
        np.testing.assert_array_equal(a.negatives, b.negatives)
        # each original's top-1 other photo, by brute force over the stored vectors; the duplicate of
        # photos[0] (its nearest image) is the same photo, not another one
        all_ids = col.index_ids("image")
        sims = col.reconstruct("image", picked) @ col.reconstruct("image", all_ids).T
        sims[all_ids[None, :] == picked[:, None]] = -1  # itself
        dup_score = float(sims[0][all_ids == dup][0])
        assert dup_score == sims[0].max() and dup_score > 0.9
        sims[0][all_ids == dup] = -1
        np.testing.assert_allclose(a.neighbours, sims.max(axis=1), atol=1e-5)
        assert a.duplicates >= 1 and dup_score not in a.negatives.tolist()
        assert a.positives.mean() > a.negatives.mean()
        c = calibrate_collection(col, sample=16, copies_per_photo=2, seed=3, negatives_per_query=5, extractor=ex)
    assert c.photos == 16 and c.positives == 32 and c.collection_size == 16 and c.seed == 3
    assert cal.load_calibration(root, c.model_fingerprint) == c
    # 32 copies cannot certify precision 0.99 (the bound needs ~99 above a threshold): no copy level
    assert c.copy is None and c.similar is not None
    with Collection.open(root, model=small.model, writable=False) as col:
        engine = SearchEngine(col, extractor=ex)
        result = engine.search(Query(image=photos[0]), k=5)
        assert result.hits[0].path == str(photos[0]) and result.hits[0].match in ("near", "similar")
        assert all(h.match == c.match_level(h.score) for h in result.hits)
        assert engine.duplicate_threshold() == (0.95, "default")  # no copy threshold to group by
        with pytest.raises(NotCalibratedError, match="a larger --sample or --copies"):
            engine.search(Query(image=photos[0]), k=5, min_match="copy")


def test_a_new_model_triggers_recalibration(small: Small, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from retrieval.calibrate_collection import ensure_calibrated
    from retrieval.collection import Collection
    from retrieval.ingest import IngestSettings
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.reindex import reindex
    from retrieval.search import Query, SearchEngine

    root = tmp_path / "data"
    shutil.copytree(small.root, root)
    once = {"min_photos": 10, "sample": 6, "copies_per_photo": 1}
    with Collection.open(root, model=small.model) as col:
        first = ensure_calibrated(col, extractor=small.extractor, **once)
        assert first is not None and first.model_fingerprint == col.model.fingerprint
        assert ensure_calibrated(col, **once) == first  # fresh: kept, nothing measured
        old_fp = col.model.fingerprint
        new_model = DescriptorModel.create("efficientnet_lite0", max_side=96, scales=(1.0,))
        assert new_model.fingerprint != old_fp
        assert reindex(col, new_model, settings=IngestSettings(batch_size=8)).swapped
    with Collection.open(root, model=new_model) as col:
        assert cal.load_calibration(root, new_model.fingerprint) is None  # the old one is stale: not used
        assert cal.stale_calibrations(root, new_model.fingerprint) == [cal.calibration_path(root, old_fp)]
        from retrieval.models.extract import Extractor

        ex = Extractor(new_model, batch_size=8, workers=2)
        engine = SearchEngine(col, extractor=ex)
        assert engine.calibration is None
        assert all(h.match is None for h in engine.search(Query(image=small.photos[1]), k=3).hits)
        with caplog.at_level(logging.INFO):
            assert ensure_calibrated(col, min_photos=100) is None  # too small for this minimum
            assert "calibration starts at 100" in caplog.text
            second = ensure_calibrated(col, extractor=ex, **once)
        assert "no calibration for the collection's model" in caplog.text
        assert second is not None and second.model_fingerprint == new_model.fingerprint
        assert engine.calibration == second == cal.load_calibration(root, new_model.fingerprint)
