"""`imsearch search IMAGE -k 3` wall time: today's torch path vs the torch-free quick path.

Each run is a fresh ``imsearch search`` process, as a user starts it. Two figures per run:
*first result*, from the start of the process to its first result row on stdout, and *wall*,
to its exit. The torch path is forced with ``IMSEARCH_FAST_QUERY=0``; the quick path is the
default once the collection's model is exported (the first search does it; this bench runs
one before timing). The runs alternate between the paths, over the same query photos. A third
row runs the search command alone (its own parser only): what ``imsearch search`` costs once
no other command's module imports torch when the parser is built.

    python -m bench.cli                          # builds a 200-photo collection from ../shared/data
    python -m bench.cli --data-dir imsearch-data --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def sample_photos(n: int) -> list[Path]:
    paths = sorted(SHARED.glob("caltech101-half/*/*.jpg"))
    if len(paths) < n:
        sys.exit(f"expected at least {n} photos under {SHARED}/caltech101-half, found {len(paths)}")
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def env_for(fast: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    env["PYTHONPATH"] = str(REPO)
    env["IMSEARCH_FAST_QUERY"] = "1" if fast else "0"
    return env


def imsearch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "indexer", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=1800, check=False)


#: the search command alone, without building the parser of every other command (what `imsearch search`
#: costs once no command module imports torch at parse time)
ALONE = ("import argparse, logging, sys; from indexer.commands import search; logging.basicConfig(level=20); "
         "p = argparse.ArgumentParser(); "
         "search.register(p.add_subparsers()); sys.exit(search.run(p.parse_args(sys.argv[1:])))")
MODES = {
    "torch": ("today (torch, IMSEARCH_FAST_QUERY=0)", False, ("-m", "indexer")),
    "quick": ("quick (onnxruntime + numpy)", True, ("-m", "indexer")),
    "alone": ("quick, search command alone", True, ("-c", ALONE)),
}


def timed_search(query: Path, data_dir: Path, k: int, mode: str) -> tuple[float, float]:
    """(seconds to the first result row, seconds to exit) of one `imsearch search` process."""
    _, fast, entry = MODES[mode]
    cmd = [sys.executable, *entry, "search", str(query), "-k", str(k), "--data-dir", str(data_dir)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(fast),
                            cwd=REPO)
    assert proc.stdout is not None
    first = None
    for line in proc.stdout:
        if first is None and line[:4].strip().isdigit():  # "   1   0.998  <id> ..." : the first result row
            first = time.perf_counter() - t0
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or first is None:
        sys.exit(f"imsearch search failed ({proc.returncode}):\n{err}")
    if fast and "using the torch path" in err:
        sys.exit(f"the quick path did not serve the query:\n{err}")
    return first, wall


def parser_imports() -> str:
    """What building the `imsearch` parser imports (every command's module), and how long it takes."""
    code = ("import sys, time; t = time.perf_counter(); import indexer.cli; indexer.cli.build_parser(); "
            "print(f'{time.perf_counter() - t:.2f}', [m for m in ('torch', 'sqlalchemy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_for(True),
                         cwd=REPO, check=False)
    return (out.stdout or out.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None, help="an existing collection (default: build one)")
    ap.add_argument("--photos", type=int, default=200, help="photos of the collection built (default: 200)")
    ap.add_argument("--runs", type=int, default=5, help="runs per path (default: 5)")
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args(argv)
    tmp = None
    if args.data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="imsearch-bench-cli-"))
        photos_dir, data_dir = tmp / "photos", tmp / "data"
        photos_dir.mkdir()
        for i, p in enumerate(sample_photos(args.photos)):
            shutil.copy(p, photos_dir / f"{i:04d}_{p.parent.name}_{p.name}")
        t0 = time.perf_counter()
        built = imsearch(["index", str(photos_dir), "--data-dir", str(data_dir), "--no-progress"], env_for(True))
        if built.returncode != 0:
            sys.exit(f"imsearch index failed:\n{built.stderr}")
        print(f"built a {args.photos}-photo collection in {time.perf_counter() - t0:.0f} s: {data_dir}")
        queries = sorted(photos_dir.iterdir())[:: max(1, args.photos // args.runs)][: args.runs]
    else:
        data_dir = args.data_dir
        queries = sample_photos(args.runs)
    try:
        warm = imsearch(["search", str(queries[0]), "-k", "1", "--data-dir", str(data_dir)], env_for(True))
        if warm.returncode != 0:
            sys.exit(f"imsearch search failed:\n{warm.stderr}")
        exported = "exported the model" in warm.stderr
        print(f"warm-up search ({'exported the model for fast queries' if exported else 'model already exported'})")
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
        for query in queries:
            for mode in MODES:
                times[mode].append(timed_search(query, data_dir, args.k, mode))
        print(f"\n`imsearch search IMAGE -k {args.k}` on {data_dir} ({args.runs} runs each, seconds; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
        print(f"{'path':38s} {'first result: median':>21s} {'min':>6s} {'max':>6s} {'wall: median':>13s} {'min':>6s}")
        for mode, (label, _, _) in MODES.items():
            first = [t[0] for t in times[mode]]
            wall = [t[1] for t in times[mode]]
            print(f"{label:38s} {statistics.median(first):21.2f} {min(first):6.2f} {max(first):6.2f} "
                  f"{statistics.median(wall):13.2f} {min(wall):6.2f}")
        speedup = statistics.median(t[0] for t in times["torch"]) / statistics.median(t[0] for t in times["quick"])
        print(f"speed-up to the first result: {speedup:.1f}x")
        print(f"building the imsearch parser (all commands): {parser_imports()} (seconds, heavy modules loaded)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
