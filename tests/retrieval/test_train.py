"""Triplet training: losses by hand, mining vs brute force, group split, fitting, resume, artifacts, inputs."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retrieval.errors import TrainingError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.models.whitening import learn_lw_whitening
from retrieval.train.checkpoint import load_checkpoint
from retrieval.train.config import TrainConfig, read_config_file, resolve_config
from retrieval.train.data import TrainingData, folder_groups, group_csv, load_training_data, split_by_group, triplet_csv
from retrieval.train.losses import contrastive_loss, triplet_loss
from retrieval.train.mining import TrainTuple, hardest_negatives, hardest_positives, mined_tuples, triplet_tuples
from retrieval.train.trainer import Trainer, run_config
from tests import imagefactory as f


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One torch thread: the tiny 64-px batches here gain nothing from two, and on cores shared
    with other jobs two OpenMP threads spin-waiting on each other are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# 2-D unit vectors: a=(1,0) p=(.8,.6) n1=(.6,.8) n2=(0,1) | a'=(0,1) p'=(1,0) n'=(.6,.8) + a padded slot
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
P = torch.tensor([[0.8, 0.6], [1.0, 0.0]], dtype=torch.float64)
N = torch.tensor([[[0.6, 0.8], [0.0, 1.0]], [[0.6, 0.8], [5.0, 5.0]]], dtype=torch.float64)
MASK = torch.tensor([[True, True], [True, False]])


def _photo_groups(n_groups: int = 4, per_group: int = 4) -> TrainingData:
    """Real photos, ``per_group`` from each of the first ``n_groups`` Caltech classes."""
    folders = sorted(p for p in f.CALTECH.iterdir() if p.is_dir())[:n_groups]
    paths: list[Path] = []
    groups: list[int] = []
    for g, folder in enumerate(folders):
        files = sorted(folder.glob("*.jpg"))[:per_group]
        paths += files
        groups += [g] * len(files)
    return TrainingData(tuple(paths), np.asarray(groups), tuple(p.name for p in folders), source="test photos")


@pytest.fixture(scope="module")
def init_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageNet weights, 64-px inference, PCA-whitening to 16-d learned on 16 photos (made once)."""
    model = DescriptorModel.create("efficientnet_lite0", max_side=64, scales=(1.0,))
    params = Extractor(model, precision="fp32", workers=1).learn_whitening(f.real_photos(16), 16)
    model.set_whitening(params, learned_from="16 test photos")
    return model.save(tmp_path_factory.mktemp("init") / "init.pt")


def _tiny(out: Path, init: Path | None, **extra: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "out": str(out), "init_model": str(init) if init else None, "epochs": 2, "image_size": 64, "max_side": 64,
        "scales": [1.0], "queries_per_epoch": 6, "pool_size": 12, "negatives": 2, "batch_size": 3,
        "val_fraction": 0.0, "progress": False, "whitening_images": 16, "whiten_dim": 16, "weights": "random",
        "lr": 1e-3, "precision": "fp32", "workers": 1,
    }
    settings.update(extra)
    return resolve_config(None, settings)


# ----------------------------------------------------------------------------- losses
def test_triplet_loss_matches_the_hand_computed_value() -> None:
    # squared distances: tuple 1: d(a,p) = .2^2 + .6^2 = .40, d(a,n1) = .4^2 + .8^2 = .80, d(a,n2) = 1 + 1 = 2
    #   margin .5: max(0, .5 + .40 - .80) = .10 ; max(0, .5 + .40 - 2) = 0            -> tuple loss .10
    # tuple 2: d(a',p') = 1 + 1 = 2, d(a',n') = .6^2 + .2^2 = .40 -> .5 + 2 - .40 = 2.10 (padded slot ignored)
    # mean over tuples: (.10 + 2.10) / 2 = 1.10
    got = triplet_loss(A, P, N, 0.5, mask=MASK, distance="squared")
    assert float(got) == pytest.approx(1.10, abs=1e-12)
    # plain L2: sqrt(.4) = .632456, sqrt(.8) = .894427, sqrt(2) = 1.414214
    # tuple 1: .5 + .632456 - .894427 = .238029 (n2: < 0 -> 0); tuple 2: .5 + 1.414214 - .632456 = 1.281758
    want = ((0.5 + math.sqrt(0.4) - math.sqrt(0.8)) + (0.5 + math.sqrt(2) - math.sqrt(0.4))) / 2  # = .759893
    got_l2 = triplet_loss(A, P, N, 0.5, mask=MASK, distance="euclidean")
    assert float(got_l2) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.759893, abs=1e-6)
    # without the mask, the padded slot (5, 5) is far: it adds max(0, .5 + 2 - |(-5, -4)|^2 = 41) = 0 anyway
    assert float(triplet_loss(A, P, N, 0.5)) == pytest.approx(1.10, abs=1e-12)
    # gradient flows to the anchor: d/da of the active hinge
    a = A.clone().requires_grad_(True)
    triplet_loss(a, P, N, 0.5, mask=MASK).backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_contrastive_loss_matches_the_hand_computed_value() -> None:
    # margin .7, d Euclidean. tuple 1: .5 * .40 = .20 (positive) ; negatives .894 and 1.414 > .7 -> 0 => .20
    # tuple 2: .5 * 2 = 1.0 ; negative d = sqrt(.4) = .632456 -> .5 * (.7 - .632456)^2 = .002281 => 1.002281
    # mean: (.20 + 1.002281) / 2 = .601141
    neg_term = 0.5 * (0.7 - math.sqrt(0.4)) ** 2
    want = (0.20 + 1.0 + neg_term) / 2
    got = contrastive_loss(A, P, N, 0.7, mask=MASK)
    assert float(got) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.601141, abs=1e-6)


# ----------------------------------------------------------------------------- mining
def _brute_force_negatives(q: np.ndarray, qg: np.ndarray, pool: np.ndarray, pg: np.ndarray, k: int) -> list[list[int]]:
    out = []
    for i in range(q.shape[0]):
        best: dict[int, tuple[float, int]] = {}  # group -> (similarity, pool index) of its most similar item
        for j in range(pool.shape[0]):
            if pg[j] == qg[i]:
                continue
            s = float(np.dot(q[i].astype(np.float64), pool[j].astype(np.float64)))
            if pg[j] not in best or s > best[pg[j]][0]:
                best[int(pg[j])] = (s, j)
        ranked = sorted(best.values(), key=lambda t: -t[0])
        out.append([j for _, j in ranked[:k]])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_returns_the_hardest_negative_per_group_and_never_a_positive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    pool = rng.normal(size=(200, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    qg, pg = rng.integers(0, 12, size=30), rng.integers(0, 12, size=200)
    got = hardest_negatives(q, qg, pool, pg, 5)
    want = _brute_force_negatives(q, qg, pool, pg, 5)
    for i in range(30):
        row = [int(j) for j in got[i] if j >= 0]
        assert row == want[i]
        assert all(pg[j] != qg[i] for j in row)  # never the query's group
        assert len({int(pg[j]) for j in row}) == len(row)  # at most one per group
    # fewer groups available than asked: padded with -1
    few = hardest_negatives(q[:1], np.array([0]), pool[:4], np.array([0, 1, 1, 0]), 3)
    assert few[0].tolist() == [int(1 + np.argmax(q[0] @ pool[1:3].T)), -1, -1]


def test_hardest_positive_is_the_least_similar_image_of_the_group_not_the_query() -> None:
    rng = np.random.default_rng(5)
    cand = rng.normal(size=(40, 6))
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    cg, cid = rng.integers(0, 4, size=40), np.arange(100, 140)
    qi = np.array([0, 7, 13])  # queries are candidates too: they must not pick themselves
    got = hardest_positives(cand[qi], query_ids=cid[qi], query_groups=cg[qi], cand_vecs=cand, cand_ids=cid,
                            cand_groups=cg)
    for row, i in enumerate(qi):
        same = [j for j in range(40) if cg[j] == cg[i] and j != i]
        assert got[row] == min(same, key=lambda j: float(cand[i] @ cand[j]))
    lonely = hardest_positives(cand[:1], query_ids=cid[:1], query_groups=np.array([9]), cand_vecs=cand,
                               cand_ids=cid, cand_groups=cg)
    assert lonely.tolist() == [-1]


def test_mined_tuples_hold_a_positive_of_the_group_and_negatives_of_others() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(6), 5)
    data = TrainingData(tuple(Path(f"img{i}.jpg") for i in range(30)), groups, tuple(f"g{g}" for g in range(6)))
    vecs = rng.normal(size=(30, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for hard in (False, True):
        tuples = mined_tuples(data, np.random.default_rng(1), lambda idx: vecs[idx], queries=20, pool_size=18,
                              negatives=3, hard_positives=hard, positive_candidates=4)
        assert len(tuples) == 20
        for t in tuples:
            assert t.positive != t.query and groups[t.positive] == groups[t.query]
            assert all(groups[n] != groups[t.query] for n in t.negatives)
            assert len({int(groups[n]) for n in t.negatives}) == len(t.negatives) >= 1
    # listed triplets plus mined negatives: never the anchor's group, never the listed negative's group again
    trip = np.array([[0, 1, 5], [10, 12, 20], [25, 29, 3]])
    tdata = TrainingData(data.paths, groups, data.group_names, triplets=trip)
    for t in triplet_tuples(tdata, np.random.default_rng(0), 3, lambda idx: vecs[idx], pool_size=30,
                            extra_negatives=2):
        listed = int(trip[trip[:, 0] == t.query][0, 2])
        assert t.negatives[0] == listed and len(t.negatives) == 3
        assert len({int(groups[n]) for n in t.negatives}) == 3 and groups[t.query] not in groups[list(t.negatives)]


# ----------------------------------------------------------------------------- split
@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.2, 1), (0.5, 7), (0.1, 3)])
def test_split_never_splits_a_group(fraction: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 15, size=120)
    names = tuple(f"g{g}" for g in range(15))
    data = TrainingData(tuple(Path(f"{i}.jpg") for i in range(120)), groups, names)
    train, val = split_by_group(data, fraction, seed=seed)
    assert val is not None
    train_names, val_names = set(train.labels), set(val.labels)
    assert not train_names & val_names
    assert len(train) + len(val) == 120
    for name in val_names:  # every image of a validation group is in validation
        assert sum(lab == name for lab in val.labels) == sum(names[g] == name for g in groups)
    assert len(val_names) == max(2, round(fraction * len(set(groups.tolist()))))
    again, _ = split_by_group(data, fraction, seed=seed)
    assert again.paths == train.paths  # seeded


def test_split_with_triplets_keeps_only_training_triplets(tmp_path: Path) -> None:
    photos = f.real_photos(8)
    rows = [(photos[0], photos[1], photos[6]), (photos[2], photos[3], photos[7]), (photos[4], photos[5], photos[0])]
    path = _write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], [[str(x) for x in r] for r in rows])
    data = triplet_csv(path)
    assert len(data.group_names) == 5  # three anchor-positive pairs + the two negative-only images
    train, val = split_by_group(data, 0.34, min_val_groups=1, seed=0)
    assert val is not None and train.triplets is not None
    val_paths = set(val.paths)
    for a, p, n in train.triplets.tolist():
        assert not {train.paths[a], train.paths[p], train.paths[n]} & val_paths


# ----------------------------------------------------------------------------- training
def test_fitting_a_fixed_batch_changes_the_weights_and_lowers_the_loss(tmp_path: Path, init_model: Path) -> None:
    data = _photo_groups(3, 3)
    trainer = Trainer(_tiny(tmp_path / "run", init_model, augment=False, lr=1e-4), data)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    batch = [TrainTuple(0, 1, (3, 6)), TrainTuple(3, 4, (0, 7)), TrainTuple(6, 8, (2, 5))]
    loss0 = trainer.batch_loss(batch)
    assert loss0 > 0  # fresh model: the margin is violated somewhere
    losses = [trainer.fit_batch(batch) for _ in range(2)]
    loss2 = trainer.batch_loss(batch)
    assert losses[0] == pytest.approx(loss0, rel=1e-5)
    assert loss2 < loss0, (loss0, losses, loss2)
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "whiten.weight" in changed and any(k.startswith("backbone.") for k in changed)
    assert trainer.state.step == 2
    # BatchNorm stays frozen: running statistics untouched by the training forward passes
    assert not [k for k in changed if k.endswith(("running_mean", "running_var"))]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, init_model: Path) -> None:
    data = _photo_groups(4, 4)
    full = Trainer(_tiny(tmp_path / "full", init_model), data).fit()
    Trainer(_tiny(tmp_path / "cut", init_model, epochs=1), data).fit()
    config = run_config(tmp_path / "cut", None, {"epochs": 2}, resume=True)
    resumed = Trainer(config, data, resume=True)
    assert resumed.state.epoch == 1 and resumed.state.step == 2  # 6 tuples / batch 3 = 2 steps per epoch
    cut_opt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["optimizer"]
    live = resumed.optimizer.state_dict()
    assert cut_opt["param_groups"] == live["param_groups"]
    for key, st in cut_opt["state"].items():
        assert all(torch.equal(st[n], live["state"][key][n]) for n in st)
    result = resumed.fit()
    a, b = DescriptorModel.load(full.last), DescriptorModel.load(result.last)
    assert a.fingerprint == b.fingerprint  # bit-identical continuation (seeded per epoch)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in result.history]
    assert result.history[-1]["step"] == 4
    with pytest.raises(TrainingError, match="cannot change"):
        run_config(tmp_path / "cut", None, {"lr": 0.5}, resume=True)
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(_tiny(tmp_path / "cut", init_model), data)  # a fresh run never overwrites an existing one


def test_saved_artifacts_load_and_differ_from_the_initial_model(tmp_path: Path) -> None:
    data = _photo_groups(5, 4)
    # from scratch: random backbone, GeM, whitening learned by the trainer on the training images
    # saved models are the weight-space ensemble halfway between the start and the trained weights
    config = _tiny(tmp_path / "run", None, epochs=1, val_fraction=0.4, pooling="gem", wise_alpha=0.5)
    result = Trainer(config, data).fit()
    init = DescriptorModel.load(tmp_path / "run" / "init.pt")
    last = DescriptorModel.load(result.last)
    best = DescriptorModel.load(result.best)
    assert last.fingerprint != init.fingerprint
    raw = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    for key in ("whiten.weight", "pool.p", "backbone.body.model.conv_head.weight"):
        want = 0.5 * init.state_dict()[key] + 0.5 * raw[key]
        torch.testing.assert_close(last.state_dict()[key], want, rtol=0, atol=1e-6)
        assert not torch.equal(raw[key], init.state_dict()[key])
    assert best.fingerprint in (init.fingerprint, last.fingerprint)  # epoch 0 (initial) or epoch 1
    assert last.meta.pooling == "gem" and last.meta.whitening is not None and last.meta.dim == 16
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1] and all("val_map" in h for h in history)
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["margin"] == 0.1 and saved["pooling"] == "gem"
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode():
        assert last(x).shape == (1, 16)


def test_learned_whitening_initializes_the_projection_from_the_groups(tmp_path: Path) -> None:
    data = _photo_groups(4, 4)
    config = _tiny(tmp_path / "run", None, epochs=1, whiten_method="lw", lw_shrink=0.5, whitening_images=100)
    Trainer(config, data).fit()
    init = DescriptorModel.load(tmp_path / "run" / "init.pt")
    assert init.meta.whitening is not None and "learned whitening (lw)" in init.meta.whitening["learned_from"]
    want_weight = init.state_dict()["whiten.weight"].numpy()
    init.set_whitening(None)  # the same network without its projection: the descriptors it was learned from
    descs = Extractor(init, precision="fp32", workers=1).extract(list(data.paths))
    params = learn_lw_whitening(descs, data.groups, 16, shrink=0.5)
    np.testing.assert_allclose(want_weight, params.weight, rtol=1e-3, atol=1e-4 * np.abs(params.weight).max())


# ----------------------------------------------------------------------------- inputs
def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_group_csv_relative_paths_and_single_image_groups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    photos = f.real_photos(5)
    for i, p in enumerate(photos):
        (tmp_path / f"p{i}.jpg").symlink_to(p)
    path = _write_csv(tmp_path / "g.csv", ["file", "label"],
                      [["p0.jpg", "a"], ["p1.jpg", "a"], ["p2.jpg", "b"], ["p3.jpg", "b"], ["p4.jpg", "c"]])
    with caplog.at_level(logging.WARNING):
        data = load_training_data(path, path_column="file", group_column="label")
    assert data.group_names == ("a", "b") and len(data) == 4
    assert "group 'c' has only 1 image" in caplog.text


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["path", "grp"], [["x.jpg", "a"]], r"missing column\(s\) \['group'\]; the header has \['path', 'grp'\]"),
        (["path", "group"], [["nope.jpg", "a"], ["nope2.jpg", "a"]], r"2 listed image\(s\) do not exist: line 2"),
        (["path", "group"], [["p0.jpg", ""]], r"line 2: empty value in column\(s\) \['group'\]"),
        (["path", "group"], [], "no data rows"),
        (["path", "group"], [["p0.jpg", "a"], ["p0.jpg", "b"]], "belongs to one group"),
        (["path", "group"], [["p0.jpg", "a"], ["p1.jpg", "b"]], "no group has at least 2 images"),
    ],
)
def test_bad_group_csv_rows_give_clear_errors(tmp_path: Path, header: list[str], rows: list[list[str]],
                                              message: str) -> None:
    for i, p in enumerate(f.real_photos(2)):
        (tmp_path / f"p{i}.jpg").symlink_to(p)
    path = _write_csv(tmp_path / "g.csv", header, rows)
    with pytest.raises(TrainingError, match=message):
        group_csv(path)


def test_bad_triplet_csv_rows_give_clear_errors(tmp_path: Path) -> None:
    a, b, c, d = (str(p) for p in f.real_photos(4))
    same = _write_csv(tmp_path / "same.csv", ["anchor", "positive", "negative"], [[a, a, b]])
    with pytest.raises(TrainingError, match="three different images"):
        triplet_csv(same)
    contradiction = _write_csv(tmp_path / "c.csv", ["anchor", "positive", "negative"], [[a, b, c], [b, c, d]])
    with pytest.raises(TrainingError, match=r"line 2: the negative .* is also a positive"):
        triplet_csv(contradiction)
    missing = _write_csv(tmp_path / "m.csv", ["anchor", "positive", "negative"], [[a, b, "/no/such.jpg"]])
    with pytest.raises(TrainingError, match=r"do not exist: line 2: /no/such.jpg"):
        load_training_data(missing)  # auto-detected as triplets from the header
    with pytest.raises(TrainingError, match=r"missing column\(s\) \['negative'\]"):
        triplet_csv(_write_csv(tmp_path / "h.csv", ["anchor", "positive"], [[a, b]]))


def test_folder_of_groups_skips_small_groups_and_refuses_empty_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = f.real_photos(5)
    for name, items in {"cat": photos[:2], "dog": photos[2:4], "lonely": photos[4:]}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i, p in enumerate(items):
            (tmp_path / "data" / name / f"{i}.jpg").symlink_to(p)
    with caplog.at_level(logging.WARNING):
        data = folder_groups(tmp_path / "data")
    assert data.group_names == ("cat", "dog") and "lonely has 1 image(s); skipped" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no group folder with at least 2 images"):
        folder_groups(tmp_path / "empty")
    with pytest.raises(TrainingError, match="does not exist"):
        load_training_data(tmp_path / "missing")


def test_config_layers_defaults_file_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 3, "lr": 1e-4, "loss": "contrastive"}))
    cfg = resolve_config(tmp_path / "c.json", ["epochs=5", "freeze=[\"backbone.body\"]", "whiten_dim=null"])
    got = (cfg.epochs, cfg.lr, cfg.loss, cfg.freeze, cfg.whiten_dim)
    assert got == (5, 1e-4, "contrastive", ["backbone.body"], None)
    assert cfg.margin == 0.7 and cfg.image_size == TrainConfig().image_size  # contrastive default margin
    (tmp_path / "c.yaml").write_text("margin: 0.2\nhard_positives: true\n")
    assert read_config_file(tmp_path / "c.yaml") == {"margin": 0.2, "hard_positives": True}
    with pytest.raises(TrainingError, match=r"unknown setting\(s\) \['epoch'\]"):
        resolve_config(None, ["epoch=3"])
    with pytest.raises(TrainingError, match="epochs must be int"):
        resolve_config(None, ["epochs=three"])
    with pytest.raises(TrainingError, match="loss must be one of triplet, contrastive"):
        resolve_config(None, ["loss=hinge"])


def test_cli_trains_from_a_triplet_csv(tmp_path: Path, init_model: Path) -> None:
    from indexer.commands import train as command

    photos = f.real_photos(8)
    rows = [[str(photos[i]), str(photos[i + 1]), str(photos[(i + 3) % 8])] for i in range(0, 8, 2)]
    path = _write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative"], rows)
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    command.register(subparsers)
    help_text = subparsers.choices["train"].format_help()
    assert "--resume" in help_text and "imsearch train ~/photos/landmarks --out runs/lm1" in help_text
    args = parser.parse_args([
        "train", str(path), "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "64", "--margin", "0.2",
        "--init-model", str(init_model), "--set", "val_fraction=0",
        "progress=false", "workers=1", "mine_triplets=true", "negatives=2", "pool_size=8",
    ])
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["margin"] == 0.2 and saved["csv_format"] == "auto"
    assert DescriptorModel.load(tmp_path / "run" / "best.pt").meta.dim == 16
