"""The writer side of ingestion: plans what to describe, and hands described records to a Collection.

:class:`RunState` is what one run of any runner (local threads, Ray) shares: the collection,
the summary counters, the progress display and the failure report. Its methods are
thread-safe.

* :meth:`RunState.plan` takes a batch of listed files and drops those already indexed (same
  size and modification time) or known to fail (unless retried): the rest must be read.
* :meth:`RunState.fail` records a per-file failure (catalog, report file, summary).
* :class:`BatchWriter` commits described records in batches (catalog first, then the
  vector index, :meth:`Collection.write`) and saves the index every ``save_every_s``.

Records carry content hashes, so writing one twice is harmless (upserts): a runner that
retries work after a crashed worker, or a run started again after a crash, ends in the
state of one clean run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from retrieval.collection import Collection, IndexedImage
from retrieval.ingest.describe import Described
from retrieval.ingest.scan import FileEntry, under
from retrieval.ingest.summary import IndexOptions, IndexSummary
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo

logger = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 1000


class RunState:
    """Counters, progress and failure report of one ingestion run over one collection."""

    def __init__(self, collection: Collection, options: IndexOptions, progress: Any) -> None:
        self.collection = collection
        self.options = options
        self.summary = IndexSummary()
        self.progress = progress
        self._lock = threading.Lock()
        self._report_fh: Any = None

    # ------------------------------------------------------------------ planning
    def found(self, n: int) -> None:
        with self._lock:
            self.summary.found += n
            self.progress.set_total(self.summary.found)

    def plan(self, batch: Sequence[FileEntry]) -> tuple[list[FileEntry], set[str]]:
        """The files of ``batch`` that must be read (new or changed), and the paths already known."""
        paths = [e.path for e in batch]
        known = self.collection.read(catalog.get_files_by_path, paths=paths)
        failed = self.collection.read(catalog.get_failures_by_path, paths=paths)
        todo: list[FileEntry] = []
        for e in batch:
            rec = known.get(e.path)
            if rec is not None and rec.size_bytes == e.size and rec.mtime_ns == e.mtime_ns:
                self.count("unchanged")
                continue
            fail = failed.get(e.path)
            if fail and not self.options.retry_failed and (fail.size_bytes, fail.mtime_ns) == (e.size, e.mtime_ns):
                self.count("failed_before")
                continue
            todo.append(e)
        return todo, set(known)

    def present(self, image_ids: Sequence[int]) -> set[int]:
        """Which of these images (content hashes) the catalog already holds."""
        return set(self.collection.read(catalog.existing_images, image_ids=list(image_ids)))

    # ------------------------------------------------------------------ bookkeeping
    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.summary, what, getattr(self.summary, what) + n)
            self.progress.update(n, **({} if what == "indexed" else {what: n}))

    def fail(self, path: str, reason: str, size: int, mtime_ns: int) -> None:
        """Record a per-file failure: in the catalog (skipped next time unless it changes), the
        report file and the summary."""
        logger.debug("failed: %s: %s", path, reason)
        self.collection.write_catalog(
            catalog.record_failure, path=path, reason=reason, size_bytes=size, mtime_ns=mtime_ns
        )
        with self._lock:
            self.summary.failed += 1
            if len(self.summary.failures) < MAX_LISTED_FAILURES:
                self.summary.failures.append((path, reason))
            self.progress.update(1, failed=1)
            if self._report_fh is None:
                report_dir = self.options.report_dir or (self.collection.root / "reports")
                report_dir.mkdir(parents=True, exist_ok=True)
                self.summary.report = report_dir / f"index-{datetime.now():%Y%m%d-%H%M%S}.tsv"
                self._report_fh = self.summary.report.open("w", encoding="utf-8")
                self._report_fh.write("path\treason\n")
            self._report_fh.write(f"{path}\t{reason}\n")
            self._report_fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._report_fh is not None:
                self._report_fh.close()
                self._report_fh = None

    def prune(self, roots: Sequence[str | os.PathLike[str]]) -> int:
        """Forget catalog files under ``roots`` that no longer exist on disk."""
        gone: list[str] = []
        for root in roots:
            gone.extend(
                rec.path
                for rec in self.collection.read(catalog.files_under, prefix=under(root))
                if not os.path.isfile(rec.path)
            )
        if gone:
            self.collection.remove_files(gone)
            logger.info("pruned %d deleted files", len(gone))
        return len(gone)


class BatchWriter:
    """Commits described records in batches of ``commit_every``; not thread-safe (one writer)."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._pending: list[IndexedImage] = []
        self._counts = {"indexed": 0, "duplicates": 0}
        self._seen: set[str] = set()

    def add(self, described: Described, *, entry: FileEntry | None = None, duplicate: bool | None = None) -> None:
        """One record; ``duplicate`` None: decided here (content already written in this run)."""
        if not described.ok or described.image is None:
            path = entry.path if entry is not None else str(described.key)
            size, mtime = (entry.size, entry.mtime_ns) if entry is not None else (0, 0)
            self.state.fail(path, str(described.error), size, mtime)
            return
        image = described.image
        if duplicate is None:
            duplicate = image.sha256 in self._seen
        self._seen.add(image.sha256)
        self._pending.append(image)
        self._counts["duplicates" if duplicate else "indexed"] += 1
        if len(self._pending) >= self.state.options.commit_every:
            self.flush()

    def add_known_content(self, files: Sequence[FileInfo], *, known_paths: set[str]) -> None:
        """Files whose content the catalog already holds: recorded without a descriptor."""
        if not files:
            return
        self.state.collection.add_files(files)
        for f in files:
            self.state.count("unchanged" if f.path in known_paths else "duplicates")

    def flush(self) -> None:
        if not self._pending:
            return
        collection = self.state.collection
        collection.write(self._pending)
        collection.save_if_due(self.state.options.save_every_s)
        for what, n in self._counts.items():
            if n:
                self.state.count(what, n)
        self._pending, self._counts = [], {"indexed": 0, "duplicates": 0}
