"""Calibrating a collection: score seeded edited copies of its own photos, fit and store the thresholds.

For a seeded sample of the collection's photos (:func:`sample_photos`):

1. the original is read back as the rest of the code reads indexed files (the catalog names
   it; :mod:`retrieval.files` checks it is confined to the allowed roots and unchanged);
2. :func:`retrieval.edits.edited_copies` makes ``copies_per_photo`` edited copies of it
   (the :data:`~retrieval.edits.STRONG` policy, keyed by the photo's SHA-256, so the same
   photo gets the same copies in any collection and any run with the same seed);
3. the copies are described by the collection's own model through the map step's
   :class:`~retrieval.models.extract.Extractor` (the one :class:`~retrieval.ingest.Describer`
   builds from :class:`~retrieval.ingest.IngestSettings`: same decode, sizes and precision);
4. positive = the copy's score with its original (the stored vector); negatives = the copy's
   top :data:`~retrieval.calibrate.NEGATIVES_PER_QUERY` other photos in the collection's index;
   the original's own top-1 other photo feeds the ``similar`` level. A negative must be another
   *photo*: other files with the same content are the same image id anyway, and an image that is
   the same picture resized or recompressed (its :func:`photo_signature` correlates with the
   original's at least :data:`SAME_PHOTO`) is a duplicate the collection already holds, so it is
   left out too. Only the run of such images
   right after the original in each ranking is looked at (a duplicate scores almost like the
   original itself, so it sits next to it): one small decode per query at most, besides the
   duplicates.

:func:`calibrate_collection` fits the thresholds (:func:`retrieval.calibrate.fit_thresholds`) and
stores them beside the model; :func:`ensure_calibrated` is the end-of-run hook of ``imsearch
index`` and ``imsearch reindex``: it calibrates when there is no calibration for the current
model (or the collection outgrew it) and the collection has at least :data:`MIN_PHOTOS` photos.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from retrieval.calibrate import (
    DEFAULT_COPIES,
    DEFAULT_SAMPLE,
    DEFAULT_SEED,
    MIN_PHOTOS,
    NEGATIVES_PER_QUERY,
    WILSON_Z,
    Calibration,
    describe,
    fit_thresholds,
    load_calibration,
    recalibration_reason,
    save_calibration,
)
from retrieval.collection import Collection
from retrieval.edits import STRONG, edited_copies
from retrieval.errors import ImageDecodeError, ImsearchError
from retrieval.files import FileAccessError, FilePolicy
from retrieval.imageio import decode_image
from retrieval.store import catalog

if TYPE_CHECKING:
    from retrieval.ingest import IngestSettings
    from retrieval.models.extract import Extractor
    from retrieval.progress import Progress

logger = logging.getLogger(__name__)

#: two images whose signatures (16x16 grey thumbnails) correlate at least this much are the same photo.
#: Measured on the shared Caltech photos: a photo resized to 30-90 % and saved as JPEG at quality
#: 30-80 correlates >= 0.9939 with itself; 58 of the 8 million pairs of different files reach 0.99,
#: the files Caltech holds twice and burst shots that differ by a blink.
SAME_PHOTO = 0.99
_SIGNATURE_SIDE = 16
#: photos edited and described together (bounds the copies held in memory)
_CHUNK = 32
#: images are decoded at about this size for their signature (JPEG draft mode)
_SMALL_SIDE = 64
#: extra neighbours searched per query, for the duplicates that are left out
_DUPLICATE_SLACK = 4


@dataclass
class CopyScores:
    """What scoring the copies of some photos measured."""

    positives: np.ndarray  # copy vs its original
    negatives: np.ndarray  # copies vs their top other photos
    neighbours: np.ndarray  # each original's top-1 other photo
    photos: int  # photos whose copies were scored
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (image id, why)
    duplicates: int = 0  # neighbours left out as the same photo as the query's original


def sample_photos(
    collection: Collection, sample: int, seed: int, candidates: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """``sample`` image ids drawn (seeded) from ``candidates`` (default: every indexed image), sorted."""
    if sample < 1:
        raise ImsearchError(f"the sample must be at least 1 photo, got {sample}")
    pool = collection.index_ids("image") if candidates is None else np.asarray(candidates, dtype=np.int64)
    pool = np.unique(pool)
    if len(pool) <= sample:
        return pool
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=sample, replace=False))


def photo_signature(pixels: np.ndarray) -> np.ndarray:
    """A grey 16x16 thumbnail of an RGB image (Lanczos), mean removed, unit length (float64, 256 values;
    all zeros for a flat image). Resizing and recompression barely move it."""
    side = _SIGNATURE_SIDE
    grey = Image.fromarray(pixels).convert("L").resize((side, side), Image.Resampling.LANCZOS)
    v = np.asarray(grey, dtype=np.float64).ravel()
    v -= v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-9 else np.zeros_like(v)


def same_photo(a: np.ndarray, b: np.ndarray) -> bool:
    """Two :func:`photo_signature` values of the same picture (correlation at least :data:`SAME_PHOTO`)."""
    return float(a @ b) >= SAME_PHOTO


class _Duplicates:
    """Tells whether another indexed image is the same photo as a sampled original (hashes cached)."""

    def __init__(self, reader: Any, max_pixels: int) -> None:
        self.reader = reader
        self.max_pixels = max_pixels
        self.signatures: dict[int, np.ndarray | None] = {}
        self.found = 0

    def signature(self, image_id: int) -> np.ndarray | None:
        if image_id not in self.signatures:
            try:
                data = self.reader.image_bytes(image_id)
                decoded = decode_image(data, name=f"image {image_id}", max_side=_SMALL_SIDE, max_pixels=self.max_pixels)
                self.signatures[image_id] = photo_signature(decoded.pixels)
            except (FileAccessError, ImageDecodeError):  # cannot tell: it counts as another photo
                self.signatures[image_id] = None
        return self.signatures[image_id]

    def __call__(self, original: int, other: int) -> bool:
        a, b = self.signature(original), self.signature(other)
        return a is not None and b is not None and same_photo(a, b)


def _extractor(collection: Collection, settings: IngestSettings | None) -> Extractor:
    from retrieval.ingest import Describer, IngestSettings

    return Describer(settings or IngestSettings(), model=collection.model).extractor


def score_copies(
    collection: Collection,
    image_ids: Sequence[int] | np.ndarray,
    *,
    seed: int,
    copies_per_photo: int = DEFAULT_COPIES,
    negatives_per_query: int = NEGATIVES_PER_QUERY,
    extractor: Extractor | None = None,
    settings: IngestSettings | None = None,
    file_policy: FilePolicy | None = None,
    progress: Progress | None = None,
) -> CopyScores:
    """Scores of seeded edited copies of ``image_ids`` against the collection (module docstring, 1-4)."""
    from retrieval.search import SearchEngine

    if copies_per_photo < 1:
        raise ImsearchError(f"copies per photo must be at least 1, got {copies_per_photo}")
    if negatives_per_query < 1:
        raise ImsearchError(f"negatives per query must be at least 1, got {negatives_per_query}")
    ex = extractor if extractor is not None else _extractor(collection, settings)
    reader = SearchEngine(collection, extractor=ex)
    if file_policy is not None:
        reader.file_policy = file_policy
    duplicates = _Duplicates(reader, ex.max_pixels)
    need = math.ceil(ex.meta.max_side * max(ex.meta.scales))
    ids = np.asarray(image_ids, dtype=np.int64)
    pos: list[np.ndarray] = []
    neg: list[np.ndarray] = []
    top1: list[np.ndarray] = []
    out = CopyScores(np.zeros(0), np.zeros(0), np.zeros(0), 0)

    def copies_of(item: tuple[int, str, bytes]) -> tuple[int, tuple[np.ndarray, list[np.ndarray]] | str]:
        image_id, sha256, data = item
        try:
            decoded = decode_image(data, name=f"image {image_id}", max_side=need, max_pixels=ex.max_pixels)
        except ImageDecodeError as exc:
            return image_id, exc.reason
        img = Image.fromarray(decoded.pixels)
        copies = edited_copies(img, seed=seed, key=sha256, count=copies_per_photo, policy=STRONG)
        small = decode_image(data, name=f"image {image_id}", max_side=_SMALL_SIDE, max_pixels=ex.max_pixels)
        return image_id, (photo_signature(small.pixels), [np.asarray(c, dtype=np.uint8) for c in copies])

    with ThreadPoolExecutor(max(1, ex.workers), thread_name_prefix="imsearch-edit") as pool:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            records = collection.read(catalog.get_images, image_ids=chunk)
            items: list[tuple[int, str, bytes]] = []
            for image_id, rec in zip(chunk.tolist(), records, strict=True):
                if rec is None:
                    out.skipped.append((image_id, "deleted meanwhile"))
                    continue
                try:
                    items.append((image_id, rec.sha256, reader.image_bytes(image_id)))
                except FileAccessError as exc:
                    out.skipped.append((image_id, str(exc)))
            edited = dict(pool.map(copies_of, items))
            good = {i: c[1] for i, c in edited.items() if not isinstance(c, str)}
            duplicates.signatures.update({i: c[0] for i, c in edited.items() if not isinstance(c, str)})
            out.skipped += [(i, c) for i, c in edited.items() if isinstance(c, str)]
            done = [i for i in chunk.tolist() if i in good]  # in the order asked for
            if done:
                p, n, t = _score_chunk(collection, ex, done, good, negatives_per_query, duplicates=duplicates)
                pos.append(p)
                neg.append(n)
                top1.append(t)
                out.photos += len(done)
            if progress is not None:
                progress.update(len(chunk), failed=len(chunk) - len(done))
    out.duplicates = duplicates.found
    if duplicates.found:
        logger.info("calibration: %d neighbours were the same photo as the query's original (a duplicate "
                    "already in the collection), not counted as other photos", duplicates.found)
    for image_id, why in out.skipped[:5]:
        logger.warning("calibration: image %d skipped: %s", image_id, why)
    if len(out.skipped) > 5:
        logger.warning("calibration: %d more images skipped", len(out.skipped) - 5)
    out.positives = np.concatenate(pos) if pos else np.zeros(0)
    out.negatives = np.concatenate(neg) if neg else np.zeros(0)
    out.neighbours = np.concatenate(top1) if top1 else np.zeros(0)
    return out


def _others(
    scores: np.ndarray, ids: np.ndarray, own: np.ndarray, keep: int, duplicates: _Duplicates
) -> np.ndarray:
    """Per row, the first ``keep`` scores of other photos than the row's ``own`` image: its id, and the
    duplicates of it ranked right after it, left out (``(rows, keep)``, NaN-padded)."""
    out = np.full((len(scores), keep), np.nan)
    for row in range(len(scores)):
        got: list[float] = []
        leading = True
        for score, other in zip(scores[row].tolist(), ids[row].tolist(), strict=True):
            if other < 0 or other == own[row]:
                continue
            if leading and duplicates(int(own[row]), other):
                duplicates.found += 1
                continue
            leading = False
            got.append(score)
            if len(got) == keep:
                break
        out[row, : len(got)] = got
    return out


def _score_chunk(
    collection: Collection,
    ex: Extractor,
    photo_ids: list[int],
    copies: dict[int, list[np.ndarray]],
    negatives_per_query: int,
    *,
    duplicates: _Duplicates,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from retrieval.models.extract import ExtractItem

    keys = [(image_id, c) for image_id in photo_ids for c in range(len(copies[image_id]))]
    items = (ExtractItem(n, copies[image_id][c]) for n, (image_id, c) in enumerate(keys))
    desc = np.zeros((len(keys), ex.meta.dim), dtype=np.float32)
    for res in ex.iter_extract(items):
        n = cast(int, res.key)
        if res.error is not None or res.descriptor is None:  # an edited array always decodes
            raise ImsearchError(f"calibration: a copy of image {keys[n][0]} could not be described: {res.error}")
        desc[n] = res.descriptor
    owners = np.array([image_id for image_id, _ in keys], dtype=np.int64)
    originals = collection.reconstruct("image", np.array(photo_ids, dtype=np.int64))
    row_of = {image_id: i for i, image_id in enumerate(photo_ids)}
    positives = np.einsum("ij,ij->i", desc, originals[[row_of[int(o)] for o in owners]]).astype(np.float64)
    k = negatives_per_query + 1 + _DUPLICATE_SLACK
    s_copy, i_copy = collection.search("image", np.ascontiguousarray(desc), k)
    s_orig, i_orig = collection.search("image", np.ascontiguousarray(originals), 2 + _DUPLICATE_SLACK)
    negatives = _others(s_copy, i_copy, owners, negatives_per_query, duplicates).ravel()
    neighbours = _others(s_orig, i_orig, np.array(photo_ids, dtype=np.int64), 1, duplicates)[:, 0]
    return positives, negatives[np.isfinite(negatives)], neighbours[np.isfinite(neighbours)]


def calibrate_collection(
    collection: Collection,
    *,
    sample: int = DEFAULT_SAMPLE,
    copies_per_photo: int = DEFAULT_COPIES,
    seed: int = DEFAULT_SEED,
    negatives_per_query: int = NEGATIVES_PER_QUERY,
    candidates: Sequence[int] | np.ndarray | None = None,
    extractor: Extractor | None = None,
    settings: IngestSettings | None = None,
    file_policy: FilePolicy | None = None,
    progress: Progress | None = None,
    z: float = WILSON_Z,
    save: bool = True,
) -> Calibration:
    """Measure the collection's match thresholds (module docstring) and store them (``save``).

    ``candidates``: image ids the sample is drawn from (default: all; a benchmark keeps some
    photos out to evaluate on). Raises :class:`ImsearchError` when the collection has fewer
    than two photos (a copy needs other photos to be told apart from).
    """
    size = collection.count("image")
    if size < 2:
        raise ImsearchError(f"the collection has {size} image(s); calibration needs at least 2 (index more photos)")
    t0 = time.perf_counter()
    ids = sample_photos(collection, sample, seed, candidates)
    logger.info("calibrating on %d photos x %d edited copies (seed %d)", len(ids), copies_per_photo, seed)
    scores = score_copies(
        collection, ids, seed=seed, copies_per_photo=copies_per_photo, negatives_per_query=negatives_per_query,
        extractor=extractor, settings=settings, file_policy=file_policy, progress=progress,
    )
    if not scores.photos:
        raise ImsearchError(
            f"no sampled photo could be read back ({len(scores.skipped)} skipped, e.g. {scores.skipped[0][1]}); "
            "calibration needs the original files"
        )
    fit = fit_thresholds(scores.positives, scores.negatives, scores.neighbours, z=z)
    cal = Calibration.from_fit(
        fit, model_fingerprint=collection.model.fingerprint, photos=scores.photos, collection_size=size, seed=seed,
        copies_per_photo=copies_per_photo, negatives_per_query=negatives_per_query, z=z,
    )
    if save:
        path = save_calibration(collection.root, cal)
        logger.info("calibration written to %s in %.1f s", path, time.perf_counter() - t0)
    return cal


def ensure_calibrated(
    collection: Collection, *, min_photos: int = MIN_PHOTOS, **kwargs: object
) -> Calibration | None:
    """The end-of-run hook: the current calibration when it is fresh; else a new one when the
    collection has at least ``min_photos`` photos (else None, logged). ``kwargs``: of
    :func:`calibrate_collection`."""
    fingerprint = collection.model.fingerprint
    current = load_calibration(collection.root, fingerprint)
    images = collection.count("image")
    reason = recalibration_reason(current, fingerprint, images)
    if reason is None:
        return current
    if images < min_photos:
        logger.info(
            "match levels not calibrated (%s): the collection has %d images, calibration starts at %d; "
            "`imsearch calibrate --min-photos N` calibrates a smaller one", reason, images, min_photos,
        )
        return current
    logger.info("calibrating match levels: %s", reason)
    cal = calibrate_collection(collection, **kwargs)  # type: ignore[arg-type]
    for line in describe(cal):
        logger.info("%s", line)
    return cal
