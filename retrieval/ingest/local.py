"""The local runner: reader thread -> the map step (decode workers + batched model) -> writer thread.

* **Reader** (thread): walks the folders, drops files already indexed or known to fail
  (:meth:`RunState.plan`), reads and hashes the rest, and records files whose content is
  already indexed (duplicates, renamed or touched files) without running the model.
* **Map step** (:class:`~retrieval.ingest.describe.Describer`, driven by the caller's thread):
  decode workers (decode, optional detection / segmentation, resize to every scale), then
  batches of equal input size on the model threads (on CPU one single-threaded model thread
  per torch thread of the caller: :meth:`~retrieval.models.extract.Extractor.model_layout`),
  at most one batch more in flight than there are model threads.
* **Writer** (thread): :class:`~retrieval.ingest.writer.BatchWriter` commits batches to the
  catalog then the vector index, and saves the index every ``save_every_s`` seconds.

Every committed batch is durable and image ids come from content hashes, so a run that is
killed at any moment and started again continues where it stopped and ends in exactly the
state of one uninterrupted run. :meth:`LocalIngest.stop` (Ctrl-C) stops after the work in
flight is written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.collection import Collection
from retrieval.ingest.describe import Described, Describer, SourceItem, read_file
from retrieval.ingest.scan import FileEntry, Skipped, read_manifest, scan
from retrieval.ingest.settings import IngestSettings
from retrieval.ingest.summary import IndexOptions, IndexSummary
from retrieval.ingest.writer import BatchWriter, RunState
from retrieval.store.catalog import FileInfo
from retrieval.store.keys import image_key

logger = logging.getLogger(__name__)

_DONE = object()
LOOKUP_BATCH = 256


@dataclass(frozen=True, eq=False)
class _Work:
    entry: FileEntry
    duplicate: bool


def make_progress(options: IndexOptions, *, desc: str, log: logging.Logger) -> Any:
    """The run's progress display: a bar on a terminal, periodic log lines otherwise."""
    from retrieval.progress import Mode, Progress

    mode: Mode = "auto" if options.progress else "log"
    return Progress(desc=desc, unit="images", logger=log, interval_s=options.progress_interval_s, mode=mode)


def scan_batches(
    roots: Sequence[str | os.PathLike[str]],
    state: RunState,
    *,
    follow_symlinks: bool,
    stop: threading.Event,
    batch: int = LOOKUP_BATCH,
) -> Iterator[list[FileEntry]]:
    """Listed files in batches (new, changed or unknown ones: :meth:`RunState.plan` comes next);
    unreadable paths are recorded as failures, other skips logged."""
    pending: list[FileEntry] = []
    for entry in scan(roots, follow_symlinks=follow_symlinks, include_hidden=state.options.include_hidden):
        if stop.is_set():
            state.summary.interrupted = True
            return
        if isinstance(entry, Skipped):
            if "cannot" in entry.reason:
                state.fail(entry.path, entry.reason, 0, 0)
            else:
                logger.info("skipped %s: %s", entry.path, entry.reason)
            continue
        pending.append(entry)
        if len(pending) >= batch:
            state.found(len(pending))
            yield pending
            pending = []
    if pending:
        state.found(len(pending))
        yield pending


class LocalIngest:
    """Runs the pipeline over folders into a writable :class:`Collection` on this machine."""

    def __init__(self, collection: Collection, describer: Describer, options: IndexOptions | None = None) -> None:
        self.collection = collection
        self.describer = describer
        self.options = options or IndexOptions()
        self._stop = threading.Event()
        self.state = RunState(collection, self.options, _NoProgress())

    @classmethod
    def over(
        cls,
        collection: Collection,
        settings: IngestSettings | None = None,
        *,
        detector: Any = None,
        segmenter: Any = None,
        options: IndexOptions | None = None,
    ) -> LocalIngest:
        """A pipeline over ``collection`` with its model (and these annotators, if given)."""
        describer = Describer(settings or IngestSettings(), model=collection.model, detector=detector,
                              segmenter=segmenter)
        return cls(collection, describer, options)

    @property
    def summary(self) -> IndexSummary:
        return self.state.summary

    def stop(self) -> None:
        """Stop reading new files; what is in flight is still written."""
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(
        self, roots: Sequence[str | os.PathLike[str]] = (), *, manifest: str | os.PathLike[str] | None = None
    ) -> IndexSummary:
        """Index the files under ``roots`` and those a ``manifest`` lists (see :func:`read_manifest`)."""
        t0 = time.perf_counter()
        if manifest is not None:
            roots = [*roots, *read_manifest(manifest)]
        progress = make_progress(self.options, desc="index", log=logger)
        state = self.state = RunState(self.collection, self.options, progress)
        depth = 2 * self.options.commit_every
        work_q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        write_q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        stages = {"reader": 0.0, "writer": 0.0}
        errors: list[BaseException] = []
        writer = BatchWriter(state)
        reader_t = threading.Thread(target=self._guard, args=(self._read, errors, roots, work_q, stages, writer),
                                    name="imsearch-reader", daemon=True)
        writer_t = threading.Thread(target=self._guard, args=(self._write, errors, write_q, stages, writer),
                                    name="imsearch-writer", daemon=True)
        extractor = self.describer.extractor
        stats0 = dict(extractor.stats)
        reader_t.start()
        writer_t.start()
        try:
            for described in self.describer.iter_describe(self._items(work_q)):
                if self._stop.is_set():  # Ctrl-C: results not yet handed to the writer wait for the next run
                    state.summary.interrupted = True
                    break
                if not _put(write_q, described, writer_t):
                    break  # the writer died: its error is raised below
        finally:
            if writer_t.is_alive():
                write_q.put(_DONE)
                writer_t.join()
            done = not self._stop.is_set()
            self._stop.set()
            while reader_t.is_alive():  # unblock a reader waiting on a full queue
                try:
                    work_q.get_nowait()
                except queue.Empty:
                    reader_t.join(0.1)
            state.close()
            progress.close()
        if errors:
            raise errors[0]
        if self.options.prune and done and not state.summary.interrupted:
            state.summary.pruned = state.prune(roots)
        self.collection.save()
        summary = state.summary
        summary.seconds = time.perf_counter() - t0
        threads = int(extractor.stats.get("model_threads", 1))
        model_stage = f"model ({threads} threads)" if threads > 1 else "model"  # seconds summed over threads
        summary.stage_s = {
            "read+hash": stages["reader"],
            "decode (workers)": extractor.stats["decode_s"] - stats0["decode_s"],
            model_stage: extractor.stats["forward_s"] - stats0["forward_s"],
            "write": stages["writer"],
        }
        batches = extractor.stats["batches"] - stats0["batches"]
        if batches:
            logger.info("model: %d batches, %.1f inputs each on average", batches,
                        (extractor.stats["images"] - stats0["images"]) / batches)
        return summary

    def _guard(self, fn: Callable[..., None], errors: list[BaseException], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced by run()
            errors.append(exc)
            self._stop.set()

    @staticmethod
    def _items(work_q: queue.Queue[Any]) -> Iterator[SourceItem]:
        while True:
            item = work_q.get()
            if item is _DONE:
                return
            yield item

    # ------------------------------------------------------------------ reader
    def _read(
        self, roots: Sequence[str], work_q: queue.Queue[Any], stages: dict[str, float], writer: BatchWriter
    ) -> None:
        submitted: set[str] = set()
        follow = self.describer.settings.follow_symlinks
        try:
            for batch in scan_batches(roots, self.state, follow_symlinks=follow, stop=self._stop):
                if self._stop.is_set():
                    self.state.summary.interrupted = True
                    break
                self._read_batch(batch, work_q, stages, submitted, writer)
        finally:
            work_q.put(_DONE)

    def _read_batch(
        self,
        batch: list[FileEntry],
        work_q: queue.Queue[Any],
        stages: dict[str, float],
        submitted: set[str],
        writer: BatchWriter,
    ) -> None:
        t0 = time.perf_counter()
        state = self.state
        todo, known = state.plan(batch)
        settings = self.describer.settings
        read: list[tuple[FileEntry, bytes, int, int, str]] = []
        for e in todo:
            got = read_file(e.path, settings.max_bytes, follow_symlinks=settings.follow_symlinks, roots=settings.roots)
            if isinstance(got, str):
                state.fail(e.path, got, e.size, e.mtime_ns)
                continue
            data, size, mtime_ns = got
            read.append((e, data, size, mtime_ns, hashlib.sha256(data).hexdigest()))
        present = state.present([image_key(sha) for *_, sha in read])
        same_content: list[FileInfo] = []
        for e, data, size, mtime_ns, sha in read:
            if image_key(sha) in present:
                same_content.append(FileInfo(path=e.path, image_id=image_key(sha), size_bytes=size, mtime_ns=mtime_ns))
                continue
            duplicate = sha in submitted
            submitted.add(sha)
            stages["reader"] += time.perf_counter() - t0
            item = SourceItem(_Work(e, duplicate), data=data, path=e.path, size_bytes=size, mtime_ns=mtime_ns,
                              sha256=sha)
            work_q.put(item)  # blocks while the model is behind: bounded memory
            t0 = time.perf_counter()
        writer.add_known_content(same_content, known_paths=known)
        stages["reader"] += time.perf_counter() - t0

    # ------------------------------------------------------------------ writer
    def _write(self, write_q: queue.Queue[Any], stages: dict[str, float], writer: BatchWriter) -> None:
        while True:
            try:
                item = write_q.get(timeout=2.0)
            except queue.Empty:
                item = None
            done = item is _DONE
            if isinstance(item, Described):
                work: _Work = item.key  # type: ignore[assignment]
                t0 = time.perf_counter()
                writer.add(item, entry=work.entry, duplicate=work.duplicate)
                stages["writer"] += time.perf_counter() - t0
            if done or item is None:  # idle or finished: commit what waits
                t0 = time.perf_counter()
                writer.flush()
                stages["writer"] += time.perf_counter() - t0
            if done:
                return


def _put(q: queue.Queue[Any], item: Any, consumer: threading.Thread) -> bool:
    while consumer.is_alive():  # never block forever on a consumer that died
        try:
            q.put(item, timeout=1.0)
            return True
        except queue.Full:
            continue
    return False


class _NoProgress:
    """Before a run starts."""

    def update(self, n: int = 1, failed: int = 0, **counters: int) -> None:
        pass

    def set_total(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
