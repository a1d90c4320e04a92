"""Self-supervised copy training: photos as their own groups, mining, fitting, resume, validation, selection."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retrieval.edits import split_photos
from retrieval.errors import TrainingError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.store import catalog
from retrieval.store.db import open_database
from retrieval.train.config import TrainConfig, resolve_config
from retrieval.train.copy_whitening import learn_copy_whitening
from retrieval.train.data import TrainingData, load_training_data
from retrieval.train.losses import koleo_loss
from retrieval.train.mining import TrainTuple
from retrieval.train.photos import collection_photos, photo_data, sha256_file, split_by_photo
from retrieval.train.selfsup import ORIGINAL, POSITIVE_COPY, View, distinct_photo_rows, selfsup_tuples
from retrieval.train.trainer import COPY_METRIC, GROUP_METRIC, Trainer, run_config
from retrieval.train.validation import copy_metrics, micro_average_precision
from tests import imagefactory as f

SIZE = 128  # training and mining size of every run here


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread (small batches; two OpenMP threads on shared cores spin-wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet weights, 128-px single-scale inference, PCA-whitening to 16-d learned on 16 photos."""
    model = DescriptorModel.create("efficientnet_lite0", max_side=SIZE, scales=(1.0,))
    params = Extractor(model, precision="fp32", workers=1).learn_whitening(f.real_photos(16), 16)
    model.set_whitening(params, learned_from="16 test photos")
    return model.save(tmp_path_factory.mktemp("init") / "init.pt")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder of 10 real photos (no sub-folders), one of them twice under another name."""
    root = tmp_path_factory.mktemp("photos")
    photos = f.real_photos(10, stride=131)
    for i, p in enumerate(photos):
        shutil.copyfile(p, root / f"p{i:02d}.jpg")
    shutil.copyfile(photos[3], root / "twin_of_p03.jpg")
    return root


def _config(out: Path, init: Path | None, **extra: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out": str(out), "init_model": str(init) if init else None, "epochs": 2, "image_size": SIZE,
        "max_side": SIZE, "scales": [1.0], "queries_per_epoch": 4, "pool_size": 8, "negatives": 2,
        "batch_size": 2, "val_fraction": 0.0, "progress": False, "whitening_images": 16, "whiten_dim": 16,
        "lr": 1e-4, "precision": "fp32", "workers": 1, "val_copy_queries": 6, "val_distractors": 4,
    }
    settings.update(extra)
    return resolve_config(None, settings)


# ----------------------------------------------------------------------------- numeric pieces
def test_koleo_matches_a_float64_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = 0.0
    for i in range(7):
        nearest = min(math.dist(x[i], x[j]) for j in range(7) if j != i)
        want -= math.log(nearest + 1e-8) / 7
    got = koleo_loss(torch.from_numpy(x))
    assert float(got) == pytest.approx(want, abs=1e-9)
    t = torch.from_numpy(x).requires_grad_(True)
    koleo_loss(t).backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0
    assert float(koleo_loss(torch.from_numpy(x[:1]))) == 0.0  # a single photo: nothing to spread


def _micro_ap_reference(scores: Sequence[float], relevant: Sequence[bool], n_pos: int) -> float:
    """Sum over the relevant predictions of the precision of the list cut just after them."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    total = 0.0
    for cut, i in enumerate(ranked, start=1):
        if relevant[i]:
            total += sum(relevant[j] for j in ranked[:cut]) / cut
    return total / n_pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copy_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    db = rng.normal(size=(12, 6))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    content = [f"c{i}" for i in range(12)]
    content[7] = "c2"  # a byte-identical twin: two relevant images for the queries of c2
    src = rng.integers(0, 12, size=9)
    q = db[src] + rng.normal(scale=0.6, size=(9, 6))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q_content = [content[s] for s in src]
    got = copy_metrics(q, db, q_content, content, top=4)
    sims = q @ db.T
    r1, aps, preds = [], [], []
    for i in range(9):
        order = sorted(range(12), key=lambda j: (-sims[i, j], j))
        rel = [content[j] == q_content[i] for j in order]
        r1.append(float(rel[0]))
        hits = [k for k, r in enumerate(rel) if r]
        aps.append(sum((n + 1) / (k + 1) for n, k in enumerate(hits)) / len(hits))
        preds += [(sims[i, j], content[j] == q_content[i]) for j in order[:4]]
    n_pos = sum(sum(c == qc for c in content) for qc in q_content)
    want_uap = _micro_ap_reference([p[0] for p in preds], [p[1] for p in preds], n_pos)
    assert got["r1"] == pytest.approx(np.mean(r1), abs=1e-12)
    assert got["map"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert got["uap"] == pytest.approx(want_uap, abs=1e-12)
    assert 0 < got["uap"] < 1  # noisy queries: neither trivial nor hopeless
    assert micro_average_precision(np.array([0.9, 0.8, 0.1]), np.array([False, True, True]), 3) == \
        pytest.approx((1 / 2 + 2 / 3) / 3)


def test_the_uniformity_term_only_sees_distinct_photos() -> None:
    groups = np.array([0, 1, 2, 3, 3])  # photos 3 and 4 are byte-identical twins
    batch = [TrainTuple(0, 0, (1, 3), views=(-1, 1, 2, -1)), TrainTuple(4, 4, (0, 2), views=(0, 1, -1, 2))]
    # rows: tuple 1 = 0 (query 0), 1 (its positive), 2 (photo 1), 3 (photo 3); tuple 2 = 4 (query: twin of 3),
    # 5 (positive), 6 (photo 0 again), 7 (photo 2): positives, the twin and the repeated photo are left out
    assert distinct_photo_rows(batch, groups) == [0, 2, 3, 7]


# ----------------------------------------------------------------------------- data
def test_plain_folder_is_self_supervised_and_twins_are_one_group(
    photo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="retrieval.train.data"):
        data = load_training_data(photo_dir)
    assert "has no group sub-folders: self-supervised training" in caplog.text
    assert data.self_supervised and len(data) == 11
    twin = data.paths.index(photo_dir / "twin_of_p03.jpg")
    p03 = data.paths.index(photo_dir / "p03.jpg")
    assert data.groups[twin] == data.groups[p03] and len(data.group_names) == 10
    assert data.group_names[data.groups[p03]] == sha256_file(photo_dir / "p03.jpg")
    # the held-out split is by content: twins on the same side, whatever the listing order
    for seed in range(6):
        train, val = split_by_photo(data, 0.3, seed=seed)
        if val is not None:
            assert not set(train.group_names) & set(val.group_names)
            assert len(train) + len(val) == 11
    keys = [data.group_names[g] for g in data.groups.tolist()]
    _, held = split_photos(keys, 0.3, 0)
    _, val = split_by_photo(data, 0.3, seed=0)
    assert val is not None and sorted(val.paths) == sorted(data.paths[i] for i in held)
    # a folder of groups stays category data unless self-supervision is asked for
    groups = photo_dir.parent / "grouped"
    for name, items in {"a": data.paths[:3], "b": data.paths[3:6]}.items():
        (groups / name).mkdir(parents=True, exist_ok=True)
        for p in items:
            (groups / name / p.name).symlink_to(p)
    assert not load_training_data(groups).self_supervised
    asked = load_training_data(groups, self_supervised=True)
    assert asked.self_supervised and len(asked) == 6


def test_collection_data_dir_gives_its_indexed_photos(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    photos = f.real_photos(4)
    (tmp_path / "uploads").mkdir()
    shutil.copyfile(photos[3], tmp_path / "uploads" / "up.jpg")
    db = open_database(f"sqlite:///{tmp_path / 'catalog.db'}")
    infos = [catalog.ImageInfo(sha256=sha256_file(p), path=str(p), size_bytes=p.stat().st_size, width=1, height=1,
                               format="JPEG") for p in photos[:3]]
    infos.append(catalog.ImageInfo(sha256=sha256_file(photos[3]), path=None, stored_path="uploads/up.jpg",
                                   size_bytes=1, width=1, height=1, format="JPEG"))
    infos.append(catalog.ImageInfo(sha256="0" * 64, path=str(tmp_path / "gone.jpg"), size_bytes=1, width=1,
                                   height=1, format="JPEG"))
    with db.session() as s:
        catalog.upsert_images(s, images=infos)
    db.engine.dispose()
    with caplog.at_level(logging.INFO):
        data = load_training_data(tmp_path)
    assert "is a collection's data directory" in caplog.text and "1 indexed image(s) have no file" in caplog.text
    assert data.self_supervised and len(data) == 4
    assert set(data.paths) == {*photos[:3], (tmp_path / "uploads" / "up.jpg").resolve()}
    assert data.group_names == tuple(sha256_file(p) for p in data.paths)  # the catalog's sha256s
    with pytest.raises(TrainingError, match="not a collection's data directory"):
        collection_photos(tmp_path / "uploads")


def test_self_supervised_runs_start_from_whitening_learned_on_copies(tmp_path: Path, photo_dir: Path) -> None:
    data = load_training_data(photo_dir)
    config = _config(tmp_path / "run", None, epochs=1, weights="random", whitening_images=100, copy_shrink=0.5,
                     queries_per_epoch=2)
    trainer = Trainer(config, data)
    assert trainer.config.whiten_method == "copies"  # auto, resolved for a self-supervised run
    init = DescriptorModel.load(tmp_path / "run" / "init.pt")
    assert init.meta.whitening is not None and "edited copies" in init.meta.whitening["learned_from"]
    want_weight = init.state_dict()["whiten.weight"].numpy()
    init.set_whitening(None)  # the same network without its projection
    params = learn_copy_whitening(init, list(data.paths), copies=2, seed=0, dim=16, shrink=0.5, batch_size=16,
                                  device="cpu", workers=1, precision="fp32")
    np.testing.assert_allclose(want_weight, params.weight, rtol=1e-3, atol=1e-4 * np.abs(params.weight).max())


# ----------------------------------------------------------------------------- mining
@pytest.mark.parametrize(("anchor_original", "negative_edit"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_mining_never_returns_the_photo_its_copy_or_a_twin(
    tmp_path: Path, init_model: Path, photo_dir: Path, anchor_original: float, negative_edit: float
) -> None:
    data = load_training_data(photo_dir)
    trainer = Trainer(_config(tmp_path / "run", init_model), data)
    seen: dict[View, np.ndarray] = {}

    def describe(views: Sequence[View], seed: int) -> np.ndarray:
        vecs = trainer.describe_views(views, seed)
        seen.update(zip(views, vecs, strict=True))
        return vecs

    tuples = selfsup_tuples(data, np.random.default_rng(4), describe, queries=11, pool_size=11, negatives=3,
                            edit_seed=99, anchor_original=anchor_original, negative_edit=negative_edit)
    assert len(tuples) == 11 and {t.query for t in tuples} == set(range(11))  # every photo an anchor once
    pool_copy = {p: c for t in tuples for p, c in zip(t.negatives, t.views[2:], strict=True)}
    pool = [(p, c) for p, c in seen if pool_copy.get(p) == c]  # the pool views met as negatives
    own_hit = 0
    for t in tuples:
        assert t.positive == t.query and t.views[1] == POSITIVE_COPY and t.views[0] != POSITIVE_COPY
        anchor = seen[(t.query, t.views[0])]
        assert all(data.groups[n] != data.groups[t.query] for n in t.negatives)  # not itself, its copy, a twin
        assert len(set(t.negatives)) == len(t.negatives) == 3
        ranked = sorted((v for v in pool if data.groups[v[0]] != data.groups[t.query]),
                        key=lambda v: -float(anchor @ seen[v]))
        first_of_group = [v[0] for k, v in enumerate(ranked)
                          if all(data.groups[u[0]] != data.groups[v[0]] for u in ranked[:k])]
        assert first_of_group[:3] == list(t.negatives)  # the three hardest other contents, one photo each
        nearest = max(pool, key=lambda v: float(anchor @ seen[v]))  # the pool view nearest, with no exclusion
        own_hit += data.groups[nearest[0]] == data.groups[t.query]
    assert own_hit >= 1  # the exclusion mattered: without it the photo's own view (or its twin) was the hardest
    if anchor_original == 1.0:  # unedited anchors and pool: the twin has the same descriptor, and is never mined
        p03, twin = data.paths.index(photo_dir / "p03.jpg"), data.paths.index(photo_dir / "twin_of_p03.jpg")
        np.testing.assert_allclose(seen[(twin, ORIGINAL)], seen[(p03, ORIGINAL)], atol=1e-5)
        assert all(twin not in t.negatives for t in tuples if t.query == p03)


# ----------------------------------------------------------------------------- fitting
def test_two_steps_lower_the_loss_on_a_fixed_batch_and_change_the_weights(
    tmp_path: Path, init_model: Path, photo_dir: Path
) -> None:
    trainer = Trainer(_config(tmp_path / "run", init_model, koleo_weight=0.05), load_training_data(photo_dir))
    batch = [TrainTuple(0, 0, (4, 6), views=(ORIGINAL, POSITIVE_COPY, 2, ORIGINAL), edit_seed=7),
             TrainTuple(5, 5, (1, 8), views=(0, POSITIVE_COPY, ORIGINAL, 2), edit_seed=7)]
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    loss0 = trainer.batch_loss(batch)
    assert trainer.batch_loss(batch) == loss0  # the edits are seeded: the same batch, the same loss
    assert loss0 > 0
    losses = [trainer.fit_batch(batch) for _ in range(2)]
    loss2 = trainer.batch_loss(batch)
    assert losses[0] == pytest.approx(loss0, rel=1e-5)
    assert loss2 < loss0, (loss0, losses, loss2)
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "whiten.weight" in changed and any(k.startswith("backbone.") for k in changed)
    assert trainer.state.step == 2


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, init_model: Path, photo_dir: Path) -> None:
    data = load_training_data(photo_dir)
    extra = {"val_fraction": 0.3, "seed": 1}
    full = Trainer(_config(tmp_path / "full", init_model, **extra), data).fit()
    Trainer(_config(tmp_path / "cut", init_model, epochs=1, **extra), data).fit()
    config = run_config(tmp_path / "cut", None, {"epochs": 2}, resume=True)
    assert config.self_supervised  # from the saved config.json
    resumed = Trainer(config, data, resume=True)
    assert resumed.state.epoch == 1 and resumed.state.step == 2
    result = resumed.fit()
    a, b = DescriptorModel.load(full.last), DescriptorModel.load(result.last)
    assert a.fingerprint == b.fingerprint  # bit-identical: same copies, same mining, same steps
    assert [h["loss"] for h in full.history] == [h["loss"] for h in result.history]
    assert [h[COPY_METRIC] for h in full.history] == [h[COPY_METRIC] for h in result.history]
    assert result.history[-1]["step"] == 4 and result.metric == COPY_METRIC


# ----------------------------------------------------------------------------- selection
def _grouped(n_groups: int, per_group: int) -> TrainingData:
    folders = sorted(p for p in f.CALTECH.iterdir() if p.is_dir())[:n_groups]
    paths = [p for folder in folders for p in sorted(folder.glob("*.jpg"))[:per_group]]
    groups = np.repeat(np.arange(len(folders)), per_group)
    return TrainingData(tuple(paths), groups, tuple(p.name for p in folders), source="test photos")


@pytest.mark.parametrize("kind", ["self-supervised", "groups"])
def test_best_is_never_worse_on_validation_than_the_starting_model(
    tmp_path: Path, init_model: Path, photo_dir: Path, kind: str
) -> None:
    if kind == "groups":
        data, extra, metric = _grouped(5, 3), {"val_fraction": 0.4, "min_val_groups": 2}, GROUP_METRIC
    else:
        data, extra, metric = load_training_data(photo_dir), {"val_fraction": 0.4}, COPY_METRIC
    # a learning rate far too high: the trained epochs validate worse than the start
    trainer = Trainer(_config(tmp_path / "run", init_model, lr=0.05, head_lr_mult=1.0, **extra), data)
    result = trainer.fit()
    history = result.history
    assert all(metric in h and "val_copy_r1" in h and "val_copy_map" in h for h in history)  # logged each epoch
    assert (GROUP_METRIC in history[0]) == (kind == "groups")
    start = history[0][metric]
    assert min(h[metric] for h in history[1:]) < start  # the case that matters did happen
    init = DescriptorModel.load(tmp_path / "run" / "init.pt")
    best = DescriptorModel.load(result.best)
    assert trainer.validate(init)[metric] == start  # epoch 0 is the starting model, validated the same way
    assert trainer.validate(best)[metric] >= start
    assert result.best_score == max(h[metric] for h in history) and result.metric == metric
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["self_supervised"] == (kind == "self-supervised")


# ----------------------------------------------------------------------------- command line and settings
def test_cli_self_supervised_flag_on_a_folder_of_groups(tmp_path: Path, init_model: Path, photo_dir: Path) -> None:
    from indexer.commands import train as command

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    for i, p in enumerate(sorted(photo_dir.glob("p0*.jpg"))[:6]):
        (tmp_path / "data" / "ab"[i % 2] / p.name).symlink_to(p)
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args([
        "train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--self-supervised", "--epochs", "1",
        "--image-size", str(SIZE), "--init-model", str(init_model), "--set", "val_fraction=0", "progress=false",
        "workers=1", "queries_per_epoch=2", "pool_size=4", "negatives=1", "batch_size=2", "precision=fp32",
    ])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["self_supervised"] is True and saved["whiten_method"] in ("copies", "pca")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and history[1]["tuples"] == 2


def test_settings_of_self_supervised_runs_are_checked() -> None:
    assert TrainConfig(self_supervised=True).resolved_whiten_method == "copies"
    assert TrainConfig().resolved_whiten_method == "pca"
    with pytest.raises(TrainingError, match="whiten_method=lw learns from groups"):
        resolve_config(None, {"self_supervised": True, "whiten_method": "lw"})
    with pytest.raises(TrainingError, match="negative_edit must be a probability"):
        resolve_config(None, {"negative_edit": 1.5})
    with pytest.raises(TrainingError, match="koleo_weight must be >= 0"):
        resolve_config(None, {"koleo_weight": -1})


def test_photo_data_needs_photos() -> None:
    with pytest.raises(TrainingError, match="no photos"):
        photo_data([], "nothing")
