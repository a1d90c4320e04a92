"""Process-wide knobs of the C allocator, set once by the entry points (CLI, API server).

glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, after
which the activation tensors of a CNN (a few MiB to tens of MiB, different for each
input size) come from the heap and fragment it: the resident size of a long extraction
then creeps up with the number of images. A fixed threshold keeps large blocks in their
own mappings, returned to the system when freed, so memory stays flat while streaming
(bench/extract.py shows peak RSS for 500 and 4,487 photos). No-ops without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

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


def trim_memory() -> None:
    """Give freed heap memory back to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
