"""Vector index benchmark: build time, RAM, latency, throughput and recall@10 per index kind.

    python -m bench.search --sizes 100000 1000000 [--real FILE.npy] [--modes flat ivf ivfsq ivfpq hnsw]

Data: ``faiss.contrib.datasets.SyntheticDataset`` at d=512 (low intrinsic dimension, so real
near neighbours exist), L2-normalised, with hash-like 63-bit ids; ``--real`` adds a run on real
descriptors (an (n, d) float32 .npy; 1,000 random rows are held out as queries).

Every step runs in its own subprocess, so each mode's *search* process peak RSS is its own:
``data`` (generate), ``truth`` (exact top-10 by BLAS, unfiltered and with a random 10 % of the
ids allowed; also a naive NumPy brute-force latency as the reference), then per mode ``build``
(one bulk ``add`` + ``save``) and ``search`` (``load(mmap=True)``, 1,000 queries for
recall / throughput, 200 single queries for latency, 50 for the slow exact ``flat`` mode).
Filtered single-query latency includes building the selection from the 10 % allowed-id array
(sorted, as the catalog returns it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.memory import vm_hwm_mib

MODES = {"flat": "flat", "ivf": "ivf", "ivfsq": "ivfsq", "ivfpq": "ivfpq", "hnsw": "hnsw"}
TARGETS = (
    "targets at 1M: ANN recall@10 >= 0.95 & p50 <= 5 ms; filtered recall >= 0.95 & p50 <= 20 ms; "
    "ivfpq <= 100 B/vec & recall >= 0.90"
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="synthetic database sizes")
    ap.add_argument("--real", type=Path, help="(n, d) float32 .npy of real descriptors")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="queries for recall and throughput")
    ap.add_argument("--latency-queries", type=int, default=200, help="single queries timed for p50/p99")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="faiss.omp_set_num_threads")
    ap.add_argument("--workdir", type=Path, default=Path("bench-out/search"))
    ap.add_argument("--keep", action="store_true", help="keep the data and indexes in --workdir")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return
    print(f"bench/search.py: {args.threads} FAISS threads, OMP_WAIT_POLICY=PASSIVE (shared CPU), {TARGETS}")
    datasets = [(f"synthetic-{n}", "synthetic", n) for n in args.sizes]
    if args.real is not None:
        datasets.append((f"real-{args.real.stem}", str(args.real.resolve()), 0))
    else:
        print("no real descriptors given (--real FILE.npy): real-data run skipped")
    for name, source, n in datasets:
        _run_dataset(args, name, source, n)


def _run_dataset(args: argparse.Namespace, name: str, source: str, n: int) -> None:
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info = _spawn(args, "data", work, source, str(n))
    truth = _spawn(args, "truth", work)
    print(
        f"\n== {name}: {info['n']} x {info['dim']}, {info['nq']} queries; data {info['seconds']:.0f} s, "
        f"exact ground truth {truth['seconds']:.0f} s; naive NumPy brute force p50 {truth['numpy_p50']:.1f} ms"
    )
    print(f"   load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other jobs share the CPUs)")
    rows = []
    for mode in args.modes:
        built = _spawn(args, "build", work, mode)
        res = {**_spawn(args, "search", work, mode), **built, "mode": mode}
        rows.append(res)
        _print_table([res], truth["numpy_p50"], header=len(rows) == 1)
    (work / "results.json").write_text(json.dumps({"truth": truth, "modes": rows}, indent=1))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"-- {name} done in {(time.perf_counter() - t0) / 60:.1f} min (load average now {load})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _print_table(rows: list[dict[str, Any]], numpy_p50: float, *, header: bool) -> None:
    cols = [
        ("mode", "{mode:<6}"),
        ("structure", "{factory:<18}"),
        ("build s", "{build_s:>7.1f}"),
        ("B/vec", "{bytes_per_vector:>6.0f}"),
        ("R@10", "{recall:>5.3f}"),
        ("p50 ms", "{p50:>6.2f}"),
        ("p99 ms", "{p99:>6.2f}"),
        ("x numpy", "{speedup:>7.0f}"),
        ("batch q/s", "{qps:>9.0f}"),
        ("| filt R@10", "{f_recall:>10.3f}"),
        ("k filled", "{f_filled:>8}"),
        ("f p50", "{f_p50:>6.2f}"),
        ("f p99", "{f_p99:>6.2f}"),
        ("| RSS MB", "{rss_mb:>7.0f}"),
        ("anon MB", "{anon_mb:>7.0f}"),
        ("build RSS", "{build_rss_mb:>9.0f}"),
    ]
    if header:
        print("  ".join(f"{c:>{len(c)}}" for c, _ in cols))
    for row in rows:
        r = {**row, "speedup": numpy_p50 / row["p50"], "f_filled": "all" if row["f_all_filled"] else "NO"}
        print("  ".join(fmt.format(**r).rjust(len(c)) for c, fmt in cols), flush=True)


def _spawn(args: argparse.Namespace, *child: str | Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.search",
        "--child",
        *map(str, child),
        "--threads",
        str(args.threads),
        "--queries",
        str(args.queries),
        "--latency-queries",
        str(args.latency_queries),
        "--dim",
        str(args.dim),
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"step {child[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------- child processes
def _child(args: argparse.Namespace) -> None:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    step, work, rest = args.child[0], Path(args.child[1]), args.child[2:]
    t0 = time.perf_counter()
    steps: dict[str, Callable[..., dict[str, Any]]] = {
        "data": _data,
        "truth": _truth,
        "build": _build,
        "search": _search,
    }
    out = steps[step](args, work, *rest)
    out.setdefault("seconds", time.perf_counter() - t0)
    print(json.dumps(out))


def _data(args: argparse.Namespace, work: Path, source: str, n: str) -> dict[str, Any]:
    from faiss.contrib.datasets import SyntheticDataset

    rng = np.random.default_rng(0)
    if source == "synthetic":
        ds = SyntheticDataset(args.dim, 0, int(n), args.queries, metric="IP", seed=1338)
        xb, xq = ds.get_database(), ds.get_queries()
    else:
        x = np.load(source, mmap_mode="r")
        held = np.zeros(x.shape[0], dtype=bool)
        held[rng.choice(x.shape[0], size=min(args.queries, x.shape[0] // 10), replace=False)] = True
        xb, xq = np.asarray(x[~held], dtype=np.float32), np.asarray(x[held], dtype=np.float32)
    xb /= np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-12)
    xq /= np.maximum(np.linalg.norm(xq, axis=1, keepdims=True), 1e-12)
    ids = np.sort(rng.choice(2**62, size=xb.shape[0], replace=False)).astype(np.int64)
    ids = rng.permutation(ids)  # hash-like keys, not in insertion order
    np.save(work / "xb.npy", np.ascontiguousarray(xb, dtype=np.float32))
    np.save(work / "xq.npy", np.ascontiguousarray(xq, dtype=np.float32))
    np.save(work / "ids.npy", ids)
    np.save(work / "allowed.npy", np.sort(rng.choice(ids, size=max(1, ids.size // 10), replace=False)))
    return {"n": int(xb.shape[0]), "dim": int(xb.shape[1]), "nq": int(xq.shape[0])}


def _truth(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    xb = np.load(work / "xb.npy")
    xq = np.load(work / "xq.npy")
    ids = np.load(work / "ids.npy")
    allowed = np.load(work / "allowed.npy")
    _, gt = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    rows = np.flatnonzero(np.isin(ids, allowed))
    _, gtf = faiss.knn(xq, np.ascontiguousarray(xb[rows]), 10, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(work / "gt.npy", ids[gt])
    np.save(work / "gt_filtered.npy", ids[rows[gtf]])
    lat = []
    for q in xq[:20]:  # the naive reference: one matrix-vector product and a partial sort
        t = time.perf_counter()
        s = xb @ q
        top = np.argpartition(-s, 10)[:10]
        top[np.argsort(-s[top])]
        lat.append(time.perf_counter() - t)
    return {"numpy_p50": 1e3 * float(np.median(lat))}


def _build(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    from retrieval.index.faiss_index import FaissIndex

    xb = np.load(work / "xb.npy", mmap_mode="r")
    ids = np.load(work / "ids.npy")
    t = time.perf_counter()
    index = FaissIndex(xb.shape[1], kind=MODES[mode])
    index.add(ids, xb)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    index.save(work / f"index-{mode}")
    return {
        "build_s": build_s,
        "save_s": time.perf_counter() - t,
        "factory": index.factory,
        "build_rss_mb": _peak_rss_mb(),
    }


def _search(args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    from retrieval.index.faiss_index import FaissIndex

    xq = np.load(work / "xq.npy")
    gt, gtf = np.load(work / "gt.npy"), np.load(work / "gt_filtered.npy")
    allowed = np.load(work / "allowed.npy")
    index = FaissIndex.load(work / f"index-{mode}", mmap=True)
    index.search(xq[:10], 10)  # warm-up
    t = time.perf_counter()
    _, found = index.search(xq, 10)
    qps = xq.shape[0] / (time.perf_counter() - t)
    _, found_f = index.search(xq, 10, allowed_ids=allowed)
    n_lat = min(args.latency_queries, 50) if mode == "flat" else args.latency_queries  # exact: slow, stable
    lat = _latencies(lambda q: index.search(q, 10), xq[:n_lat])
    flat = _latencies(lambda q: index.search(q, 10, allowed_ids=allowed), xq[:n_lat])
    return {
        "recall": _recall(found, gt),
        "qps": qps,
        "p50": lat[0],
        "p99": lat[1],
        "f_recall": _recall(found_f, gtf),
        "f_p50": flat[0],
        "f_p99": flat[1],
        "f_all_filled": bool((found_f >= 0).all() and np.isin(found_f, allowed).all()),
        "bytes_per_vector": index.memory_usage()["bytes_per_vector"],
        "rss_mb": _peak_rss_mb(),
        "anon_mb": _anon_rss_mb(),
    }


def _latencies(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    lat = []
    for i in range(queries.shape[0]):
        t = time.perf_counter()
        fn(queries[i : i + 1])
        lat.append(time.perf_counter() - t)
    return 1e3 * float(np.percentile(lat, 50)), 1e3 * float(np.percentile(lat, 99))


def _recall(found: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, gt, strict=True)]))


def _peak_rss_mb() -> float:
    return vm_hwm_mib()  # this process's own peak (ru_maxrss would include the parent's, kept across exec)


def _anon_rss_mb() -> float:
    """Current anonymous RSS (heap: excludes the page-cache pages of memory-mapped files)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
