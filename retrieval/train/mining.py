"""Training tuples, with hard negatives (and optionally hard positives) mined from the current model.

Each epoch (Gordo et al.; Radenović et al.): draw queries, describe them and a random pool
of database images with the *current* network, and for each query keep the pool images
most similar to it among OTHER groups, at most one per group (so the negatives of a query
are diverse), never one of the query's own group. Optionally the positive is the image of
the query's group least similar to it (hard positive) instead of a random one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from retrieval.errors import TrainingError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.progress import Progress
from retrieval.train.data import TrainingData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTuple:
    """Indices into the training images: a query, its positive, its negatives.

    Self-supervised tuples (:mod:`retrieval.train.selfsup`) also say which *view* of each image
    is shown: ``views`` holds one copy index per image (query, positive, negatives...; -1 = the
    photo unedited), edited with ``edit_seed``. Without views, images are augmented at random.
    """

    query: int
    positive: int
    negatives: tuple[int, ...]
    views: tuple[int, ...] = ()
    edit_seed: int = 0

    @property
    def images(self) -> tuple[int, ...]:
        """The image indices in order: query, positive, negatives."""
        return (self.query, self.positive, *self.negatives)


def hardest_negatives(
    query_vecs: np.ndarray,
    query_groups: np.ndarray,
    pool_vecs: np.ndarray,
    pool_groups: np.ndarray,
    count: int,
) -> np.ndarray:
    """For each query, the ``count`` most similar pool items of other groups, one per group.

    Returns ``(n_queries, count)`` int64 pool indices, most similar first, ``-1`` padded when
    fewer groups are available. Similarity is the inner product (descriptors are L2-normalized);
    ties keep the lower pool index first.
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    pool = np.asarray(pool_vecs, dtype=np.float32)
    qg = np.asarray(query_groups, dtype=np.int64)
    pg = np.asarray(pool_groups, dtype=np.int64)
    out = np.full((q.shape[0], count), -1, dtype=np.int64)
    if pool.shape[0] == 0:
        return out
    sims = q @ pool.T
    for i in range(q.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        order = order[pg[order] != qg[i]]
        _, first = np.unique(pg[order], return_index=True)  # first (= most similar) item of each group
        chosen = order[np.sort(first)][:count]
        out[i, : chosen.size] = chosen
    return out


def hardest_positives(
    query_vecs: np.ndarray,
    *,
    query_ids: np.ndarray,
    query_groups: np.ndarray,
    cand_vecs: np.ndarray,
    cand_ids: np.ndarray,
    cand_groups: np.ndarray,
) -> np.ndarray:
    """For each query, the candidate of its group (not itself) LEAST similar to it; ``-1`` if none.

    ``*_ids`` are image identities (a candidate with the query's id is the query itself).
    """
    sims = np.asarray(query_vecs, dtype=np.float32) @ np.asarray(cand_vecs, dtype=np.float32).T
    same = (np.asarray(query_groups)[:, None] == np.asarray(cand_groups)[None, :]) & (
        np.asarray(query_ids)[:, None] != np.asarray(cand_ids)[None, :]
    )
    masked = np.where(same, sims, np.inf)
    best = masked.argmin(axis=1).astype(np.int64)
    best[~same.any(axis=1)] = -1
    return best


def sample_queries(
    data: TrainingData, count: int, rng: np.random.Generator, *, balanced: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` queries from groups of 2+ images and a random positive for each.

    ``balanced``: a group is drawn uniformly first, then one of its images (large groups
    do not dominate); otherwise images are drawn uniformly. Returns ``(queries, positives)``.
    """
    members = {g: m for g, m in data.members().items() if m.size >= 2}
    if not members:
        raise ValueError("no group has two images")
    eligible = np.concatenate(list(members.values()))
    if balanced:
        keys = np.asarray(sorted(members), dtype=np.int64)
        picked = rng.choice(keys, size=count, replace=True)
        queries = np.asarray([rng.choice(members[int(g)]) for g in picked], dtype=np.int64)
    else:
        queries = rng.choice(eligible, size=count, replace=count > eligible.size)
    positives = np.empty_like(queries)
    for i, q in enumerate(queries.tolist()):
        others = members[int(data.groups[q])]
        others = others[others != q]
        positives[i] = rng.choice(others)
    return queries, positives


def describe_arrays(
    model: DescriptorModel,
    arrays: Sequence[np.ndarray],
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
    progress: Progress | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Descriptors ``(n, dim)`` of already-resized images (single scale, no augmentation).

    Runs the batched :class:`Extractor` with the model's meta set to one scale at
    ``max_side`` (default: the arrays' longest side; every image is scaled to that long
    side), then restores the meta and every module's training/eval mode. ``progress`` is
    advanced by one per image described.
    """
    if not arrays:
        return np.zeros((0, model.meta.dim), dtype=np.float32)
    modes = [(m, m.training) for m in model.modules()]
    saved_meta = model.meta
    long_side = max_side or max(max(a.shape[:2]) for a in arrays)
    try:
        model.meta = replace(saved_meta, max_side=int(long_side), scales=(1.0,))
        extractor = Extractor(model, device=device, precision=precision, batch_size=batch_size, workers=workers)
        out = np.zeros((len(arrays), model.meta.dim), dtype=np.float32)
        for res in extractor.iter_extract(ExtractItem(i, a) for i, a in enumerate(arrays)):
            if res.error is not None or res.descriptor is None:
                raise TrainingError(f"training image {res.key} could not be described: {res.error}")
            out[int(res.key)] = res.descriptor  # type: ignore[call-overload]
            if progress is not None:
                progress.update()
        return out
    finally:
        model.meta = saved_meta
        for module, mode in modes:
            module.training = mode


Describe = Callable[[np.ndarray], np.ndarray]  # image indices -> (n, dim) descriptors


def mined_tuples(
    data: TrainingData,
    rng: np.random.Generator,
    describe: Describe,
    *,
    queries: int,
    pool_size: int,
    negatives: int,
    hard_positives: bool = False,
    positive_candidates: int = 8,
    balanced: bool = True,
) -> list[TrainTuple]:
    """One epoch of tuples from grouped data, negatives mined with ``describe`` (the current model).

    Queries without any negative (every pool image in their group) are dropped with a warning.
    """
    q_idx, p_idx = sample_queries(data, queries, rng, balanced=balanced)
    pool_idx = rng.choice(len(data), size=min(pool_size, len(data)), replace=False).astype(np.int64)
    cand_rows: list[np.ndarray] = []
    if hard_positives:
        members = data.members()
        for q in q_idx.tolist():
            same = members[int(data.groups[q])]
            same = same[same != q]
            cand_rows.append(rng.choice(same, size=min(positive_candidates, same.size), replace=False))
    needed = np.unique(np.concatenate([q_idx, p_idx, pool_idx, *cand_rows]))
    vecs = describe(needed)
    row = {int(i): r for r, i in enumerate(needed.tolist())}

    def v(ids: np.ndarray) -> np.ndarray:
        return vecs[[row[int(i)] for i in ids]]

    neg = hardest_negatives(v(q_idx), data.groups[q_idx], v(pool_idx), data.groups[pool_idx], negatives)
    if hard_positives:  # among every candidate drawn for the epoch: all are images of some query's group
        cands = np.unique(np.concatenate(cand_rows))
        best = hardest_positives(
            v(q_idx), query_ids=q_idx, query_groups=data.groups[q_idx],
            cand_vecs=v(cands), cand_ids=cands, cand_groups=data.groups[cands],
        )
        p_idx = np.where(best >= 0, cands[np.maximum(best, 0)], p_idx)
    tuples = [
        TrainTuple(int(q), int(p), tuple(int(pool_idx[j]) for j in n if j >= 0))
        for q, p, n in zip(q_idx.tolist(), p_idx.tolist(), neg, strict=True)
    ]
    kept = [t for t in tuples if t.negatives]
    if len(kept) < len(tuples):
        logger.warning("%d queries got no negative from the pool (raise pool_size)", len(tuples) - len(kept))
    return kept


def triplet_tuples(
    data: TrainingData,
    rng: np.random.Generator,
    count: int,
    describe: Describe | None = None,
    *,
    pool_size: int = 0,
    extra_negatives: int = 0,
) -> list[TrainTuple]:
    """``count`` of the listed triplets (all of them when fewer), in random order.

    With ``describe`` and ``extra_negatives > 0``, each tuple also gets that many mined hard
    negatives from a random pool: from groups other than the anchor's (its anchor-positive
    component) and the listed negative's, one per group.
    """
    if data.triplets is None:
        raise ValueError("the data holds no triplets")
    n = data.triplets.shape[0]
    rows = data.triplets[rng.permutation(n)[: min(count, n)]]
    tuples = [TrainTuple(int(a), int(p), (int(ng),)) for a, p, ng in rows.tolist()]
    if describe is None or extra_negatives < 1 or pool_size < 1:
        return tuples
    pool_idx = rng.choice(len(data), size=min(pool_size, len(data)), replace=False).astype(np.int64)
    anchors = rows[:, 0]
    needed = np.unique(np.concatenate([anchors, pool_idx]))
    vecs = describe(needed)
    pos = np.searchsorted(needed, anchors), np.searchsorted(needed, pool_idx)
    mined = hardest_negatives(vecs[pos[0]], data.groups[anchors], vecs[pos[1]], data.groups[pool_idx],
                              extra_negatives + 1)
    out = []
    for t, row in zip(tuples, mined, strict=True):
        listed_group = data.groups[t.negatives[0]]
        extra = [int(pool_idx[j]) for j in row if j >= 0 and data.groups[pool_idx[j]] != listed_group]
        out.append(TrainTuple(t.query, t.positive, (*t.negatives, *extra[:extra_negatives])))
    return out
