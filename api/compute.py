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

Searches also come first over an index job: :class:`ForegroundGate` counts the model thread's
work in flight, and the job's network pauses before each of its layers while any is (without
it, a search by upload during a job took 1.6-1.9x its quiet time in ``python -m bench.api``;
with it 1.1-1.2x), with a cap so the job still moves on under a constant stream of searches.

``limit_malloc_arenas`` tunes glibc (no-op elsewhere; see :mod:`retrieval.runtime`): a fixed
mmap threshold and fewer per-thread malloc arenas; ``trim_memory`` gives freed heap back
to the OS after a bulk job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from retrieval.ingest.child import START_METHOD, YieldTo
from retrieval.runtime import trim_memory, tune_malloc

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ForegroundGate:
    """Lets background work (an index job) give the CPU to foreground work (searches).

    Foreground work is bracketed by :meth:`enter` and :meth:`leave` (:meth:`ModelRunner.run`
    does it for every call). Background work calls :meth:`pause_point` often
    (before every layer of its network): while foreground work is in flight it waits, for at
    most ``max_wait_s`` in a row; after a wait that long it runs ``min_run_s`` without pausing,
    so under a constant stream of searches the job still gets at least
    ``min_run_s / (max_wait_s + min_run_s)`` of the time. ``max_wait_s`` 0 turns pausing off.

    An index job in a child process follows the same rule through :meth:`for_child`: the count
    of work in flight is mirrored into shared memory, which the child reads before each layer.
    """

    def __init__(self, max_wait_s: float = 1.0, min_run_s: float = 0.25) -> None:
        self.max_wait_s = max_wait_s
        self.min_run_s = min_run_s
        self._cond = threading.Condition()
        self._busy = 0
        self._shared: Any = None  # a multiprocessing RawValue(c_int), made by for_child
        self._free_until = 0.0
        #: seconds the background work spent waiting, and how many waits
        self.waited_s = 0.0
        self.pauses = 0

    @property
    def in_flight(self) -> int:
        return self._busy

    def enter(self) -> None:
        with self._cond:
            self._busy += 1
            if self._shared is not None:
                self._shared.value = self._busy

    def leave(self) -> None:
        with self._cond:
            self._busy -= 1
            if self._shared is not None:
                self._shared.value = self._busy
            if self._busy == 0:
                self._cond.notify_all()

    def for_child(self) -> YieldTo | None:
        """This gate for a child process (:class:`~retrieval.ingest.child.YieldTo`); None when pausing is off."""
        if self.max_wait_s <= 0:
            return None
        with self._cond:
            if self._shared is None:
                import ctypes
                import multiprocessing

                self._shared = multiprocessing.get_context(START_METHOD).RawValue(ctypes.c_int, self._busy)
            return YieldTo(self._shared, self.max_wait_s, self.min_run_s)

    def pause_point(self) -> None:
        """Wait while foreground work is in flight (see the class); returns at once otherwise."""
        if self._busy == 0 or self.max_wait_s <= 0:  # the common case: no lock taken
            return
        start = time.monotonic()
        if start < self._free_until:
            return
        with self._cond:
            deadline = start + self.max_wait_s
            while self._busy > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._free_until = time.monotonic() + self.min_run_s
                    break
                self._cond.wait(left)
            self.waited_s += time.monotonic() - start
            self.pauses += 1


class ModelRunner:
    """Runs callables on the one model thread and waits for their result.

    The thread sets its own OpenMP team size first (with OpenMP the torch thread count is a
    per-thread setting): ``threads``, by default torch's current count. Every call counts as
    foreground work of :attr:`gate` from the moment it is queued until it returns.
    """

    def __init__(self, threads: int | None = None, gate: ForegroundGate | None = None) -> None:
        import torch

        self.threads = threads if threads is not None else torch.get_num_threads()
        self.gate = gate if gate is not None else ForegroundGate()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imsearch-model")
        self._pool.submit(torch.set_num_threads, self.threads).result()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.gate.enter()
        try:
            return self._pool.submit(fn, *args, **kwargs).result()
        finally:
            self.gate.leave()

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


def limit_malloc_arenas(count: int, mmap_threshold_mib: int = 8) -> None:
    """Tune the C allocator for a long-running server (see :mod:`retrieval.runtime`).

    The threshold trades memory for page faults. A query's activations (one image, a few MiB
    each) below it come from reused heap blocks; above it, every block is a fresh mapping
    that the kernel fills page by page. Measured on the 2-core CI machine (searches by upload
    on the model thread, in-process): 1 MiB gave ~37,000 page faults and 268-293 ms per query,
    glibc's own sliding threshold ~20-90 faults and 160-172 ms. ``python -m bench.api`` (100k
    vectors, an index job running): 1 MiB -> by upload p50 314.5 ms quiet / 340.8 ms during the
    job, peak RSS 1232 MiB; 8 MiB -> 178.6 / 206.5 ms, peak RSS 1434 MiB (the job's batches, far
    larger than 8 MiB, still get their own mappings). Hence the default of 8 MiB.
    """
    tune_malloc(mmap_threshold=mmap_threshold_mib << 20, arena_max=count)


__all__ = ["ForegroundGate", "ModelRunner", "job_threads", "limit_malloc_arenas", "thread_split", "trim_memory"]
