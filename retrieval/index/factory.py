"""Making and opening vector indexes: one FAISS index, local shards or shards in Ray actors.

``create_index(dim, kind=..., shards=1)`` is a plain :class:`FaissIndex`; ``shards > 1`` a
:class:`ShardedIndex` (``placement="local"``: shards in this process, ``"ray"``: one Ray actor
per shard). ``load_index(directory)`` tells the two on-disk formats apart (``sharded.json``
vs ``meta.json``), so a directory written either way opens either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index import persist as io
from retrieval.index.contract import VectorIndex
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.shard_layout import LAYOUT, MAX_SHARDS, read_layout
from retrieval.index.sharded import ShardedIndex
from retrieval.index.structures import KINDS, Policy

__all__ = ["PLACEMENTS", "create_index", "is_sharded_dir", "load_index", "saved_shards", "shard_count"]

PLACEMENTS = ("local", "ray")


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise UnknownNameError("index placement", str(placement), list(PLACEMENTS))


def _check_kind(kind: str, dim: int) -> None:
    if not isinstance(kind, str) or not kind.strip():
        raise VectorIndexError(f"kind must be one of {', '.join(KINDS)} or a FAISS factory string, got {kind!r}")
    Policy(kind.strip(), dim)  # unknown kinds: UnknownNameError listing the valid ones


def create_index(
    dim: int,
    *,
    kind: str = "auto",
    shards: int = 1,
    placement: str = "local",
    gpu: bool | None = None,
    address: str | None = None,
    actor_options: dict[str, Any] | None = None,
) -> VectorIndex:
    """A new, empty vector index (see the module docstring). ``address`` / ``actor_options``:
    for ``placement="ray"`` (see :mod:`retrieval.index.ray_shards`)."""
    _check_placement(placement)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise VectorIndexError(f"shards must be an int between 1 and {MAX_SHARDS}, got {shards!r}")
    if isinstance(dim, int) and dim >= 1:
        _check_kind(kind, dim)
    if placement == "ray":
        from retrieval.index.ray_shards import create_ray_index

        return create_ray_index(
            dim, kind=kind, shards=shards, gpu=gpu, address=address, actor_options=actor_options
        )
    if shards == 1:
        return FaissIndex(dim, kind=kind, gpu=gpu)
    return ShardedIndex(dim, kind=kind, shards=shards, gpu=gpu)


def is_sharded_dir(directory: str | Path) -> bool:
    return (Path(directory) / LAYOUT).is_file()


def saved_shards(directory: str | Path) -> int | None:
    """Shard count of the index saved in ``directory`` (1: a single index), None when there is none."""
    path = Path(directory)
    if is_sharded_dir(path):
        return int(read_layout(path)["shards"])
    return 1 if (path / io.META).is_file() else None


def load_index(
    directory: str | Path,
    *,
    mmap: bool = True,
    placement: str = "local",
    gpu: bool | None = None,
    address: str | None = None,
    actor_options: dict[str, Any] | None = None,
) -> VectorIndex:
    """Open the index saved in ``directory``: sharded (``sharded.json``) or single (``meta.json``).

    ``placement="ray"`` puts each shard of a sharded directory in a Ray actor; a single
    (unsharded) index always opens in this process.
    """
    _check_placement(placement)
    path = Path(directory)
    sharded, single = is_sharded_dir(path), (path / io.META).is_file()
    if sharded and single:
        raise VectorIndexError(
            f"{path} holds both a sharded ({LAYOUT}) and a single ({io.META}) index; "
            "delete the directory and rebuild it from the catalog"
        )
    if sharded:
        if placement == "ray":
            from retrieval.index.ray_shards import load_ray_index

            return load_ray_index(path, mmap=mmap, gpu=gpu, address=address, actor_options=actor_options)
        return ShardedIndex.load(path, mmap=mmap, gpu=gpu)
    if not single:
        raise VectorIndexError(f"no vector index at {path}: neither {LAYOUT} nor {io.META} is there")
    return FaissIndex.load(path, mmap=mmap, gpu=gpu)


def shard_count(index: VectorIndex) -> int:
    """Shards of ``index`` (1 for a plain FaissIndex)."""
    return int(getattr(index, "n_shards", 1))
