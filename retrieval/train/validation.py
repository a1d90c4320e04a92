"""Copy-detection validation: do edited copies of held-out photos find their original?

The queries are seeded strong edits (:mod:`retrieval.edits`, the validation seed of
:func:`~retrieval.train.selfsup.validation_edit_seed`, keyed by content sha256) of held-out
photos — photos the run never trains on: the held-out photos of a self-supervised run, the
images of the held-out groups of a category run. The database is those photos' originals
plus a seeded sample of training photos as distractors. A database image is relevant to a
query when it has the query's content (its original, or a byte-identical twin).

Reported (``val_copy_*`` in the history):

* ``r1``: the share of queries whose first result is relevant (recall@1);
* ``map``: mean average precision over the queries (with one original per query, the mean
  reciprocal rank of the original);
* ``uap``: micro-average precision (μAP, as the DISC 2021 copy-detection benchmark and SSCD
  report): every query's top :data:`UAP_TOP` results pooled and ranked by similarity, then
  one average precision over the pooled list, with the relevant (query, image) pairs as the
  positives. Unlike ``map`` it rewards similarities that mean the same for every query, which
  a single match threshold needs. Self-supervised runs select ``best.pt`` on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.evaluate import evaluate_descriptors, mean_average_precision, rank_by_similarity
from retrieval.train.data import TrainingData
from retrieval.train.images import ImageCache
from retrieval.train.photos import sha256_file
from retrieval.train.selfsup import render_view, validation_edit_seed

logger = logging.getLogger(__name__)

#: results per query pooled for the micro-AP
UAP_TOP = 10
_SAMPLE_TAG = 0xC0DE


def micro_average_precision(scores: np.ndarray, relevant: np.ndarray, n_positives: int) -> float:
    """Average precision of predictions ranked by ``scores`` (descending; ties: input order) when
    ``n_positives`` positives exist in all (those never predicted count as misses)."""
    if n_positives < 1:
        raise ValueError("micro-AP needs at least one positive")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hit = np.asarray(relevant, dtype=bool)[order]
    precision = np.cumsum(hit) / np.arange(1, hit.size + 1)
    return float(precision[hit].sum() / n_positives)


def copy_metrics(
    query_vecs: np.ndarray,
    db_vecs: np.ndarray,
    query_content: Sequence[str],
    db_content: Sequence[str],
    *,
    top: int = UAP_TOP,
) -> dict[str, float]:
    """``{"r1", "map", "uap"}`` of the queries against the database (inner-product similarity)."""
    db_ids = np.asarray(db_content, dtype=object)
    relevant = [np.flatnonzero(db_ids == c) for c in query_content]
    ranks = rank_by_similarity(query_vecs, db_vecs)
    res = mean_average_precision(ranks, [{"ok": r} for r in relevant], ks=(1,))
    k = min(top, ranks.shape[1])
    sims = np.take_along_axis(np.asarray(query_vecs, np.float64) @ np.asarray(db_vecs, np.float64).T,
                              ranks[:, :k], axis=1)
    hits = np.stack([np.isin(ranks[i, :k], relevant[i]) for i in range(ranks.shape[0])])
    uap = micro_average_precision(sims.ravel(), hits.ravel(), sum(r.size for r in relevant))
    return {"r1": res.recall_at_k[1], "map": res.map, "uap": uap}


def content_keys(data: TrainingData, indices: Sequence[int]) -> list[str]:
    """The content sha256 of each image (self-supervised data knows them; otherwise the files are hashed)."""
    if data.self_supervised:
        return [data.group_names[int(data.groups[i])] for i in indices]
    return [sha256_file(data.paths[i]) for i in indices]


@dataclass(frozen=True)
class CopyValidation:
    """The fixed copy-validation set of a run (rendered once; described again every epoch)."""

    queries: list[np.ndarray]  # edited copies of held-out photos
    query_content: list[str]
    originals: np.ndarray  # indices into the validation data: the held-out photos queried
    distractors: np.ndarray  # indices into the training data
    db_content: list[str]  # originals, then distractors


def build_copy_validation(
    val: TrainingData,
    val_cache: ImageCache,
    train: TrainingData,
    *,
    queries: int,
    distractors: int,
    seed: int,
) -> CopyValidation:
    """``queries`` copies of (up to ``queries``) held-out photos, cycling through the photos when
    there are fewer (copy 0 of each, then copy 1, ...), and ``distractors`` training photos."""
    rng = np.random.default_rng([seed, _SAMPLE_TAG])
    order = rng.permutation(len(val))
    originals = np.sort(order[: min(queries, len(val))]).astype(np.int64)
    picked = np.sort(rng.choice(len(train), size=min(distractors, len(train)), replace=False)).astype(np.int64)
    orig_content = content_keys(val, originals.tolist())
    edit_seed = validation_edit_seed(seed)
    val_cache.ensure(originals.tolist())
    query_arrays: list[np.ndarray] = []
    query_content: list[str] = []
    for j in range(queries):
        row, copy = j % originals.size, j // originals.size
        query_arrays.append(render_view(val_cache.get(int(originals[row])), orig_content[row], copy, edit_seed))
        query_content.append(orig_content[row])
    db_content = orig_content + content_keys(train, picked.tolist())
    logger.info("copy validation: %d edited copies of %d held-out photos against them and %d training photos",
                len(query_arrays), originals.size, picked.size)
    return CopyValidation(query_arrays, query_content, originals, picked, db_content)


def validation_metrics(
    describe: Callable[[Sequence[np.ndarray]], np.ndarray],
    val: TrainingData,
    val_cache: ImageCache,
    train_cache: ImageCache,
    copy_val: CopyValidation | None,
    *,
    groups: bool,
) -> dict[str, float]:
    """The validation metrics of the model behind ``describe`` (images -> descriptors), in one pass.

    ``groups``: the held-out groups' mAP and mP@k (``val_map``, ``val_mp@k``: every validation
    image a query against the others). With ``copy_val``: ``val_copy_r1``, ``val_copy_map``,
    ``val_copy_uap`` (:func:`copy_metrics`).
    """
    val_ids = list(range(len(val))) if groups else []
    orig_ids = copy_val.originals.tolist() if copy_val is not None else []
    own = val_ids or orig_ids  # the validation images described (every one for groups: the originals among them)
    val_cache.ensure(own)
    arrays = [val_cache.get(i) for i in own]
    if copy_val is not None:
        train_cache.ensure(copy_val.distractors.tolist())
        arrays += [train_cache.get(i) for i in copy_val.distractors.tolist()] + copy_val.queries
    vecs = describe(arrays)
    out: dict[str, float] = {}
    if val_ids:
        res = evaluate_descriptors(vecs[: len(val_ids)], val.labels, ks=(1, 5, 10))
        out.update({"val_map": res.map, **{f"val_mp@{k}": v for k, v in res.mp_at_k.items()}})
    if copy_val is not None:
        originals = vecs[orig_ids] if val_ids else vecs[: len(orig_ids)]
        distractors = vecs[len(own) : len(own) + copy_val.distractors.size]
        queries = vecs[len(own) + copy_val.distractors.size :]
        metrics = copy_metrics(queries, np.concatenate([originals, distractors]), copy_val.query_content,
                               copy_val.db_content)
        out.update({f"val_copy_{k}": v for k, v in metrics.items()})
    return out
