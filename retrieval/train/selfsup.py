"""Self-supervised copy training: tuples of edited copies of one photo, negatives from the others.

Every photo is its own group. A tuple is ``(anchor, positive, negatives...)`` where

* the **anchor** is the photo itself (with probability ``anchor_original``) or its edited
  copy number :data:`ANCHOR_COPY`;
* the **positive** is its edited copy number :data:`POSITIVE_COPY` (always a different edit);
* the **negatives** are the pool photos most similar to the anchor under the current
  network, at most one per photo, NEVER the anchor's photo, an edit of it, or a file with
  the same content (groups are distinct contents: :func:`~retrieval.train.mining.hardest_negatives`
  excludes the anchor's group). Each pool photo is shown (and mined) as itself or, with
  probability ``negative_edit``, as its edited copy number :data:`NEGATIVE_COPY`, so edits
  are no cue of "same photo".

A *view* is ``(photo index, copy index)``, :data:`ORIGINAL` for the photo unedited. Edits
come from :mod:`retrieval.edits` (the strong set shared with the benches), seeded by
``(edit seed, photo index, copy index)`` with an edit seed derived from ``(seed, epoch)``
(:func:`epoch_edit_seed`): the same epoch always shows the same copies, so runs are
reproducible and a resumed run sees what an uninterrupted one would. Validation copies use
another seed (:func:`validation_edit_seed`) keyed by the photo's content sha256.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from retrieval.edits import STRONG, EditPolicy, edited_copy
from retrieval.train.data import TrainingData
from retrieval.train.mining import TrainTuple, hardest_negatives

logger = logging.getLogger(__name__)

#: the copy index of a photo shown unedited
ORIGINAL = -1
#: copy indices of the anchor's edit, the positive and a negative's edit (distinct, so distinct edits)
ANCHOR_COPY, POSITIVE_COPY, NEGATIVE_COPY = 0, 1, 2
_TRAIN_TAG, _VALIDATION_TAG = 0x5E1F, 0x7A11

View = tuple[int, int]  # (photo index, copy index)
#: views and their edit seed -> (n, dim) descriptors
DescribeViews = Callable[[Sequence[View], int], np.ndarray]


def _seed32(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint32)[0])


def epoch_edit_seed(seed: int, epoch: int) -> int:
    """The edit seed of one training epoch (32 bits, as :func:`retrieval.edits.copy_rng` takes)."""
    return _seed32(seed, epoch, _TRAIN_TAG)


def validation_edit_seed(seed: int) -> int:
    """The edit seed of the validation copies: the same every epoch, never a training epoch's."""
    return _seed32(seed, _VALIDATION_TAG)


def render_view(
    pixels: np.ndarray, key: int | str, copy: int, edit_seed: int, policy: EditPolicy = STRONG
) -> np.ndarray:
    """``pixels`` (H, W, 3) uint8 as it is (``copy`` < 0) or as its edited copy ``copy`` (any size)."""
    if copy < 0:
        return pixels
    edited = edited_copy(Image.fromarray(pixels), seed=edit_seed, key=key, index=copy, policy=policy)
    return np.array(edited, dtype=np.uint8)  # writable (torch.from_numpy warns on read-only arrays)


def draw_photos(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` photo indices in ``range(n)``: every photo once before any twice (seeded permutations)."""
    rounds = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(rounds)])[:count].astype(np.int64)


def selfsup_tuples(
    data: TrainingData,
    rng: np.random.Generator,
    describe: DescribeViews,
    *,
    queries: int,
    pool_size: int,
    negatives: int,
    edit_seed: int,
    anchor_original: float = 0.5,
    negative_edit: float = 0.5,
) -> list[TrainTuple]:
    """One epoch of self-supervised tuples, negatives mined with ``describe`` (the current model).

    Anchors whose pool holds no other photo are dropped with a warning.
    """
    n = len(data)
    anchors = draw_photos(n, queries, rng)
    anchor_copy = np.where(rng.random(anchors.size) < anchor_original, ORIGINAL, ANCHOR_COPY)
    pool = rng.choice(n, size=min(pool_size, n), replace=False).astype(np.int64)
    pool_copy = np.where(rng.random(pool.size) < negative_edit, NEGATIVE_COPY, ORIGINAL)
    views: list[View] = [(int(p), int(c)) for p, c in zip(anchors.tolist(), anchor_copy.tolist(), strict=True)]
    views += [(int(p), int(c)) for p, c in zip(pool.tolist(), pool_copy.tolist(), strict=True)]
    unique = sorted(set(views))
    row = {v: r for r, v in enumerate(unique)}
    vecs = describe(unique, edit_seed)
    at = np.asarray([row[v] for v in views], dtype=np.int64)
    neg = hardest_negatives(vecs[at[: anchors.size]], data.groups[anchors], vecs[at[anchors.size :]],
                            data.groups[pool], negatives)
    tuples = []
    for a, c, picks in zip(anchors.tolist(), anchor_copy.tolist(), neg, strict=True):
        chosen = [int(j) for j in picks if j >= 0]
        if chosen:
            tuples.append(TrainTuple(
                int(a), int(a), tuple(int(pool[j]) for j in chosen),
                views=(int(c), POSITIVE_COPY, *(int(pool_copy[j]) for j in chosen)), edit_seed=edit_seed,
            ))
    if len(tuples) < anchors.size:
        logger.warning("%d anchors got no negative from the pool (raise pool_size)", anchors.size - len(tuples))
    return tuples


def distinct_photo_rows(batch: Sequence[TrainTuple], groups: np.ndarray) -> list[int]:
    """Rows (in the batch's images: query, positive, negatives of each tuple in turn) of the queries
    and negatives, only the first of each distinct content (group): the photos a uniformity
    regularizer may push apart (never a photo from its own copy or twin)."""
    rows: list[int] = []
    seen: set[int] = set()
    start = 0
    for t in batch:
        for offset, image in [(0, t.query)] + [(2 + k, n) for k, n in enumerate(t.negatives)]:
            group = int(groups[image])
            if group not in seen:
                seen.add(group)
                rows.append(start + offset)
        start += len(t.images)
    return rows
