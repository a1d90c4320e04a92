"""Full-precision sidecar store of the vector index: float32 rows + catalog id <-> row maps.

Every vector ever added gets a new *row* (append-only); removing or replacing an id leaves a
hole. FAISS structures are labelled with row numbers (dense, so a filter becomes a cheap
bitmap); this store translates between rows and the catalog's 64-bit ids.

RAM held per live vector: ``row_ids`` (int64 per row, -1 for holes), ``keys`` (sorted live
ids, int64) and ``key_rows`` (their rows, int32): 20 bytes. The vectors themselves are either
a NumPy array (new index, or ``load(mmap=False)``) or a read-only ``np.memmap`` of the file in
the index directory (after ``save`` / ``load(mmap=True)``), in which case appends are written
to the file beyond the committed row count, which keeps the saved version intact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from retrieval.errors import VectorIndexError

ROW_DTYPE = np.int32  # key_rows: up to 2**31 - 1 rows per index
MAX_ROWS = int(np.iinfo(ROW_DTYPE).max)


class RowStore:
    """Append-only float32 rows with holes, and the maps between catalog ids and rows."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._vecs: np.ndarray = np.empty((0, dim), dtype=np.float32)  # RAM buffer or memmap
        self._n_rows = 0
        self._row_ids = np.empty(0, dtype=np.int64)  # capacity-grown, valid up to _n_rows
        self.keys = np.empty(0, dtype=np.int64)  # sorted live ids
        self.key_rows = np.empty(0, dtype=ROW_DTYPE)  # row of keys[i]
        self.path: Path | None = None  # backing file when memory-mapped
        self._fd: int | None = None  # write handle on `path`, opened on first append
        self.version = 0  # bumped on every mutation (cache key)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def n_rows(self) -> int:
        return self._n_rows

    @property
    def n_live(self) -> int:
        return int(self.keys.shape[0])

    @property
    def holes(self) -> int:
        return self._n_rows - self.n_live

    @property
    def mapped(self) -> bool:
        return self.path is not None

    @property
    def row_ids(self) -> np.ndarray:
        """Catalog id of every row (-1 for holes); a view, do not modify."""
        return self._row_ids[: self._n_rows]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` (int64), -1 where an id is not stored."""
        if self.n_live == 0 or ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, ids)
        pos[pos == self.n_live] = 0
        hit = self.keys[pos] == ids
        return np.where(hit, self.key_rows[pos].astype(np.int64), -1)

    def ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Catalog ids of ``rows``; -1 stays -1."""
        if self._n_rows == 0:
            return np.full(rows.shape, -1, dtype=np.int64)
        return np.where(rows >= 0, self.row_ids[np.maximum(rows, 0)], -1)

    def live_mask(self) -> np.ndarray:
        return self.row_ids >= 0

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 copies of the given rows (any order, repeats allowed)."""
        if rows.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted access is kinder to a memmap
        block = np.asarray(self._vecs[uniq], dtype=np.float32)
        return np.ascontiguousarray(block[inverse.reshape(-1)])

    def iter_live(self, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (rows, vectors) of the live rows in row order, ``chunk`` rows at a time."""
        rows = np.flatnonzero(self.live_mask())
        for start in range(0, rows.shape[0], chunk):
            part = rows[start : start + chunk]
            yield part, self.vectors(part)

    def sample_rows(self, n: int, seed: int) -> np.ndarray:
        rows = np.flatnonzero(self.live_mask())
        if n >= rows.shape[0]:
            return rows
        return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))

    def ram_bytes(self) -> dict[str, int]:
        vec = 0 if self.mapped else int(self._vecs.nbytes)
        maps = int(self._row_ids.nbytes + self.keys.nbytes + self.key_rows.nbytes)
        return {"id_map": maps, "vectors": vec}

    # ------------------------------------------------------------------ mutations
    def append(self, ids: np.ndarray, vecs: np.ndarray) -> np.ndarray:
        """Store new (absent) ids; returns their rows. Either all is stored or nothing."""
        n = ids.shape[0]
        start = self._n_rows
        if start + n > MAX_ROWS:
            raise VectorIndexError(f"the vector store is limited to {MAX_ROWS} rows; shard the index")
        if self.mapped:
            self._append_to_file(vecs, start)
        else:
            self._vecs = _grow(self._vecs, start + n)
            self._vecs[start : start + n] = vecs
        self._row_ids = _grow(self._row_ids, start + n)
        self._row_ids[start : start + n] = ids
        self._n_rows = start + n
        rows = np.arange(start, start + n, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(self.keys, ids[order])
        self.keys = np.insert(self.keys, pos, ids[order])
        self.key_rows = np.insert(self.key_rows, pos, rows[order].astype(ROW_DTYPE))
        self.version += 1
        return rows

    def delete(self, ids: np.ndarray) -> np.ndarray:
        """Forget the stored ones among ``ids`` (leaving holes); returns their rows."""
        rows = self.rows_of(ids)
        present = np.unique(ids[rows >= 0])
        if present.size == 0:
            return np.empty(0, dtype=np.int64)
        pos = np.searchsorted(self.keys, present)
        rows = np.sort(self.key_rows[pos].astype(np.int64))
        self._row_ids[rows] = -1
        self.keys = np.delete(self.keys, pos)
        self.key_rows = np.delete(self.key_rows, pos)
        self.version += 1
        return rows

    def _append_to_file(self, vecs: np.ndarray, start: int) -> None:
        if self.path is None:
            raise VectorIndexError("internal error: file append on a RAM vector store")
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR)
            data = np.ascontiguousarray(vecs, dtype=np.float32).tobytes()
            offset = start * self.dim * 4
            written = 0
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], offset + written)
        except OSError as exc:
            raise VectorIndexError(
                f"cannot append vectors to {self.path}: {exc}; check the disk and the directory permissions"
            ) from exc
        self._vecs = _map(self.path, start + vecs.shape[0], self.dim)

    # ------------------------------------------------------------------ persistence
    def compaction_map(self) -> np.ndarray:
        """old row -> new row when holes are squeezed out (-1 for holes)."""
        live = self.live_mask()
        new = np.full(self._n_rows, -1, dtype=np.int64)
        new[live] = np.arange(int(live.sum()), dtype=np.int64)
        return new

    def write_compacted(self, path: Path) -> None:
        """Write the live rows, in row order, to ``path`` (fsynced)."""
        with open(path, "wb") as f:
            for _, block in self.iter_live():
                f.write(block.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def flush(self) -> None:
        """fsync rows appended to the backing file."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @classmethod
    def open(cls, dim: int, vectors: Path, row_ids: np.ndarray, *, mmap: bool) -> RowStore:
        """A store over a vectors file (``len(row_ids)`` rows) and its row -> id array."""
        store = cls(dim)
        n_rows = int(row_ids.shape[0])
        need = n_rows * dim * 4
        try:
            size = vectors.stat().st_size
        except OSError as exc:
            raise VectorIndexError(f"vectors file {vectors} is unreadable: {exc}") from exc
        if size < need:
            raise VectorIndexError(
                f"vectors file {vectors} holds {size} bytes, expected at least {need} "
                f"({n_rows} rows of {dim} float32); the index directory is corrupt, rebuild it"
            )
        live = row_ids >= 0
        keys = row_ids[live]
        order = np.argsort(keys, kind="stable")
        store.keys = np.ascontiguousarray(keys[order])
        if store.keys.size > 1 and bool((store.keys[1:] == store.keys[:-1]).any()):
            raise VectorIndexError(f"row id file next to {vectors} lists an id twice; rebuild the index")
        store.key_rows = np.flatnonzero(live)[order].astype(ROW_DTYPE)
        store._row_ids = np.array(row_ids, dtype=np.int64)
        store._n_rows = n_rows
        if mmap:
            store.path = vectors
            store._vecs = _map(vectors, n_rows, dim)
        else:
            store._vecs = np.fromfile(vectors, dtype=np.float32, count=n_rows * dim).reshape(n_rows, dim)
        return store

    def adopt_file(self, path: Path, row_ids: np.ndarray) -> None:
        """Switch to the freshly written compacted file ``path`` (memory-mapped)."""
        self.close()
        n = int(row_ids.shape[0])
        self._row_ids = np.array(row_ids, dtype=np.int64)
        self._n_rows = n
        order = np.argsort(row_ids, kind="stable")
        self.keys = np.ascontiguousarray(row_ids[order])
        self.key_rows = order.astype(ROW_DTYPE)
        self.path = path
        self._vecs = _map(path, n, self.dim)
        self.version += 1

    def compact_in_ram(self) -> None:
        """Squeeze holes out of a RAM store (rows renumbered as by :meth:`compaction_map`)."""
        live = np.flatnonzero(self.live_mask())
        self._vecs = np.ascontiguousarray(self._vecs[live])
        row_ids = self._row_ids[live]
        self._row_ids = row_ids
        self._n_rows = int(live.shape[0])
        order = np.argsort(row_ids, kind="stable")
        self.keys = np.ascontiguousarray(row_ids[order])
        self.key_rows = order.astype(ROW_DTYPE)
        self.version += 1


def _map(path: Path, n_rows: int, dim: int) -> np.ndarray:
    if n_rows == 0:
        return np.empty((0, dim), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, dim))


def _grow(arr: np.ndarray, need: int) -> np.ndarray:
    """``arr`` with room for ``need`` leading rows (capacity doubles); data kept."""
    if arr.shape[0] >= need:
        return arr
    cap = max(need, 2 * arr.shape[0], 1024)
    out = np.empty((cap, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out
