"""A vector index over N FAISS shards: ids hashed to shards, searches fanned out and merged.

Each id lives in the shard ``splitmix64(id) % n`` (a fixed mixing hash, so catalog keys that
are correlated, e.g. sequential region ids, still spread evenly, and the shard of an id is
known from the id alone). Every shard is a complete :class:`~retrieval.index.faiss_index.FaissIndex`
of its own ids; the sharded index keeps the :class:`~retrieval.index.contract.VectorIndex`
contract:

* ``search`` sends the queries to every shard at once, with the selector split per shard
  (``allowed_ids`` / ``exclude_ids`` of that shard only), each shard returns up to k of its
  selected vectors and :mod:`retrieval.index.merge` keeps the best k. A shard holds all of its
  selected vectors, so k results come back whenever k selected vectors exist; for exact kinds
  the result is identical to one index over all the vectors (ties: smaller id first).
* writes go to the shards their ids hash to; a retrain retrains every shard.

Shards are reached through :class:`ShardHandle` (``submit(op, ...) -> Pending``): local shards
run in a thread pool (FAISS releases the GIL), shards in Ray actors
(:mod:`retrieval.index.ray_shards`) on the cluster; both use the same fan-out and merge.

On disk (``save(directory)``; the hash and the layout are in :mod:`retrieval.index.shard_layout`)::

    sharded.json        n shards, kind, hash, dim, model (written atomically, first)
    shard-000/ ...      each a FaissIndex directory (``retrieval.index.persist``), saved on its own

``load`` starts a shard that is missing, unreadable or holding ids of another shard empty (with
a warning); :meth:`retrieval.collection.Collection.repair` then refills it from the catalog.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.errors import VectorIndexError
from retrieval.index.checks import check_dim, check_ids, check_search, check_vectors
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.merge import merge_results
from retrieval.index.search import SearchParams
from retrieval.index.shard_layout import (
    HASH,
    LAYOUT,
    MAX_SHARDS,
    open_shard,
    read_layout,
    shard_dir,
    shard_of,
    splitmix64,
    write_layout,
)

logger = logging.getLogger(__name__)

__all__ = [
    "HASH",
    "LAYOUT",
    "MAX_SHARDS",
    "LocalShard",
    "ShardHandle",
    "ShardedIndex",
    "open_shard",
    "read_layout",
    "shard_call",
    "shard_dir",
    "shard_of",
    "splitmix64",
    "write_layout",
]

# ---------------------------------------------------------------------------- shard handles
class Pending(Protocol):
    """A call running on a shard; ``result()`` waits for it (and raises what the call raised)."""

    def result(self) -> Any: ...


class ShardHandle(Protocol):
    """How a :class:`ShardedIndex` reaches one shard: ``submit`` an operation of :func:`shard_call`."""

    placement: str

    def submit(self, op: str, /, *args: Any, **kwargs: Any) -> Pending: ...

    def close(self) -> None:
        """Release the shard (its index is closed by the caller's ``close`` op first)."""
        ...


def _info(index: FaissIndex) -> dict[str, Any]:
    return {
        "n": len(index),
        "dim": index.dim,
        "kind": index.kind,
        "factory": index.factory,
        "trained_size": index.trained_size,
    }


def _set_model_info(index: FaissIndex, value: dict[str, Any]) -> None:
    index.model_info = value


_OPS: dict[str, Callable[..., Any]] = {
    "search": FaissIndex.search,
    "add": FaissIndex.add,
    "remove": FaissIndex.remove,
    "ids": FaissIndex.ids,
    "contains": FaissIndex.contains,
    "reconstruct": FaissIndex.reconstruct,
    "retrain": FaissIndex.retrain,
    "memory_usage": FaissIndex.memory_usage,
    "save": FaissIndex.save,
    "close": FaissIndex.close,
    "info": _info,
    "set_model_info": _set_model_info,
}


def shard_call(index: FaissIndex, op: str, /, *args: Any, **kwargs: Any) -> Any:
    """Run operation ``op`` on a shard's index (the one entry point local and Ray shards share)."""
    try:
        fn = _OPS[op]
    except KeyError:
        raise VectorIndexError(f"unknown shard operation {op!r}; use one of {', '.join(sorted(_OPS))}") from None
    return fn(index, *args, **kwargs)


class LocalShard:
    """A shard in this process: its FaissIndex, called in the sharded index's thread pool."""

    placement = "local"

    def __init__(self, index: FaissIndex, pool: ThreadPoolExecutor) -> None:
        self.index = index
        self._pool = pool

    def submit(self, op: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(shard_call, self.index, op, *args, **kwargs)

    def close(self) -> None:
        return None


def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(n, min(4 * n, 2 * (os.cpu_count() or 1))), thread_name_prefix="shard")


# ---------------------------------------------------------------------------- the index
class ShardedIndex:
    """:class:`~retrieval.index.contract.VectorIndex` over N shards; see the module docstring.

    ``ShardedIndex(dim, kind=..., shards=4)`` makes 4 empty local FaissIndex shards; ``shards``
    may instead be a sequence of :class:`ShardHandle` (e.g. from ``retrieval.index.ray_shards``).
    Reads may run concurrently from many threads; writes (add, remove, retrain, save) are serialized.
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: str = "auto",
        shards: int | Sequence[ShardHandle] = 2,
        gpu: bool | None = None,
    ) -> None:
        self._dim = check_dim(dim)
        if not isinstance(kind, str) or not kind.strip():
            raise VectorIndexError(f"kind must be a non-empty string, got {kind!r}")
        self._kind = kind.strip()
        self._pool: ThreadPoolExecutor | None = None
        if isinstance(shards, int) and not isinstance(shards, bool):
            if not 1 <= shards <= MAX_SHARDS:
                raise VectorIndexError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
            first = FaissIndex(self._dim, kind=self._kind, gpu=gpu)  # validates the kind
            indexes = [first, *(FaissIndex(self._dim, kind=self._kind, gpu=gpu) for _ in range(shards - 1))]
            self._pool = _pool(shards)
            self._handles: list[ShardHandle] = [LocalShard(ix, self._pool) for ix in indexes]
        elif isinstance(shards, Sequence) and len(shards) >= 1:
            self._handles = list(shards)
            for i, info in enumerate(self._all("info")):
                if info["dim"] != self._dim or info["kind"] != self._kind:
                    raise VectorIndexError(
                        f"shard {i} is a dim {info['dim']} {info['kind']!r} index, not dim {self._dim} {self._kind!r}"
                    )
        else:
            raise VectorIndexError(f"shards must be an int >= 1 or a non-empty list of shard handles, got {shards!r}")
        self._write = threading.Lock()
        self._model_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def n_shards(self) -> int:
        return len(self._handles)

    @property
    def placement(self) -> str:
        """Where the shards live: ``local`` (this process) or ``ray`` (Ray actors)."""
        return self._handles[0].placement

    @property
    def hash(self) -> str:
        return HASH

    @property
    def factory(self) -> str:
        """``"4 shards x IVF256,SQ8"``; shards serving different structures are listed with counts."""
        counts: dict[str, int] = {}
        for info in self._all("info"):
            counts[info["factory"]] = counts.get(info["factory"], 0) + 1
        n = self.n_shards
        if len(counts) == 1:
            return f"{n} shards x {next(iter(counts))}"
        return f"{n} shards x (" + " | ".join(f"{c} x {f}" for f, c in sorted(counts.items())) + ")"

    @property
    def trained_size(self) -> int:
        """Sum over the shards of the size each shard's structure was trained at (0: no training)."""
        return int(sum(info["trained_size"] for info in self._all("info")))

    @property
    def model_info(self) -> dict[str, Any]:
        return self._model_info

    @model_info.setter
    def model_info(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise VectorIndexError(f"model_info must be a dict, got {type(value).__name__}")
        self._all("set_model_info", value)
        self._model_info = value

    def shard_sizes(self) -> list[int]:
        """Vectors held by each shard."""
        return [int(info["n"]) for info in self._all("info")]

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(dim={self._dim}, kind={self._kind!r}, shards={self.n_shards}, "
            f"placement={self.placement!r}, n={len(self)})"
        )

    # ------------------------------------------------------------------ fan-out
    def _all(self, op: str, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``op`` with the same arguments on every shard at once; the results in shard order."""
        return _gather([h.submit(op, *args, **kwargs) for h in self._handles])

    def _split(self, ids: np.ndarray) -> list[np.ndarray]:
        """Positions in ``ids`` of each shard's ids."""
        if self.n_shards == 1:
            return [np.arange(ids.shape[0])]
        which = shard_of(ids, self.n_shards)
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(self.n_shards + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.n_shards)]

    def _per_shard(self, op: str, ids: np.ndarray, *rest: np.ndarray) -> list[tuple[np.ndarray, Any]]:
        """Run ``op(ids_of_shard, *rest_rows_of_shard)`` on each shard that has ids; (positions, result)."""
        jobs = []
        for h, pos in zip(self._handles, self._split(ids), strict=True):
            if pos.size:
                jobs.append((pos, h.submit(op, ids[pos], *(np.ascontiguousarray(r[pos]) for r in rest))))
        return [(pos, p) for (pos, _), p in zip(jobs, _gather([p for _, p in jobs]), strict=True)]

    # ------------------------------------------------------------------ reads
    def ids(self) -> np.ndarray:
        """All ids, sorted (int64)."""
        parts = [np.asarray(a, dtype=np.int64) for a in self._all("ids")]
        return np.sort(np.concatenate([np.empty(0, dtype=np.int64), *parts]))

    def contains(self, ids: Any) -> np.ndarray:
        arr = check_ids(ids)
        out = np.zeros(arr.shape[0], dtype=bool)
        for pos, found in self._per_shard("contains", arr):
            out[pos] = found
        return out

    def reconstruct(self, ids: Any) -> np.ndarray:
        """Stored float32 vectors of ``ids`` (n, dim); unknown ids are an error."""
        arr = check_ids(ids)
        out = np.empty((arr.shape[0], self._dim), dtype=np.float32)
        for pos, vecs in self._per_shard("reconstruct", arr):
            out[pos] = vecs
        return out

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (inner products, ids) of each query over every shard; see the module docstring."""
        q, k, allowed, exclude = check_search(
            queries, k, self._dim, allowed_ids=allowed_ids, exclude_ids=exclude_ids, params=params,
            params_type=SearchParams,
        )
        allowed_parts = None if allowed is None else [allowed[p] for p in self._split(allowed)]
        exclude_parts = None if exclude is None else [exclude[p] for p in self._split(exclude)]
        pending = []
        for i, h in enumerate(self._handles):
            shard_allowed = None if allowed_parts is None else allowed_parts[i]
            if shard_allowed is not None and shard_allowed.size == 0:
                continue  # nothing of this shard is selected
            shard_exclude = None if exclude_parts is None or exclude_parts[i].size == 0 else exclude_parts[i]
            pending.append(
                h.submit("search", q, k, allowed_ids=shard_allowed, exclude_ids=shard_exclude, params=params)
            )
        return merge_results(_gather(pending), q.shape[0], k)

    def memory_usage(self) -> dict[str, float]:
        """Sum of the shards' ``memory_usage`` (bytes; ``bytes_per_vector`` over all shards)."""
        total: dict[str, float] = {}
        for usage in self._all("memory_usage"):
            for key, value in usage.items():
                if key != "bytes_per_vector":
                    total[key] = total.get(key, 0.0) + float(value)
        total["bytes_per_vector"] = total.get("total", 0.0) / max(1, len(self))
        return total

    # ------------------------------------------------------------------ writes
    def add(self, ids: Any, vectors: np.ndarray) -> None:
        """Add or replace vectors (each in the shard its id hashes to)."""
        arr = check_ids(ids, unique=True)
        x = check_vectors(vectors, self._dim)
        if arr.shape[0] != x.shape[0]:
            raise VectorIndexError(f"{arr.shape[0]} ids for {x.shape[0]} vectors; pass one id per row")
        if arr.size:
            with self._write:
                self._per_shard("add", arr, x)

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` (unknown ones ignored); returns how many were removed."""
        arr = check_ids(ids)
        if arr.size == 0:
            return 0
        with self._write:
            return int(sum(n for _, n in self._per_shard("remove", arr)))

    def retrain(self) -> None:
        """Rebuild every shard's structure for its current size (kinds with training)."""
        with self._write:
            self._all("retrain")

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``sharded.json`` (atomically), then every shard to ``shard-NNN/`` (each atomically)."""
        path = Path(directory)
        with self._write:
            write_layout(path, n=self.n_shards, dim=self._dim, kind=self._kind, model_info=self._model_info)
            _gather([h.submit("save", str(shard_dir(path, i))) for i, h in enumerate(self._handles)])

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True, gpu: bool | None = None) -> ShardedIndex:
        """Open a saved sharded index; a missing or corrupt shard starts empty (logged) for repair."""
        path = Path(directory)
        layout = read_layout(path)
        n = layout["shards"]
        pool = _pool(n)
        opened = list(pool.map(lambda i: open_shard(path, i, layout, mmap=mmap, gpu=gpu), range(n)))
        for _, problem in opened:
            if problem is not None:
                logger.warning("%s: starting it empty, to be refilled from the catalog", problem)
        index = cls(layout["dim"], kind=layout["kind"], shards=[LocalShard(ix, pool) for ix, _ in opened])
        index._pool = pool
        index._model_info = layout["model"]
        return index

    def close(self) -> None:
        """Close every shard: release directory locks and file handles (local shards stay searchable,
        like a closed FaissIndex); Ray actors end."""
        with self._write:
            try:
                self._all("close")
            finally:
                for h in self._handles:
                    h.close()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gather(pending: Sequence[Pending]) -> list[Any]:
    """Wait for every call (even after one failed), then raise the first failure, if any."""
    results: list[Any] = []
    error: BaseException | None = None
    for p in pending:
        try:
            results.append(p.result())
        except Exception as exc:  # re-raised below, once every shard has finished
            results.append(None)
            error = error or exc
    if error is not None:
        raise error
    return results
