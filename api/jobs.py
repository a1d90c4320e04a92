"""Bulk index jobs run by the API process (the one writer of its data directory).

One job at a time runs :class:`indexer.pipeline.Indexer` over a server-side folder in a
background thread, at a lower CPU priority (``job_nice``), with its own smaller OpenMP team
(``job_threads``), and its network pausing before each layer while a search runs
(``job_yield_max_ms``: see :class:`api.compute.ForegroundGate`), so searches stay responsive.
Its progress is copied into the catalog's ``jobs`` table every half second, so any
reader sees it; :meth:`JobRunner.cancel` stops it after the work in flight is written.
Jobs a previous server process left running are marked failed at start-up: starting them
again continues where they stopped (the indexer skips what is already indexed).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from api.compute import ForegroundGate, job_threads, trim_memory
from api.errors import ApiError
from api.settings import Settings
from indexer.pipeline import Indexer, IndexOptions, IndexSummary
from retrieval.errors import ImsearchError, NotFoundError
from retrieval.models.extract import Extractor
from retrieval.search import SearchEngine
from retrieval.store import catalog
from retrieval.store.catalog import JobRecord

logger = logging.getLogger(__name__)

KIND = "index"
POLL_S = 0.5
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class _Active:
    job_id: str
    thread: threading.Thread | None = None
    indexer: Indexer | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def counts(summary: IndexSummary) -> dict[str, int]:
    """Job counters from an indexer summary: done + skipped + failed == total once finished."""
    done = summary.indexed
    skipped = summary.unchanged + summary.duplicates + summary.failed_before
    failed = summary.failed
    return {"total": max(summary.found, done + skipped + failed), "done": done, "skipped": skipped, "failed": failed}


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: threads it starts inherit it)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        logger.info("could not lower the index job's priority: %s", exc)


class JobRunner:
    def __init__(self, engine: SearchEngine, settings: Settings, gate: ForegroundGate | None = None) -> None:
        self.engine = engine
        self.settings = settings
        #: the job's network pauses at this gate while searches run (None: never pauses)
        self.gate = gate
        self._lock = threading.Lock()
        self._active: _Active | None = None

    # ------------------------------------------------------------------ catalog
    def _update(self, job_id: str, **fields: Any) -> JobRecord:
        return self.engine.collection.write_catalog(catalog.update_job, job_id=job_id, **fields)

    def get(self, job_id: str) -> JobRecord:
        record = self.engine.collection.read(catalog.get_job, job_id=job_id)
        if record is None:
            raise NotFoundError(f"no job with id {job_id!r}; GET /api/v1/jobs lists the jobs")
        return record

    def list(self, limit: int = 50) -> list[JobRecord]:
        return self.engine.collection.read(catalog.list_jobs, limit=limit)

    def running(self) -> JobRecord | None:
        active = self._active
        return self.get(active.job_id) if active is not None else None

    def recover(self) -> None:
        """Mark jobs an earlier process left unfinished as failed."""
        collection = self.engine.collection
        for status in ("queued", "running"):
            for job in collection.read(catalog.list_jobs, status=status, limit=1000):
                collection.write_catalog(
                    catalog.update_job,
                    job_id=job.id,
                    status="failed",
                    message="the server stopped while this job ran; start it again to continue where it stopped",
                )

    # ------------------------------------------------------------------ control
    def start(self, root: Path, *, detect: bool, segment: bool, prune: bool) -> JobRecord:
        """Start indexing ``root`` (already confined to the allowed roots) in the background."""
        if not root.exists():
            raise NotFoundError(f"{root} does not exist on the server")
        params = {"path": str(root), "detect": detect, "segment": segment, "prune": prune}
        with self._lock:
            if self._active is not None:
                raise ApiError(
                    409,
                    f"job {self._active.job_id} is still running; wait for it to finish or cancel it first",
                    kind="job-running",
                    title="A job is already running",
                    job_id=self._active.job_id,
                )
            record = self.engine.collection.write_catalog(catalog.create_job, kind=KIND, params=params)
            active = _Active(record.id)
            active.thread = threading.Thread(
                target=self._run, args=(active, params), name=f"imsearch-job-{record.id[:8]}", daemon=True
            )
            self._active = active
            active.thread.start()
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        active = self._active
        if active is None or active.job_id != job_id or record.status in FINISHED:
            raise ApiError(
                409, f"job {job_id} already finished ({record.status})", kind="job-finished", title="Job finished"
            )
        active.cancelled.set()
        if active.indexer is not None:
            active.indexer.stop()
        return self._update(job_id, message="cancelling: writing the work in flight")

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running job, if any (tests, shutdown)."""
        active = self._active
        if active is not None and active.thread is not None:
            active.thread.join(timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        active = self._active
        if active is None:
            return
        logger.warning("stopping index job %s: the server is shutting down", active.job_id)
        active.cancelled.set()
        if active.indexer is not None:
            active.indexer.stop()
        self.wait(timeout)

    # ------------------------------------------------------------------ the job thread
    def _make_indexer(self, params: dict[str, Any]) -> Indexer:
        detector = segmenter = None
        if params["detect"] or params["segment"]:
            from retrieval.vision import create_detector, create_segmenter

            if params["detect"]:
                detector = create_detector(self.settings.detector, model_dir=self.settings.model_dir)
            if params["segment"]:
                segmenter = create_segmenter(self.settings.segmenter, model_dir=self.settings.model_dir)
        collection = self.engine.collection
        extractor = Extractor(
            collection.model,
            device=self.settings.device,
            batch_size=self.settings.job_batch_size,
            workers=self.settings.job_workers,
            buffer_images=2 * self.settings.job_batch_size,  # bounded memory next to the searches
        )
        if self.gate is not None and self.gate.max_wait_s > 0:
            extractor.add_pause_points(self.gate.pause_point)
        options = IndexOptions(
            prune=bool(params["prune"]),
            region_min_score=self.settings.region_min_score,
            save_every_s=self.settings.save_every_s,
            progress=False,
            report_dir=collection.root / "reports",
        )
        return Indexer(collection, extractor, detector=detector, segmenter=segmenter, options=options)

    def _run(self, active: _Active, params: dict[str, Any]) -> None:
        lower_priority(self.settings.job_nice)
        torch.set_num_threads(job_threads(self.settings.job_threads))  # this thread's OpenMP team only
        job_id = active.job_id
        stop_monitor = threading.Event()
        monitor: threading.Thread | None = None
        status, message = "failed", "the job did not start"
        try:
            self._update(job_id, status="running", message="scanning")
            indexer = self._make_indexer(params)
            active.indexer = indexer
            if active.cancelled.is_set():
                indexer.stop()
            monitor = threading.Thread(target=self._monitor, args=(active, stop_monitor), daemon=True)
            monitor.start()
            summary = indexer.run([params["path"]])
            cancelled = summary.interrupted or active.cancelled.is_set()
            status = "cancelled" if cancelled else "succeeded"
            message = " | ".join(summary.lines()[:2])
        except ImsearchError as exc:
            message = str(exc)
            logger.error("index job %s failed: %s", job_id, exc)
        except Exception as exc:  # the job must end in a final status whatever happens
            message = f"internal error: {type(exc).__name__}: {exc}"
            logger.exception("index job %s failed", job_id)
        finally:
            stop_monitor.set()
            if monitor is not None:
                monitor.join()
            final = counts(active.indexer.summary) if active.indexer is not None else {}
            try:
                self._update(job_id, status=status, message=message, **final)
            except ImsearchError:
                logger.exception("could not record the end of job %s", job_id)
            with self._lock:
                self._active = None
            active.indexer = None
            trim_memory()  # the job's buffers go back to the OS
            if self.gate is not None:
                gate = self.gate
                logger.info("index jobs so far paused %.1f s (%d times) for searches", gate.waited_s, gate.pauses)
            logger.info("index job %s %s: %s", job_id, status, message)

    def _monitor(self, active: _Active, stop: threading.Event) -> None:
        last: dict[str, int] = {}
        while not stop.wait(POLL_S):
            if active.indexer is None:
                continue
            now = counts(active.indexer.summary)
            if now != last:
                try:
                    message = "cancelling" if active.cancelled.is_set() else "indexing"
                    self._update(active.job_id, message=message, **now)
                    last = now
                except ImsearchError as exc:
                    logger.warning("could not record the progress of job %s: %s", active.job_id, exc)
