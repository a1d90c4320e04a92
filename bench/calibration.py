"""Calibrated match levels on held-out copies: does the stored "copy" threshold keep its precision?

1. Index N of the shared photos (caltech101-half and the distractors, a seeded choice) with the
   real pipeline and the model asked for (default: ``DescriptorModel.create()``, the collection
   default); the data dir is kept, so a second run only calibrates and evaluates.
2. Split the indexed photos by photo (``retrieval.edits.split_photos``) into calibration
   candidates and held-out photos.
3. Calibrate on a sample of the candidates (``calibrate_collection``, seed A): STRONG edited
   copies searched against the whole collection; thresholds stored as the collection's.
4. Evaluate on a sample of the held-out photos with another seed B (other photos, other
   edits): the same scoring (copy vs its original = positive; copies vs their top other
   photos = negatives), counted at the stored thresholds.

One table: per level, the threshold, then precision and recall on the calibration sample and on
the held-out copies (precision = copy pairs among all pairs scoring >= the threshold, recall =
copies scoring >= it among all copies; the Wilson bound of the held-out precision beside it).

    python -m bench.calibration                          # 600 photos, default model
    python -m bench.calibration --photos 300 --max-side 256 --scales 1
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from retrieval.calibrate import (
    COPY_PRECISION,
    DEFAULT_COPIES,
    LEVELS,
    Calibration,
    level_stats,
)
from retrieval.calibrate_collection import calibrate_collection, sample_photos, score_copies
from retrieval.collection import Collection
from retrieval.collection_whitening import DEFAULT_METHOD as DEFAULT_WHITENING
from retrieval.collection_whitening import WHITENING_METHODS, learn_collection_whitening
from retrieval.edits import split_photos
from retrieval.ingest import IndexOptions, IngestSettings, LocalIngest
from retrieval.models.descriptor import DEFAULT_MAX_SIDE, DEFAULT_SCALES, DescriptorModel
from retrieval.store import catalog

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the held-out precision at the copy threshold must reach this (the target is COPY_PRECISION)
MIN_HELD_OUT_PRECISION = 0.97


def photos(n: int, seed: int) -> list[Path]:
    pool = sorted((SHARED / "caltech101-half").glob("*/*.jpg"))
    pool += sorted((SHARED / "caltech101-distractors").rglob("*.jpg"))
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} photos under {SHARED}, {n} asked for")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]


def build(data_dir: Path, model: DescriptorModel | None, paths: list[Path], batch: int) -> Collection:
    col = Collection.open(data_dir, model=model)
    t0 = time.perf_counter()
    summary = LocalIngest.over(col, IngestSettings(batch_size=batch), options=IndexOptions(progress=False)).run(
        [str(p) for p in paths]
    )
    print(f"indexed {col.count('image')} images in {time.perf_counter() - t0:.0f} s "
          f"({summary.failed} failed) at {data_dir}")
    return col


def table(cal: Calibration, pos: np.ndarray, neg: np.ndarray) -> list[str]:
    lines = [
        f"{'level':8} {'threshold':>9} | {'calib P':>7} {'calib R':>7} | {'held-out P':>10} {'(bound)':>7} "
        f"{'held-out R':>10} {'pairs above':>11}",
    ]
    for level in LEVELS:
        fit = cal.level(level)
        held = level_stats(level, fit.threshold, pos, neg, cal.z)
        def f(v: float | None, w: int) -> str:
            return f"{'-':>{w}}" if v is None else f"{v:{w}.4f}"
        t = "-" if fit.threshold is None else f"{fit.threshold:.4f}"
        lines.append(
            f"{level:8} {t:>9} | {f(fit.precision, 7)} {fit.recall:7.4f} | {f(held.precision, 10)} "
            f"{f(held.precision_lower, 7)} {held.recall:10.4f} {held.positives_above + held.negatives_above:>11}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=600, help="shared photos indexed (default: %(default)s)")
    ap.add_argument("--data-dir", type=Path, default=None, help="the collection (default: /tmp/imsearch-bench-cal-...)")
    ap.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="model input side (default: %(default)s)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    ap.add_argument("--held-out", type=float, default=0.5, help="fraction of photos kept out of calibration")
    ap.add_argument("--calib-sample", type=int, default=200, help="photos calibrated on (default: %(default)s)")
    ap.add_argument("--eval-sample", type=int, default=200, help="held-out photos evaluated (default: %(default)s)")
    ap.add_argument("--copies", type=int, default=DEFAULT_COPIES, help="edited copies per calibration photo")
    ap.add_argument("--eval-copies", type=int, default=2, help="edited copies per held-out photo")
    ap.add_argument("--whitening", choices=WHITENING_METHODS, default=DEFAULT_WHITENING,
                    help="the new collection's whitening, as `imsearch index` (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="photo choice and split")
    ap.add_argument("--calib-seed", type=int, default=1)
    ap.add_argument("--eval-seed", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model = DescriptorModel.create(max_side=args.max_side, scales=tuple(args.scales))
    scales = "-".join(f"{s:g}" for s in args.scales)
    data_dir = args.data_dir or Path(
        f"/tmp/imsearch-bench-cal-{args.photos}-{args.max_side}-{scales}-{args.seed}-{args.whitening}"
    )
    chosen = photos(args.photos, args.seed)
    if args.whitening == "copies" and not data_dir.exists():  # what `imsearch index` gives a new collection
        learn_collection_whitening(model, chosen, batch_size=args.batch_size)
    t0 = time.perf_counter()
    col = build(data_dir, model if not data_dir.exists() else None, chosen, args.batch_size)
    try:
        known = [r for r in col.read(catalog.get_images, image_ids=col.index_ids("image")) if r is not None]
        ids = np.array([r.id for r in known], dtype=np.int64)
        kept, held = split_photos([r.sha256 for r in known], args.held_out, args.seed)
        kept_ids, held_ids = ids[kept], ids[held]
        settings = IngestSettings(batch_size=args.batch_size)
        t1 = time.perf_counter()
        cal = calibrate_collection(col, sample=args.calib_sample, copies_per_photo=args.copies, seed=args.calib_seed,
                                   candidates=kept_ids, settings=settings)
        t2 = time.perf_counter()
        evaluated = sample_photos(col, args.eval_sample, args.eval_seed, held_ids)
        scores = score_copies(col, evaluated, seed=args.eval_seed, copies_per_photo=args.eval_copies,
                              settings=settings)
        t3 = time.perf_counter()
    finally:
        col.close()
    print(f"model: {col.model.meta.describe()}")
    print(f"collection: {len(ids)} images; calibration candidates {len(kept_ids)}, held out {len(held_ids)}")
    print(f"calibration: {cal.photos} photos x {cal.copies_per_photo} STRONG copies (seed {cal.seed}): "
          f"{cal.positives} copy pairs, {cal.negatives} other-photo pairs, {t2 - t1:.0f} s")
    print(f"held out: {scores.photos} other photos x {args.eval_copies} copies (seed {args.eval_seed}): "
          f"{len(scores.positives)} copy pairs, {len(scores.negatives)} other-photo pairs, "
          f"{scores.duplicates} same-photo neighbours left out, {t3 - t2:.0f} s")
    print()
    for line in table(cal, scores.positives, scores.negatives):
        print(line)
    copy = level_stats("copy", cal.copy, scores.positives, scores.negatives, cal.z)
    print()
    if cal.copy is None:
        print("no copy threshold was stored: calibrate with a larger --calib-sample or --copies")
    else:
        ok = copy.precision is None or copy.precision >= MIN_HELD_OUT_PRECISION
        shown = "-" if copy.precision is None else f"{copy.precision:.4f}"
        print(f"held-out precision at the copy threshold: {shown} (target {COPY_PRECISION}, at least "
              f"{MIN_HELD_OUT_PRECISION}: {'ok' if ok else 'BELOW'}), recall {copy.recall:.4f}")
        grouped = float(np.mean(scores.neighbours >= cal.copy)) if len(scores.neighbours) else 0.0
        print(f"held-out photos whose nearest other photo scores >= the copy threshold (grouped by imsearch "
              f"duplicates): {grouped:.1%}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
