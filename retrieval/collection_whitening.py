"""A new collection's whitening, learned from seeded edited copies of its own photos (no labels).

``imsearch index`` creating a collection with a model that has no whitening (the default
model, or ``--backbone NAME``) first describes a seeded sample of the photos it found and
:data:`~retrieval.train.copy_whitening.DEFAULT_COPIES` seeded strong edits of each
(:mod:`retrieval.edits`), learns the whitening that damps the directions in which a photo's
copies differ from it (:func:`retrieval.train.copy_whitening.learn_copy_whitening`), installs
it, and only then indexes: every photo is described once, by the final model. ``imsearch
reindex --learn-whitening`` learns the same from an existing collection.

Measured with ``python -m bench.copies --lw-photos 300`` (the whitening learned from 300
training photos x 2 copies, as here; 1,624 strong copies of 812 photos held out from it searched
among all 4,487 shared images): copy R@1 78.33 -> 87.19, R@10 89.72 -> 95.87, µAP 50.14 ->
58.24, and category mAP 81.41 -> 82.23: both rise, which is why it is the default. A collection
with fewer than :data:`MIN_PHOTOS` photos keeps the model as it is (too few photos to tell the
edits' directions from the photos').

This module imports no torch at import time (the CLI reads its defaults to build ``--help``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from retrieval.models.descriptor import DescriptorModel

logger = logging.getLogger(__name__)

#: how a new collection's model gets its whitening: "copies" (learned here) or "none" (as given)
WHITENING_METHODS = ("copies", "none")
DEFAULT_METHOD = "copies"
#: photos the whitening is learned from (a seeded sample of those found)
DEFAULT_SAMPLE = 300
#: fewer photos than this: the model is kept without whitening
MIN_PHOTOS = 200
#: seed of the sample (the edits are keyed by each photo's path and DEFAULT_COPY_SEED)
DEFAULT_SEED = 0


def sample_photos(photos: Sequence[Path], count: int, seed: int = DEFAULT_SEED) -> list[Path]:
    """A seeded sample of ``count`` photos in path order (all of them, as given, when there are no more).

    The same set of photos gives the same sample whatever order they were listed in."""
    if count >= len(photos):
        return list(photos)
    ordered = sorted(photos, key=os.fspath)
    pick = np.random.default_rng([seed, 7919]).choice(len(ordered), size=count, replace=False)
    return [ordered[i] for i in sorted(pick.tolist())]


def learn_collection_whitening(
    model: DescriptorModel,
    photos: Sequence[Path],
    *,
    sample: int = DEFAULT_SAMPLE,
    min_photos: int = MIN_PHOTOS,
    seed: int = DEFAULT_SEED,
    batch_size: int = 16,
    device: str | None = None,
    progress: str = "auto",
) -> bool:
    """Install in ``model`` the whitening learned from copies of a sample of ``photos``.

    Returns False (``model`` unchanged, logged) when there are fewer than ``min_photos``
    photos or the model already has a whitening; True once installed. ``progress``: a bar on a
    terminal, log lines otherwise (a :class:`retrieval.progress.Progress` mode: ``log``, ``off``)."""
    if model.meta.whitening is not None:
        logger.info("the model has a whitening already (%s): kept", model.meta.whitening.get("learned_from", ""))
        return False
    if len(photos) < min_photos:
        logger.info(
            "%d photos found, fewer than %d: the collection's model keeps no whitening (run `imsearch reindex "
            "--learn-whitening` once it holds more)", len(photos), min_photos,
        )
        return False
    from retrieval.progress import Mode, Progress
    from retrieval.train.copy_whitening import DEFAULT_COPIES, DEFAULT_COPY_SHRINK, learn_copy_whitening

    chosen = sample_photos(photos, sample, seed)
    started = time.perf_counter()
    logger.info(
        "learning the collection's whitening from %d of its %d photos and %d edited copies of each "
        "(--whitening none to skip)", len(chosen), len(photos), DEFAULT_COPIES,
    )
    with Progress(desc="whitening", unit="images", logger=logger, mode=cast("Mode", progress)) as bar:
        params = learn_copy_whitening(
            model, chosen, copies=DEFAULT_COPIES, shrink=DEFAULT_COPY_SHRINK, batch_size=batch_size, device=device,
            progress=bar,
        )
    model.set_whitening(
        params, learned_from=f"{len(chosen)} photos of the collection x {DEFAULT_COPIES} edited copies"
    )
    logger.info(
        "whitening learned from %d vectors in %.0f s: %s", params.n_samples, time.perf_counter() - started,
        model.meta.describe(),
    )
    return True


@dataclass
class WhitenOnCreation:
    """The model of a collection that does not exist yet: ``base`` (None: the default model) with the
    whitening learned from copies of a sample of ``photos()`` (:func:`learn_collection_whitening`).

    :meth:`retrieval.collection.Collection.open` calls it only when the collection has no model;
    an existing collection keeps its own, after :meth:`check_compatible` (a ``base`` that differs
    from it in more than the whitening is refused, as a plain model would be)."""

    photos: Callable[[], Sequence[Path]]
    base: DescriptorModel | None = None
    sample: int = DEFAULT_SAMPLE
    min_photos: int = MIN_PHOTOS
    seed: int = DEFAULT_SEED
    batch_size: int = 16
    device: str | None = None
    progress: str = "auto"

    def check_compatible(self, stored: dict[str, Any] | None, what: str = "the collection") -> None:
        if self.base is None or not stored:
            return
        unwhitened = {"whitening", "dim", "name"}
        theirs = {k: v for k, v in (stored.get("meta") or {}).items() if k not in unwhitened}
        ours = {k: v for k, v in self.base.meta.to_dict().items() if k not in unwhitened}
        if theirs != ours:
            self.base.check_compatible(stored, what)  # raises, naming the differences

    def __call__(self) -> DescriptorModel:
        from retrieval.models.descriptor import DescriptorModel

        model = self.base if self.base is not None else DescriptorModel.create()
        learn_collection_whitening(
            model, self.photos(), sample=self.sample, min_photos=self.min_photos, seed=self.seed,
            batch_size=self.batch_size, device=self.device, progress=self.progress,
        )
        return model
