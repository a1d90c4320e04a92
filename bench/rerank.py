"""Re-ranking (alpha-QE, DBA) and multi-scale, each on and off, on real photos.

Two measurements, one extraction pass (per-scale descriptors are kept, so single-scale
(scale 1) and multi-scale (1, 1/sqrt 2, 1/2) come from the same forward passes):

* **mAP / mP@10 on caltech101-half**: every photo a query against all others plus the
  distractors (class = relevant).
* **Copy detection, recall@1**: edited copies of N originals (crop, rotation, flip, colour,
  blur, strong JPEG, caption bar) searched against all originals plus the distractors;
  a hit when the top result is the original.

Re-ranking runs the engine's own code (`retrieval.rerank.weighted_average`, the same
arithmetic as `SearchEngine`): alpha-QE expands the query with its top n and ranks the
whole collection again; DBA re-scores the first-round shortlist with each candidate
averaged with its own top n neighbours.

    python -m bench.rerank                # all photos, 200 originals for copy detection
    python -m bench.rerank --limit 20 --copies 50
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from retrieval.edits import CLASSIC_EDITS, classic_edit
from retrieval.evaluate import folder_dataset
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.pooling import l2n
from retrieval.rerank import weighted_average

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EDITS = CLASSIC_EDITS


def per_scale(model: DescriptorModel, sources: Sequence[Any], batch: int) -> np.ndarray:
    """(n, n_scales, dim): each image's descriptor at each scale (before the multi-scale sum)."""
    out = np.zeros((len(sources), len(model.meta.scales), model.meta.dim), dtype=np.float32)
    ex = Extractor(model, batch_size=batch)

    def hook(feats: torch.Tensor, keys: list[Hashable], scales: list[int]) -> None:
        descs = model.head(feats)
        for i, (key, s) in enumerate(zip(keys, scales, strict=True)):
            out[int(key), s] = descs[i].numpy()  # type: ignore[call-overload]

    ex.feature_hook = hook
    for res in ex.iter_extract(ExtractItem(i, s) for i, s in enumerate(sources)):
        if not res.ok:
            raise SystemExit(f"cannot read {sources[int(res.key)]}: {res.error}")  # type: ignore[call-overload]
    return out


def combine(scales: np.ndarray, which: list[int]) -> np.ndarray:
    return l2n(torch.from_numpy(scales[:, which].sum(axis=1))).numpy()


def rerank(q: np.ndarray, db: np.ndarray, mode: str, n: int, alpha: float, shortlist: int) -> np.ndarray:
    """Full rankings (n_q, n_db) after ``mode`` in none / aqe / dba."""
    sims = q @ db.T
    ranks = np.argsort(-sims, axis=1, kind="stable")
    if mode == "aqe":
        top = ranks[:, :n]
        q2 = weighted_average(q, db[top], np.take_along_axis(sims, top, axis=1), alpha)
        return np.argsort(-(q2 @ db.T), axis=1, kind="stable")
    if mode == "dba":
        db_sims = db @ db.T
        np.fill_diagonal(db_sims, -np.inf)
        neigh = np.argsort(-db_sims, axis=1, kind="stable")[:, :n]
        out = ranks.copy()
        for i in range(len(q)):
            cand = ranks[i, :shortlist]
            aug = weighted_average(
                db[cand], db[neigh[cand]], np.take_along_axis(db_sims[cand], neigh[cand], axis=1), alpha
            )
            out[i, :shortlist] = cand[np.argsort(-(aug @ q[i]), kind="stable")]
        return out
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="photos per class (default: all)")
    parser.add_argument("--copies", type=int, default=200, help="originals edited for copy detection")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--n", type=int, default=2, help="neighbours for alpha-QE and DBA")
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--shortlist", type=int, default=100)
    args = parser.parse_args()

    data = folder_dataset(SHARED / "caltech101-half", distractor_dirs=[SHARED / "caltech101-distractors"])
    seen: dict[str | None, int] = defaultdict(int)
    keep = []
    for i, label in enumerate(data.labels):
        if args.limit is None or label is None or seen[label] < args.limit:
            keep.append(i)
            seen[label] += 1
    paths = [data.paths[i] for i in keep]
    labels = [data.labels[i] for i in keep]
    model = DescriptorModel.create()
    print(f"{model.meta.describe()}; {len(paths)} database photos")
    t0 = time.perf_counter()
    db_scales = per_scale(model, paths, args.batch)
    print(f"database extracted in {time.perf_counter() - t0:.0f} s")

    rng = np.random.default_rng(0)
    labelled = [i for i, lab in enumerate(labels) if lab is not None]
    originals = rng.choice(labelled, size=min(args.copies, len(labelled)), replace=False)
    copies, truth, kinds = [], [], []
    for idx in originals:
        img = Image.open(paths[idx]).convert("RGB")
        for kind in EDITS:
            copies.append(np.asarray(classic_edit(img, kind, rng)))
            truth.append(idx)
            kinds.append(kind)
    q_scales = per_scale(model, copies, args.batch)
    truth_a = np.array(truth)
    scale_sets = {"multi-scale": list(range(len(model.meta.scales))), "single-scale": [0]}
    print(
        f"\n{'scales':13s} {'rerank':7s} {'mAP':>7s} {'mP@10':>7s} {'copy R@1':>9s}  "
        + " ".join(f"{k:>7s}" for k in EDITS)
    )
    for scale_name, which in scale_sets.items():
        db = combine(db_scales, which)
        q = combine(q_scales, which)
        for mode in ("none", "aqe", "dba"):
            ranks = rerank(db[labelled], db, mode, args.n, args.alpha, args.shortlist)
            ev = _map_from_ranks(ranks, labels, labelled)
            copy_ranks = rerank(q, db, mode, args.n, args.alpha, args.shortlist)
            hit = copy_ranks[:, 0] == truth_a
            per_kind = " ".join(f"{hit[np.array(kinds) == k].mean() * 100:7.1f}" for k in EDITS)
            print(
                f"{scale_name:13s} {mode:7s} {ev[0] * 100:7.2f} {ev[1] * 100:7.2f} {hit.mean() * 100:9.1f}  {per_kind}"
            )


def _map_from_ranks(ranks: np.ndarray, labels: list[str | None], queries: list[int]) -> tuple[float, float]:
    """mAP and mP@10 of full rankings, the query itself removed (as evaluate_descriptors does)."""
    from retrieval.evaluate import mean_average_precision

    gnd = []
    label_arr = np.array([lab if lab is not None else "" for lab in labels], dtype=object)
    for q in queries:
        ok = np.flatnonzero(label_arr == labels[q])
        gnd.append({"ok": ok[ok != q], "junk": np.array([q])})
    res = mean_average_precision(ranks, gnd, ks=(10,))
    return res.map, res.mp_at_k[10]


if __name__ == "__main__":
    main()
