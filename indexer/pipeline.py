"""The bulk indexing job: reader -> decode workers -> batched model -> writer.

* **Reader** (thread): walks the folders, skips files already indexed (same size and
  modification time) or known to fail, reads and hashes the rest (sha256), and records
  files whose content is already indexed (duplicates, renamed or touched files) without
  running the model.
* **Decode workers + model** (:class:`~retrieval.models.extract.Extractor`): decode,
  optional detection / segmentation, batched descriptors (global + one per object box).
* **Writer** (thread): commits batches to the catalog then the vector index
  (:meth:`Collection.write`), saves the index every ``save_every_s`` seconds.

Every committed batch is durable, and image ids come from content hashes, so a run that
is killed at any moment and started again continues where it stopped and ends in exactly
the state of one uninterrupted run. :meth:`Indexer.stop` (Ctrl-C) stops after the work in
flight is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.scan import FileEntry, Skipped, scan, under
from retrieval.collection import Collection, IndexedImage, RegionOut
from retrieval.imageio import DEFAULT_MAX_BYTES, DecodedImage
from retrieval.models.descriptor import Box
from retrieval.models.extract import ExtractItem, Extractor, ExtractResult
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, LabelStat
from retrieval.store.keys import image_key

logger = logging.getLogger(__name__)

_DONE = object()
_LOOKUP_BATCH = 256


@dataclass
class IndexOptions:
    prune: bool = False
    retry_failed: bool = False
    follow_symlinks: bool = False
    include_hidden: bool = False
    commit_every: int = 64
    save_every_s: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES
    region_min_score: float = 0.5  # detected objects at least this sure get a region descriptor
    progress: bool = True
    report_dir: Path | None = None


@dataclass
class IndexSummary:
    found: int = 0
    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: int = 0
    failed_before: int = 0
    pruned: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first 1000; all are in the report
    report: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"found {self.found} image files in {self.seconds:.1f} s: indexed {self.indexed} "
            f"({self.images_per_s:.1f} images/s), unchanged {self.unchanged}, duplicates {self.duplicates}, "
            f"failed {self.failed}"
            + (f" (+{self.failed_before} failed before, skipped)" if self.failed_before else ""),
        ]
        if self.pruned:
            out.append(f"pruned {self.pruned} deleted files from the index")
        if self.stage_s:
            out.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_s.items()))
        for path, reason in self.failures[:20]:
            out.append(f"  failed: {path}: {reason}")
        if self.failed > 20:
            out.append(f"  ... and {self.failed - 20} more")
        if self.report:
            out.append(f"failure report: {self.report}")
        if self.interrupted:
            out.append("interrupted: run the same command again to continue")
        return out


@dataclass(frozen=True)
class _Work:
    entry: FileEntry
    data: bytes
    sha256: str
    duplicate: bool


class Indexer:
    """Runs the pipeline over folders into a writable :class:`Collection`."""

    def __init__(
        self,
        collection: Collection,
        extractor: Extractor,
        *,
        detector: Any = None,
        segmenter: Any = None,
        options: IndexOptions | None = None,
    ) -> None:
        self.collection = collection
        self.extractor = extractor
        self.detector = detector
        self.segmenter = segmenter
        self.options = options or IndexOptions()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.summary = IndexSummary()
        self._report_fh: Any = None
        self._bar: Any = None
        if detector is not None or segmenter is not None:
            extractor.annotator = self._annotate

    def stop(self) -> None:
        """Stop reading new files; what is in flight is still written."""
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self, roots: Sequence[str | os.PathLike[str]]) -> IndexSummary:
        t0 = time.perf_counter()
        self.summary = IndexSummary()
        work_q: queue.Queue[Any] = queue.Queue(maxsize=2 * self.options.commit_every)
        write_q: queue.Queue[Any] = queue.Queue(maxsize=2 * self.options.commit_every)
        stages = {"reader": 0.0, "writer": 0.0}
        errors: list[BaseException] = []
        self._bar = tqdm(total=0, unit="img", disable=not self.options.progress, dynamic_ncols=True, smoothing=0.05)
        reader = threading.Thread(target=self._guard, args=(self._read, errors, roots, work_q, stages), daemon=True)
        writer = threading.Thread(target=self._guard, args=(self._write, errors, write_q, stages), daemon=True)
        reader.start()
        writer.start()
        try:
            for result in self.extractor.iter_extract(self._items(work_q)):
                if self._stop.is_set():  # Ctrl-C: results not yet handed to the writer wait for the next run
                    self.summary.interrupted = True
                    break
                if not self._put(write_q, result, writer):
                    break  # the writer died: its error is raised below
        finally:
            if writer.is_alive():
                write_q.put(_DONE)
                writer.join()
            done = not self._stop.is_set()
            self._stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    work_q.get_nowait()
                except queue.Empty:
                    reader.join(0.1)
            self._bar.close()
            if self._report_fh is not None:
                self._report_fh.close()
        if errors:
            raise errors[0]
        if self.options.prune and done and not self.summary.interrupted:
            self.summary.pruned = self._prune(roots)
        self.collection.save()
        self.summary.seconds = time.perf_counter() - t0
        self.summary.stage_s = {
            "read+hash": stages["reader"],
            "decode (workers)": self.extractor.stats["decode_s"],
            "model": self.extractor.stats["forward_s"],
            "write": stages["writer"],
        }
        return self.summary

    @staticmethod
    def _put(q: queue.Queue[Any], item: Any, consumer: threading.Thread) -> bool:
        while consumer.is_alive():  # never block forever on a consumer that died
            try:
                q.put(item, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def _guard(self, fn: Any, errors: list[BaseException], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced by run()
            errors.append(exc)
            self._stop.set()

    def _items(self, work_q: queue.Queue[Any]) -> Iterator[ExtractItem]:
        while True:
            item = work_q.get()
            if item is _DONE:
                return
            yield ExtractItem(key=item, source=item.data)

    # ------------------------------------------------------------------ reader
    def _read(self, roots: Sequence[str], work_q: queue.Queue[Any], stages: dict[str, float]) -> None:
        batch: list[FileEntry] = []
        submitted: set[str] = set()
        try:
            for entry in scan(
                roots, follow_symlinks=self.options.follow_symlinks, include_hidden=self.options.include_hidden
            ):
                if self._stop.is_set():
                    self.summary.interrupted = True
                    break
                if isinstance(entry, Skipped):
                    if "cannot" in entry.reason:
                        self._fail(entry.path, entry.reason, 0, 0)
                    else:
                        logger.info("skipped %s: %s", entry.path, entry.reason)
                    continue
                batch.append(entry)
                if len(batch) >= _LOOKUP_BATCH:
                    self._read_batch(batch, work_q, stages, submitted)
                    batch = []
            if batch and not self._stop.is_set():
                self._read_batch(batch, work_q, stages, submitted)
            elif batch:
                self.summary.interrupted = True
        finally:
            work_q.put(_DONE)

    def _read_batch(
        self, batch: list[FileEntry], work_q: queue.Queue[Any], stages: dict[str, float], submitted: set[str]
    ) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self.summary.found += len(batch)
            self._bar.total = self.summary.found
        with self.collection._db.session(readonly=True) as s:
            known = catalog.get_files_by_path(s, paths=[e.path for e in batch])
            failed = catalog.get_failures_by_path(s, paths=[e.path for e in batch])
        todo: list[tuple[FileEntry, bytes, str]] = []
        for e in batch:
            rec = known.get(e.path)
            if rec is not None and rec.size_bytes == e.size and rec.mtime_ns == e.mtime_ns:
                self._count("unchanged")
                continue
            fail = failed.get(e.path)
            if fail and not self.options.retry_failed and (fail.size_bytes, fail.mtime_ns) == (e.size, e.mtime_ns):
                self._count("failed_before")
                continue
            data = self._read_file(e)
            if data is not None:
                todo.append((e, data, hashlib.sha256(data).hexdigest()))
        with self.collection._db.session(readonly=True) as s:
            present = catalog.existing_images(s, image_ids=[image_key(sha) for _, _, sha in todo])
        same_content: list[FileInfo] = []
        for e, data, sha in todo:
            if image_key(sha) in present:
                same_content.append(
                    FileInfo(path=e.path, image_id=image_key(sha), size_bytes=e.size, mtime_ns=e.mtime_ns)
                )
                self._count("unchanged" if e.path in known else "duplicates")
                continue
            duplicate = sha in submitted
            submitted.add(sha)
            stages["reader"] += time.perf_counter() - t0
            work_q.put(_Work(e, data, sha, duplicate))  # blocks while the model is behind: bounded memory
            t0 = time.perf_counter()
        self.collection.add_files(same_content)
        stages["reader"] += time.perf_counter() - t0

    def _read_file(self, e: FileEntry) -> bytes | None:
        if e.size > self.options.max_bytes:
            self._fail(
                e.path, f"file is {e.size} bytes, over the limit of {self.options.max_bytes}", e.size, e.mtime_ns
            )
            return None
        if e.size == 0:
            self._fail(e.path, "empty file (0 bytes)", e.size, e.mtime_ns)
            return None
        try:
            with open(e.path, "rb") as fh:
                return fh.read(self.options.max_bytes + 1)
        except PermissionError:
            self._fail(e.path, "permission denied (cannot read the file)", e.size, e.mtime_ns)
        except OSError as exc:
            self._fail(e.path, f"cannot read file: {exc.strerror or exc}", e.size, e.mtime_ns)
        return None

    # ------------------------------------------------------------------ mapper helpers
    def _annotate(self, decoded: DecodedImage) -> tuple[Sequence[Box], Any]:
        """Runs in decode workers: detection / segmentation on the decoded pixels."""
        from retrieval.vision import annotate

        detections, segmentation = annotate(decoded, self.detector, self.segmenter)
        keep = [d for d in detections if d.score >= self.options.region_min_score]
        return [d.box for d in keep], {"detections": detections, "regions": keep, "segmentation": segmentation}

    def _to_indexed(self, work: _Work, res: ExtractResult) -> IndexedImage:
        assert res.info is not None and res.descriptor is not None
        regions: tuple[RegionOut, ...] = ()
        labels: dict[str, list[LabelStat]] = {}
        sources: list[str] = []
        if res.annotation is not None:
            from retrieval.vision import image_labels

            ann = res.annotation
            if res.regions is not None and len(ann["regions"]):
                regions = tuple(
                    RegionOut(box, "detector", vec, d.label, d.score)
                    for box, vec, d in zip(res.boxes, res.regions, ann["regions"], strict=True)
                )
            for lab in image_labels(
                ann["detections"], ann["segmentation"], image_size=(res.info.width, res.info.height)
            ):
                labels.setdefault(lab.source, []).append(
                    LabelStat(lab.label, lab.max_score, lab.area_fraction, lab.count)
                )
            if self.detector is not None:
                sources.append("detector")
                labels.setdefault("detector", [])
            if self.segmenter is not None:
                labels.setdefault("segmenter", [])
        return IndexedImage(
            sha256=work.sha256,
            size_bytes=work.entry.size,
            width=res.info.width,
            height=res.info.height,
            format=res.info.format,
            descriptor=res.descriptor,
            exif_time=res.info.exif_time,
            path=work.entry.path,
            mtime_ns=work.entry.mtime_ns,
            regions=regions,
            labels=labels,
            replace_sources=tuple(sources),
        )

    # ------------------------------------------------------------------ writer
    def _write(self, write_q: queue.Queue[Any], stages: dict[str, float]) -> None:
        pending: list[IndexedImage] = []
        counts = {"indexed": 0, "duplicates": 0}
        while True:
            try:
                res = write_q.get(timeout=2.0)
            except queue.Empty:
                res = None
            done = res is _DONE
            if isinstance(res, ExtractResult):
                work: _Work = res.key  # type: ignore[assignment]
                if res.ok:
                    pending.append(self._to_indexed(work, res))
                    counts["duplicates" if work.duplicate else "indexed"] += 1
                else:
                    self._fail(work.entry.path, str(res.error), work.entry.size, work.entry.mtime_ns)
            if pending and (done or res is None or len(pending) >= self.options.commit_every):
                t0 = time.perf_counter()
                self.collection.write(pending)
                self.collection.save_if_due(self.options.save_every_s)
                stages["writer"] += time.perf_counter() - t0
                with self._lock:
                    self.summary.indexed += counts["indexed"]
                    self.summary.duplicates += counts["duplicates"]
                    self._bar.update(len(pending))
                    self._bar.set_postfix(dup=self.summary.duplicates, failed=self.summary.failed, refresh=False)
                pending, counts = [], {"indexed": 0, "duplicates": 0}
            if done:
                return

    # ------------------------------------------------------------------ bookkeeping
    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + 1)
            if what != "failed_before":
                self._bar.update(1)

    def _fail(self, path: str, reason: str, size: int, mtime_ns: int) -> None:
        logger.debug("failed: %s: %s", path, reason)
        with self.collection._db.session() as s:
            catalog.record_failure(s, path=path, reason=reason, size_bytes=size, mtime_ns=mtime_ns)
        with self._lock:
            self.summary.failed += 1
            if len(self.summary.failures) < 1000:
                self.summary.failures.append((path, reason))
            self._bar.update(1)
            if self._report_fh is None:
                report_dir = self.options.report_dir or (self.collection.root / "reports")
                report_dir.mkdir(parents=True, exist_ok=True)
                self.summary.report = report_dir / f"index-{datetime.now():%Y%m%d-%H%M%S}.tsv"
                self._report_fh = self.summary.report.open("w", encoding="utf-8")
                self._report_fh.write("path\treason\n")
            self._report_fh.write(f"{path}\t{reason}\n")
            self._report_fh.flush()

    def _prune(self, roots: Sequence[str | os.PathLike[str]]) -> int:
        """Forget catalog files under ``roots`` that no longer exist on disk."""
        gone: list[str] = []
        for root in roots:
            with self.collection._db.session(readonly=True) as s:
                gone.extend(
                    rec.path for rec in catalog.files_under(s, prefix=under(root)) if not os.path.isfile(rec.path)
                )
        if gone:
            self.collection.remove_files(gone)
            logger.info("pruned %d deleted files", len(gone))
        return len(gone)


def image_ids_of(paths: Sequence[str], collection: Collection) -> np.ndarray:
    """Image ids of indexed files (for tests and tools)."""
    with collection._db.session(readonly=True) as s:
        found = catalog.get_files_by_path(s, paths=list(paths))
    return np.array([found[p].image_id for p in paths if p in found], dtype=np.int64)
