"""Sharded vs single vector index at scale: bulk build time, search latency, recall, peak RSS.

For each size and shard count (1 = one plain FaissIndex) the index is bulk-built
(:func:`retrieval.index.bulk_build`: the coarse quantizer trained once, shards filled in
parallel threads) in one child process, then loaded (full vectors memory-mapped) and searched
in another, one query at a time (k=10); recall@10 is against the exact top 10 (``faiss.knn``).
Peak RSS is each child's own ``VmHWM`` (see ``bench/memory.py``); with local shards the whole
index is one process, so the serve column is the RSS of the one process holding all shards.

Vectors: ``faiss.contrib.datasets.SyntheticDataset`` (seeded), L2-normalised, dim 128 by
default: 1M x 128 float32 = 512 MB (1M x 1280 would be 5 GB on this machine's 2 shared cores).

    python -m bench.scale_index                 # 1M vectors, 1/2/4 shards, ivfsq
    python -m bench.scale_index --n 50000 --shards 1 2 --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.datasets import SyntheticDataset

from bench.memory import run_with_peak

REPO = Path(__file__).resolve().parents[1]
K = 10


def make_data(n: int, dim: int, nq: int, work: Path, seed: int = 0) -> np.ndarray:
    """Write ``xb.npy``, ``xq.npy``, ``ids.npy`` to ``work``; returns the exact top-k ids."""
    ds = SyntheticDataset(dim, 0, n, nq, seed=seed)
    xb = _normalized(ds.get_database())
    xq = _normalized(ds.get_queries())
    ids = np.random.default_rng(seed).choice(2**62, size=n, replace=False).astype(np.int64)  # hash-like keys
    np.save(work / "xb.npy", xb)
    np.save(work / "xq.npy", xq)
    np.save(work / "ids.npy", ids)
    _, rows = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[rows]
    np.save(work / "truth.npy", truth)
    return truth


def _normalized(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _child(args: list[str]) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, "-m", "bench.scale_index", "--child", *args]
    code, out, err, peak = run_with_peak(cmd, cwd=REPO)
    if code != 0:
        raise SystemExit(f"bench child {' '.join(args)} failed:\n{out}\n{err}")
    return json.loads(out.strip().splitlines()[-1]), peak


def run(
    sizes: Sequence[int] = (1_000_000,),
    shards: Sequence[int] = (1, 2, 4),
    dim: int = 128,
    kind: str = "ivfsq",
    queries: int = 1000,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per (size, shard count): build_s, p50_ms, p99_ms, recall, build/serve peak RSS MiB,
    bytes_per_vector (index RAM / vector), factory."""
    rows = []
    work_root = Path(tempfile.mkdtemp(prefix="bench-scale-index-", dir=workdir))
    try:
        for n in sizes:
            work = work_root / f"n{n}"
            work.mkdir()
            make_data(n, dim, queries, work)
            for s in shards:
                directory = work / f"index-{s}"
                built, build_peak = _child(["build", str(work), str(directory), str(s), kind])
                served, serve_peak = _child(["search", str(work), str(directory)])
                rows.append(
                    {
                        "n": n,
                        "dim": dim,
                        "kind": kind,
                        "shards": s,
                        **built,
                        **served,
                        "build_rss_mib": build_peak,
                        "serve_rss_mib": serve_peak,
                    }
                )
                shutil.rmtree(directory)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'n':>9} {'shards':>6} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall@10':>9} "
        f"{'build RSS MiB':>13} {'serve RSS MiB':>13} {'index B/vec':>11}  factory"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['n']:>9} {r['shards']:>6} {r['build_s']:>8.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['recall']:>9.4f} {r['build_rss_mib']:>13.0f} {r['serve_rss_mib']:>13.0f} "
            f"{r['bytes_per_vector']:>11.1f}  {r['factory']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- child processes
def _child_build(work: Path, directory: Path, shards: int, kind: str) -> dict[str, Any]:
    from retrieval.index import bulk_build

    xb = np.load(work / "xb.npy", mmap_mode="r")  # read per shard, never all at once in this process
    ids = np.load(work / "ids.npy")
    t0 = time.perf_counter()
    report = bulk_build(xb, ids, dim=xb.shape[1], kind=kind, shards=shards, directory=directory, use_ray=False)
    return {"build_s": time.perf_counter() - t0, "train_s": report.train_s, "fill_s": report.fill_s}


def _child_search(work: Path, directory: Path) -> dict[str, Any]:
    from retrieval.index import load_index

    xq = np.load(work / "xq.npy")
    truth = np.load(work / "truth.npy")
    index = load_index(directory, mmap=True)
    for q in xq[: min(20, len(xq))]:  # warm-up (page cache, thread pool)
        index.search(q[None], K)
    times, found = [], []
    for q in xq:
        t0 = time.perf_counter()
        _, ids = index.search(q[None], K)
        times.append(time.perf_counter() - t0)
        found.append(ids[0])
    hits = [len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]
    ms = np.array(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "recall": float(np.mean(hits)),
        "bytes_per_vector": float(index.memory_usage()["bytes_per_vector"]),
        "factory": index.factory,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000], help="collection sizes")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dim", type=int, default=128, help="vector dimension (1280 at 1M = 5 GB)")
    ap.add_argument("--kind", default="ivfsq")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        what, work, directory, *rest = args.child
        if what == "build":
            out = _child_build(Path(work), Path(directory), int(rest[0]), rest[1])
        else:
            out = _child_search(Path(work), Path(directory))
        print(json.dumps(out))
        return
    print(
        f"bench/scale_index.py: {args.kind}, dim {args.dim} ({args.dim * 4} B/vector as float32), "
        f"{args.queries} queries one at a time, k={K}; local shards (threads), bulk build; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    rows = run(sizes=args.n, shards=args.shards, dim=args.dim, kind=args.kind, queries=args.queries)
    print(format_table(rows))


if __name__ == "__main__":
    main()
