"""Throughput and peak memory of `imsearch index` (the real command, in a subprocess).

Indexes a subset (default 500 photos) and then all photos of ../shared/data with the default
model on CPU, each into a fresh data dir, and prints images/s, the ratio to the pure model
forward rate measured in the same run (pre-decoded, pre-batched inputs: the ceiling), and the
command's peak resident memory, which must not grow with the number of photos.

    python -m bench.index                       # 500 and 4487 photos
    python -m bench.index --counts 300 --forward-photos 96
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.extract import photos, pure_forward
from bench.memory import run_with_peak
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor

REPO = Path(__file__).resolve().parents[1]


def run_index(folder: Path, data: Path, extra: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, summary line) of one `imsearch index` run."""
    cmd = [sys.executable, "-m", "indexer", "index", str(folder), "--data-dir", str(data), "--no-progress", *extra]
    t0 = time.perf_counter()
    code, out, err, peak = run_with_peak(cmd, cwd=REPO)  # the command's own peak (VmHWM), not the parent's
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"imsearch index failed:\n{out}\n{err}")
    line = next((x for x in out.splitlines() if x.startswith("found")), out)
    return wall, peak, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 0], help="photos per run (0 = all)")
    parser.add_argument("--forward-photos", type=int, default=160)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `imsearch index` options")
    args = parser.parse_args()

    model = DescriptorModel.create()
    ex = Extractor(model, batch_size=16)
    sample = photos(args.forward_photos)
    ex.extract(sample[:8])
    fwd = pure_forward(ex, sample, 16)
    print(f"{model.meta.describe()}")
    print(f"pure model forward (pre-decoded, pre-batched, {len(sample)} photos): {fwd:.2f} images/s")
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        for count in args.counts:
            chosen = photos(count or None)
            folder = work / f"photos-{len(chosen)}"
            folder.mkdir()
            for i, p in enumerate(chosen):
                shutil.copy(p, folder / f"{i:05d}.jpg")
            wall, rss, line = run_index(folder, work / f"data-{len(chosen)}", args.extra)
            indexed = int(m.group(1)) if (m := re.search(r"indexed (\d+)", line)) else len(chosen)
            rate = indexed / wall
            print(f"\n{len(chosen)} photos: {line}")
            print(f"  whole command (start-up, model load, scan, index, save): {wall:.1f} s, {rate:.2f} images/s")
            print(f"  ratio to the pure forward rate: {rate / fwd:.2f}")
            print(f"  peak RSS of the command: {rss:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
