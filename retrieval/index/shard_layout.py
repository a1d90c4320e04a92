"""The id -> shard hash and the on-disk layout of a sharded index (``sharded.json`` + ``shard-NNN/``).

Each id lives in shard ``splitmix64(id) % n``: a fixed bijective mix of all 64 bits, so catalog
keys that are correlated (sequential region ids, keys sharing low bits) still spread evenly and
the shard of an id is known from the id alone, on any machine.

Layout::

    sharded.json        format, n shards, kind, hash, dim, model (written atomically)
    shard-000/ ...      each a complete FaissIndex directory (``retrieval.index.persist``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import VectorIndexError
from retrieval.index import persist as io
from retrieval.index.faiss_index import FaissIndex

__all__ = [
    "HASH",
    "LAYOUT",
    "MAX_SHARDS",
    "open_shard",
    "read_layout",
    "shard_dir",
    "shard_of",
    "splitmix64",
    "write_layout",
]

HASH = "splitmix64"
LAYOUT = "sharded.json"
LAYOUT_FORMAT = "imsearch-sharded-index"
LAYOUT_VERSION = 1
MAX_SHARDS = 1024

_U64 = np.uint64


# ---------------------------------------------------------------------------- id -> shard
def splitmix64(ids: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each id (uint64): a fixed bijective mix of all 64 bits."""
    z = np.asarray(ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def shard_of(ids: np.ndarray, n: int) -> np.ndarray:
    """Shard number (int64, ``0..n-1``) of each id."""
    if n == 1:
        return np.zeros(np.asarray(ids).shape, dtype=np.int64)
    return (splitmix64(ids) % _U64(n)).astype(np.int64)


def shard_dir(directory: Path, i: int) -> Path:
    return directory / f"shard-{i:03d}"


# ---------------------------------------------------------------------------- on-disk layout
def write_layout(directory: Path, *, n: int, dim: int, kind: str, model_info: dict[str, Any]) -> None:
    """Write ``sharded.json`` atomically (the record that ``directory`` is a sharded index)."""
    if (directory / io.META).exists():
        raise VectorIndexError(
            f"{directory} holds a single (unsharded) index; save the sharded index elsewhere or delete it first"
        )
    layout = {
        "format": LAYOUT_FORMAT,
        "format_version": LAYOUT_VERSION,
        "shards": n,
        "dim": dim,
        "kind": kind,
        "hash": HASH,
        "model": model_info,
    }
    try:
        text = json.dumps(layout, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise VectorIndexError(f"index metadata is not JSON-serializable ({exc}); check model_info") from exc
    directory.mkdir(parents=True, exist_ok=True)
    io.write_atomic(directory / LAYOUT, lambda p: p.write_text(text, encoding="utf-8"))
    io.fsync_dir(directory)


def read_layout(directory: Path) -> dict[str, Any]:
    """The validated ``sharded.json`` of ``directory``."""
    path = directory / LAYOUT
    try:
        layout = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VectorIndexError(f"no sharded index at {directory}: {LAYOUT} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VectorIndexError(f"{path} is unreadable ({exc}); delete {directory} and rebuild the index") from exc
    if not isinstance(layout, dict) or layout.get("format") != LAYOUT_FORMAT:
        raise VectorIndexError(f"{path} is not an imsearch sharded index (format != {LAYOUT_FORMAT!r})")
    if layout.get("format_version") != LAYOUT_VERSION:
        raise VectorIndexError(
            f"{path} has format version {layout.get('format_version')!r}; this imsearch reads version "
            f"{LAYOUT_VERSION}: rebuild the index with this version"
        )
    if layout.get("hash") != HASH:
        raise VectorIndexError(f"{path}: shard hash {layout.get('hash')!r} is not {HASH!r}; rebuild the index")
    for key, typ in (("shards", int), ("dim", int), ("kind", str), ("model", dict)):
        if not isinstance(layout.get(key), typ) or isinstance(layout.get(key), bool):
            raise VectorIndexError(f"{path}: field {key!r} is missing or not a {typ.__name__}")
    if not 1 <= layout["shards"] <= MAX_SHARDS or layout["dim"] < 1:
        raise VectorIndexError(f"{path}: bad shard count {layout['shards']} or dim {layout['dim']}")
    return layout


def open_shard(
    directory: Path, i: int, layout: dict[str, Any], *, mmap: bool = True, gpu: bool | None = None
) -> tuple[FaissIndex, str | None]:
    """Shard ``i`` of a saved sharded index, or an empty one when it is missing or unusable;
    returns ``(index, why it started empty or None)``."""
    path, n, dim, kind = shard_dir(directory, i), layout["shards"], layout["dim"], layout["kind"]
    problem = None
    if not path.is_dir():
        problem = f"shard {i} ({path}) is missing"
    else:
        try:
            index = FaissIndex.load(path, mmap=mmap, gpu=gpu)
            ids = index.ids()
            if index.dim != dim or index.kind != kind:
                problem = f"shard {i} ({path}) holds a dim {index.dim} {index.kind!r} index, not dim {dim} {kind!r}"
            elif ids.size and bool((shard_of(ids, n) != i).any()):
                problem = f"shard {i} ({path}) holds ids of other shards"
            else:
                return index, None
            index.close()
        except VectorIndexError as exc:
            problem = f"shard {i} ({path}) is unreadable: {exc}"
    empty = FaissIndex(dim, kind=kind, gpu=gpu)
    empty.model_info = layout["model"]
    return empty, problem
