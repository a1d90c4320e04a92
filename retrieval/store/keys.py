"""Stable 64-bit catalog keys computed from content, independent of insertion order.

Keys are non-negative int64 (63 bits), so they fit a SQL ``BIGINT`` and a FAISS id.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from retrieval.errors import CatalogError

KEY_MASK = (1 << 63) - 1
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalize_sha256(sha256_hex: str) -> str:
    """Lower-case ``sha256_hex`` and check it is 64 hex digits."""
    value = str(sha256_hex).strip().lower()
    if not _SHA256_HEX.match(value):
        raise CatalogError(f"expected a SHA-256 digest as 64 hex digits, got {sha256_hex!r}")
    return value


def image_key(sha256_hex: str) -> int:
    """Image id: the first 8 bytes of the SHA-256 digest, big-endian, masked to 63 bits."""
    digest = bytes.fromhex(normalize_sha256(sha256_hex))
    return int.from_bytes(digest[:8], "big") & KEY_MASK


def _coord(value: float) -> str:
    if not math.isfinite(value):
        raise CatalogError(f"region box coordinates must be finite numbers, got {value!r}")
    return f"{round(float(value), 2) + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def region_key(image_id: int, box: Sequence[float], source: str) -> int:
    """Region id: hash of ``"<image_id>|<source>|x0|y0|x1|y1"`` (coordinates at 0.01 px)."""
    if len(box) != 4:
        raise CatalogError(f"a region box is (x0, y0, x1, y1), got {len(box)} numbers")
    canonical = "|".join([str(int(image_id)), str(source), *(_coord(v) for v in box)])
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & KEY_MASK
