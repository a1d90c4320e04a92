"""Where the model runs: one dedicated thread for every descriptor extraction of the API.

On a CPU the network already uses every core for one image, so running two requests'
extractions at once only makes both slower; queueing them on one thread keeps latency
fair (first come, first served) and keeps per-thread state (oneDNN kernels and scratch
space, the allocator's per-thread arenas) to one thread instead of one per request
thread. Searches that need no model (by id, without a box) never wait here.

``limit_malloc_arenas`` tunes glibc (no-op elsewhere; see :mod:`retrieval.runtime`): a fixed
mmap threshold and fewer per-thread malloc arenas; ``trim_memory`` gives freed heap back
to the OS after a bulk job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from retrieval.runtime import trim_memory, tune_malloc

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ModelRunner:
    """Runs callables on the one model thread and waits for their result."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imsearch-model")

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def limit_malloc_arenas(count: int, mmap_threshold_mib: int = 1) -> None:
    """Tune the C allocator for a long-running server (see :mod:`retrieval.runtime`).

    A higher threshold lets a query's activations (one image) come from reused heap blocks
    instead of fresh mappings (page faults): ``python -m bench.api`` measured ~10 % lower
    by-upload latency at 8 MiB, but ~250 MiB more resident memory during an index job.
    """
    tune_malloc(mmap_threshold=mmap_threshold_mib << 20, arena_max=count)


__all__ = ["ModelRunner", "limit_malloc_arenas", "trim_memory"]
