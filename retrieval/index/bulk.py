"""Bulk build of a (sharded) index for a large collection: train once, fill the shards in parallel.

The way ``faiss.contrib.ondisk`` and autofaiss build big indexes: the coarse quantizer (IVF
kinds) is trained *once*, on a sample of all the vectors; every shard starts from a copy of
that empty trained index and only adds its own vectors; the shards are written straight to
disk. No shard retrains, and no process ever holds more than the shards it fills.

1. the shard of every id (:func:`~retrieval.index.sharded.shard_of`) and the structure each
   shard gets: what :class:`~retrieval.index.structures.Policy` picks for the shard's size, i.e.
   what an index of that kind grown to that size by ``add`` would serve;
2. if that structure needs training: ``train_sample_size`` of the vectors, drawn uniformly
   (seeded) from the whole collection, train it, serialize the empty trained index;
3. each shard (Ray tasks when Ray is initialized, else threads): its rows of the source,
   :meth:`FaissIndex.prebuilt` (``structures.build_from_store`` with the trained copy), ``save``
   to ``directory/shard-NNN``; then ``sharded.json``. One shard: a plain FaissIndex directory.

The result opens with :func:`retrieval.index.factory.load_index` (locally or in Ray actors).
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index import persist as io
from retrieval.index.checks import check_dim, check_ids, check_vectors
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.shard_layout import LAYOUT, MAX_SHARDS, shard_dir, shard_of, write_layout
from retrieval.index.structures import FLAT, Policy, create, train_sample_size

logger = logging.getLogger(__name__)

__all__ = ["BulkReport", "bulk_build", "plan_factory"]

ROW_CHUNK = 65_536  # rows of the source read at once


@dataclass(frozen=True)
class BulkReport:
    """What :func:`bulk_build` wrote."""

    directory: Path
    count: int
    shards: int
    kind: str
    factory: str  # structure of every shard
    shard_sizes: list[int]
    trained_on: int  # training vectors (0: the structure needs no training)
    train_s: float
    fill_s: float


def plan_factory(kind: str, dim: int, n: int) -> str:
    """The structure an index of ``kind`` grown to ``n`` vectors by ``add`` would serve."""
    policy = Policy(kind, dim)
    plan = policy.plan(n, None) or FLAT
    if policy.needs_training and n >= policy.min_train:
        return kind  # a factory string that trains once enough vectors exist
    return plan


def _rows(source: Any, rows: np.ndarray, dim: int) -> np.ndarray:
    """Rows ``rows`` (sorted) of the source as float32 C-contiguous, read in chunks."""
    parts = [np.asarray(source[rows[s : s + ROW_CHUNK]], dtype=np.float32) for s in range(0, rows.size, ROW_CHUNK)]
    x = np.ascontiguousarray(np.concatenate(parts) if parts else np.empty((0, dim), np.float32))
    return check_vectors(x, dim)


@dataclass(frozen=True)
class _Plan:
    """What every shard of one bulk build shares (picklable: shipped to Ray tasks)."""

    dim: int
    kind: str
    factory: str
    model_info: dict[str, Any]
    trained: np.ndarray | None  # the empty trained structure (faiss.serialize_index) or None


def _fill_shard(plan: _Plan, ids: np.ndarray, vectors: np.ndarray, out: str) -> tuple[int, str]:
    """Build one shard from its vectors and save it to ``out`` (runs in a thread or a Ray task)."""
    if ids.size:
        index = FaissIndex.prebuilt(
            plan.dim, ids, vectors, kind=plan.kind, factory=plan.factory, trained=plan.trained
        )
    else:
        index = FaissIndex(plan.dim, kind=plan.kind)
    index.model_info = plan.model_info
    try:
        index.save(out)
        return len(index), index.factory
    finally:
        index.close()


def bulk_build(
    vectors_source: Any,
    ids: Any,
    *,
    dim: int,
    kind: str = "ivfsq",
    shards: int = 1,
    directory: str | Path,
    sample: int | None = None,
    model_info: dict[str, Any] | None = None,
    seed: int = 1234,
    use_ray: bool | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> BulkReport:
    """Build the index of ``vectors_source`` (row ``i`` = the vector of ``ids[i]``) in ``directory``.

    ``vectors_source``: an ``(n, dim)`` float32 array or anything indexable by a sorted row array
    with that shape (``np.memmap``, ``np.load(..., mmap_mode="r")``). ``sample``: training vectors
    (default: what ``FaissIndex`` would use). ``use_ray``: None = Ray tasks when ``ray.is_initialized()``,
    else threads (``workers``, default one per shard). ``directory`` must be empty or absent unless
    ``overwrite``. See the module docstring for the steps.
    """
    started = time.perf_counter()
    dim = check_dim(dim)
    arr = check_ids(ids, unique=True)
    shape = getattr(vectors_source, "shape", None)
    if shape is None or len(shape) != 2 or int(shape[1]) != dim or int(shape[0]) != arr.shape[0]:
        raise VectorIndexError(
            f"vectors_source must be an (n, dim) = ({arr.shape[0]}, {dim}) array-like, got shape {shape}"
        )
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise VectorIndexError(f"shards must be an int between 1 and {MAX_SHARDS}, got {shards!r}")
    try:
        Policy(kind, dim)
    except UnknownNameError as exc:
        raise VectorIndexError(str(exc)) from exc
    out = _prepare(Path(directory), overwrite)
    n = arr.shape[0]
    which = shard_of(arr, shards)
    members = [np.flatnonzero(which == i) for i in range(shards)]
    sizes = [int(m.size) for m in members]
    factory = plan_factory(kind, dim, max(sizes))

    trained, trained_on = None, 0
    probe = create(factory, dim)
    if not probe.index.is_trained:
        size = train_sample_size(probe, n) if sample is None else max(1, min(int(sample), n))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        logger.info("bulk build: training %s on %d of %d vectors", factory, size, n)
        probe.index.train(_rows(vectors_source, rows, dim))
        trained, trained_on = faiss.serialize_index(probe.index), size
    del probe
    train_s = time.perf_counter() - started

    targets = [str(out) if shards == 1 else str(shard_dir(out, i)) for i in range(shards)]
    fill_started = time.perf_counter()
    plan = _Plan(dim, kind, factory, model_info or {}, trained)
    ray = _ray_if(use_ray)
    if ray is not None:
        results = _fill_with_ray(ray, plan, vectors_source, arr, members=members, targets=targets)
    else:
        results = _fill_with_threads(
            plan, vectors_source, arr, members=members, targets=targets, workers=workers or shards
        )
    if shards > 1:
        write_layout(out, n=shards, dim=dim, kind=kind, model_info=plan.model_info)
    fill_s = time.perf_counter() - fill_started
    counts = [c for c, _ in results]
    if counts != sizes:
        raise VectorIndexError(f"bulk build wrote shard sizes {counts}, expected {sizes}; build it again")
    logger.info("bulk build: %d vectors in %d shard(s) of %s, %.1f s", n, shards, results[0][1], fill_s + train_s)
    return BulkReport(
        directory=out,
        count=n,
        shards=shards,
        kind=kind,
        factory=results[0][1],
        shard_sizes=sizes,
        trained_on=trained_on,
        train_s=train_s,
        fill_s=fill_s,
    )


def _prepare(path: Path, overwrite: bool) -> Path:
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise VectorIndexError(f"{path} is not empty; pass overwrite=True or choose an empty directory")
        if not ((path / LAYOUT).is_file() or (path / io.META).is_file()):
            raise VectorIndexError(f"{path} holds files that are not an index; refusing to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ray_if(use_ray: bool | None) -> Any:
    if use_ray is False:
        return None
    try:
        import ray
    except ImportError as exc:
        if use_ray:
            raise VectorIndexError("use_ray=True needs Ray: pip install 'imsearch[ray]'") from exc
        return None
    if not ray.is_initialized():
        if use_ray:
            raise VectorIndexError("use_ray=True but Ray is not initialized: call ray.init() first")
        return None
    return ray


def _fill_with_threads(
    plan: _Plan, source: Any, ids: np.ndarray, *, members: list[np.ndarray], targets: list[str], workers: int
) -> list[tuple[int, str]]:
    def job(i: int) -> tuple[int, str]:  # reads its rows inside the thread: at most `workers` shards in RAM
        rows = members[i]
        return _fill_shard(plan, ids[rows], _rows(source, rows, plan.dim), targets[i])

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(members)))) as pool:
        return list(pool.map(job, range(len(members))))


def _fill_with_ray(
    ray: Any, plan: _Plan, source: Any, ids: np.ndarray, *, members: list[np.ndarray], targets: list[str]
) -> list[tuple[int, str]]:
    task: Any = ray.remote(num_cpus=1)(_fill_shard)
    plan_ref = ray.put(plan)  # the trained structure goes to the object store once
    refs = [  # each shard's rows go to the object store once
        task.remote(plan_ref, ids[rows], _rows(source, rows, plan.dim), targets[i]) for i, rows in enumerate(members)
    ]
    try:
        return list(ray.get(refs))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        raise VectorIndexError(f"a bulk-build task failed: {cause or exc}; build it again") from exc
