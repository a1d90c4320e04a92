"""Descriptor options on real photos: mAP, mP@10 and copy recall@1, single- and multi-scale.

Every photo of ``../shared/data/caltech101-half`` is a query against all other photos plus
the 467 distractors (class = relevant; distractors are never relevant). Copy detection:
``--copies`` originals (drawn as ``bench.rerank`` draws them) edited two ways and searched
against the same database, a hit when the top result is the original:

* **classic**: ``bench.rerank``'s seven single edits (``retrieval.edits.classic_edit``, draw for
  draw the copies that bench makes), seven copies per original;
* **strong**: ``retrieval.edits.edited_copy`` with the ``STRONG`` policy (several edits composed,
  crops down to 30 % of the area), ``--strong-per`` copies per original, seeded by ``--seed``.

One backbone pass over the photos and one over the copies feed every row: the feature maps of
each batch are pooled by every option at once and each scale's descriptor is kept, so
single-scale (scale 1), multi-scale (1, 1/sqrt 2, 1/2) and every way of combining the scales
come from the same forward passes. Three tables:

1. SPoC, MAC, GeM and R-MAC with and without PCA-whitening learned from the collection itself
   (no labels used, as ``imsearch index`` does without a training set): mAP, mP@10.
2. SuperGlobal's training-free options (Shao et al., ICCV 2023), no whitening, each on its own
   and all together, on GeM and on R-MAC (the default): GeM+ (p 4.6), regional GeM, ReLU+,
   Scale-GeM (maximum, or power mean p 10, over the L2-normalized scales). Every row is a
   ``DescriptorModel`` head (``pooling``, ``pooling_params``, ``scale_agg``; printed in a legend)
   on the shared feature maps.
3. Re-ranking of the default (R-MAC) and of the all-SuperGlobal descriptors: none, alpha-QE and
   DBA (``bench.rerank``'s code), SuperGlobal's MDescAug + RerankwMDA
   (``retrieval.rerank.superglobal_rerank`` over the top ``--mda-m``).

    python -m bench.descriptors                     # all photos, 200 originals (10-20 min, 2 cores)
    python -m bench.descriptors --limit 3 --distractors 30 --copies 10 --strong-per 1   # quick
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.rerank import _map_from_ranks, rerank
from retrieval.edits import CLASSIC_EDITS, STRONG, classic_edit, edited_copy
from retrieval.evaluate import evaluate_descriptors, folder_dataset
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.pooling import gem, l2n, mac, rmac_region_vectors, spoc
from retrieval.models.pooling_defaults import GEM_PLUS_P, RELU_PLUS_EPS, SCALE_GEM_P
from retrieval.models.whitening import CovarianceAccumulator, learn_pca_whitening
from retrieval.rerank import MDA_BETA, MDA_K, MDA_QUERY_K, MDA_SHORTLIST, superglobal_rerank

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
POOLINGS = ("spoc", "mac", "gem", "rmac")
RERANKS = ("none", "aqe", "dba", "mda")


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One descriptor of table 2: ``DescriptorModel.create`` options (no whitening)."""

    label: str
    pooling: str = "rmac"
    params: dict[str, float] = field(default_factory=dict)
    scale_agg: str = "sum"
    scale_p: float = SCALE_GEM_P

    @property
    def key(self) -> tuple[str, tuple[tuple[str, float], ...]]:
        """What the per-scale descriptors depend on (not the combination of the scales)."""
        return self.pooling, tuple(sorted(self.params.items()))

    def create_args(self) -> str:
        out = [f"pooling={self.pooling!r}"]
        if self.params:
            out.append(f"pooling_params={self.params}")
        if self.scale_agg != "sum":
            p = f", scale_p={self.scale_p:g}" if self.scale_agg == "gem" else ""
            out.append(f"scale_agg={self.scale_agg!r}{p}")
        return ", ".join(out)


def superglobal_rows(relu_eps: list[float]) -> list[Row]:
    """Each SuperGlobal option on its own and all together, on GeM and on R-MAC."""
    first = relu_eps[0]
    rows = [
        Row("GeM p=3", "gem"),
        Row(f"GeM+ p={GEM_PLUS_P:g}", "gem", {"p": GEM_PLUS_P}),
        Row("regional GeM p=3", "rgem"),
        *[Row(f"ReLU+ {e:g}, GeM p=3", "gem", {"relu_eps": e}) for e in relu_eps],
        Row("Scale-GeM max, GeM p=3", "gem", scale_agg="max"),
        Row(f"Scale-GeM p={SCALE_GEM_P:g}, GeM p=3", "gem", scale_agg="gem"),
        Row(f"all: ReLU+ {first:g}, rGeM p={GEM_PLUS_P:g}, sGeM max", "rgem",
            {"p": GEM_PLUS_P, "relu_eps": first}, "max"),
        Row(f"all: ReLU+ {first:g}, rGeM p={GEM_PLUS_P:g}, sGeM p={SCALE_GEM_P:g}", "rgem",
            {"p": GEM_PLUS_P, "relu_eps": first}, "gem"),
        Row("R-MAC (default)"),
        *[Row(f"ReLU+ {e:g}, R-MAC", params={"relu_eps": e}) for e in relu_eps],
        Row("Scale-GeM max, R-MAC", scale_agg="max"),
        Row(f"Scale-GeM p={SCALE_GEM_P:g}, R-MAC", scale_agg="gem"),
        Row(f"R-MAC + ReLU+ {first:g} + sGeM max", params={"relu_eps": first}, scale_agg="max"),
    ]
    return rows


def head_model(base: DescriptorModel, row: Row) -> DescriptorModel:
    """``base``'s backbone (shared, not copied) with the head ``row`` describes."""
    meta = replace(base.meta, pooling=row.pooling, pooling_params=dict(row.params), scale_agg=row.scale_agg,
                   scale_p=row.scale_p)
    return DescriptorModel(base.backbone, meta).eval()


# --------------------------------------------------------------------------- extraction


Key = tuple[str, tuple[tuple[str, float], ...]]


@dataclass
class Store:
    """Per-scale descriptors of every head ``(n, scales, C)`` float16, and table 1's pooled vectors."""

    per_scale: dict[Key, np.ndarray]
    classic: dict[str, dict[int, dict[int, np.ndarray]]] | None = None  # pooling -> image -> scale -> (1|R, C)


def collect(
    model: DescriptorModel, items: Iterator[ExtractItem], n: int, heads: dict[Key, DescriptorModel], batch: int,
    *, table1: bool, what: str,
) -> Store:
    """One backbone pass over ``items`` (keys 0..n-1): every head's per-scale descriptors, and
    (``table1``) SPoC/MAC/GeM vectors and R-MAC region vectors for the whitening table."""
    n_scales, channels = len(model.meta.scales), model.meta.channels
    store = Store({k: np.zeros((n, n_scales, channels), dtype=np.float16) for k in heads})
    if table1:
        store.classic = {p: defaultdict(dict) for p in POOLINGS}

    def hook(feats: torch.Tensor, keys: list[Hashable], scales: list[int]) -> None:
        rows = [int(k) for k in keys]  # type: ignore[call-overload]
        for key, head in heads.items():
            store.per_scale[key][rows, scales] = head.scale_descriptor(feats).numpy().astype(np.float16)
        if store.classic is not None:
            pooled = {"spoc": l2n(spoc(feats)), "mac": l2n(mac(feats)), "gem": l2n(gem(feats, 3.0))}
            regions = rmac_region_vectors(feats)
            for i, (key, s) in enumerate(zip(rows, scales, strict=True)):
                for name, vec in pooled.items():
                    store.classic[name][key][s] = vec[i : i + 1].numpy().astype(np.float32)
                store.classic["rmac"][key][s] = regions[i].numpy().astype(np.float16)

    ex = Extractor(model, batch_size=batch)
    ex.feature_hook = hook
    t0 = time.perf_counter()
    for res in ex.iter_extract(items):
        if not res.ok:
            raise SystemExit(f"cannot describe {what} {res.key}: {res.error}")
    print(f"{what}: {n} images described in {time.perf_counter() - t0:.0f} s")
    return store


@dataclass
class Copies:
    """The copy queries: the originals' database indices, one per copy, and the copies' edit set."""

    truth: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)  # "classic" or "strong"


def copy_items(paths: list[Path], originals: np.ndarray, rng: np.random.Generator, strong_per: int, seed: int,
               copies: Copies) -> Iterator[ExtractItem]:
    """The copies, made as they are consumed (classic: bench.rerank's draws from ``rng``; strong: seeded by path)."""
    i = 0
    for idx in originals:
        img = Image.open(paths[idx]).convert("RGB")
        for kind in CLASSIC_EDITS:
            copies.truth.append(int(idx))
            copies.kind.append("classic")
            yield ExtractItem(i, np.asarray(classic_edit(img, kind, rng)))
            i += 1
        key = str(paths[idx].relative_to(SHARED)) if paths[idx].is_relative_to(SHARED) else str(paths[idx])
        for j in range(strong_per):
            copies.truth.append(int(idx))
            copies.kind.append("strong")
            yield ExtractItem(i, np.asarray(edited_copy(img, seed=seed, key=key, index=j, policy=STRONG)))
            i += 1


# --------------------------------------------------------------------------- table 1 (as before)


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


def table1(store: Store, n: int, all_scales: list[int], labels: list[str | None], dims: list[int],
           save: Path | None) -> None:
    assert store.classic is not None
    print(f"\n[1] poolings and PCA-whitening (learned from the collection)\n"
          f"{'pooling':8s} {'whitening':12s} {'scales':7s} {'mAP':>7s} {'mP@10':>7s}")
    for name in POOLINGS:
        per_image = store.classic[name]
        variants: list[tuple[str, tuple | None]] = [("none", None)]
        acc: CovarianceAccumulator | None = None
        for img in per_image.values():
            for v in img.values():
                if acc is None:
                    acc = CovarianceAccumulator(v.shape[1])
                acc.update(v)
        assert acc is not None
        for dim in dims:
            params = learn_pca_whitening(acc, dim or None)
            variants.append((f"pca-{params.weight.shape[0]}", (params.weight, params.mean)))
        for white_name, white in variants:
            for scale_name, scales in (("multi", all_scales), ("1", [0])):
                desc = describe(per_image, n, scales, white)
                if save and name == "rmac" and white is None and scale_name == "multi":
                    np.save(save, desc)
                res = evaluate_descriptors(desc, labels, ks=(10,))
                print(f"{name:8s} {white_name:12s} {scale_name:7s} {res.map * 100:7.2f} {res.mp_at_k[10] * 100:7.2f}")


# --------------------------------------------------------------------------- tables 2 and 3


def combined(per_scale: np.ndarray, which: list[int], head: DescriptorModel) -> np.ndarray:
    """The image descriptors ``(n, C)`` from the kept scales ``which``, combined as the head's model does."""
    x = torch.from_numpy(per_scale[:, which].astype(np.float32)).transpose(0, 1)  # (S, n, C)
    with torch.inference_mode():
        return np.ascontiguousarray(head.combine_scales(x).numpy())


def copy_recall(q: np.ndarray, db: np.ndarray, truth: np.ndarray, chunk: int = 512) -> float:
    hits = [np.argmax(q[s : s + chunk] @ db.T, axis=1) == truth[s : s + chunk] for s in range(0, len(q), chunk)]
    return float(np.concatenate(hits).mean()) if hits else float("nan")


def mda_ranks(q: np.ndarray, db: np.ndarray, db_sims: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Full rankings after MDescAug + RerankwMDA of each query's top ``--mda-m``."""
    ranks = np.argsort(-(q @ db.T), axis=1, kind="stable")
    size = min(args.mda_m, db.shape[0])
    for s in range(0, len(q), 8):
        cand = ranks[s : s + 8, :size]
        gram = db_sims[cand[:, :, None], cand[:, None, :]]
        order, _ = superglobal_rerank(q[s : s + 8], db[cand], k=args.mda_k, beta=args.mda_beta,
                                      query_k=args.mda_query_k, gram=gram)
        ranks[s : s + 8, :size] = np.take_along_axis(cand, order, axis=1)
    return ranks


def ranked(q: np.ndarray, db: np.ndarray, mode: str, db_sims: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    if mode == "mda":
        return mda_ranks(q, db, db_sims, args)
    return rerank(q, db, mode, args.n, args.alpha, args.shortlist)


@dataclass
class Data:
    labels: list[str | None]
    labelled: list[int]
    truth: np.ndarray
    kinds: np.ndarray
    db: Store
    queries: Store
    n_scales: int


def row_line(label: str, scale_name: str, figures: tuple[float, float, float, float]) -> str:
    m, p10, classic, strong = figures
    return f"{label:46s} {scale_name:6s} {m * 100:7.2f} {p10 * 100:7.2f} {classic * 100:8.1f} {strong * 100:8.1f}"


HEADER = f"{'descriptor':46s} {'scales':6s} {'mAP':>7s} {'mP@10':>7s} {'classic':>8s} {'strong':>8s}"


def table2(data: Data, rows: list[Row], heads: dict[str, DescriptorModel]) -> None:
    print("\n[2] SuperGlobal options, no whitening (copy R@1 for the classic and the strong copies)")
    print(HEADER)
    for row in rows:
        head = heads[row.label]
        for scale_name, which in (("multi", list(range(data.n_scales))), ("1", [0])):
            if scale_name == "1" and row.scale_agg != "sum":
                continue  # one scale: nothing to combine, the same as the row's sum twin
            db = combined(data.db.per_scale[row.key], which, head)
            q = combined(data.queries.per_scale[row.key], which, head)
            res = evaluate_descriptors(db, data.labels, ks=(10,))
            figures = (res.map, res.mp_at_k[10], copy_recall(q[data.kinds == "classic"], db,
                       data.truth[data.kinds == "classic"]), copy_recall(q[data.kinds == "strong"], db,
                       data.truth[data.kinds == "strong"]))
            print(row_line(row.label, scale_name, figures), flush=True)
    print("\nrows as DescriptorModel.create(...) options (single-scale rows of a Scale-GeM row: its sum twin):")
    for row in rows:
        print(f"  {row.label:46s} {row.create_args()}")


def table3(data: Data, rows: list[Row], heads: dict[str, DescriptorModel], args: argparse.Namespace) -> None:
    print(f"\n[3] re-ranking: alpha-QE / DBA (n={args.n}, alpha={args.alpha:g}, DBA shortlist {args.shortlist}), "
          f"MDescAug + RerankwMDA (M={args.mda_m}, K={args.mda_k}, beta={args.mda_beta:g}, "
          f"query K={args.mda_query_k})")
    print(HEADER.replace("descriptor", "descriptor / re-ranking", 1))
    for row in rows:
        head = heads[row.label]
        for scale_name, which in (("multi", list(range(data.n_scales))), ("1", [0])):
            db = combined(data.db.per_scale[row.key], which, head)
            q = combined(data.queries.per_scale[row.key], which, head)
            db_sims = db @ db.T
            for mode in RERANKS:
                t0 = time.perf_counter()
                cat = _map_from_ranks(ranked(db[data.labelled], db, mode, db_sims, args), data.labels, data.labelled)
                recall = []
                for kind in ("classic", "strong"):
                    sel = data.kinds == kind
                    top = ranked(q[sel], db, mode, db_sims, args)[:, 0] if sel.any() else np.zeros(0, dtype=int)
                    recall.append(float((top == data.truth[sel]).mean()) if sel.any() else float("nan"))
                label = f"{row.label} / {mode}"
                print(row_line(label, scale_name, (cat[0], cat[1], recall[0], recall[1])) +
                      f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None, help="photos per class (default: all)")
    parser.add_argument("--distractors", type=int, default=None, help="distractor photos (default: all)")
    parser.add_argument("--copies", type=int, default=200, help="originals edited for copy detection")
    parser.add_argument("--strong-per", type=int, default=2, help="strong copies per original")
    parser.add_argument("--seed", type=int, default=0, help="seed of the strong copies")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dims", type=int, nargs="+", default=[0, 512], help="whitening dims of table 1 (0 = full)")
    parser.add_argument("--relu-eps", type=float, nargs="+", default=[RELU_PLUS_EPS, 0.1],
                        help="ReLU+ floors (the first one is used in the all-options rows)")
    parser.add_argument("--n", type=int, default=2, help="neighbours for alpha-QE and DBA")
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--shortlist", type=int, default=100, help="DBA's shortlist")
    parser.add_argument("--mda-m", type=int, default=MDA_SHORTLIST, help="MDescAug + RerankwMDA shortlist (M)")
    parser.add_argument("--mda-k", type=int, default=MDA_K, help="MDescAug neighbours (K)")
    parser.add_argument("--mda-beta", type=float, default=MDA_BETA)
    parser.add_argument("--mda-query-k", type=int, default=MDA_QUERY_K, help="RerankwMDA: results max-pooled")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        help="write the default descriptors (multi-scale R-MAC) "
        "to this .npy, e.g. for `python -m bench.search --real FILE`",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data_set = folder_dataset(SHARED / "caltech101-half", distractor_dirs=[SHARED / "caltech101-distractors"])
    keep: list[int] = []
    seen: dict[str | None, int] = defaultdict(int)
    for i, label in enumerate(data_set.labels):
        cap = args.distractors if label is None else args.limit
        if cap is None or seen[label] < cap:
            keep.append(i)
            seen[label] += 1
    paths = [data_set.paths[i] for i in keep]
    labels = [data_set.labels[i] for i in keep]
    labelled = [i for i, lab in enumerate(labels) if lab is not None]
    model = DescriptorModel.create(args.backbone, max_side=args.max_side)
    rows = superglobal_rows(args.relu_eps)
    heads = {row.label: head_model(model, row) for row in rows}
    by_key = {row.key: heads[row.label] for row in rows}
    rng = np.random.default_rng(0)  # bench.rerank's draws: the same originals and classic copies
    originals = rng.choice(labelled, size=min(args.copies, len(labelled)), replace=False)
    n_copies = len(originals) * (len(CLASSIC_EDITS) + args.strong_per)
    print(f"{model.meta.describe()}; {len(labelled)} queries, {len(paths)} database photos, {len(originals)} "
          f"originals -> {n_copies} copies ({len(CLASSIC_EDITS)} classic + {args.strong_per} strong each)")

    db = collect(model, (ExtractItem(i, p) for i, p in enumerate(paths)), len(paths), by_key, args.batch,
                 table1=True, what="database")
    copies = Copies()
    queries = collect(model, copy_items(paths, originals, rng, args.strong_per, args.seed, copies), n_copies,
                      by_key, args.batch, table1=False, what="copies")
    all_scales = list(range(len(model.meta.scales)))
    table1(db, len(paths), all_scales, labels, args.dims, args.save)
    db.classic = None  # the region vectors are not needed any more
    data = Data(labels, labelled, np.array(copies.truth), np.array(copies.kind), db, queries, len(all_scales))
    table2(data, rows, heads)
    rerank_rows = [rows[[r.label for r in rows].index("R-MAC (default)")],
                   next(r for r in rows if r.label.startswith("all:") and r.scale_agg == "max")]
    table3(data, rerank_rows, heads, args)


if __name__ == "__main__":
    main()
