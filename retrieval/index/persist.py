"""On-disk layout of a vector index directory, atomic writes and metadata validation.

Layout (``G`` = save generation, 6 digits)::

    meta.json            the commit record: format, dim, kind, factory, counts, file names, model
    index-G.faiss        the FAISS structure (labels = rows)
    rowids-G.i64         catalog id of every row, -1 for holes (int64, native order)
    vectors-G.f32        full-precision rows (float32, row-major); append-only between compactions
    .writer.lock         flock held by the writing FaissIndex

A save writes every new file under a temporary name, fsyncs it, renames it, then replaces
``meta.json`` the same way and fsyncs the directory: until that last rename the previous
``meta.json`` and the files it names are untouched, so a crash leaves the previous version
loadable. Files no meta references (older generations, ``*.tmp`` leftovers) are deleted after
the commit. Rows appended to the vectors file beyond the committed row count are ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.errors import VectorIndexError
from retrieval.index.lock import LOCK_NAME
from retrieval.index.rowstore import RowStore
from retrieval.index.structures import Structure, build_from_store

logger = logging.getLogger(__name__)

FORMAT = "imsearch-vector-index"
FORMAT_VERSION = 1
META = "meta.json"
_OWNED = re.compile(r"^(index-\d+\.faiss|rowids-\d+\.i64|vectors-\d+\.f32|meta\.json)(\.tmp)?$|.*\.tmp$")
_GEN = re.compile(r"-(\d+)\.")
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "dim": int,
    "kind": str,
    "factory": str,
    "count": int,
    "rows": int,
    "dead": int,
    "trained_size": int,
    "generation": int,
    "files": dict,
    "model": dict,
}


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write`` fill ``path.tmp``, fsync it and rename it to ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise VectorIndexError(f"cannot write {path}: {exc}; the previous saved version is intact") from exc


def next_generation(directory: Path) -> int:
    gens = [int(m.group(1)) for p in directory.iterdir() if _OWNED.match(p.name) and (m := _GEN.search(p.name))]
    return max(gens, default=0) + 1


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """The commit point of a save."""
    try:
        text = json.dumps(meta, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise VectorIndexError(f"index metadata is not JSON-serializable ({exc}); check model_info") from exc
    write_atomic(directory / META, lambda p: p.write_text(text, encoding="utf-8"))
    fsync_dir(directory)


def read_meta(directory: Path) -> dict[str, Any]:
    """The validated ``meta.json`` of ``directory``."""
    path = directory / META
    if not directory.is_dir():
        raise VectorIndexError(f"no vector index at {directory}: not a directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise VectorIndexError(f"no vector index at {directory}: {META} is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VectorIndexError(f"{path} is unreadable ({exc}); the index directory is corrupt, rebuild it") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VectorIndexError(f"{path} is not an imsearch vector index (format != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise VectorIndexError(
            f"{path} has format version {meta.get('format_version')!r}; this imsearch reads version "
            f"{FORMAT_VERSION}: rebuild the index with this version"
        )
    for key, typ in _REQUIRED.items():
        if not isinstance(meta.get(key), typ) or isinstance(meta.get(key), bool):
            raise VectorIndexError(f"{path}: field {key!r} is missing or not a {getattr(typ, '__name__', typ)}")
    files = meta["files"]
    for key in ("index", "rowids", "vectors"):
        name = files.get(key)
        if not isinstance(name, str) or "/" in name or not (directory / name).is_file():
            raise VectorIndexError(f"{path}: the {key} file {name!r} is missing; the index directory is corrupt")
    if meta["dim"] < 1 or not 0 <= meta["count"] <= meta["rows"]:
        raise VectorIndexError(f"{path}: inconsistent dim/count/rows {meta['dim']}/{meta['count']}/{meta['rows']}")
    return meta


def committed_generation(directory: Path) -> int | None:
    """Generation of the version committed in ``directory`` (None when there is none)."""
    try:
        gen = json.loads((directory / META).read_text(encoding="utf-8")).get("generation")
    except (OSError, ValueError, AttributeError):
        return None
    return gen if isinstance(gen, int) else None


def collect_garbage(directory: Path, keep: set[str]) -> None:
    """Delete the files of older generations and leftovers of interrupted saves."""
    for p in directory.iterdir():
        if p.name in keep or p.name == LOCK_NAME or not _OWNED.match(p.name):
            continue
        try:
            p.unlink()
        except OSError:  # best effort: a leftover is harmless
            continue


# ---------------------------------------------------------------------- save / load of the parts
def save_parts(
    directory: Path,
    store: RowStore,
    structure: Structure,
    *,
    header: dict[str, Any],
    map_after: bool,
    compact_fraction: float,
) -> tuple[Structure, int]:
    """Write store + structure to ``directory`` and commit ``meta.json``; returns the structure
    to use from now on (rebuilt when graph tombstones exceed ``compact_fraction``) and the
    committed generation.

    Rows are squeezed (store compacted, FAISS labels renumbered) when holes exceed
    ``compact_fraction`` or when the vectors do not already live in ``directory``; that part
    is applied in memory even if a later step fails (the in-memory index stays consistent).
    """
    gen = next_generation(directory)
    here = store.path is not None and store.path.parent.resolve() == directory.resolve()
    if here and store.path is not None and store.holes <= compact_fraction * store.n_rows:
        store.flush()
        vec_name = store.path.name
    else:
        vec_name = f"vectors-{gen:06d}.f32"
        mapping = store.compaction_map() if store.holes else None
        live_ids = store.row_ids[store.live_mask()]
        write_atomic(directory / vec_name, store.write_compacted)
        if map_after:
            store.adopt_file(directory / vec_name, live_ids)
        elif mapping is not None:
            store.compact_in_ram()
        if mapping is not None:
            structure.relabel(mapping)
    if structure.dead > compact_fraction * max(1, structure.ntotal):
        logger.info("rebuilding %s without its %d tombstones", structure.factory, structure.dead)
        trained = structure.trained_size
        structure = build_from_store(structure.factory, store)
        structure.trained_size = structure.trained_size or trained
    rowids_name, index_name = f"rowids-{gen:06d}.i64", f"index-{gen:06d}.faiss"
    write_atomic(directory / rowids_name, store.row_ids.tofile)
    write_atomic(directory / index_name, lambda p: faiss.write_index(structure.index, str(p)))
    meta = {
        **header,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": store.dim,
        "factory": structure.factory,
        "count": store.n_live,
        "rows": store.n_rows,
        "dead": structure.dead,
        "trained_size": structure.trained_size,
        "generation": gen,
        "files": {"index": index_name, "rowids": rowids_name, "vectors": vec_name},
    }
    write_meta(directory, meta)
    collect_garbage(directory, {vec_name, rowids_name, index_name, META})
    return structure, gen


def load_parts(directory: Path, meta: dict[str, Any], *, mmap: bool) -> tuple[RowStore, Structure]:
    """Open and cross-check the files named by a validated ``meta``."""
    files, dim, n_rows = meta["files"], meta["dim"], meta["rows"]
    rid_path = directory / files["rowids"]
    if rid_path.stat().st_size != n_rows * 8:
        raise VectorIndexError(f"{rid_path} does not hold {n_rows} row ids; the index directory is corrupt")
    row_ids = np.fromfile(rid_path, dtype=np.int64)
    if int((row_ids >= 0).sum()) != meta["count"] or bool((row_ids < -1).any()):
        raise VectorIndexError(f"{rid_path} disagrees with {META} (count {meta['count']}); rebuild the index")
    store = RowStore.open(dim, directory / files["vectors"], row_ids, mmap=mmap)
    index_path = directory / files["index"]
    try:
        index = faiss.read_index(str(index_path))
    except (RuntimeError, MemoryError) as exc:
        raise VectorIndexError(f"cannot read FAISS index {index_path}: {exc}; rebuild the index") from exc
    structure = Structure(index, meta["factory"], trained_size=meta["trained_size"], dead=meta["dead"])
    if index.d != dim or structure.ntotal != meta["count"] + meta["dead"]:
        raise VectorIndexError(
            f"{index_path} holds {structure.ntotal} vectors of dim {index.d}, {META} says "
            f"{meta['count']} (+{meta['dead']} tombstones) of dim {dim}; rebuild the index"
        )
    labels = np.sort(structure.labels())
    live_rows = np.flatnonzero(row_ids >= 0)
    ok = labels.size == 0 or int(labels[-1]) < n_rows
    ok = ok and bool(np.isin(live_rows, labels).all())
    if ok and structure.removable:
        ok = np.array_equal(labels, live_rows)
    if not ok:
        raise VectorIndexError(f"{index_path} does not index exactly the stored rows; rebuild the index")
    return store, structure
