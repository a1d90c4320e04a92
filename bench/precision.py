"""bf16 + channels-last vs fp32 extraction on CPU: descriptor agreement, mAP and speed, in one run.

The default model describes the same photos of ``../shared/data/caltech101-half`` (plus
the distractors) twice: once in plain fp32 (NCHW, no autocast: the reference) and once as
`imsearch index` does on CPU (bf16 autocast, channels-last). Prints the cosine between the
two descriptors of each photo (mean, min), the mAP and mP@10 of each (every photo a query
against all others, class = relevant), their difference, and images/s of each.

    python -m bench.precision                    # 20 photos per class + every distractor
    python -m bench.precision --limit 0          # every photo
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from retrieval.evaluate import evaluate_descriptors, folder_dataset
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.runtime import tune_malloc

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--limit", type=int, default=20, help="photos per class (0 = all)")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    tune_malloc()

    data = folder_dataset(SHARED / "caltech101-half", distractor_dirs=[SHARED / "caltech101-distractors"])
    seen: dict[str | None, int] = defaultdict(int)
    keep: list[int] = []
    for i, label in enumerate(data.labels):
        if label is None or not args.limit or seen[label] < args.limit:
            keep.append(i)
            seen[label] += 1
    paths = [data.paths[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    model = DescriptorModel.create(args.backbone, max_side=args.max_side)
    print(f"{model.meta.describe()}; {sum(lb is not None for lb in labels)} queries, {len(paths)} photos")

    results = {}
    for name, precision, channels_last in (("fp32 NCHW", "fp32", False), ("bf16 channels-last", "bf16", True)):
        extractor = Extractor(model, precision=precision, channels_last=channels_last, batch_size=args.batch)
        t0 = time.perf_counter()
        vecs = extractor.extract(paths)
        seconds = time.perf_counter() - t0
        res = evaluate_descriptors(vecs, labels, ks=(10,))
        results[name] = (vecs, res, len(paths) / seconds)
        print(f"{name:20s} mAP {100 * res.map:6.2f}  mP@10 {100 * res.mp_at_k[10]:6.2f}  "
              f"{len(paths) / seconds:6.2f} images/s", flush=True)

    (ref, ref_res, ref_rate), (low, low_res, low_rate) = results.values()
    cos = np.sum(ref.astype(np.float64) * low.astype(np.float64), axis=1)
    print(f"\ncosine(fp32, bf16) per photo: mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"mAP bf16 - fp32: {100 * (low_res.map - ref_res.map):+.2f} points "
          f"(mP@10 {100 * (low_res.mp_at_k[10] - ref_res.mp_at_k[10]):+.2f}); speed x{low_rate / ref_rate:.2f}")


if __name__ == "__main__":
    main()
