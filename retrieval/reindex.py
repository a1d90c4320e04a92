"""Re-extract a collection with another descriptor model and swap it in atomically.

1. The new model is saved next to the collection and registered (not active yet).
2. Every indexed image is read again from its file and described by the new model, its
   known regions (detected boxes) too; the vectors go to the staging spaces
   (``image_next``, ``region_next``), batch by batch. Searches keep using the old model
   meanwhile. Interrupted, the next run continues from what is staged.
3. One transaction replaces the vectors by the staged ones and activates the new model.
4. The FAISS indexes are rebuilt from the catalog (``Collection.open`` does it when the
   saved indexes name another model, so a crash between 3 and 4 is repaired on open).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.collection import Collection, model_path
from retrieval.errors import ImsearchError
from retrieval.ingest import Describer, IngestSettings, SourceItem
from retrieval.models.descriptor import DescriptorModel
from retrieval.progress import Progress
from retrieval.store import catalog
from retrieval.store.catalog import ModelRecord
from retrieval.store.tables import STAGING

logger = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    images: int = 0
    staged_before: int = 0
    extracted: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (image id, reason)
    dropped: int = 0
    swapped: bool = False


def _source(collection: Collection, image_id: int, path: str | None, stored: str | None) -> Path | None:
    for cand in (stored, path):
        if cand:
            p = Path(cand)
            p = p if p.is_absolute() else collection.root / p
            if p.is_file():
                return p
    for rec in collection.read(catalog.get_files, image_id=image_id):
        if Path(rec.path).is_file():
            return Path(rec.path)
    return None


def _register(collection: Collection, model: DescriptorModel, path: Path) -> tuple[ModelRecord, np.ndarray, np.ndarray]:
    """Register the new model (inactive); drop stale staged vectors; (record, wanted ids, staged ids)."""

    def work(s: Any) -> tuple[ModelRecord, np.ndarray, np.ndarray]:
        record = catalog.register_model(
            s,
            fingerprint=model.fingerprint,
            name=model.meta.name or model.meta.backbone,
            meta={"model": model.meta.to_dict(), "artifact": str(path.relative_to(collection.root))},
            activate=False,
        )
        for staged in STAGING.values():  # leftovers of a re-index towards another model
            stale = [int(i) for i in catalog.vector_ids(s, space=staged)]
            if stale and catalog.get_vectors(s, space=staged, ids=stale[:1]).shape[1] != model.meta.dim:
                catalog.delete_vectors(s, space=staged)
        return record, catalog.vector_ids(s, space="image"), catalog.vector_ids(s, space=STAGING["image"])

    return collection.write_catalog(work)


def reindex(
    collection: Collection,
    model: DescriptorModel,
    *,
    settings: IngestSettings | None = None,
    batch: int = 64,
    drop_missing: bool = False,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> ReindexReport:
    """Stage the new model's vectors, then swap; the caller re-opens the collection afterwards.

    Images are described again by the one map step (:class:`Describer`, built from ``settings``
    with ``model``), their known regions too; a file whose content changed since it was indexed
    counts as missing."""
    report = ReindexReport()
    if model.fingerprint == collection.model.fingerprint:
        logger.info("the collection already uses this model: nothing to do")
        return report
    path = model_path(collection.root, model.fingerprint)
    if not path.is_file():
        model.save(path)
    record, wanted, done = _register(collection, model, path)
    todo = np.setdiff1d(wanted, done)
    report.images, report.staged_before = len(wanted), len(wanted) - len(todo)
    describer = Describer((settings or IngestSettings()).with_(detect=False, segment=False), model=model)
    if progress is not None:
        progress.set_total(len(wanted))
        progress.update(report.staged_before)
    for start in range(0, len(todo), batch):
        if stop is not None and stop.is_set():
            raise ImsearchError("re-index interrupted; run it again to continue")
        chunk = todo[start : start + batch]
        missing_before = len(report.missing)
        _stage_batch(collection, describer, record.id, chunk, report)
        if progress is not None:
            progress.update(len(chunk), failed=len(report.missing) - missing_before)
    if report.missing and not drop_missing:
        first = ", ".join(f"{i} ({why})" for i, why in report.missing[:5])
        raise ImsearchError(
            f"{len(report.missing)} indexed images cannot be read again ({first} ...); restore the files, or "
            "pass --drop-missing to remove them from the collection; what was staged is kept for the next run"
        )

    def swap(s: Any) -> None:
        if report.missing:
            catalog.delete_images(s, image_ids=[i for i, _ in report.missing])
            report.dropped = len(report.missing)
        catalog.promote_staged_vectors(s)
        catalog.register_model(s, fingerprint=model.fingerprint, name=record.name, meta=record.meta, activate=True)

    collection.write_catalog(swap)
    report.swapped = True
    logger.info("re-index: %d images now described by %s", report.images - report.dropped, model.meta.describe())
    return report


def _stage_batch(
    collection: Collection, describer: Describer, model_id: int, ids: np.ndarray, report: ReindexReport
) -> None:
    images = collection.read(catalog.get_images, image_ids=ids)
    regions = collection.read(catalog.get_regions, image_ids=ids)
    boxes: dict[int, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for r in regions:
        boxes.setdefault(r.image_id, []).append((r.id, r.box))
    items = []
    expected: dict[int, str] = {}
    for image_id, rec in zip(ids.tolist(), images, strict=True):
        src = _source(collection, image_id, rec.path, rec.stored_path) if rec else None
        if src is None or rec is None:
            report.missing.append((image_id, "file not found"))
            continue
        expected[image_id] = rec.sha256
        items.append(SourceItem(image_id, path=str(src), boxes=tuple(b for _, b in boxes.get(image_id, []))))
    img_ids, img_vecs, reg_ids, reg_owner, reg_vecs = [], [], [], [], []
    for described in describer.iter_describe(items):
        image_id = int(described.key)  # type: ignore[call-overload]
        image = described.image
        if image is None:
            report.missing.append((image_id, str(described.error)))
            continue
        if image.sha256 != expected[image_id]:
            report.missing.append((image_id, "the file changed since it was indexed (its content is another image)"))
            continue
        img_ids.append(image_id)
        img_vecs.append(image.descriptor)
        for (rid, _), region in zip(boxes.get(image_id, []), image.regions, strict=False):
            reg_ids.append(rid)
            reg_owner.append(image_id)
            reg_vecs.append(region.descriptor)

    def stage(s: Any) -> None:
        if img_ids:
            catalog.put_vectors(
                s, space=STAGING["image"], ids=img_ids, image_ids=img_ids, vectors=np.stack(img_vecs), model_id=model_id
            )
        if reg_ids:
            catalog.put_vectors(
                s,
                space=STAGING["region"],
                ids=reg_ids,
                image_ids=reg_owner,
                vectors=np.stack(reg_vecs),
                model_id=model_id,
            )

    collection.write_catalog(stage)
    report.extracted += len(img_ids)
