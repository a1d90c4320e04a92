"""Bulk index jobs run in the background by a long-lived process (the one writer of its collection).

One job at a time runs :class:`~retrieval.ingest.local.LocalIngest` over a folder in a
background thread. Where the images are described is ``isolation``: ``"process"`` (a child
process per job, :class:`~retrieval.ingest.child.ChildDescriber`: the job's model, decode
buffers and activations never count in this process's memory, and go back to the system when
the job ends) or ``"thread"`` (the job thread itself, sharing this process's model). Either
way the describing runs at a lower CPU priority (``nice``), with its own OpenMP team
(``threads``), its network pausing before each layer while searches run (``pause`` in a
thread, ``yield_to`` in a child: the API's :class:`api.compute.ForegroundGate`), and the
scanning, planning and writing stay in this process: still exactly one writer.

A job's progress is copied into the catalog's ``jobs`` table every half second, so any reader
sees it; :meth:`JobRunner.cancel` stops it after the results already described are written
(a child is stopped at once: what it had not sent back is described again by the next run).
Jobs an earlier process left running are marked failed by :meth:`JobRunner.recover`: starting
them again continues where they stopped (the pipeline skips what is already indexed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from retrieval.collection import Collection, model_path
from retrieval.errors import CatalogError, ImsearchError, NotFoundError
from retrieval.ingest.child import (
    ChildDescriber,
    ChildOptions,
    Isolation,
    YieldTo,
    log_levels,
    lower_priority,
    process_niceness,
)
from retrieval.ingest.describe import Describer
from retrieval.ingest.local import LocalIngest
from retrieval.ingest.settings import IngestSettings
from retrieval.ingest.summary import IndexOptions
from retrieval.runtime import trim_memory
from retrieval.store import catalog
from retrieval.store.catalog import JobRecord

logger = logging.getLogger(__name__)

KIND = "index"
POLL_S = 0.5
FINISHED = ("succeeded", "failed", "cancelled")


class JobConflictError(CatalogError):
    """A job cannot start (another runs) or be cancelled (it finished)."""

    def __init__(self, message: str, *, kind: str, job_id: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.job_id = job_id


@dataclass
class _Active:
    job_id: str
    thread: threading.Thread | None = None
    ingest: LocalIngest | None = None
    child: ChildDescriber | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        self.cancelled.set()
        if self.ingest is not None:
            self.ingest.stop()
        if self.child is not None:
            self.child.stop()  # what the child has not sent yet is described again by the next run


class JobRunner:
    """Index jobs over one writable collection, one at a time.

    ``settings``: the map step's settings of every job (a job may turn detection and
    segmentation on or off); ``isolation``: describe in a child process or in the job thread
    (see the module docstring); ``threads``: the describing torch threads (None: unchanged);
    ``nice``: how much lower its CPU priority is; ``pause`` (thread) / ``yield_to`` (process):
    how its network waits for searches before each layer; ``malloc_arena_max``: the child's
    glibc arenas; ``commit_every``: images per catalog commit (the files read ahead of the
    describing, whose bytes wait in this process, are at most twice as many); ``after_job``:
    called in the job thread when a job ended, whichever way.
    """

    def __init__(
        self,
        collection: Collection,
        settings: IngestSettings,
        *,
        isolation: Isolation,
        threads: int | None = None,
        nice: int = 0,
        pause: Callable[[], None] | None = None,
        yield_to: YieldTo | None = None,
        malloc_arena_max: int = 0,
        commit_every: int = IndexOptions.commit_every,
        save_every_s: float = 30.0,
        after_job: Callable[[], None] | None = None,
    ) -> None:
        if isolation not in ("process", "thread"):
            raise ImsearchError(f"isolation must be 'process' or 'thread', got {isolation!r}")
        self.collection = collection
        self.settings = settings
        self.isolation = isolation
        self.threads = threads
        self.nice = nice
        self.pause = pause
        self.yield_to = yield_to
        self.malloc_arena_max = malloc_arena_max
        self.commit_every = commit_every
        self.save_every_s = save_every_s
        self.after_job = after_job
        self._lock = threading.Lock()
        self._active: _Active | None = None

    # ------------------------------------------------------------------ catalog
    def _update(self, job_id: str, **fields: Any) -> JobRecord:
        return self.collection.write_catalog(catalog.update_job, job_id=job_id, **fields)

    def get(self, job_id: str) -> JobRecord:
        record = self.collection.read(catalog.get_job, job_id=job_id)
        if record is None:
            raise NotFoundError(f"no job with id {job_id!r}; GET /api/v1/jobs lists the jobs")
        return record

    def list(self, limit: int = 50) -> list[JobRecord]:
        return self.collection.read(catalog.list_jobs, limit=limit)

    def running(self) -> JobRecord | None:
        active = self._active
        return self.get(active.job_id) if active is not None else None

    def child_pid(self) -> int | None:
        """Process id of the running job's describing process (None: no job, or ``isolation="thread"``)."""
        active = self._active
        child = active.child if active is not None else None
        return child.pid if child is not None else None

    def recover(self) -> None:
        """Mark jobs an earlier process left unfinished as failed."""
        for status in ("queued", "running"):
            for job in self.collection.read(catalog.list_jobs, status=status, limit=1000):
                self._update(
                    job.id,
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
                raise JobConflictError(
                    f"job {self._active.job_id} is still running; wait for it to finish or cancel it first",
                    kind="job-running",
                    job_id=self._active.job_id,
                )
            record = self.collection.write_catalog(catalog.create_job, kind=KIND, params=params)
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
            raise JobConflictError(f"job {job_id} already finished ({record.status})", kind="job-finished",
                                   job_id=job_id)
        active.stop()
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
        logger.warning("stopping index job %s: the process is shutting down", active.job_id)
        active.stop()
        self.wait(timeout)

    # ------------------------------------------------------------------ the job thread
    def _make_ingest(self, active: _Active, params: dict[str, Any]) -> LocalIngest:
        settings = self.settings.with_(detect=bool(params["detect"]), segment=bool(params["segment"]))
        describer: Describer
        if self.isolation == "process":
            active.child = self._child(settings)
            # LocalIngest uses settings, iter_describe and extractor.stats of its describer: the child offers them
            describer = cast(Describer, active.child)
        else:
            describer = Describer(settings, model=self.collection.model, pause=self.pause)
        options = IndexOptions(
            prune=bool(params["prune"]),
            commit_every=self.commit_every,
            save_every_s=self.save_every_s,
            progress=False,  # periodic log lines (a server's stderr is a log)
            report_dir=self.collection.root / "reports",
        )
        return LocalIngest(self.collection, describer, options)

    def _child(self, settings: IngestSettings) -> ChildDescriber:
        model = self.collection.model
        path = model_path(self.collection.root, model.fingerprint)
        if not path.is_file():  # written when the collection registered its model; restored if deleted
            model.save(path)
        options = ChildOptions(
            threads=self.threads,
            niceness=process_niceness() + self.nice,  # the server's + nice, whatever the job thread's is
            yield_to=self.yield_to,
            malloc_arena_max=self.malloc_arena_max,
            log_levels=log_levels(),
        )
        return ChildDescriber(settings.with_(model=str(path)), fingerprint=model.fingerprint, options=options)

    def _run(self, active: _Active, params: dict[str, Any]) -> None:
        lower_priority(self.nice)  # the job thread (reading and hashing files; in a thread, also the model)
        if self.threads is not None and self.isolation == "thread":
            import torch

            torch.set_num_threads(self.threads)  # this thread's OpenMP team only
        job_id = active.job_id
        stop_monitor = threading.Event()
        monitor: threading.Thread | None = None
        status, message = "failed", "the job did not start"
        try:
            self._update(job_id, status="running", message="scanning")
            ingest = self._make_ingest(active, params)
            active.ingest = ingest
            if active.cancelled.is_set():
                active.stop()
            monitor = threading.Thread(target=self._monitor, args=(active, stop_monitor), daemon=True)
            monitor.start()
            summary = ingest.run([params["path"]])
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
            final = active.ingest.summary.counts() if active.ingest is not None else {}
            try:
                self._update(job_id, status=status, message=message, **final)
            except ImsearchError:
                logger.exception("could not record the end of job %s", job_id)
            with self._lock:
                self._active = None
            active.ingest = None
            active.child = None
            trim_memory()  # the job's buffers go back to the OS
            if self.after_job is not None:
                self.after_job()
            logger.info("index job %s %s: %s", job_id, status, message)

    def _monitor(self, active: _Active, stop: threading.Event) -> None:
        last: dict[str, int] = {}
        while not stop.wait(POLL_S):
            if active.ingest is None:
                continue
            now = active.ingest.summary.counts()
            if now != last:
                try:
                    message = "cancelling" if active.cancelled.is_set() else "indexing"
                    self._update(active.job_id, message=message, **now)
                    last = now
                except ImsearchError as exc:
                    logger.warning("could not record the progress of job %s: %s", active.job_id, exc)
