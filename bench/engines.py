"""Which engine runs the network fastest: torch fp32 (naive reference), torch bf16, onnxruntime.

For each engine, on the same real photos with the default model (EfficientNet-Lite0, R-MAC,
max side 512, 3 scales):
  * one query at a time (``Extractor.extract_one``: what a search by upload costs in the API,
    decode + 3 forwards + head), median and p90 milliseconds;
  * batched extraction (``Extractor.extract``, what indexing costs: batches on the model threads,
    :meth:`Extractor.model_layout`), images/s;
  * agreement with the float32 reference: the lowest cosine between descriptors.
Ratios are against the naive reference (torch fp32, NCHW, no conv-bn folding) in the same run.

    python -m bench.engines [--n 40] [--batch-n 160] [--batch 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.runtime import tune_onednn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

ENGINES: dict[str, dict[str, object]] = {
    "torch fp32 NCHW, no folding (naive reference)": {"precision": "fp32", "fuse": False, "channels_last": False},
    "torch, precision auto (bf16 where native, else fp32), channels-last": {},
    "onnxruntime fp32 (imsearch serve)": {"engine": "onnxruntime"},
}


def photos(n: int, stride: int) -> list[Path]:
    paths = sorted((SHARED / "caltech101-half").glob("*/*.jpg"))
    if len(paths) < n:
        raise SystemExit(f"expected the shared photos under {SHARED}; found {len(paths)}")
    return [paths[(i * stride) % len(paths)] for i in range(n)]


def main() -> None:
    tune_onednn()  # as the imsearch command does, before the first convolution
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="photos queried one at a time")
    parser.add_argument("--batch-n", type=int, default=160, help="photos extracted in batches")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model = DescriptorModel.create("efficientnet_lite0")
    queries, batch_photos = photos(args.n, 97), photos(args.batch_n, 89)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {model.meta.describe()}")
    rows = []
    reference: dict[str, np.ndarray] = {}
    for name, options in ENGINES.items():
        t0 = time.perf_counter()
        ex = Extractor(model, batch_size=1, **options)  # type: ignore[arg-type]
        build = time.perf_counter() - t0
        ex.extract_one(queries[0])  # warm-up
        times, descs = [], []
        for p in queries:
            t0 = time.perf_counter()
            res = ex.extract_one(p)
            times.append(1000 * (time.perf_counter() - t0))
            assert res.descriptor is not None, res.error
            descs.append(res.descriptor)
        one = np.stack(descs)
        batched = Extractor(model, batch_size=args.batch, **options)  # type: ignore[arg-type]
        batched.extract(batch_photos[:8])
        layout = "{} model threads x {} torch threads".format(*batched.model_layout())
        t0 = time.perf_counter()
        many = batched.extract(batch_photos)
        rate = len(batch_photos) / (time.perf_counter() - t0)
        if not reference:
            reference = {"one": one, "many": many}
        cos = min(float((one * reference["one"]).sum(1).min()), float((many * reference["many"]).sum(1).min()))
        rows.append((name, float(np.median(times)), float(np.percentile(times, 90)), rate, cos, build))
        print(f"{name}: {rows[-1][1]:.1f} ms per query, {rate:.1f} img/s batched ({layout}, {batched.dtype})",
              flush=True)
    base_ms, base_rate = rows[0][1], rows[0][3]
    print("\n| engine | query p50 ms | p90 ms | query speed-up | batched img/s | speed-up | min cos | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p50, p90, rate, cos, build in rows:
        print(f"| {name} | {p50:.1f} | {p90:.1f} | x{base_ms / p50:.2f} | {rate:.1f} | x{rate / base_rate:.2f} | "
              f"{cos:.6f} | {build:.1f} |")


if __name__ == "__main__":
    main()
