"""Calibrated match levels: what a similarity score means in *this* collection, with *this* model.

A cosine of 0.8 is a sure copy with one model and an unrelated photo of the same object with
another. :func:`retrieval.calibrate_collection.calibrate_collection` measures, for a seeded
sample of the collection's own photos, the scores of seeded edited copies against their
originals (*positives*) and the scores of the same copies against the most similar *other*
photos (*negatives*); :func:`fit_thresholds` turns them into three thresholds:

``copy``
    the lowest positive score ``t`` at which the pairs scoring ``>= t`` are copies with
    precision >= :data:`COPY_PRECISION` (0.99), by a *conservative* count: the lower end of
    a Wilson score interval (:func:`wilson_lower`, ``z`` = :data:`WILSON_Z` = 1, about an 84 %
    one-sided bound) must reach the target, not just the sample's ratio. With few pairs the
    bound is far below the ratio (99 positives and no negative above a threshold are needed
    before it reaches 0.99), so a small sample gives a higher threshold, or none.
``near``
    the same rule at precision >= :data:`NEAR_PRECISION` (0.90): "very likely the same photo".
``similar``
    a score typical of a photo's nearest *other* photo (same scene, same object): the median
    over the sampled photos of the score of their top-1 other photo. Capped at ``near`` so the
    levels stay ordered (``similar <= near <= copy``).

Only positive scores are candidate thresholds: lowering a threshold to a negative score adds
false matches and no true one. A level is None when no candidate reaches its precision (too
few copies scored that high: calibrate with a bigger sample).

Negatives are the top :data:`NEGATIVES_PER_QUERY` other photos of each copy searched against
the collection. Any other photo scores below the last of them, so the precision is that of a
search by a copy over its whole ranking (one true match, the original; every other hit above
the threshold a false one) as long as no query has more than that many false matches above it.
Pairs of two indexed photos are not counted: the collection holds no known true pairs among them
(files of one content are one image; see ``SAME_PHOTO`` for resized duplicates), so their
negatives would come with no positives and tilt the ratio by however many were taken; a photo's
nearest other photo feeds ``similar`` instead. (On the shared Caltech photos, with the default
model, burst shots and product photos on white score up to ~0.96 with each other: above most
edited copies, so ``imsearch duplicates`` at the copy threshold also groups such near-identical
shots.)

A :class:`Calibration` is stored as JSON next to the model it was measured with,
``models/<fp>.calibration.json`` (``fp``: the first 16 hex digits of the model's fingerprint),
and holds that fingerprint: a collection re-indexed with another model has no calibration
until it is measured again (``imsearch index`` / ``imsearch reindex`` do it at their end).

This module is numpy and the standard library only (the torch-free search path reads it).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ImsearchError

logger = logging.getLogger(__name__)

#: match levels, strongest first
LEVELS: tuple[str, ...] = ("copy", "near", "similar")
COPY_PRECISION = 0.99
NEAR_PRECISION = 0.90
#: z of the Wilson lower bound that a level's precision must reach (1.0: ~84 % one-sided)
WILSON_Z = 1.0
#: other photos per query counted as negatives
NEGATIVES_PER_QUERY = 10
FORMAT_VERSION = 1
#: photos sampled by default, edited copies of each, and the seed of both. Up to 1200 copies: the
#: bound above needs ~100 copies above the copy threshold, and with the default model only ~10 %
#: of STRONG copies score that high (python -m bench.calibration)
DEFAULT_SAMPLE = 300
DEFAULT_COPIES = 4
DEFAULT_SEED = 0
#: ``imsearch index`` / ``reindex`` calibrate at their end only from this many photos on
MIN_PHOTOS = 50
#: ``imsearch index`` calibrates again when the collection has more than this many times the
#: images it had when calibrated (a bigger collection holds closer non-copies)
REGROW_FACTOR = 2.0


class NotCalibratedError(ImsearchError):
    """A match level was asked for but the collection has no calibration (for its current model)."""


def check_level(level: str) -> str:
    """``level`` when it is one of :data:`LEVELS`, else an error listing them."""
    if level not in LEVELS:
        raise ImsearchError(f"unknown match level {level!r}; use one of {', '.join(LEVELS)}")
    return level


# ---------------------------------------------------------------------------- the numbers


def wilson_lower(successes: np.ndarray | int, trials: np.ndarray | int, z: float = WILSON_Z) -> np.ndarray:
    """Lower end of the Wilson score interval of a proportion (float64; 0 where ``trials`` is 0)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        z2 = z * z
        centre = p + z2 / (2 * n)
        spread = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        low = (centre - spread) / (1 + z2 / n)
    return np.where(n > 0, np.clip(low, 0.0, 1.0), 0.0)


@dataclass(frozen=True)
class LevelFit:
    """One level's threshold and how it did on the calibration sample (scores ``>= threshold``)."""

    level: str
    threshold: float | None
    precision: float | None  # positives above / all pairs above (None: nothing above)
    precision_lower: float | None  # the Wilson bound of that ratio
    recall: float  # positives above / all positives
    positives_above: int
    negatives_above: int


@dataclass(frozen=True)
class Fit:
    """The thresholds fitted from one sample of scores."""

    levels: tuple[LevelFit, ...]
    positives: int
    negatives: int
    neighbours: int  # top-1 other-photo scores behind ``similar``

    def threshold(self, level: str) -> float | None:
        return next(lv.threshold for lv in self.levels if lv.level == check_level(level))


def _as_scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ImsearchError(f"{name} scores must be finite numbers")
    return arr


def lowest_threshold(
    pos: np.ndarray, neg: np.ndarray, target: float, z: float = WILSON_Z
) -> float | None:
    """The lowest positive score ``t`` whose pairs ``>= t`` reach precision ``target`` by
    :func:`wilson_lower`; None when no positive score does."""
    if not len(pos):
        return None
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    cand = np.unique(pos_sorted)  # ascending, distinct
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, cand, side="left")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, cand, side="left")
    ok = wilson_lower(tp, tp + fp, z) >= target
    if not ok.any():
        return None
    return float(cand[int(np.argmax(ok))])  # the first (lowest) candidate that qualifies


def level_stats(level: str, threshold: float | None, pos: np.ndarray, neg: np.ndarray, z: float) -> LevelFit:
    """Precision and recall of ``threshold`` on a sample (``>= threshold`` counts as a match)."""
    if threshold is None:
        return LevelFit(level, None, None, None, 0.0, 0, 0)
    tp = int(np.count_nonzero(pos >= threshold))
    fp = int(np.count_nonzero(neg >= threshold))
    above = tp + fp
    precision = tp / above if above else None
    lower = float(wilson_lower(tp, above, z)) if above else None
    recall = tp / len(pos) if len(pos) else 0.0
    return LevelFit(level, float(threshold), precision, lower, recall, tp, fp)


def fit_thresholds(
    positives: Sequence[float] | np.ndarray,
    negatives: Sequence[float] | np.ndarray,
    neighbours: Sequence[float] | np.ndarray,
    *,
    copy_precision: float = COPY_PRECISION,
    near_precision: float = NEAR_PRECISION,
    z: float = WILSON_Z,
) -> Fit:
    """The ``copy``, ``near`` and ``similar`` thresholds of the module docstring.

    ``positives``: copy-vs-original scores; ``negatives``: scores of the copies against other
    photos; ``neighbours``: each sampled photo's top-1 other-photo score.
    """
    if not 0.0 < near_precision <= copy_precision < 1.0:
        raise ImsearchError(f"need 0 < near_precision <= copy_precision < 1, got {near_precision}, {copy_precision}")
    if z < 0:
        raise ImsearchError(f"z must be >= 0, got {z}")
    pos = _as_scores(positives, "positive")
    neg = _as_scores(negatives, "negative")
    top1 = _as_scores(neighbours, "neighbour")
    copy = lowest_threshold(pos, neg, copy_precision, z)
    near = lowest_threshold(pos, neg, near_precision, z)
    similar = float(np.median(top1)) if len(top1) else None
    if similar is not None and near is not None:
        similar = min(similar, near)
    levels = tuple(
        level_stats(name, t, pos, neg, z) for name, t in zip(LEVELS, (copy, near, similar), strict=True)
    )
    return Fit(levels, len(pos), len(neg), len(top1))


# ---------------------------------------------------------------------------- the stored calibration


@dataclass(frozen=True)
class Calibration:
    """A collection's match thresholds for one model, with what they were measured on."""

    model_fingerprint: str
    levels: tuple[LevelFit, ...]
    photos: int  # sampled photos that were scored
    positives: int
    negatives: int
    collection_size: int  # images in the collection when calibrated
    seed: int
    copies_per_photo: int
    negatives_per_query: int
    copy_precision: float = COPY_PRECISION
    near_precision: float = NEAR_PRECISION
    z: float = WILSON_Z
    edit_policy: str = "STRONG"
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = FORMAT_VERSION

    @classmethod
    def from_fit(cls, fit: Fit, *, model_fingerprint: str, photos: int, collection_size: int, seed: int,
                 copies_per_photo: int, negatives_per_query: int, z: float = WILSON_Z,
                 copy_precision: float = COPY_PRECISION, near_precision: float = NEAR_PRECISION) -> Calibration:
        return cls(
            model_fingerprint=model_fingerprint, levels=fit.levels, photos=photos, positives=fit.positives,
            negatives=fit.negatives, collection_size=collection_size, seed=seed, copies_per_photo=copies_per_photo,
            negatives_per_query=negatives_per_query, copy_precision=copy_precision, near_precision=near_precision,
            z=z,
        )

    # ------------------------------------------------------------------ thresholds
    def level(self, level: str) -> LevelFit:
        check_level(level)
        return next(lv for lv in self.levels if lv.level == level)

    def threshold(self, level: str) -> float | None:
        return self.level(level).threshold

    @property
    def copy(self) -> float | None:
        return self.threshold("copy")

    @property
    def near(self) -> float | None:
        return self.threshold("near")

    @property
    def similar(self) -> float | None:
        return self.threshold("similar")

    def match_level(self, score: float) -> str | None:
        """The strongest level whose threshold ``score`` reaches (``>=``); None below ``similar``."""
        for lv in self.levels:
            if lv.threshold is not None and score >= lv.threshold:
                return lv.level
        return None

    def min_score(self, level: str) -> float:
        """The lowest score of ``level`` and above (to filter a search with)."""
        fitted = self.level(level)
        if fitted.threshold is None:
            raise NotCalibratedError(
                f"the calibration found no {level!r} threshold ({self.positives} copies scored; none reached "
                f"the precision asked for); run `imsearch calibrate` with a larger --sample or --copies"
            )
        return fitted.threshold

    def thresholds(self) -> dict[str, float | None]:
        return {lv.level: lv.threshold for lv in self.levels}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = [asdict(lv) for lv in self.levels]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise ImsearchError(f"calibration format version {version!r} is not {FORMAT_VERSION}")
        levels = tuple(LevelFit(**lv) for lv in data["levels"])
        if [lv.level for lv in levels] != list(LEVELS):
            raise ImsearchError(f"a calibration holds the levels {', '.join(LEVELS)} in that order")
        fields = {k: v for k, v in data.items() if k != "levels"}
        return cls(levels=levels, **fields)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            data = json.loads(text)
            return cls.from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ImsearchError(f"unreadable calibration ({type(exc).__name__}: {exc})") from None


def min_match_score(calibration: Calibration | None, level: str, root: Path) -> float:
    """The lowest score of match ``level`` and above in the collection at ``root`` (a search's
    ``min_match``); :class:`NotCalibratedError` when it has no calibration for its current model."""
    check_level(level)
    if calibration is None:
        raise NotCalibratedError(
            f"min_match={level} needs a calibrated collection, and {root} has no calibration for its current "
            "model; run `imsearch calibrate` (or filter by a score with threshold)"
        )
    return calibration.min_score(level)


def calibration_path(root: Path, fingerprint: str) -> Path:
    """``models/<fp>.calibration.json`` of a collection (beside ``models/<fp>.pt``)."""
    return Path(root) / "models" / f"{fingerprint[:16]}.calibration.json"


def save_calibration(root: Path, calibration: Calibration) -> Path:
    """Write the calibration atomically (a temporary file in the same folder, fsync, rename)."""
    path = calibration_path(root, calibration.model_fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(calibration.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_calibration(root: Path, fingerprint: str) -> Calibration | None:
    """The stored calibration of the model ``fingerprint``; None when there is none or it is unreadable
    (logged: matching then runs uncalibrated until ``imsearch calibrate`` writes a new one)."""
    path = calibration_path(root, fingerprint)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("cannot read the calibration %s (%s); run `imsearch calibrate`", path, exc)
        return None
    try:
        cal = Calibration.from_json(text)
    except ImsearchError as exc:
        logger.warning("%s: %s; run `imsearch calibrate` to measure it again", path, exc)
        return None
    if cal.model_fingerprint != fingerprint:
        logger.warning("%s was measured with another model; run `imsearch calibrate`", path)
        return None
    return cal


def stale_calibrations(root: Path, fingerprint: str) -> list[Path]:
    """Calibrations in the collection measured with other models than ``fingerprint``'s."""
    mine = calibration_path(root, fingerprint)
    return sorted(p for p in (Path(root) / "models").glob("*.calibration.json") if p != mine)


def recalibration_reason(calibration: Calibration | None, fingerprint: str, images: int) -> str | None:
    """Why a collection of ``images`` images with this model should be calibrated (again), or None."""
    if calibration is None:
        return "no calibration for the collection's model"
    if calibration.model_fingerprint != fingerprint:
        return "the calibration was measured with another model"
    if images > REGROW_FACTOR * max(1, calibration.collection_size):
        return (f"the collection grew from {calibration.collection_size} to {images} images since it was "
                "calibrated (closer neighbours)")
    return None



class CalibrationCache:
    """The calibration of a collection's current model, read again only when its file changes
    (a long-running server sees a calibration that ``imsearch calibrate`` writes meanwhile)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._key: tuple[str, int, int] | None = None
        self._value: Calibration | None = None

    def get(self, fingerprint: str) -> Calibration | None:
        path = calibration_path(self.root, fingerprint)
        try:
            st = path.stat()
        except OSError:
            self._key, self._value = None, None
            return None
        key = (fingerprint, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._value = load_calibration(self.root, fingerprint)
            self._key = key
        return self._value


def describe(calibration: Calibration) -> list[str]:
    """Lines for a terminal: each level's threshold with its precision and recall on the sample."""
    lines = [
        f"calibration of model {calibration.model_fingerprint[:16]} ({calibration.created}): "
        f"{calibration.photos} photos x {calibration.copies_per_photo} edited copies (seed {calibration.seed}), "
        f"{calibration.positives} copy pairs, {calibration.negatives} other-photo pairs, "
        f"collection of {calibration.collection_size} images",
        f"{'level':8}  {'threshold':>9}  {'precision':>9}  {'(bound)':>8}  {'recall':>6}  rule",
    ]
    rules = {
        "copy": f"precision >= {calibration.copy_precision:g} (Wilson bound, z={calibration.z:g})",
        "near": f"precision >= {calibration.near_precision:g} (Wilson bound, z={calibration.z:g})",
        "similar": "median score of a photo's nearest other photo",
    }
    for lv in calibration.levels:
        t = "-" if lv.threshold is None else f"{lv.threshold:.4f}"
        p = "-" if lv.precision is None else f"{lv.precision:.4f}"
        b = "-" if lv.precision_lower is None else f"{lv.precision_lower:.4f}"
        lines.append(f"{lv.level:8}  {t:>9}  {p:>9}  {b:>8}  {lv.recall:6.3f}  {rules[lv.level]}")
    return lines
