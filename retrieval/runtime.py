"""Process-wide knobs of the C allocator and of oneDNN, set once by the entry points (CLI, API server).

glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, after
which the activation tensors of a CNN (a few MiB to tens of MiB, different for each
input size) come from the heap and fragment it: the resident size of a long extraction
then creeps up with the number of images. A fixed threshold keeps large blocks in their
own mappings, returned to the system when freed, so memory stays flat while streaming
(bench/extract.py shows peak RSS for 500 and 4,487 photos). No-ops without glibc.

The price of a low threshold is paid in page faults: every block above it is a fresh
mapping the kernel zeroes page by page. Batch indexing (``imsearch index``) therefore uses
:data:`INDEX_MMAP_THRESHOLD` (glibc's own ceiling, 32 MiB) with :data:`INDEX_ARENAS` malloc
arenas, which bounds the fragmentation to two heaps. Measured with ``imsearch index`` of 800
shared photos on the 2-core machine: 1 MiB, 15.1 images/s, 47 s of system time, peak RSS
2.1 GiB; 32 MiB and 2 arenas, 20.3 images/s, 17 s, 2.8 GiB (``python -m bench.index`` checks
that the peak does not grow from 500 to 4,487 photos).

oneDNN (torch's CPU convolutions) caches the kernels it builds for each layer and input
shape; its default capacity (1,024) holds fewer than a collection's ~50 input shapes times
the backbone's layers, so kernels were rebuilt all the time (the pure forward rate of the
default model rose from 20.6 to 27.2 images/s with :data:`ONEDNN_CACHE_CAPACITY`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

#: ``imsearch index``'s allocator settings (see the module docstring)
INDEX_MMAP_THRESHOLD = 32 << 20
INDEX_ARENAS = 2
#: oneDNN primitive cache entries (its default: 1,024)
ONEDNN_CACHE_CAPACITY = 16384

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(*, mmap_threshold: int = 1 << 20, arena_max: int = 0) -> bool:
    """Fix the mmap threshold (bytes) and optionally cap malloc arenas; True when applied."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, int(2 * mmap_threshold)) == 1
    if arena_max > 0:
        ok &= libc.mallopt(_M_ARENA_MAX, int(arena_max)) == 1
    if not ok:
        logger.info("mallopt refused a setting; keeping the allocator's defaults")
    return bool(ok)


def tune_onednn(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Size oneDNN's kernel cache (before the first convolution runs; an explicit
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` in the environment wins)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(int(capacity)))


def trim_memory() -> None:
    """Give freed heap memory back to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
