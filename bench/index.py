"""Throughput, peak memory and quality of `imsearch index` (the real command, in a subprocess).

Indexes a subset (default 500 photos) and then all photos of ../shared/data with the default
model on CPU, each into a fresh data dir, and prints images/s, the ratio to the pure model
forward rate (pre-decoded, pre-batched inputs run on the pipeline's model threads: the
ceiling), and the command's peak resident memory, which must not grow with the number of
photos. On a machine shared with other work the forward rate moves with the load, so it is
measured before the runs and again after each one, and the ratio is given to their mean.

When a run covered every photo, the descriptors it wrote (read back from its catalog) are
scored: mAP on caltech101-half (every labelled photo a query against all others plus the
distractors) and copy-detection recall@1 with ``bench.rerank``'s copies (the same originals,
the same seven edits of :func:`retrieval.edits.classic_edit`, described in this process and
searched against the run's descriptors); and ``--reference-photos`` of them are described
again by one model thread with its whole torch team (the layout before model threads) to
show how far the run's descriptors are from those.

    python -m bench.index                       # 500 and 4487 photos
    python -m bench.index --counts 4487
    python -m bench.index --counts 300 --forward-photos 96 --copies 0
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bench.extract import SHARED, forward_batches_of, forward_rate, photos
from bench.memory import run_with_peak
from retrieval.edits import CLASSIC_EDITS, classic_edit
from retrieval.evaluate import evaluate_descriptors, folder_dataset
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.runtime import tune_onednn

REPO = Path(__file__).resolve().parents[1]
#: what the runs measure by default: describing and writing, not the steps before and after
PIPELINE_ONLY = ("--whitening", "none", "--no-calibrate")


def run_index(folder: Path, data: Path, extra: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one `imsearch index` run."""
    cmd = [sys.executable, "-m", "indexer", "index", str(folder), "--data-dir", str(data), "--no-progress", *extra]
    t0 = time.perf_counter()
    code, out, err, peak = run_with_peak(cmd, cwd=REPO)  # the command's own peak (VmHWM), not the parent's
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"imsearch index failed:\n{out}\n{err}")
    return wall, peak, out


def stored_vectors(data: Path) -> dict[str, np.ndarray]:
    """File name -> the image descriptor the run wrote (its SQLite catalog)."""
    con = sqlite3.connect(data / "catalog.db")
    try:
        rows = con.execute(
            "SELECT f.path, v.data FROM files f JOIN vectors v ON v.image_id = f.image_id AND v.space = 'image'"
        ).fetchall()
    finally:
        con.close()
    return {Path(path).name: np.frombuffer(blob, dtype="<f4") for path, blob in rows}


def copy_queries(paths: list[Path], labels: list[str | None], copies: int) -> tuple[Iterator[np.ndarray], list[int]]:
    """``bench.rerank``'s copies, draw for draw: ``copies`` labelled originals (seed 0), each edited
    by the seven classic edits in turn; (the edited pixels, lazily; each copy's original)."""
    rng = np.random.default_rng(0)
    labelled = [i for i, lab in enumerate(labels) if lab is not None]
    originals = [int(i) for i in rng.choice(labelled, size=min(copies, len(labelled)), replace=False)]

    def edited() -> Iterator[np.ndarray]:
        for idx in originals:
            img = Image.open(paths[idx]).convert("RGB")
            for kind in CLASSIC_EDITS:
                yield np.asarray(classic_edit(img, kind, rng))

    return edited(), [i for i in originals for _ in CLASSIC_EDITS]


def quality(data: Path, chosen: list[Path], ex: Extractor, *, copies: int, reference_photos: int) -> None:
    """mAP, copy R@1 and the distance to the one-team layout of the descriptors a full run wrote."""
    by_name = stored_vectors(data)
    by_path = {str(p): by_name[f"{i:05d}.jpg"] for i, p in enumerate(chosen) if f"{i:05d}.jpg" in by_name}
    ds = folder_dataset(SHARED / "caltech101-half", distractor_dirs=[SHARED / "caltech101-distractors"])
    missing = [p for p in ds.paths if str(p) not in by_path]
    if missing:
        print(f"  quality: {len(missing)} photos have no stored descriptor (e.g. {missing[0]}); not scored")
        return
    db = np.stack([by_path[str(p)] for p in ds.paths])
    ev = evaluate_descriptors(db, ds.labels)
    print(f"  mAP on caltech101-half (+ distractors) of the run's descriptors: {ev.map * 100:.2f}")
    if copies:
        t0 = time.perf_counter()
        pixels, truth = copy_queries(ds.paths, ds.labels, copies)
        q = np.zeros((len(truth), db.shape[1]), dtype=np.float32)
        for res in ex.iter_extract(ExtractItem(i, a) for i, a in enumerate(pixels)):
            assert res.descriptor is not None, res.error
            q[int(res.key)] = res.descriptor  # type: ignore[call-overload]
        hits = np.argmax(q @ db.T, axis=1) == np.asarray(truth)
        n_kinds = len(CLASSIC_EDITS)
        per_kind = ", ".join(f"{k} {hits[i::n_kinds].mean() * 100:.1f}" for i, k in enumerate(CLASSIC_EDITS))
        print(f"  copy R@1 ({len(truth)} bench.rerank copies of {len(truth) // n_kinds} originals vs the "
              f"run's descriptors): {hits.mean() * 100:.2f} ({per_kind}; {time.perf_counter() - t0:.0f} s)")
    if reference_photos:
        step = max(1, len(ds.paths) // reference_photos)
        some = ds.paths[::step][:reference_photos]
        team = Extractor(ex.model, batch_size=ex.batch_size, model_threads=1, engine=ex.engine)
        ref = team.extract(some)
        got = np.stack([by_path[str(p)] for p in some])
        cos = (ref * got).sum(axis=1)
        print(f"  vs one model thread with its torch team on {len(some)} photos: min cosine {cos.min():.7f}, "
              f"max |difference| {np.abs(ref - got).max():.2e}")


def main() -> None:
    tune_onednn()  # as the imsearch command does, before the first convolution
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 0], help="photos per run (0 = all)")
    parser.add_argument("--forward-photos", type=int, default=160)
    parser.add_argument("--copies", type=int, default=200, help="originals edited for copy R@1 (0: none)")
    parser.add_argument("--reference-photos", type=int, default=100,
                        help="photos described again by one model thread with its torch team (0: none)")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"],
                        help="engine of the pure forward reference: the one the command runs (default: %(default)s)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=list(PIPELINE_ONLY),
                        help="`imsearch index` options (default: %(default)s: the pipeline alone; a new collection's "
                        "whitening is learned before it and the calibration runs after it, each timed in its log)")
    args = parser.parse_args()

    model = DescriptorModel.create()
    ex = Extractor(model, batch_size=16, engine=args.engine)
    sample = photos(args.forward_photos)
    batches = forward_batches_of(ex, sample, 16)
    threads, per_thread = ex.model_layout()
    print(f"{model.meta.describe()}; {ex.engine}, {ex.dtype}, {threads} model threads x {per_thread} threads")
    forward_rate(ex, batches, len(sample))  # warm-up: every shape on every model thread
    forwards = [forward_rate(ex, batches, len(sample))]
    print(f"pure model forward (pre-decoded, pre-batched, {len(sample)} photos): {forwards[0]:.2f} images/s")
    every = len(photos())
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        for count in args.counts:
            chosen = photos(count or None)
            folder = work / f"photos-{len(chosen)}"
            folder.mkdir()
            for i, p in enumerate(chosen):
                shutil.copy(p, folder / f"{i:05d}.jpg")
            data = work / f"data-{len(chosen)}"
            wall, rss, out = run_index(folder, data, args.extra)
            forwards.append(forward_rate(ex, batches, len(sample)))
            line = next((x for x in out.splitlines() if x.startswith("found")), out)
            stages = next((x for x in out.splitlines() if x.startswith("stages")), "")
            indexed = int(m.group(1)) if (m := re.search(r"indexed (\d+)", line)) else len(chosen)
            rate = indexed / wall
            fwd = float(np.mean(forwards[-2:]))
            print(f"\n{len(chosen)} photos: {line}")
            print(f"  {stages}")
            print(f"  whole command (start-up, model load, scan, index, save, quick-search export): {wall:.1f} s, "
                  f"{rate:.2f} images/s")
            print(f"  pure forward before / after the run: {forwards[-2]:.2f} / {forwards[-1]:.2f} images/s")
            print(f"  ratio to the pure forward rate (their mean, {fwd:.2f}): {rate / fwd:.2f}")
            print(f"  peak RSS of the command: {rss:.0f} MiB")
            if len(chosen) == every:
                quality(data, chosen, ex, copies=args.copies, reference_photos=args.reference_photos)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
