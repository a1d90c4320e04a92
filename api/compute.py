"""Where the model runs: one dedicated thread for every descriptor extraction of the API.

On a CPU the network already uses every core for one image, so running two requests'
extractions at once only makes both slower; queueing them on one thread keeps latency
fair (first come, first served) and keeps per-thread state (oneDNN kernels and scratch
space, the allocator's per-thread arenas) to one thread instead of one per request
thread. Searches that need no model (by id, without a box) never wait here.

``limit_malloc_arenas`` and ``trim_memory`` are glibc knobs (no-ops elsewhere): fewer
per-thread malloc arenas, and giving freed heap back to the OS after a bulk job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
_M_ARENA_MAX = -8


class ModelRunner:
    """Runs callables on the one model thread and waits for their result."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imsearch-model")

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(count: int) -> None:
    """At most ``count`` malloc arenas for threads created from now on (0: leave the default)."""
    libc = _libc()
    if count > 0 and libc is not None and libc.mallopt(_M_ARENA_MAX, count) != 1:
        logger.info("mallopt(M_ARENA_MAX, %d) was refused", count)


def trim_memory() -> None:
    """Give freed heap memory back to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
