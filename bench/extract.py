"""Extraction throughput: the project's pipeline vs a naive research-code loop, in one run.

Prints, for each configuration (default backbone at max side 512; VGG16 at max side 1024):
  * naive reference: fp32, NCHW, batch 1, one process, decode inside the loop
  * imsearch: threaded decode, size-bucketed batches, conv-bn folding, channels-last + bf16
  * pure forward: the same network settings on already decoded, already batched inputs
and the ratios imsearch / naive and imsearch / pure forward; then the peak resident
memory of a streaming extraction over 500 photos and over every photo (each in a fresh
subprocess), which must not grow with the number of images.

    python -m bench.extract                      # everything (takes a while on 2 cores)
    python -m bench.extract --configs lite0 --n 200 --rss-counts 500 4487
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.memory import vm_hwm_mib
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor, input_size
from retrieval.models.pooling import l2n
from retrieval.runtime import tune_malloc, tune_onednn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS: dict[str, dict[str, str | int]] = {
    "lite0": {"backbone": "efficientnet_lite0", "weights": "default", "max_side": 512},
    "vgg16": {"backbone": "vgg16", "weights": "random", "max_side": 1024},
}


def photos(n: int | None = None) -> list[Path]:
    paths = sorted(SHARED.glob("caltech101-half/*/*.jpg")) + sorted(SHARED.glob("caltech101-distractors/*.jpg"))
    if not paths:
        sys.exit(f"no photos under {SHARED}")
    if n is None or n >= len(paths):
        return paths
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def build(name: str) -> DescriptorModel:
    cfg = CONFIGS[name]
    return DescriptorModel.create(str(cfg["backbone"]), weights=str(cfg["weights"]), max_side=int(cfg["max_side"]))


def naive(model: DescriptorModel, paths: list[Path]) -> float:
    """Research-code loop: decode inside the loop, fp32, NCHW, batch 1, scale by scale."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            img = Image.open(path).convert("RGB")
            total = None
            for scale in model.meta.scales:
                size = input_size(img.width, img.height, model.meta.max_side, scale, model.meta.stride)
                x = torch.from_numpy(np.asarray(img.resize(size, Image.Resampling.BILINEAR)).copy())
                d = model(x.permute(2, 0, 1)[None])[0]
                total = d if total is None else total + d
            assert total is not None
            l2n(total)
    return len(paths) / (time.perf_counter() - t0)


def project(model: DescriptorModel, paths: list[Path], batch: int) -> tuple[float, Extractor]:
    ex = Extractor(model, batch_size=batch)
    ex.extract(paths[: min(4, len(paths))])  # warm-up (allocator, oneDNN kernels)
    ex.stats.update(decode_s=0.0, forward_s=0.0, images=0, batches=0)
    t0 = time.perf_counter()
    n = sum(1 for r in ex.iter_extract_paths(paths) if r.ok)
    return n / (time.perf_counter() - t0), ex


def forward_batches_of(ex: Extractor, paths: list[Path], batch: int) -> list[list[np.ndarray]]:
    """The pipeline's batches of ``paths``, decoded and resized beforehand (same shapes, same sizes)."""
    meta = ex.meta
    buckets: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in paths:
        img = Image.open(path).convert("RGB")
        for scale in meta.scales:
            size = input_size(img.width, img.height, meta.max_side, scale, meta.stride)
            buckets.setdefault(size, []).append(np.asarray(img.resize(size, Image.Resampling.BILINEAR)))
    return [arrs[i : i + batch] for arrs in buckets.values() for i in range(0, len(arrs), batch)]


def forward_rate(ex: Extractor, batches: list[list[np.ndarray]], images: int) -> float:
    """Images/s of forward + head alone over ``batches``, run as the pipeline runs its batches
    (:meth:`Extractor.forward_batches`: the same model threads)."""
    t0 = time.perf_counter()
    for _ in ex.forward_batches(batches):
        pass
    return images / (time.perf_counter() - t0)


def pure_forward(ex: Extractor, paths: list[Path], batch: int) -> float:
    """Forward + head only, on inputs decoded and bucketed beforehand (same shapes as the pipeline)."""
    batches = forward_batches_of(ex, paths, batch)
    forward_rate(ex, batches, len(paths))  # warm-up: every shape once (oneDNN builds kernels per shape and thread)
    return forward_rate(ex, batches, len(paths))


def rss_child(config: str, n: int, batch: int) -> None:
    tune_malloc()  # as the imsearch command does
    model = build(config)
    ex = Extractor(model, batch_size=batch)
    t0 = time.perf_counter()
    count = sum(1 for r in ex.iter_extract_paths(photos(n)) if r.ok)
    peak_mib = vm_hwm_mib()  # not ru_maxrss: that one keeps the parent's peak across fork + exec
    print(json.dumps({"n": count, "peak_rss_mib": peak_mib, "images_per_s": count / (time.perf_counter() - t0)}))


def main() -> None:
    tune_onednn()  # as the imsearch command does, before the first convolution
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--n", type=int, default=160, help="photos per throughput run (lite0)")
    parser.add_argument("--n-vgg", type=int, default=24, help="photos per throughput run (vgg16)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rss-counts", type=int, nargs="*", default=[500, 4487])
    parser.add_argument("--rss-child", nargs=2, metavar=("CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), args.batch)
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, CUDA {torch.cuda.is_available()}"
    )
    for name in args.configs:
        model = build(name)
        n = args.n if name == "lite0" else args.n_vgg
        paths = photos(n)
        rate, ex = project(model, paths, args.batch)
        fwd = pure_forward(ex, paths, args.batch)
        ref = naive(model, paths)
        print(f"\n[{name}] {model.meta.describe()}; {len(paths)} photos; {ex.dtype}, batch {args.batch}")
        print(f"  naive reference (fp32, NCHW, batch 1, decode in loop): {ref:8.2f} images/s")
        print(f"  imsearch extraction (end to end):                     {rate:8.2f} images/s")
        print(f"  pure forward (pre-decoded, pre-batched):              {fwd:8.2f} images/s")
        print(f"  ratio imsearch / naive:        {rate / ref:5.2f}x   (target >= 2.5)")
        print(f"  ratio end-to-end / forward:    {rate / fwd:5.2f}    (target >= 0.80)")
        print(
            f"  time split: decode+resize {ex.stats['decode_s']:.1f} s (worker threads), "
            f"forward {ex.stats['forward_s']:.1f} s, {ex.stats['batches']} batches"
        )
    for name in args.configs[:1]:
        print(f"\n[{name}] peak RSS of a streaming extraction (fresh process each):")
        for count in args.rss_counts:
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.extract",
                        "--rss-child",
                        name,
                        str(count),
                        "--batch",
                        str(args.batch),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            res = json.loads(out)
            print(
                f"  {res['n']:5d} photos: peak RSS {res['peak_rss_mib']:7.1f} MiB, {res['images_per_s']:.2f} images/s"
            )


if __name__ == "__main__":
    main()
