"""Learned whitening from (photo, edited copy) pairs: no labels, so a collection can learn it from its own photos.

Each photo and ``copies`` seeded strong edits of it (:func:`retrieval.edits.edited_copy`) are
described by the model *without* whitening; the photo is the group, and the learned
whitening of Radenović et al. (:func:`retrieval.models.whitening.learn_lw_whitening`) damps
the directions in which a photo's copies differ from it (the edits) while keeping those
that tell photos apart. The result installs with :meth:`DescriptorModel.set_whitening`
(for R-MAC it then projects every region vector before the sum, as PCA-whitening does).

Two inputs can be learned from (``vectors``):

* ``"global"`` (the default): one multi-scale descriptor per image (what the model returns
  without whitening), groups of ``1 + copies`` vectors;
* ``"regions"``: every R-MAC region vector of every scale (the vectors the whitening is
  then applied to), all of one photo and its copies in one group. Memory grows with the
  regions (~60 per image at the default 512 px and 3 scales): for small sets and measurements.

Defaults measured on a training split only (``python -m bench.copies --tune --limit 15``: 466 photos
x (1 + 2 copies) to learn from, 270 copies of 135 other training photos searched among 1,068 images):

=================  ========  =====  ============
model              copy R@1  µAP    category mAP
=================  ========  =====  ============
no whitening       85.9      68.4   72.8
PCA (database)     91.9      85.5   60.3
global, 0.25       91.5      73.6   71.0
global, 0.5        91.9      72.1   73.1
global, 0.75       92.6      69.7   74.7
global, 0.9        92.2      66.7   75.6
regions, 0.5       91.9      69.9   75.0
=================  ========  =====  ============

Copy R@1 is flat in the shrink and the input (within the ±1.6 points of 270 queries); a lower
shrink buys µAP with category mAP (PCA-whitening: the most µAP, -12.5 category mAP).
``global`` and ``0.75`` raise all three; regions do no
better for 60x the vectors. Learning from half the photos (233) changed little (92.6 / 67.9 / 75.2).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict, deque
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.edits import edited_copy
from retrieval.errors import ImageDecodeError, TrainingError
from retrieval.imageio import decode_image
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.pooling import l2n
from retrieval.models.whitening import WhiteningParams, learn_lw_whitening
from retrieval.progress import Progress

logger = logging.getLogger(__name__)

#: edited copies per photo
DEFAULT_COPIES = 2
#: the edits' seed (benches draw their query copies with another one)
DEFAULT_COPY_SEED = 0
#: shrinkage of the within-photo covariance towards the identity (see learn_lw_whitening; measured above)
DEFAULT_COPY_SHRINK = 0.75
#: what the whitening is learned from: "global" descriptors or R-MAC "regions"
COPY_VECTORS = ("global", "regions")
DEFAULT_COPY_VECTORS = "global"


def photo_key(photo: Path | str) -> str:
    """The key a photo's edits are seeded with: its path as given (stable across runs and orderings)."""
    return os.fspath(photo)


def _decode_with_copies(
    photo: Path, key: str, copies: int, seed: int, max_side: int
) -> list[np.ndarray] | str:
    """The photo's pixels (decoded as the extractor decodes it) then its edited copies, or why it failed."""
    try:
        decoded = decode_image(photo, name=str(photo), max_side=max_side)
    except ImageDecodeError as exc:
        return exc.reason
    except OSError as exc:
        return str(exc)
    original = Image.fromarray(decoded.pixels)
    out = [decoded.pixels]
    for i in range(copies):
        out.append(np.asarray(edited_copy(original, seed=seed, key=key, index=i)))
    return out


def iter_copy_items(
    photos: Sequence[Path],
    *,
    copies: int,
    seed: int,
    max_side: int,
    workers: int = 2,
    originals: bool = True,
    failed: list[int] | None = None,
) -> Iterator[ExtractItem]:
    """Extraction items ``key = (photo index, j)``: ``j = 0`` the photo (unless ``originals`` is
    false), ``j = 1..copies`` its edits ``edited_copy(..., index=j - 1)``.

    Decoding and editing run in ``workers`` threads, a bounded number of photos ahead;
    undecodable photos are logged, skipped and their indices appended to ``failed``.
    """
    prefetch = max(4, 2 * workers)
    futures: deque[tuple[int, Future[list[np.ndarray] | str]]] = deque()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="imsearch-copies") as pool:
        it = iter(enumerate(photos))
        exhausted = False
        while True:
            while not exhausted and len(futures) < prefetch:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                i, photo = nxt
                futures.append((i, pool.submit(_decode_with_copies, Path(photo), photo_key(photo), copies, seed,
                                               max_side)))
            if not futures:
                return
            i, fut = futures.popleft()
            images = fut.result()
            if isinstance(images, str):
                logger.warning("copy whitening: skipping photo %s: %s", photos[i], images)
                if failed is not None:
                    failed.append(i)
                continue
            for j, pixels in enumerate(images):
                if j or originals:
                    yield ExtractItem((i, j), pixels)


class _VectorCollector:
    """Feature hook: unwhitened vectors of every item, per scale (whatever whitening the model has)."""

    def __init__(self, model: DescriptorModel, regions: bool) -> None:
        self.model = model
        self.regions = regions
        self.per_item: dict[Hashable, dict[int, np.ndarray]] = defaultdict(dict)

    def __call__(self, feats: torch.Tensor, keys: list[Hashable], scales: list[int]) -> None:
        vecs = self.model.whitening_vectors(feats)  # (B * R, C): R-MAC regions, else one pooled vector each
        per_image = vecs.reshape(len(keys), -1, vecs.shape[-1])
        for key, scale, v in zip(keys, scales, per_image, strict=True):
            if self.regions:
                self.per_item[key][scale] = v.numpy().astype(np.float32)
            else:  # the scale's unwhitened descriptor: R-MAC's normalized sum of regions (GeM & co.: itself)
                self.per_item[key][scale] = l2n(v.sum(dim=0)).numpy().astype(np.float32)

    def vectors(self, key: Hashable) -> np.ndarray:
        """(n, C): the item's region vectors over all scales, or its multi-scale descriptor (1, C)."""
        scales = self.per_item.pop(key)
        parts = [scales[s] for s in sorted(scales)]
        if self.regions:
            return np.concatenate(parts)
        total = np.sum(parts, axis=0)
        return (total / (np.linalg.norm(total) + 1e-6))[None, :].astype(np.float32)


def describe_copies(
    model: DescriptorModel,
    photos: Sequence[Path],
    *,
    copies: int = DEFAULT_COPIES,
    seed: int = DEFAULT_COPY_SEED,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int = 2,
    vectors: str = DEFAULT_COPY_VECTORS,
    precision: str = "auto",
    engine: str = "auto",
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unwhitened vectors ``(n, C)`` of each photo then its ``copies`` edits, and each row's group
    (the photo's index in ``photos``); rows ordered by photo, original first. Undecodable photos are
    skipped with a log line (their index never appears in the groups). ``progress`` counts images
    (``len(photos) x (1 + copies)`` expected)."""
    if copies < 1:
        raise TrainingError(f"learned whitening from copies needs copies >= 1, got {copies}")
    if vectors not in COPY_VECTORS:
        raise TrainingError(f"unknown whitening input {vectors!r}; use one of {', '.join(COPY_VECTORS)}")
    if vectors == "regions" and model.meta.pooling != "rmac":
        raise TrainingError(f"vectors='regions' needs R-MAC pooling; this model pools with {model.meta.pooling}")
    extractor = Extractor(model, device=device if device is not None else "auto", precision=precision,
                          batch_size=batch_size, workers=workers, engine=engine)
    collector = _VectorCollector(model, regions=vectors == "regions")
    extractor.feature_hook = collector
    max_side = math.ceil(model.meta.max_side * max(model.meta.scales))
    failed: list[int] = []
    done: dict[tuple[int, int], np.ndarray] = {}
    items = iter_copy_items(photos, copies=copies, seed=seed, max_side=max_side, workers=workers, failed=failed)
    if progress is not None:
        progress.set_total(len(photos) * (1 + copies))
    counted_failed = 0
    try:
        for res in extractor.iter_extract(items):
            key: tuple[int, int] = res.key  # type: ignore[assignment]
            if progress is not None:
                skipped = len(failed) - counted_failed  # undecodable photos: all their images at once
                counted_failed = len(failed)
                progress.update(1 + skipped * (1 + copies), failed=skipped * (1 + copies) + (res.error is not None))
            if res.error is not None:  # decoded pixels cannot fail, but never drop an image silently
                logger.warning("copy whitening: skipping copy %d of %s: %s", key[1], photos[key[0]], res.error)
                collector.per_item.pop(key, None)
                continue
            done[key] = collector.vectors(key)
    finally:
        extractor.feature_hook = None
    if progress is not None and len(failed) > counted_failed:  # photos that failed after the last image
        rest = (len(failed) - counted_failed) * (1 + copies)
        progress.update(rest, failed=rest)
    keys = sorted(done)
    if not keys:
        raise TrainingError(f"learned whitening from copies: none of the {len(photos)} photos could be read")
    x = np.concatenate([done[k] for k in keys])
    groups = np.concatenate([np.full(len(done[k]), k[0], dtype=np.int64) for k in keys])
    logger.info("copy whitening: %d vectors (%s) of %d photos x (1 + %d copies), %d photos skipped",
                len(x), vectors, len({k[0] for k in keys}), copies, len(failed))
    return x, groups


def learn_copy_whitening(
    model: DescriptorModel,
    photos: Sequence[Path],
    *,
    copies: int = DEFAULT_COPIES,
    seed: int = DEFAULT_COPY_SEED,
    dim: int | None = None,
    shrink: float = DEFAULT_COPY_SHRINK,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int = 2,
    vectors: str = DEFAULT_COPY_VECTORS,
    precision: str = "auto",
    engine: str = "auto",
    progress: Progress | None = None,
) -> WhiteningParams:
    """Learned whitening from each photo and ``copies`` seeded strong edits of it (groups = photos).

    The model describes every image without whitening (an installed whitening is ignored:
    the result replaces it). ``vectors``: ``"global"`` descriptors or R-MAC ``"regions"``
    (see the module docstring). Undecodable photos are skipped with a log line; at least two
    readable photos are needed. ``engine``: the extractor's (``auto``: onnxruntime on CPU,
    ~3x faster than torch fp32 on the 2-core machine here).
    """
    x, groups = describe_copies(model, photos, copies=copies, seed=seed, batch_size=batch_size, device=device,
                                workers=workers, vectors=vectors, precision=precision, engine=engine,
                                progress=progress)
    n_photos = int(np.unique(groups).size)
    if n_photos < 2:
        raise TrainingError(
            f"learned whitening from copies needs at least 2 readable photos, got {n_photos} of {len(photos)}"
        )
    return learn_lw_whitening(x, groups, dim, shrink=shrink)
