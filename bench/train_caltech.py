"""Does triplet training help on UNSEEN classes? Caltech-101 (50 classes), off-the-shelf vs trained.

Protocol: the 50 class folders of ``caltech101-half`` in sorted order are split by
alternation: classes 0, 2, 4, ... (25) are the TRAINING half, classes 1, 3, 5, ... (25) the
EVALUATION half. The reference is the off-the-shelf model: ImageNet weights (offline
``efficientnet_lite0``), R-MAC (GeM with ``--pooling gem``), PCA-whitening (``--whitening lw``: learned
whitening) learned on the training half. The trained
model starts from it and is fine-tuned end to end with the triplet loss and hard negatives
on the training half (its validation = a few held-out training classes). Both are scored
on the evaluation half plus the distractors: every evaluation image is a query against all
the other images; the images of its class are relevant (``evaluate_descriptors``).

Three models are scored: the off-the-shelf reference; the raw fine-tuned weights after the
last epoch; and ``best.pt``, the saved model (best validation epoch), which with the default
``wise_alpha=0.5`` is the weight-space ensemble halfway between the start and the fine-tuned
weights (Wortsman et al. 2022). Both models use the same inference size and scales.

    /tmp/venv/bin/python -m bench.train_caltech [--epochs 10] [--whitening lw] [--pooling gem] [--set lr=2e-5 ...]

Prints mAP and mP@10 of each model, the differences (points) and the time of each stage.
Sets OMP_WAIT_POLICY=PASSIVE (unless set): on CPU cores shared with other jobs, busy-waiting
OpenMP threads make training several times slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see above)

import argparse
import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.evaluate import IMAGE_EXTENSIONS, EvalResult, evaluate_descriptors
from retrieval.models.descriptor import DEFAULT_MAX_SIDE, DEFAULT_SCALES, DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.models.whitening import learn_lw_whitening
from retrieval.train.checkpoint import load_checkpoint
from retrieval.train.config import resolve_config
from retrieval.train.data import TrainingData
from retrieval.train.trainer import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = SHARED / "caltech101-half"
DEFAULT_DISTRACTORS = SHARED / "caltech101-distractors"
#: sized for the ~40 min budget on 2 shared CPU cores (overridable with --set)
_EFF = "backbone.body.model."
BENCH_SETTINGS = [
    "queries_per_epoch=200", "pool_size=500", "negatives=3", "batch_size=4", "val_fraction=0.12", "lr=4e-5",
    "wise_alpha=0.5",
    # the high-resolution early layers stay fixed: about half the backward cost on CPU
    "freeze=" + str([_EFF + n for n in ("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2")]).replace("'", '"'),
]


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def halves(root: Path) -> tuple[list[Path], list[Path]]:
    classes = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)
    return classes[0::2], classes[1::2]


def grouped(classes: list[Path]) -> TrainingData:
    paths: list[Path] = []
    groups: list[int] = []
    for g, folder in enumerate(classes):
        files = images(folder)
        paths += files
        groups += [g] * len(files)
    return TrainingData(tuple(paths), np.asarray(groups, dtype=np.int64), tuple(c.name for c in classes),
                        source="caltech101 training half")


def evaluation_set(classes: list[Path], distractor_dir: Path) -> tuple[list[Path], list[str | None]]:
    """Every image of the evaluation classes (labelled) and the distractors (label None)."""
    paths: list[Path] = []
    labels: list[str | None] = []
    for folder in classes:
        files = images(folder)
        paths += files
        labels += [folder.name] * len(files)
    distractors = images(distractor_dir)
    return paths + distractors, labels + [None] * len(distractors)


def evaluate(model: DescriptorModel, paths: list[Path], labels: list[str | None], batch: int) -> EvalResult:
    vecs = Extractor(model, batch_size=batch).extract(paths)
    return evaluate_descriptors(vecs, labels, ks=(1, 10))


def raw_weights(run: Path) -> DescriptorModel:
    """The fine-tuned weights of the last epoch, as trained (the checkpoint's, before any ensembling)."""
    model = DescriptorModel.load(run / "last.pt")
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt")["model"])
    model.invalidate_fingerprint()
    return model


def at_default_inference(model: DescriptorModel) -> DescriptorModel:
    """The same weights, run at the default inference size and scales (what `imsearch index` uses)."""
    model.meta = dataclasses.replace(model.meta, max_side=DEFAULT_MAX_SIDE, scales=tuple(DEFAULT_SCALES))
    model.invalidate_fingerprint()
    return model


def row(name: str, res: EvalResult, ref: EvalResult | None) -> str:
    cells = [f"{100 * res.map:.2f}", f"{100 * res.mp_at_k[10]:.2f}"]
    if ref is not None:
        cells += [f"{100 * (res.map - ref.map):+.2f}", f"{100 * (res.mp_at_k[10] - ref.mp_at_k[10]):+.2f}",
                  f"x{res.map / ref.map:.3f}"]
    else:
        cells += ["", "", "x1"]
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--distractors", type=Path, default=DEFAULT_DISTRACTORS)
    ap.add_argument("--out", type=Path, default=Path("/tmp/imsearch-bench-train-caltech"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--pooling", choices=("rmac", "gem"), default="rmac",
                    help="pooling of the off-the-shelf and trained models (the default model is always R-MAC)")
    ap.add_argument("--max-side", type=int, default=320, help="inference size of every model")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.7071], help="inference scales")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--whiten-power", type=float, default=0.0,
                    help="eigenvalue power of the initial PCA-whitening (0.5 = full whitening, 0 = PCA rotation)")
    ap.add_argument("--whitening", choices=("pca", "lw"), default="pca",
                    help="initial projection: PCA-whitening, or learned from the training classes (Radenović et al.)")
    ap.add_argument("--lw-shrink", type=float, default=0.75, help="--whitening lw: shrinkage towards the identity")
    ap.add_argument("--image-size", type=int, default=224, help="training crop size (and mining size)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more training settings (see imsearch train --help)")
    ap.add_argument("--batch", type=int, default=16, help="inference batch size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("retrieval.models.extract", "retrieval.models.descriptor", "retrieval.models.backbones"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    policy = os.environ["OMP_WAIT_POLICY"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={policy}")

    train_classes, eval_classes = halves(args.data)
    data = grouped(train_classes)
    eval_paths, eval_labels = evaluation_set(eval_classes, args.distractors)
    n_queries = sum(lab is not None for lab in eval_labels)
    print(f"training half: {len(train_classes)} classes, {len(data)} images")
    print(f"evaluation half: {len(eval_classes)} classes, {n_queries} queries, "
          f"+ {len(eval_paths) - n_queries} distractors")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    default = evaluate(DescriptorModel.create(args.backbone, name="default"), eval_paths, eval_labels, args.batch)
    times["evaluate the default model"] = time.perf_counter() - t0
    print(f"default model (max side {DEFAULT_MAX_SIDE}, scales {DEFAULT_SCALES}, no whitening): "
          f"{default.summary()}", flush=True)

    t0 = time.perf_counter()
    base = DescriptorModel.create(args.backbone, pooling=args.pooling, max_side=args.max_side, scales=args.scales,
                                  name="off-the-shelf")
    plain = evaluate(DescriptorModel.create(args.backbone, pooling=args.pooling, max_side=args.max_side,
                                            scales=args.scales), eval_paths, eval_labels, args.batch)
    print(f"off-the-shelf {args.pooling} without whitening (max side {args.max_side}): {plain.summary()}", flush=True)
    if args.whitening == "lw":
        train_descs = Extractor(base, batch_size=args.batch).extract(list(data.paths))
        params = learn_lw_whitening(train_descs, data.groups, shrink=args.lw_shrink)
    else:
        params = Extractor(base, batch_size=args.batch).learn_whitening(list(data.paths), power=args.whiten_power)
    base.set_whitening(params, learned_from=f"{args.whitening}, caltech101 training half ({len(data)} images)")
    base_path = base.save(args.out / "off_the_shelf.pt")
    times["whitening (training half)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = evaluate(base, eval_paths, eval_labels, args.batch)
    times["evaluate off-the-shelf"] = time.perf_counter() - t0
    print(f"off-the-shelf: {before.summary()}", flush=True)

    t0 = time.perf_counter()
    overrides = [f"init_model={base_path}", f"out={args.out / 'run'}", f"epochs={args.epochs}",
                 f"image_size={args.image_size}", "progress=false", *BENCH_SETTINGS, *args.overrides]
    config = resolve_config(None, overrides)
    result = Trainer(config, data).fit()
    times["training"] = time.perf_counter() - t0
    nan = float("nan")
    for h in result.history:
        loss, val = h["loss"], h.get("val_map")
        print(f"  epoch {h['epoch']:2d}  loss {loss if loss is not None else nan:.4f}  "
              f"val mAP {val if val is not None else nan:.4f}  "
              f"val copies R@1 {h.get('val_copy_r1', nan):.4f} μAP {h.get('val_copy_uap', nan):.4f}  "
              f"({h['seconds']:.0f} s)")

    t0 = time.perf_counter()
    raw = evaluate(raw_weights(result.out), eval_paths, eval_labels, args.batch)
    times["evaluate raw fine-tuned"] = time.perf_counter() - t0
    print(f"fine-tuned weights, epoch {result.history[-1]['epoch']}: {raw.summary()}", flush=True)
    t0 = time.perf_counter()
    after = evaluate(DescriptorModel.load(result.best), eval_paths, eval_labels, args.batch)
    times["evaluate best.pt"] = time.perf_counter() - t0
    print(f"best.pt (epoch {result.best_epoch}, wise_alpha {config.wise_alpha}): {after.summary()}")
    t0 = time.perf_counter()
    after_default = evaluate(at_default_inference(DescriptorModel.load(result.best)), eval_paths, eval_labels,
                             args.batch)
    times["evaluate best.pt at the default inference size"] = time.perf_counter() - t0
    print(f"best.pt at max side {DEFAULT_MAX_SIDE}, scales {DEFAULT_SCALES}: {after_default.summary()}")
    default_same = None
    if args.pooling != "rmac":  # the like-for-like reference: the same pooling off the shelf, default inference
        t0 = time.perf_counter()
        default_same = evaluate(DescriptorModel.create(args.backbone, pooling=args.pooling), eval_paths, eval_labels,
                                args.batch)
        times[f"evaluate the default model with {args.pooling}"] = time.perf_counter() - t0
        print(f"default model with {args.pooling} pooling: {default_same.summary()}")

    print("\n| model (25 unseen classes + 467 distractors) | mAP | mP@10 | d mAP | d mP@10 | mAP ratio |")
    print("|---|---|---|---|---|---|")
    whitened = f"PCA-whitened (power {args.whiten_power})" if args.whitening == "pca" else \
        f"learned whitening (shrink {args.lw_shrink})"
    print(row(f"off-the-shelf {args.pooling}, {whitened} on training half", before, None))
    print(row(f"off-the-shelf {args.pooling}, no whitening", plain, before))
    print(row(f"fine-tuned, raw weights (epoch {result.history[-1]['epoch']})", raw, before))
    print(row(f"best.pt: epoch {result.best_epoch}, wise_alpha {config.wise_alpha}", after, before))
    inference = f"max side {DEFAULT_MAX_SIDE}, {len(DEFAULT_SCALES)} scales"
    print(row(f"default model, no whitening ({inference}: what `imsearch index` uses)", default, None))
    print(row(f"best.pt at {inference}", after_default, default))
    if default_same is not None:
        print(row(f"default model with {args.pooling} pooling, no whitening ({inference})", default_same, default))
        print(row(f"best.pt at {inference}, vs the line above", after_default, default_same))
    print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")


if __name__ == "__main__":
    main()
