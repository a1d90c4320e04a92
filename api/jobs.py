"""The API's index jobs: :class:`retrieval.ingest.jobs.JobRunner` with the server's settings.

Jobs describe images through the one map step with the server's annotators, thresholds and
limits (``max_upload_bytes``, ``max_pixels``), in a child process per job (``job_isolation``:
the job's memory is not the server's) or a thread of the server, at a lower CPU priority
(``job_nice``), with their own smaller OpenMP team (``job_threads``) and their network pausing
before each layer while a search runs (``job_yield_max_ms``: see :class:`api.compute.ForegroundGate`).
A job commits every ``2 * job_batch_size`` images and reads at most twice that many files ahead
of the describing (their bytes are what a job holds in the server's memory).
"""

from __future__ import annotations

import logging
from pathlib import Path

from api.compute import ForegroundGate, job_threads
from api.errors import ApiError
from api.ingest import ingest_settings
from api.settings import Settings
from retrieval.ingest.jobs import FINISHED, JobConflictError
from retrieval.ingest.jobs import JobRunner as _JobRunner
from retrieval.search import SearchEngine
from retrieval.store.catalog import JobRecord

__all__ = ["FINISHED", "JobRunner"]

#: a job's catalog commits, in model batches (the server holds the bytes of twice as many files)
COMMIT_BATCHES = 2

logger = logging.getLogger(__name__)


class JobRunner(_JobRunner):
    """Index jobs of the server; conflicts answer 409 with the job's id."""

    def __init__(self, engine: SearchEngine, settings: Settings, gate: ForegroundGate | None = None) -> None:
        batch = settings.job_batch_size
        in_thread = settings.job_isolation == "thread"
        super().__init__(
            engine.collection,
            ingest_settings(settings, batch_size=batch, workers=settings.job_workers, buffer_images=2 * batch),
            isolation=settings.job_isolation,
            threads=job_threads(settings.job_threads),
            nice=settings.job_nice,
            pause=gate.pause_point if gate is not None and gate.max_wait_s > 0 and in_thread else None,
            yield_to=gate.for_child() if gate is not None and not in_thread else None,
            malloc_arena_max=settings.malloc_arena_max,
            commit_every=COMMIT_BATCHES * batch,
            save_every_s=settings.save_every_s,
            after_job=(lambda: _log_pauses(gate)) if gate is not None and in_thread else None,
        )

    def start(self, root: Path, *, detect: bool, segment: bool, prune: bool) -> JobRecord:
        try:
            return super().start(root, detect=detect, segment=segment, prune=prune)
        except JobConflictError as exc:
            raise _conflict(exc, "A job is already running") from None

    def cancel(self, job_id: str) -> JobRecord:
        try:
            return super().cancel(job_id)
        except JobConflictError as exc:
            raise _conflict(exc, "Job finished") from None


def _log_pauses(gate: ForegroundGate) -> None:
    logger.info("index jobs so far paused %.1f s (%d times) for searches", gate.waited_s, gate.pauses)


def _conflict(exc: JobConflictError, title: str) -> ApiError:
    return ApiError(409, str(exc), kind=exc.kind, title=title, job_id=exc.job_id)
