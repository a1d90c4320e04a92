"""mAP and mP@10 of SPoC, MAC, GeM and R-MAC, with and without whitening, on real photos.

Every photo of ``../shared/data/caltech101-half`` is a query against all other photos plus
the 467 distractors (class = relevant; distractors are never relevant). One pass of the
backbone over the photos feeds every pooling: the feature maps of each batch are pooled
by all four methods at once. PCA-whitening is learned from the collection itself (no labels
used), as `imsearch index` does when no training set is given. Single-scale (scale 1) is
reported next to the default multi-scale (1, 1/sqrt 2, 1/2).

    python -m bench.descriptors                     # default backbone, max side 512
    python -m bench.descriptors --limit 20          # 20 photos per class (quicker)
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import torch

from retrieval.evaluate import evaluate_descriptors, folder_dataset
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.pooling import gem, l2n, mac, rmac_region_vectors, spoc
from retrieval.models.whitening import learn_pca_whitening

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
POOLINGS = ("spoc", "mac", "gem", "rmac")


def collect(model: DescriptorModel, paths: list[Path], batch: int) -> dict[str, dict[int, dict[int, np.ndarray]]]:
    """pooling -> image index -> scale index -> vectors (1, C) or, for R-MAC, region vectors (R, C)."""
    store: dict[str, dict[int, dict[int, np.ndarray]]] = {p: defaultdict(dict) for p in POOLINGS}

    def hook(feats: torch.Tensor, keys: list[Hashable], scales: list[int]) -> None:
        pooled = {"spoc": l2n(spoc(feats)), "mac": l2n(mac(feats)), "gem": l2n(gem(feats, 3.0))}
        regions = rmac_region_vectors(feats)
        for i, (key, s) in enumerate(zip(keys, scales, strict=True)):
            for name, vec in pooled.items():
                store[name][int(key)][s] = vec[i : i + 1].numpy().astype(np.float32)  # type: ignore[call-overload]
            store["rmac"][int(key)][s] = regions[i].numpy().astype(np.float16)  # type: ignore[call-overload]

    ex = Extractor(model, batch_size=batch)
    ex.feature_hook = hook
    t0 = time.perf_counter()
    failed = [r.key for r in ex.iter_extract(ExtractItem(i, p) for i, p in enumerate(paths)) if not r.ok]
    print(f"extracted {len(paths)} photos in {time.perf_counter() - t0:.0f} s ({len(failed)} failed)")
    return store


def describe(per_image: dict[int, dict[int, np.ndarray]], n: int, scales: list[int], white: tuple | None) -> np.ndarray:
    out = np.zeros((n, next(iter(per_image.values()))[0].shape[1] if white is None else white[0].shape[0]))
    for i in range(n):
        total = 0.0
        for s in scales:
            v = per_image[i][s].astype(np.float64)
            if white is not None:
                v = v - white[1]
                v = v @ white[0].T
                v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-6
            d = v.sum(axis=0)
            total = total + d / (np.linalg.norm(d) + 1e-6)
        out[i] = total / (np.linalg.norm(total) + 1e-6)
    return out.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="photos per class (default: all)")
    parser.add_argument("--distractors", type=int, default=None, help="distractor photos (default: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dims", type=int, nargs="+", default=[0, 512], help="whitening dims (0 = full)")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="write the default descriptors (multi-scale R-MAC) "
        "to this .npy, e.g. for `python -m bench.search --real FILE`",
    )
    args = parser.parse_args()

    data = folder_dataset(SHARED / "caltech101-half", distractor_dirs=[SHARED / "caltech101-distractors"])
    keep: list[int] = []
    seen: dict[str | None, int] = defaultdict(int)
    for i, label in enumerate(data.labels):
        cap = args.distractors if label is None else args.limit
        if cap is None or seen[label] < cap:
            keep.append(i)
            seen[label] += 1
    paths = [data.paths[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    model = DescriptorModel.create(args.backbone, max_side=args.max_side)
    print(f"{model.meta.describe()}; {sum(lb is not None for lb in labels)} queries, {len(paths)} database photos")
    store = collect(model, paths, args.batch)
    n, all_scales = len(paths), list(range(len(model.meta.scales)))
    print(f"\n{'pooling':8s} {'whitening':12s} {'scales':7s} {'mAP':>7s} {'mP@10':>7s}")
    for name in POOLINGS:
        per_image = store[name]
        variants: list[tuple[str, tuple | None]] = [("none", None)]
        vecs = np.concatenate([v for img in per_image.values() for v in img.values()]).astype(np.float64)
        for dim in args.dims:
            params = learn_pca_whitening(vecs, dim or None)
            variants.append((f"pca-{params.weight.shape[0]}", (params.weight, params.mean)))
        for white_name, white in variants:
            for scale_name, scales in (("multi", all_scales), ("1", [0])):
                desc = describe(per_image, n, scales, white)
                if args.save and name == "rmac" and white is None and scale_name == "multi":
                    np.save(args.save, desc)
                res = evaluate_descriptors(desc, labels, ks=(10,))
                print(f"{name:8s} {white_name:12s} {scale_name:7s} {res.map * 100:7.2f} {res.mp_at_k[10] * 100:7.2f}")


if __name__ == "__main__":
    main()
