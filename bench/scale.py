"""Scale-out, in one run: the local pipeline vs Ray with 1 and 2 workers, then sharded vs single index.

1. **Ingestion**: the real ``imsearch index`` command (a subprocess each, fresh data dir each)
   over the same photos from ../shared/data with the default model on CPU: ``--engine local``,
   ``--engine ray --workers 1`` and ``--engine ray --workers 2`` (a local Ray instance started by
   the command). Two rates: the whole command (start-up, Ray start, model loads, scan, index,
   save) and the run itself (the summary's seconds: from the scan to the last commit, actor
   start-up and model loading included). Target: Ray with 2 workers >= 0.9 x local on this
   2-core machine (the engine's overhead is small). The 1-worker Ray rate is the per-worker
   rate ``docs/scale.md`` plans with.
2. **RAM per vector** of each index kind at dim 1280 (what the 100M plan in ``docs/scale.md`` uses).
3. **Index**: :func:`bench.scale_index.run` — single vs sharded index at 1M vectors with 1, 2, 4
   shards (p50/p99 latency, recall@10, build time, peak RSS per process).

    python -m bench.scale                              # 1000 photos, then 1M vectors
    python -m bench.scale --photos 300 --index-n 100000
    python -m bench.scale --skip-index                 # ingestion only
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.extract import photos
from bench.memory import run_with_peak

REPO = Path(__file__).resolve().parents[1]
ENGINES: list[tuple[str, list[str]]] = [
    ("local", ["--engine", "local"]),
    ("ray, 1 worker", ["--engine", "ray", "--workers", "1"]),
    ("ray, 2 workers", ["--engine", "ray", "--workers", "2"]),
]


def index_once(folder: Path, data: Path, extra: list[str]) -> dict[str, float | str]:
    cmd = [sys.executable, "-m", "indexer", "index", str(folder), "--data-dir", str(data), "--no-progress", *extra]
    t0 = time.perf_counter()
    code, out, err, peak = run_with_peak(cmd, cwd=REPO)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"imsearch index {' '.join(extra)} failed:\n{out[-3000:]}\n{err[-3000:]}")
    line = next((x for x in out.splitlines() if x.startswith("found")), "")
    m = re.search(r"in ([0-9.]+) s: indexed (\d+)", line)
    if m is None:
        raise SystemExit(f"no summary line in the output of imsearch index:\n{out[-2000:]}")
    run_s, indexed = float(m.group(1)), int(m.group(2))
    return {"wall_s": wall, "run_s": run_s, "indexed": indexed, "rss_mib": peak, "line": line}


def ingestion(n_photos: int) -> None:
    chosen = photos(n_photos or None)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        folder = work / "photos"
        folder.mkdir()
        for i, p in enumerate(chosen):
            shutil.copy(p, folder / f"{i:05d}.jpg")
        print(f"ingestion: {len(chosen)} photos, default model, CPU")
        rows: list[tuple[str, dict[str, float | str]]] = []
        for name, extra in ENGINES:
            res = index_once(folder, work / f"data-{len(rows)}", extra)
            rows.append((name, res))
            print(f"  {name}: {res['line']}")
        base = rows[0][1]
        print("\n| engine | whole command s | images/s (command) | run s | images/s (run) | vs local (run) "
              "| peak RSS of the command MiB |")
        print("|---|---|---|---|---|---|---|")
        for name, res in rows:
            cmd_rate = float(res["indexed"]) / float(res["wall_s"])
            run_rate = float(res["indexed"]) / float(res["run_s"])
            ratio = run_rate / (float(base["indexed"]) / float(base["run_s"]))
            print(f"| {name} | {float(res['wall_s']):.1f} | {cmd_rate:.2f} | {float(res['run_s']):.1f} "
                  f"| {run_rate:.2f} | x{ratio:.2f} | {float(res['rss_mib']):.0f} |")
        ray2 = rows[2][1]
        ratio = (float(ray2["indexed"]) / float(ray2["run_s"])) / (float(base["indexed"]) / float(base["run_s"]))
        verdict = "met" if ratio >= 0.9 else "NOT met"
        print(f"\ntarget: Ray with 2 workers >= 0.9 x local (run rate): x{ratio:.2f} -> {verdict}")
        print("(RSS: the driver process only; the Ray workers are processes of their own)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bytes_per_vector(dim: int = 1280, n: int = 20_000, kinds: tuple[str, ...] = ("flat", "ivfsq", "ivfpq", "hnsw")
                     ) -> None:
    """RAM per vector of each index kind at the default model's dimension, measured on ``n`` seeded
    unit vectors (``FaissIndex.memory_usage``: the FAISS structure, and the id maps); the full
    vectors kept for exact re-ranking live on disk (memory-mapped), ``dim * 4`` bytes each."""
    import numpy as np

    from retrieval.index import create_index

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    print(f"\nindex RAM per vector, {n} vectors of dim {dim} (full vectors on disk: {dim * 4} B each)")
    print("| kind | FAISS structure | FAISS B/vector | id maps B/vector | coarse quantizer + codebooks B/vector "
          "(shrinks with n) |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        index = create_index(dim, kind=kind)
        index.add(np.arange(n, dtype=np.int64), x)
        index.retrain()
        usage = index.memory_usage()
        faiss_b, ids_b = usage["faiss"] / n, usage["id_map"] / n
        factory = index.factory
        nlist = int(factory.split(",")[0][3:]) if factory.startswith("IVF") else 0
        fixed = nlist * dim * 4 + (64 * 256 * (dim // 64) * 4 if "PQ" in factory else 0)
        print(f"| {kind} | {factory} | {faiss_b:.0f} | {ids_b:.0f} | {fixed / n:.0f} |")
        index.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000, help="photos for the ingestion runs (0 = all)")
    parser.add_argument("--index-n", type=int, default=1_000_000, help="vectors for the index runs")
    parser.add_argument("--index-dim", type=int, default=128)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-ingestion", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-bytes", action="store_true", help="skip the RAM-per-vector table (dim 1280)")
    args = parser.parse_args()
    if not args.skip_ingestion:
        ingestion(args.photos)
    if not args.skip_bytes:
        bytes_per_vector()
    if not args.skip_index:
        from bench import scale_index

        print(f"\nindex: {args.index_n} vectors, dim {args.index_dim}, shards {args.shards}")
        print(scale_index.format_table(
            scale_index.run(sizes=(args.index_n,), shards=tuple(args.shards), dim=args.index_dim)
        ))


if __name__ == "__main__":
    main()
