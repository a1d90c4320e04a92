"""Input validation at the vector index boundary (the array contract), with errors that say what to do."""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.errors import VectorIndexError


def check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise VectorIndexError(f"dim must be a positive int, got {dim!r}")
    return int(dim)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise VectorIndexError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def check_ids(ids: Any, name: str = "ids", *, unique: bool = False) -> np.ndarray:
    """1-D non-negative int64 ids (any integer array-like); optionally without duplicates."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1:
        raise VectorIndexError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise VectorIndexError(f"{name} must be integers (catalog keys), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > np.iinfo(np.int64).max:
        raise VectorIndexError(f"{name} must fit in int64, got {int(arr.max())}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if int(out.min()) < 0:
        raise VectorIndexError(f"{name} must be non-negative catalog keys, got {int(out.min())}")
    if unique:
        srt = np.sort(out)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if dup.size:
            raise VectorIndexError(f"{name} lists {dup.size} id(s) more than once (e.g. {int(dup[0])}); dedupe them")
    return out


def check_vectors(x: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """float32 C-contiguous (n, dim) finite matrix, returned as is (no copy)."""
    if not isinstance(x, np.ndarray):
        raise VectorIndexError(f"{name} must be a numpy float32 array of shape (n, {dim}), got {type(x).__name__}")
    if x.dtype != np.float32:
        raise VectorIndexError(f"{name} must be float32, got {x.dtype}; convert with x.astype(np.float32)")
    if x.ndim != 2:
        hint = "; use x.reshape(1, -1) for one vector" if x.ndim == 1 else ""
        raise VectorIndexError(f"{name} must be 2-D (n, {dim}), got shape {x.shape}{hint}")
    if x.shape[1] != dim:
        raise VectorIndexError(f"{name} have dimension {x.shape[1]} but the index has dimension {dim}")
    if not x.flags.c_contiguous:
        raise VectorIndexError(f"{name} must be C-contiguous; pass np.ascontiguousarray(x)")
    if not bool(np.isfinite(x).all()):
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise VectorIndexError(f"{name} row {bad} holds NaN or inf; fix the descriptor before indexing")
    return x


def check_search(
    queries: Any, k: Any, dim: int, *, allowed_ids: Any, exclude_ids: Any, params: Any, params_type: type
) -> tuple[np.ndarray, int, np.ndarray | None, np.ndarray | None]:
    """The arguments of a ``search`` (any index kind), checked: ``(queries, k, allowed, exclude)``."""
    q = check_vectors(queries, dim, "queries")
    k = check_k(k)
    allowed = None if allowed_ids is None else check_ids(allowed_ids, "allowed_ids")
    exclude = None if exclude_ids is None else check_ids(exclude_ids, "exclude_ids")
    if params is not None and not isinstance(params, params_type):
        raise VectorIndexError(f"params must be a {params_type.__name__}, got {type(params).__name__}")
    return q, k, allowed, exclude
