"""Where the model runs: one dedicated thread for every descriptor extraction of the API.

On a CPU the network already uses every core for one image, so running two requests'
extractions at once only makes both slower; queueing them on one thread keeps latency
fair (first come, first served) and keeps per-thread state (oneDNN kernels and scratch
space, the allocator's per-thread arenas) to one thread instead of one per request
thread. Searches that need no model (by id, without a box) never wait here.

Every torch computation of the server (building the model included) runs on this thread or
on an index job's thread, never on the event loop's or a request's thread. The reason is
OpenMP (libgomp): as soon as more of its threads exist than CPUs, all teams fall back to
sleeping between parallel regions instead of spinning, and a network made of many small
layers then runs ~2x slower (measured: one extraction on a 2-core machine 41 ms on a lone
team, 75-93 ms once a second thread had started a team). ``thread_split`` sizes the model's
team and an index job's team so that together they stay within the CPUs.

``limit_malloc_arenas`` tunes glibc (no-op elsewhere; see :mod:`retrieval.runtime`): a fixed
mmap threshold and fewer per-thread malloc arenas; ``trim_memory`` gives freed heap back
to the OS after a bulk job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from retrieval.runtime import trim_memory, tune_malloc

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ModelRunner:
    """Runs callables on the one model thread and waits for their result.

    The thread sets its own OpenMP team size first (with OpenMP the torch thread count is a
    per-thread setting): ``threads``, by default torch's current count.
    """

    def __init__(self, threads: int | None = None) -> None:
        import torch

        self.threads = threads if threads is not None else torch.get_num_threads()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imsearch-model")
        self._pool.submit(torch.set_num_threads, self.threads).result()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def thread_split(job_setting: int, cpus: int | None = None) -> tuple[int, int]:
    """(model thread's, index job's) torch threads: the job's ``job_setting`` or (0) half the CPUs,
    the model's the rest plus one (a one-thread team starts no OpenMP worker), at least one each."""
    cpus = cpus or os.cpu_count() or 1
    job = job_setting if job_setting > 0 else max(1, cpus // 2)
    return max(1, min(cpus, cpus - job + 1)), job


def job_threads(setting: int) -> int:
    """Torch threads of an index job (see :func:`thread_split`)."""
    return thread_split(setting)[1]


def limit_malloc_arenas(count: int, mmap_threshold_mib: int = 1) -> None:
    """Tune the C allocator for a long-running server (see :mod:`retrieval.runtime`).

    A higher threshold lets a query's activations (one image) come from reused heap blocks
    instead of fresh mappings: a lone extraction measured 97.5 ms at 8 MiB vs 137.9 ms at 1 MiB
    (15,078 -> 2,259 page faults per image), but ``python -m bench.api`` measured ~245 MiB more
    resident memory during an index job, so the default stays 1 MiB.
    """
    tune_malloc(mmap_threshold=mmap_threshold_mib << 20, arena_max=count)


__all__ = ["ModelRunner", "job_threads", "limit_malloc_arenas", "thread_split", "trim_memory"]
