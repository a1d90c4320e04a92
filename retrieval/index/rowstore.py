"""Full-precision sidecar store of the vector index: float32 rows + catalog id <-> row maps.

Every vector ever added gets a new *row* (append-only); removing or replacing an id leaves a
hole. FAISS structures are labelled with row numbers (dense, so a filter becomes a cheap
bitmap); this store translates between rows and the catalog's 64-bit ids.

RAM held per live vector: ``row_ids`` (int64 per row, -1 for holes), ``keys`` (sorted live
ids, int64) and ``key_rows`` (their rows, int32): 20 bytes. The vectors themselves are either
a NumPy array (new index, or ``load(mmap=False)``) or the file in the index directory (after
``save`` / ``load(mmap=True)``), in which case appends are written to the file beyond the
committed row count, which keeps the saved version intact.

File-backed rows are read with ``pread`` (consecutive rows in one call), not through a memory
map: re-ranking and look-ups then leave the file's pages in the kernel's page cache, shared and
reclaimable, instead of in the server's resident set (a memory map of a 100k x 1280-d store
added ~500 MB of RSS once searches had touched it).
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
        self._vecs: np.ndarray = np.empty((0, dim), dtype=np.float32)  # RAM buffer (unused when file-backed)
        self._n_rows = 0
        self._row_ids = np.empty(0, dtype=np.int64)  # capacity-grown, valid up to _n_rows
        self.keys = np.empty(0, dtype=np.int64)  # sorted live ids
        self.key_rows = np.empty(0, dtype=ROW_DTYPE)  # row of keys[i]
        self.path: Path | None = None  # backing file when file-backed
        self._fd: int | None = None  # write handle on `path`, opened on first append
        self._read_fd: int | None = None  # read handle on `path`
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
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted: runs of rows are read together
        if uniq[0] < 0 or uniq[-1] >= self._n_rows:
            raise VectorIndexError(f"internal error: rows {uniq[0]}..{uniq[-1]} outside the store's {self._n_rows}")
        block = self._read_rows(uniq) if self.mapped else self._vecs[uniq]
        if uniq.shape[0] == rows.size and bool((uniq == rows.reshape(-1)).all()):
            return np.ascontiguousarray(block)
        return np.ascontiguousarray(block[inverse.reshape(-1)])

    def _read_rows(self, uniq: np.ndarray) -> np.ndarray:
        """Sorted unique rows from the backing file, one ``pread`` per run of consecutive rows."""
        out = np.empty((uniq.shape[0], self.dim), dtype=np.float32)
        row_bytes = self.dim * 4
        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [uniq.shape[0]])).tolist()
        flat = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        fd = self._read_fd
        if fd is None:
            raise VectorIndexError("internal error: the vector store's file is closed")
        try:
            for a, b in zip(starts, ends, strict=True):
                offset = int(uniq[a]) * row_bytes
                view = flat[a * row_bytes : b * row_bytes]
                done = 0
                while done < len(view):
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got <= 0:
                        raise OSError(f"short read at byte {offset + done}")
                    done += got
        except OSError as exc:
            raise VectorIndexError(
                f"cannot read vectors from {self.path}: {exc}; the index directory is damaged, rebuild it"
            ) from exc
        return out

    def iter_live(self, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
        for name in ("_fd", "_read_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

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
            store._read_fd = _open_for_reading(vectors)
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
        self._read_fd = _open_for_reading(path)
        self.path = path
        self._vecs = np.empty((0, self.dim), dtype=np.float32)
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


def _open_for_reading(path: Path) -> int:
    """A read-only descriptor (``pread`` is safe from many threads: it does not move an offset)."""
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VectorIndexError(f"vectors file {path} is unreadable: {exc}") from exc


def _grow(arr: np.ndarray, need: int) -> np.ndarray:
    """``arr`` with room for ``need`` leading rows (capacity doubles); data kept."""
    if arr.shape[0] >= need:
        return arr
    cap = max(need, 2 * arr.shape[0], 1024)
    out = np.empty((cap, *arr.shape[1:]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out
