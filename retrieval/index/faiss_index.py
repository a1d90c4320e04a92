"""The vector index: FAISS search over L2-normalised descriptors keyed by stable 64-bit catalog ids.

Array contract: vectors and queries are float32 ``(n, dim)`` C-contiguous; ids are non-negative
int64 catalog keys (any order, not contiguous). ``search`` returns ``(D, I)``: float32 inner
products and int64 ids, best first (equal scores: smaller id first, see ``retrieval.index.merge``),
padded with ``I = -1`` / ``D = -inf`` when fewer than k results exist. Filters (``allowed_ids``)
are applied inside the FAISS search, so k results come back whenever k allowed vectors exist.

The SQL catalog is the source of truth; this index is a persisted, rebuildable structure. Its
full-precision vectors live in a sidecar store (``retrieval.index.rowstore``) used for
``reconstruct``, training/retraining and exact re-ranking of compressed kinds; which FAISS
structure serves which kind and size is documented in ``retrieval.index.structures``; the directory
layout and crash-safe save in ``retrieval.index.persist``; the search algorithm in ``retrieval.index.search``.

Memory: a new index keeps its full vectors in RAM until its first ``save``; after ``save`` or
``load(mmap=True)`` they stay on disk in the directory and are read on demand (``pread``:
the page cache keeps hot ones, outside the process's resident memory).

Thread safety: ``search``, ``ids``, ``contains``, ``reconstruct`` and ``memory_usage`` may run
concurrently from many threads; ``add``, ``remove`` and ``save`` take an exclusive lock (they
wait for running searches and block new ones while they run, including an automatic retrain
inside ``add``). Across processes, one writer per directory (``DirLock``). FAISS's OpenMP thread
count is left to the caller (``faiss.omp_set_num_threads``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index import persist as io
from retrieval.index.checks import check_dim, check_ids, check_search, check_vectors
from retrieval.index.lock import DirLock, RWLock
from retrieval.index.merge import boundary_ties, rank
from retrieval.index.rowstore import RowStore
from retrieval.index.search import SearchParams, search_rows, selection_mask
from retrieval.index.structures import FLAT, Policy, Structure, build_from_store, create, to_gpu

logger = logging.getLogger(__name__)

__all__ = ["COMPACT_FRACTION", "FaissIndex", "SearchParams"]

COMPACT_FRACTION = 0.2  # save() compacts when more than this fraction of rows are holes


class FaissIndex:
    """FAISS vector index over catalog ids; see the module docstring for the contract.

    ``kind``: ``"auto"`` (exact below 50k vectors, then IVF-SQ8 retrained at x4 growth), ``"flat"``,
    ``"hnsw"``, ``"ivf"``, ``"ivfsq"`` (8-bit codes, exact re-ranking), ``"ivfpq"`` (compressed,
    <= 100 B/vector, exact re-ranking) or any FAISS factory string. ``gpu``: None = use the GPUs
    FAISS sees (flat/IVF kinds, unfiltered searches); True = require one; False = CPU only.
    """

    def __init__(self, dim: int, *, kind: str = "auto", gpu: bool | None = None) -> None:
        self._dim = check_dim(dim)
        if not isinstance(kind, str) or not kind.strip():
            raise VectorIndexError(f"kind must be a non-empty string, got {kind!r}")
        self._policy = Policy(kind.strip(), self._dim)
        self._store = RowStore(self._dim)
        factory = self._policy.plan(0, None)
        self._structure: Structure = create(factory or FLAT, self._dim)
        self._lock = RWLock()
        self._gpu = _resolve_gpu(gpu)
        self._gpu_index: faiss.Index | None = None
        self._gpu_mutex = threading.Lock()
        self._live_bits: tuple[int, np.ndarray] | None = None
        self._map_after_save = True
        self._home: Path | None = None  # directory the memory-mapped vectors file lives in
        self._home_gen: int | None = None  # generation committed there by / loaded by this object
        self._dir_lock: DirLock | None = None
        self.model_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        """The kind asked for (``auto``, ``ivfpq``, a factory string...)."""
        return self._policy.kind

    @property
    def factory(self) -> str:
        """The FAISS factory string of the structure serving searches now."""
        return self._structure.factory

    @property
    def trained_size(self) -> int:
        """Collection size the current structure was trained at (0: needs no training)."""
        return self._structure.trained_size

    @property
    def model_info(self) -> dict[str, Any]:
        """Free-form JSON dict saved with the index (the descriptor model's identity)."""
        return self._model_info

    @model_info.setter
    def model_info(self, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise VectorIndexError(f"model_info must be a dict, got {type(value).__name__}")
        self._model_info = value

    def __len__(self) -> int:
        return self._store.n_live

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self._dim}, kind={self.kind!r}, factory={self.factory!r}, n={len(self)})"

    # ------------------------------------------------------------------ reads
    def ids(self) -> np.ndarray:
        """All ids, sorted (int64 copy)."""
        with self._lock.read():
            return self._store.keys.copy()

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean array: which of ``ids`` are in the index."""
        arr = check_ids(ids)
        with self._lock.read():
            return self._store.rows_of(arr) >= 0

    def reconstruct(self, ids: Any) -> np.ndarray:
        """The stored full-precision float32 vectors of ``ids`` (n, dim); unknown ids are an error."""
        arr = check_ids(ids)
        with self._lock.read():
            rows = self._store.rows_of(arr)
            if (rows < 0).any():
                missing = arr[rows < 0]
                raise VectorIndexError(
                    f"{missing.size} id(s) are not in the index (e.g. {missing[:5].tolist()}); check contains() first"
                )
            return self._store.vectors(rows)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (inner products, ids) of each query among allowed, non-excluded ids."""
        q, k, allowed, exclude = check_search(
            queries, k, self._dim, allowed_ids=allowed_ids, exclude_ids=exclude_ids, params=params,
            params_type=SearchParams,
        )
        params = params or SearchParams()
        with self._lock.read():
            store, s = self._store, self._structure
            mask = None if allowed is None and exclude is None else selection_mask(store, allowed, exclude)
            live_bits = self._live_bitmap() if mask is None and s.dead else None
            gpu_index = self._gpu_replica() if mask is None and live_bits is None else None

            def run(queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                scores, rows = search_rows(
                    s, store, queries, kk, mask=mask, params=params, live_bits=live_bits, gpu_index=gpu_index
                )
                return rank(scores, store.ids_of_rows(rows), kk)

            return _settle_ties(run, q, k) if s.exact else run(q, k)

    def memory_usage(self) -> dict[str, float]:
        """RAM held, in bytes: ``faiss`` structure, ``id_map`` (id <-> row maps), ``vectors``
        (0 when memory-mapped), ``total``, and ``bytes_per_vector`` (total / live vectors)."""
        with self._lock.read():
            usage: dict[str, float] = {"faiss": float(self._structure.ram_bytes())}
            usage.update({k: float(v) for k, v in self._store.ram_bytes().items()})
            usage["total"] = usage["faiss"] + usage["id_map"] + usage["vectors"]
            usage["bytes_per_vector"] = usage["total"] / max(1, self._store.n_live)
            return usage

    # ------------------------------------------------------------------ writes
    def add(self, ids: Any, vectors: np.ndarray) -> None:
        """Add or replace (remove, then add) vectors; may (re)train the structure (see kinds)."""
        arr = check_ids(ids, unique=True)
        x = check_vectors(vectors, self._dim)
        if arr.shape[0] != x.shape[0]:
            raise VectorIndexError(f"{arr.shape[0]} ids for {x.shape[0]} vectors; pass one id per row")
        if arr.size == 0:
            return
        with self._lock.write():
            self._before_write()
            self._claim_home()
            self._remove_locked(arr)
            rows = self._store.append(arr, x)
            plan = self._policy.plan(self._store.n_live, self._structure)
            if plan is not None:
                try:
                    self._rebuild(plan)
                    return
                except RuntimeError as exc:  # keep serving with the current structure
                    logger.warning("building %s failed (%s); keeping %s", plan, exc, self.factory)
            try:
                self._structure.add(rows, x)
            except RuntimeError as exc:
                self._store.delete(arr)
                raise VectorIndexError(f"FAISS refused the vectors ({exc}); this batch was not added") from exc

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` (unknown ones ignored); returns how many were removed."""
        arr = check_ids(ids)
        if arr.size == 0:
            return 0
        with self._lock.write():
            self._before_write()
            return self._remove_locked(arr)

    def retrain(self) -> None:
        """Rebuild the structure for the current size now (kinds with training), from the stored vectors."""
        with self._lock.write():
            self._before_write()
            plan = self._policy.plan(self._store.n_live, None)
            if plan is not None:
                self._rebuild(plan)

    def close(self) -> None:
        """Release the directory writer lock and file handles (the index stays searchable)."""
        with self._lock.write():
            self._store.close()
            self._unlock_directory()

    def __enter__(self) -> FaissIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write the index to ``directory`` atomically (see ``retrieval.index.persist``); compacts holes."""
        path = Path(directory)
        with self._lock.write():
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VectorIndexError(f"cannot create index directory {path}: {exc}") from exc
            self._lock_directory(path)
            if self._store.mapped and self._home is not None and self._home.resolve() == path.resolve():
                self._check_generation()
            header = {"kind": self.kind, "model": self._model_info}
            self._structure, gen = io.save_parts(
                path,
                self._store,
                self._structure,
                header=header,
                map_after=self._map_after_save,
                compact_fraction=COMPACT_FRACTION,
            )
            self._home = path if self._store.mapped else None
            self._home_gen = gen
            self._unlock_directory()

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True, gpu: bool | None = None) -> FaissIndex:
        """Open a saved index. ``mmap=True``: full vectors stay on disk (read on demand);
        ``mmap=False``: they are read into RAM. A corrupt or inconsistent directory raises
        :class:`VectorIndexError`."""
        path = Path(directory)
        meta = io.read_meta(path)
        try:
            index = cls(meta["dim"], kind=meta["kind"], gpu=gpu)
        except UnknownNameError as exc:
            raise VectorIndexError(f"{path / io.META}: {exc}") from exc
        index._store, index._structure = io.load_parts(path, meta, mmap=mmap)
        index._model_info = meta["model"]
        index._map_after_save = mmap
        index._home = path if mmap else None
        index._home_gen = meta["generation"]
        return index

    @classmethod
    def prebuilt(
        cls,
        dim: int,
        ids: Any,
        vectors: np.ndarray,
        *,
        kind: str,
        factory: str,
        trained: np.ndarray | None = None,
        gpu: bool | None = None,
    ) -> FaissIndex:
        """An index of ``kind`` holding ``vectors`` in a ``factory`` structure built at once (bulk
        build): ``trained`` is an empty trained ``factory`` index (``faiss.serialize_index``) to
        copy instead of training, e.g. the coarse quantizer shared by all shards."""
        index = cls(dim, kind=kind, gpu=gpu)
        arr = check_ids(ids, unique=True)
        x = check_vectors(vectors, index.dim)
        if arr.shape[0] != x.shape[0]:
            raise VectorIndexError(f"{arr.shape[0]} ids for {x.shape[0]} vectors; pass one id per row")
        index._store.append(arr, x)
        index._structure = build_from_store(factory, index._store, trained=trained)
        return index

    # ------------------------------------------------------------------ internals (lock held)
    def _remove_locked(self, ids: np.ndarray) -> int:
        rows = self._store.delete(ids)
        if rows.size:
            self._structure.remove(rows)
        return int(rows.size)

    def _rebuild(self, factory: str) -> None:
        logger.info("building %s over %d vectors", factory, self._store.n_live)
        self._structure = build_from_store(factory, self._store)

    def _before_write(self) -> None:
        self._gpu_index = None

    def _claim_home(self) -> None:
        """Before appending to the memory-mapped vectors file: own its directory, unchanged since."""
        if self._store.mapped and self._home is not None:
            self._lock_directory(self._home)
            self._check_generation()

    def _check_generation(self) -> None:
        if self._home is not None and io.committed_generation(self._home) != self._home_gen:
            self._unlock_directory()
            raise VectorIndexError(
                f"{self._home} was saved by another writer since this index was loaded or saved; "
                "load it again before writing"
            )

    def _lock_directory(self, path: Path) -> None:
        if self._dir_lock is not None and self._dir_lock.directory.resolve() == path.resolve():
            return
        new = DirLock(path)
        self._unlock_directory()
        self._dir_lock = new

    def _unlock_directory(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.release()
            self._dir_lock = None

    def _live_bitmap(self) -> np.ndarray:
        cached = self._live_bits
        if cached is None or cached[0] != self._store.version:
            cached = (self._store.version, np.packbits(self._store.live_mask(), bitorder="little"))
            self._live_bits = cached
        return cached[1]

    def _gpu_replica(self) -> faiss.Index | None:
        """GPU copy of the CPU structure for unfiltered searches (flat/IVF), made lazily."""
        if not self._gpu:
            return None
        with self._gpu_mutex:
            if self._gpu_index is None:
                self._gpu_index = to_gpu(self._structure)
            return self._gpu_index


def _settle_ties(
    run: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact structures: top-k where a tie at the k-th place goes to the smaller id, as a merge of
    shards does (one more result is fetched; queries tied there are searched wider until the tie ends)."""
    scores, ids = run(q, k + 1)
    tied = boundary_ties(scores, ids, k)
    out_s, out_i = scores[:, :k].copy(), ids[:, :k].copy()
    width = k + 1
    while tied.size:
        width *= 4
        sub_s, sub_i = run(np.ascontiguousarray(q[tied]), width)
        out_s[tied], out_i[tied] = sub_s[:, :k], sub_i[:, :k]
        # still tied only if the widened result is full and its last score equals the k-th
        full = sub_i[:, -1] >= 0
        tied = tied[full & (sub_s[:, -1] == sub_s[:, k - 1])]
    return out_s, out_i


def _resolve_gpu(gpu: bool | None) -> bool:
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpu and n == 0:
        raise VectorIndexError("gpu=True but FAISS sees no GPU (faiss-cpu, or no device); use gpu=None")
    return n > 0 if gpu is None else bool(gpu)
