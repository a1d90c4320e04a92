"""Copy detection on photos held out from training, and category mAP, for several descriptor models.

The photos of ``../shared/data/caltech101-half`` are split by photo (``retrieval.edits.split_photos``
on ``class/file``, seeded): the held-out photos' seeded STRONG edited copies (``retrieval.edits``,
a seed no training uses) are the queries, searched among ALL originals plus the distractors of
``caltech101-distractors``; the original is the one right answer. Reported per model: copy R@1,
R@10, and µAP (DISC21 / SSCD micro-average precision: every query's top-10 (query, result, score)
pooled, ranked by score, ties counted pessimistically, recall over all queries); then category mAP
and mP@10 on the same database (every labelled photo a query against all the others).

Models: ``default`` (``DescriptorModel.create()``, no whitening), ``pca`` (PCA-whitening learned
from the whole database, no labels: what ``imsearch reindex --learn-whitening`` gives today),
``lw-copies`` (``retrieval.train.copy_whitening``: learned whitening from the TRAINING photos and
their seeded edits, groups = photos), and each ``--model PATH`` artifact. Models that share the
default backbone's weights share one backbone pass: every image's per-scale R-MAC region vectors
are kept (float16) and each head (whitening -> L2 -> sum -> L2, then the multi-scale sum) is
applied afterwards; an artifact with other weights gets its own pass.

``--tune`` chooses LW's input (global descriptors or R-MAC regions) and shrink WITHOUT the
held-out photos: the training split is split again (fit / validation, another seed), and the
held-out photos leave the database altogether.

    python -m bench.copies                            # all 4,487 photos + 467 distractors (slow on 2 cores)
    python -m bench.copies --limit 10                 # 10 photos per class
    python -m bench.copies --model /tmp/ssl/best.pt   # also a saved model
    python -m bench.copies --tune --limit 30          # LW input and shrink, on the training split only
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from retrieval.edits import split_photos
from retrieval.evaluate import evaluate_descriptors, folder_dataset, rank_by_similarity
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.pooling import l2n
from retrieval.models.whitening import CovarianceAccumulator, WhiteningParams, learn_lw_whitening, learn_pca_whitening
from retrieval.progress import Progress
from retrieval.train.copy_whitening import (
    COPY_VECTORS,
    DEFAULT_COPIES,
    DEFAULT_COPY_SEED,
    DEFAULT_COPY_SHRINK,
    DEFAULT_COPY_VECTORS,
    iter_copy_items,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: fraction of the photos held out (their copies are the queries)
HELD_OUT = 0.2
#: edited copies per held-out photo
QUERY_COPIES = 2
#: the queries' edits use seed + this: never a training seed (training copies use DEFAULT_COPY_SEED)
QUERY_SEED_OFFSET = 1000
#: results per query counted by µAP (as DISC21)
TOP_K = 10
TUNE_SHRINKS = (0.1, 0.25, 0.5, 0.75, 0.9)

logger = logging.getLogger("bench.copies")

Key = tuple[str, int, int]  # ("db", image, 0) | ("fit", image, copy) | ("q", image, copy); image = db index
#: a head: whitening ``y = W x + b`` applied to each region vector, or None
Head = tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class Setup:
    """The database and which of its photos the queries and the learned whitening come from."""

    db_paths: list[Path]
    db_labels: list[str | None]
    fit: list[int]  # db indices of the photos LW learns from (training split)
    held: list[int]  # db indices of the photos whose copies are the queries
    note: str


# --------------------------------------------------------------------------- metrics
def micro_average_precision(scores: np.ndarray, correct: np.ndarray, n_positives: int) -> float:
    """µAP of pooled predictions: rank all by score (ties: wrong ones first), AP over ``n_positives``."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = np.asarray(correct, dtype=bool).ravel()
    if s.shape != c.shape:
        raise ValueError(f"{s.size} scores but {c.size} correctness flags")
    if n_positives < 1:
        raise ValueError(f"n_positives must be >= 1, got {n_positives}")
    order = np.lexsort((c, -s))  # by score descending, then False before True
    hits = c[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].sum() / n_positives)


def copy_metrics(queries: np.ndarray, db: np.ndarray, truth: np.ndarray, k: int = TOP_K) -> tuple[float, float, float]:
    """(R@1, R@k, µAP over the top k) of copies whose original is ``db[truth[i]]``."""
    ranks = rank_by_similarity(queries, db, top=k)
    scores = np.einsum("qd,qkd->qk", queries.astype(np.float64), db[ranks].astype(np.float64))
    correct = ranks == truth[:, None]
    return (float(correct[:, 0].mean()), float(correct.any(axis=1).mean()),
            micro_average_precision(scores, correct, len(queries)))


# --------------------------------------------------------------------------- the shared backbone pass
class RegionStore:
    """Feature hook: each item's L2-normalized R-MAC region vectors per scale, kept in float16."""

    def __init__(self, model: DescriptorModel) -> None:
        if model.meta.pooling != "rmac":
            raise SystemExit(f"the shared pass keeps R-MAC regions; this model pools with {model.meta.pooling}")
        self.model = model
        self.n_scales = len(model.meta.scales)
        self.data: dict[Hashable, dict[int, np.ndarray]] = defaultdict(dict)

    def __call__(self, feats: torch.Tensor, keys: list[Hashable], scales: list[int]) -> None:
        vecs = self.model.whitening_vectors(feats)
        per_image = vecs.reshape(len(keys), -1, vecs.shape[-1])
        for key, scale, v in zip(keys, scales, per_image, strict=True):
            self.data[key][scale] = v.numpy().astype(np.float16)

    def regions(self, key: Hashable) -> np.ndarray:
        """All region vectors of an item (every scale), float32."""
        return np.concatenate([self.data[key][s] for s in range(self.n_scales)]).astype(np.float32)

    def descriptors(self, keys: Sequence[Hashable], head: Head, chunk: int = 256) -> np.ndarray:
        """What the model with this head gives: per scale l2n(sum_r l2n(W r + b)), summed over scales, l2n."""
        out = []
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            mats, seg = [], []
            for i, key in enumerate(part):
                for s in range(self.n_scales):
                    arr = self.data[key][s]
                    mats.append(arr)
                    seg.append(np.full(len(arr), i * self.n_scales + s))
            r = torch.from_numpy(np.concatenate(mats).astype(np.float32))
            if head is not None:
                r = l2n(torch.addmm(head[1], r, head[0].T))
            per_scale = torch.zeros(len(part) * self.n_scales, r.shape[1]).index_add_(
                0, torch.from_numpy(np.concatenate(seg)), r
            )
            out.append(l2n(l2n(per_scale).view(len(part), self.n_scales, -1).sum(dim=1)).numpy())
        return np.concatenate(out)


def copy_items(
    paths: Sequence[Path], photos: Sequence[int], tag: str, copies: int, seed: int, decode_side: int, workers: int
) -> Iterator[ExtractItem]:
    """Items ``(tag, db index, j)`` for copies ``j = 1..copies`` of ``paths[i]`` for each i in ``photos``."""
    failed: list[int] = []
    for item in iter_copy_items([paths[i] for i in photos], copies=copies, seed=seed, max_side=decode_side,
                                workers=workers, originals=False, failed=failed):
        k, j = cast(tuple[int, int], item.key)
        yield ExtractItem((tag, photos[k], j), item.source)
    if failed:
        raise SystemExit(f"cannot read {paths[photos[failed[0]]]}: every photo of the bench must decode")


def run_pass(extractor: Extractor, items: Iterable[ExtractItem], total: int, desc: str) -> dict[Hashable, np.ndarray]:
    """Run every item; returns each item's descriptor (the hook, if any, keeps what it needs)."""
    out: dict[Hashable, np.ndarray] = {}
    t0 = time.perf_counter()
    with Progress(total, desc=desc, unit="images", logger=logger) as progress:
        for res in extractor.iter_extract(items):
            if not res.ok or res.descriptor is None:
                raise SystemExit(f"cannot describe {res.key}: {res.error}")
            out[res.key] = res.descriptor
            progress.update()
    print(f"{desc}: {len(out)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


# --------------------------------------------------------------------------- heads
def head_of(params: WhiteningParams) -> Head:
    """The whitening layer's weight and bias (``b = -W mean``), as :class:`Whitening` builds them."""
    weight = torch.from_numpy(params.weight.astype(np.float32))
    return weight, torch.from_numpy((-(params.weight @ params.mean)).astype(np.float32))


def pca_head(store: RegionStore, db_keys: Sequence[Key]) -> Head:
    acc = CovarianceAccumulator(store.model.meta.channels)
    for start in range(0, len(db_keys), 256):
        acc.update(np.concatenate([store.regions(k) for k in db_keys[start : start + 256]]))
    return head_of(learn_pca_whitening(acc))


def lw_data(store: RegionStore, photos: Sequence[int], copies: int, vectors: str) -> tuple[np.ndarray, np.ndarray]:
    """Unwhitened vectors of each photo then its copies, and each row's group (the photo)."""
    keys: list[Key] = [k for i in photos for k in [("db", i, 0), *(("fit", i, j) for j in range(1, copies + 1))]]
    if vectors == "global":
        return store.descriptors(keys, None), np.repeat(np.asarray(photos), copies + 1)
    parts = [store.regions(k) for k in keys]
    return np.concatenate(parts), np.concatenate([np.full(len(p), k[1]) for p, k in zip(parts, keys, strict=True)])


def shares_backbone(model: DescriptorModel, base: DescriptorModel) -> bool:
    """Same input handling, R-MAC and backbone weights: the stored region vectors serve it."""
    a, b = model.meta, base.meta
    same_meta = (a.backbone, a.max_side, a.scales, a.mean, a.std, a.pooling, a.pooling_params) == (
        b.backbone, b.max_side, b.scales, b.mean, b.std, b.pooling, b.pooling_params)
    if not same_meta:
        return False
    mine, theirs = model.backbone.state_dict(), base.backbone.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def artifact_head(model: DescriptorModel) -> Head:
    if model.whiten is None:
        return None
    return model.whiten.weight.detach().float().cpu(), model.whiten.bias.detach().float().cpu()


# --------------------------------------------------------------------------- set-up
def build_setup(args: argparse.Namespace) -> Setup:
    root = SHARED / "caltech101-half"
    data = folder_dataset(root, distractor_dirs=[SHARED / "caltech101-distractors"])
    seen: dict[str | None, int] = defaultdict(int)
    keep = []
    for i, label in enumerate(data.labels):
        cap = args.distractors if label is None else args.limit
        if cap is None or seen[label] < cap:
            keep.append(i)
            seen[label] += 1
    paths = [data.paths[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    photos = [i for i, lb in enumerate(labels) if lb is not None]
    distractors = [i for i, lb in enumerate(labels) if lb is None]
    keys = [p.relative_to(root).as_posix() for p in (paths[i] for i in photos)]
    kept, held = split_photos(keys, args.held_out, args.seed)
    train = [photos[i] for i in kept]
    if not args.tune:
        note = (f"split {len(train)} training / {len(held)} held-out photos ({args.held_out:.0%}, seed {args.seed}); "
                f"database: all {len(photos)} photos + {len(distractors)} distractors")
        return Setup(paths, labels, train, [photos[i] for i in held], note)
    fit_i, val_i = split_photos([keys[i] for i in kept], args.held_out, args.seed + 1)
    db = train + distractors  # the held-out photos are not used at all
    pos = {old: new for new, old in enumerate(db)}
    note = (f"TUNE on the training split only ({len(train)} photos; the {len(held)} held-out photos unused): "
            f"fit {len(fit_i)} / validation {len(val_i)} photos (seed {args.seed + 1}); "
            f"database: the {len(train)} training photos + {len(distractors)} distractors")
    return Setup([paths[i] for i in db], [labels[i] for i in db], [pos[train[i]] for i in fit_i],
                 [pos[train[i]] for i in val_i], note)


def lw_photos(setup: Setup, count: int | None, seed: int) -> list[int]:
    """The photos LW learns from: the training split, or a seeded sample of ``count`` of it."""
    if count is None or count >= len(setup.fit):
        return list(setup.fit)
    pick = np.random.default_rng([seed, 4099]).choice(len(setup.fit), size=count, replace=False)
    return sorted(setup.fit[i] for i in pick.tolist())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--held-out", type=float, default=HELD_OUT, help="fraction of photos held out (%(default)s)")
    p.add_argument("--copies", type=int, default=QUERY_COPIES, help="query copies per held-out photo (%(default)s)")
    p.add_argument("--train-copies", type=int, default=DEFAULT_COPIES,
                   help="copies per training photo for LW (%(default)s)")
    p.add_argument("--lw-photos", type=int, default=None,
                   help="learn LW from a seeded sample of this many training photos (default: all)")
    p.add_argument("--limit", type=int, default=None, help="photos per class (default: all)")
    p.add_argument("--distractors", type=int, default=None, help="distractor photos (default: all)")
    p.add_argument("--seed", type=int, default=0, help=f"split seed; the queries' edits use seed + {QUERY_SEED_OFFSET}")
    p.add_argument("--max-side", type=int, default=None, help="the default model's max side (default: its own)")
    p.add_argument("--shrink", type=float, default=DEFAULT_COPY_SHRINK, help="LW shrink (%(default)s)")
    p.add_argument("--vectors", choices=COPY_VECTORS, default=DEFAULT_COPY_VECTORS, help="LW input (%(default)s)")
    p.add_argument("--model", type=Path, action="append", default=[], help="a saved model to evaluate too")
    p.add_argument("--tune", action="store_true", help="LW input x shrink on the training split only")
    p.add_argument("--shrinks", type=float, nargs="+", default=list(TUNE_SHRINKS), help="--tune's shrinks")
    p.add_argument("--write-split", type=Path, default=None, metavar="DIR",
                   help="write DIR/train.txt and DIR/held_out.txt (one photo path a line) and stop: train other "
                        "models on train.txt only, so that the held-out photos stay unseen")
    p.add_argument("--engine", default="auto", help="extractor engine (auto: onnxruntime on CPU)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    setup = build_setup(args)
    if args.write_split is not None:
        args.write_split.mkdir(parents=True, exist_ok=True)
        for name, idx in (("train.txt", setup.fit), ("held_out.txt", setup.held)):
            (args.write_split / name).write_text("".join(f"{setup.db_paths[i]}\n" for i in idx))
        print(f"{setup.note}\nwrote {args.write_split}/train.txt ({len(setup.fit)} photos) and held_out.txt "
              f"({len(setup.held)} photos)")
        return
    base = DescriptorModel.create() if args.max_side is None else DescriptorModel.create(max_side=args.max_side)
    decode_side = math.ceil(base.meta.max_side * max(base.meta.scales))
    query_seed = args.seed + QUERY_SEED_OFFSET
    fit_photos = lw_photos(setup, args.lw_photos, args.seed)
    n_db, n_q, n_fit = len(setup.db_paths), len(setup.held) * args.copies, len(fit_photos) * args.train_copies
    print(setup.note, flush=True)
    print(f"{base.meta.describe()}; one pass: {n_db} database images, {n_fit} training copies, {n_q} query copies",
          flush=True)

    store = RegionStore(base)
    extractor = Extractor(base, batch_size=args.batch, workers=args.workers, engine=args.engine)
    extractor.feature_hook = store

    def shared_items() -> Iterator[ExtractItem]:
        yield from (ExtractItem(("db", i, 0), p) for i, p in enumerate(setup.db_paths))
        yield from copy_items(setup.db_paths, fit_photos, "fit", args.train_copies, DEFAULT_COPY_SEED, decode_side,
                              args.workers)
        yield from copy_items(setup.db_paths, setup.held, "q", args.copies, query_seed, decode_side, args.workers)

    run_pass(extractor, shared_items(), n_db + n_fit + n_q, "shared backbone pass")
    extractor.feature_hook = None
    db_keys: list[Key] = [("db", i, 0) for i in range(n_db)]
    q_keys: list[Key] = [("q", i, j) for i in setup.held for j in range(1, args.copies + 1)]
    truth = np.repeat(np.asarray(setup.held), args.copies)

    heads: list[tuple[str, Head, str]] = [("default", None, "no whitening")]
    t0 = time.perf_counter()
    heads.append(("pca", pca_head(store, db_keys), f"PCA-whitening of the {n_db} database images' regions"))
    variants = [("lw-copies", args.vectors, args.shrink, fit_photos)]
    if args.tune:  # every input x shrink, and the defaults from half the photos (does LW want more photos?)
        half = fit_photos[::2]
        variants = [(f"lw-{v}-{s:g}", v, s, fit_photos) for v in COPY_VECTORS for s in args.shrinks]
        variants.append((f"lw-{args.vectors}-{args.shrink:g}-half", args.vectors, args.shrink, half))
    for name, vectors, shrink, photos in variants:
        x, groups = lw_data(store, photos, args.train_copies, vectors)
        heads.append((name, head_of(learn_lw_whitening(x, groups, shrink=shrink)),
                      f"LW ({vectors}, shrink {shrink:g}) from {len(photos)} training photos x "
                      f"(1 + {args.train_copies} copies, seed {DEFAULT_COPY_SEED}), {len(x)} vectors"))
        del x
    print(f"heads learned in {time.perf_counter() - t0:.0f} s", flush=True)

    rows: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    for name, head, how in heads:
        rows.append((name, store.descriptors(db_keys, head), store.descriptors(q_keys, head), how))
    for path in args.model:
        model = DescriptorModel.load(path)
        how = f"{path}: {model.meta.describe()}"
        if shares_backbone(model, base):
            rows.append((path.name, store.descriptors(db_keys, artifact_head(model)),
                         store.descriptors(q_keys, artifact_head(model)), how + " (shared pass)"))
            continue
        ex = Extractor(model, batch_size=args.batch, workers=args.workers, engine=args.engine)
        items = itertools.chain(
            (ExtractItem(("db", i, 0), p) for i, p in enumerate(setup.db_paths)),
            copy_items(setup.db_paths, setup.held, "q", args.copies, query_seed, decode_side, args.workers),
        )
        got = run_pass(ex, items, n_db + n_q, f"{path.name} pass")
        rows.append((path.name, np.stack([got[k] for k in db_keys]), np.stack([got[k] for k in q_keys]), how))
    store.data.clear()

    command = "python -m bench.copies" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    n_photos = sum(lb is not None for lb in setup.db_labels)
    print(f"\n{command}")
    print(setup.note)
    print(f"copy detection: {n_q} queries = {args.copies} strong edited copies (seed {query_seed}) of each of "
          f"{len(setup.held)} held-out photos, among {n_db} database images; µAP over the top {TOP_K}")
    print(f"category mAP / mP@10: {n_photos} labelled photos, each a query against the other {n_db - 1} images")
    print("\n| model | copy R@1 | R@10 | µAP | category mAP | mP@10 |\n|---|---|---|---|---|---|")
    for name, db, q, _ in rows:
        r1, r10, uap = copy_metrics(q, db, truth)
        cat = evaluate_descriptors(db, setup.db_labels, ks=(10,))
        print(f"| {name} | {r1 * 100:.2f} | {r10 * 100:.2f} | {uap * 100:.2f} | {cat.map * 100:.2f} | "
              f"{cat.mp_at_k[10] * 100:.2f} |", flush=True)
    print()
    for name, _, _, how in rows:
        print(f"  {name}: {how}")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
