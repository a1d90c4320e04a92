"""HTTP API under load: search by id and by upload against a real ``imsearch serve``, while an
index job started through the API writes more photos.

The collection (built once, then reused from ``--out``): ``--real`` photos of
../shared/data/caltech101-half indexed for real with the default model (efficientnet_lite0,
max side 512, 3 scales), and synthetic vectors up to ``--vectors`` written through
``Collection.write`` with fake-but-valid metadata (sha256 of a counter, 640x480 JPEG, no
file on disk); each synthetic vector is a real descriptor plus Gaussian noise (cosine ~0.8
to it), re-normalized, so the vectors cluster like real ones.

Printed: queries/s, p50 and p99 latency of each kind (quiet, then during the job: short
slices of each kind alternate until the job ends, so every measurement overlaps it), the
server's time split (``timings`` of each response; decode measured apart in this process),
the server's resident memory (RSS), and two reference ratios measured in the same run:
the same searches in-process (no HTTP) and a brute-force numpy scan for search by id.
Then the checks: no request failed, the job's counts add up, every photo it indexed is there.

    python -m bench.api                              # build (first run: minutes), then measure
    python -m bench.api --clients 2 --job-photos 300 --index-kind ivfpq
    python -m bench.api --server-set job_isolation=thread   # the job in a thread of the server
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.api_collection import SHARED, build, ensure_index_kind, real_photos, reference
from bench.memory import MIB, TreeSampler

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
TARGETS = {"by_id_p50_ms": 20.0, "by_upload_p50_ms": 100.0, "rss_mib": 1536.0}  # issue 17: the server's peak


# ---------------------------------------------------------------------------- the server and the load


def start_server(data_dir: Path, jobs_root: Path, settings: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    env.update(IMSEARCH_API_KEYS=KEY, IMSEARCH_ALLOWED_ROOTS=str(jobs_root), IMSEARCH_RATE_LIMIT_PER_MINUTE="0")
    for item in settings:  # NAME=VALUE of an api.settings field
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--server-set wants NAME=VALUE, got {item!r}")
        env["IMSEARCH_" + name.upper()] = value
    log = (data_dir / "serve.log").open("ab")
    cmd = [sys.executable, "-m", "indexer", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=REPO, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"imsearch serve exited with {proc.returncode}; see {data_dir / 'serve.log'}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    sys.exit("imsearch serve did not start in 300 s")


def load(url: str, kind: str, seconds: float, clients: int, ids: list[int], uploads: list[bytes]) -> dict[str, Any]:
    """Back-to-back requests from ``clients`` threads for ``seconds``."""
    lat: list[float] = []
    timings: list[dict[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                if kind == "by_id":
                    r = http.post("/api/v1/search/id", json={"image_id": str(rng.choice(ids)), "k": 10})
                else:
                    photo = rng.choice(uploads)
                    r = http.post("/api/v1/search/image", files={"file": ("q.jpg", photo)}, data={"k": "10"})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200 and len(r.json()["hits"]) == 10:
                        lat.append(dt)
                        timings.append({**r.json()["timings"], "took_ms": r.json()["took_ms"]})
                    else:
                        errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "timings": timings, "errors": errors, "wall": time.perf_counter() - t0}


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] + b[k] for k in ("lat", "timings", "errors", "wall")}


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    lat, timings = raw["lat"], raw["timings"]
    arr = np.array(lat) * 1e3 if lat else np.array([float("nan")])
    return {
        "n": len(lat),
        "qps": len(lat) / raw["wall"],
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "errors": raw["errors"],
        "split_ms": {k: float(np.median([t[k] for t in timings])) for k in timings[0]} if timings else {},
    }


# ---------------------------------------------------------------------------- the job


def job_folder(out: Path, n: int) -> Path:
    """``n`` distractor photos re-encoded with a run-specific pixel (new content each run) + 2 broken files."""
    folder = out / "jobs" / time.strftime("run-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True)
    sources = sorted(SHARED.glob("caltech101-distractors/*.jpg"))[:n]
    stamp = int(time.time()) % 256
    for i, src in enumerate(sources):
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        rgb.putpixel((0, 0), (stamp, i % 256, (i // 256) % 256))
        rgb.save(folder / f"photo_{i:04d}.jpg", quality=92)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return folder


def verify_job(http: httpx.Client, job_id: str, folder: Path, images_before: int) -> list[str]:
    problems = []
    job = http.get(f"/api/v1/jobs/{job_id}").json()
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if job["status"] != "succeeded":
        problems.append(f"job ended {job['status']}: {job['message']}")
    if job["done"] + job["skipped"] + job["failed"] != job["total"] or job["total"] != len(files):
        problems.append(f"job counts do not add up: {job} for {len(files)} files")
    if job["failed"] != 2:
        problems.append(f"expected the 2 broken files to fail, got {job['failed']}")
    missing = 0
    for path in files:
        if path.suffix == ".jpg" and path.name != "broken.jpg":
            image_id = int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:8], "big") & ((1 << 63) - 1)
            missing += http.get(f"/api/v1/images/{image_id}").status_code != 200
    if missing:
        problems.append(f"{missing} indexed photos are missing")
    images_after = http.get("/api/v1/stats").json()["images"]
    if images_after != images_before + job["done"]:
        problems.append(f"images {images_before} + {job['done']} indexed != {images_after}")
    return problems


# ---------------------------------------------------------------------------- main


def report(stats: dict[str, Any], ref: dict[str, float], quiet: dict[str, Any], busy: dict[str, Any],
           memory: TreeSampler, rss_end: tuple[int, int], job: dict[str, Any], problems: list[str]) -> None:
    print(f"\ncollection: {stats['images']} images, index {stats['index']['image']['factory']}, {stats['model']}")
    print(f"{'':34}{'queries/s':>10}{'p50 ms':>9}{'p99 ms':>9}  server split (median ms)")
    for label, runs in (("quiet", quiet), ("during the index job", busy)):
        for kind, res in runs.items():
            split = ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in res["split_ms"].items())
            print(f"  {kind:9} {label:22}{res['qps']:10.1f}{res['p50_ms']:9.1f}{res['p99_ms']:9.1f}  {split}")
    up = busy["by_upload"]["split_ms"]
    if up:
        model = up.get("describe_ms", 0.0) - ref["decode_ms"]
        http = busy["by_upload"]["p50_ms"] - up.get("took_ms", 0.0)
        print(f"  by-upload split during the job: decode ~{ref['decode_ms']:.1f} ms (measured apart), model "
              f"~{model:.1f} ms, search {up.get('search_ms', 0):.1f} ms, metadata {up.get('metadata_ms', 0):.1f} ms, "
              f"HTTP+multipart ~{http:.1f} ms")
    print("reference, same run:")
    print(f"  in-process search by id p50 {ref['by_id_ms']:.2f} ms -> API/in-process "
          f"{busy['by_id']['p50_ms'] / ref['by_id_ms']:.2f}x (during the job), "
          f"{quiet['by_id']['p50_ms'] / ref['by_id_ms']:.2f}x (quiet)")
    print(f"  brute-force numpy by id p50 {ref['brute_ms']:.2f} ms -> FAISS in-process speed-up "
          f"{ref['brute_ms'] / ref['by_id_ms']:.2f}x")
    print(f"  in-process search by upload p50 {ref['upload_ms']:.1f} ms -> API/in-process "
          f"{busy['by_upload']['p50_ms'] / ref['upload_ms']:.2f}x (during the job)")
    peak = max(memory.root.rss, memory.root_hwm)
    print(f"server RSS: peak {peak / MIB:.0f} MiB (VmHWM; sampled every {memory.interval_s:.1f} s: "
          f"{memory.root.mib()}; the rest of it file pages: libraries, memory-mapped files), at the end "
          f"{rss_end[0] / MIB:.0f} MiB (anonymous {rss_end[1] / MIB:.0f})")
    for pid, child in memory.children.items():
        print(f"  its {child.label} {pid}: peak {max(child.hwm, child.peak.rss) / MIB:.0f} MiB (sampled "
              f"{child.peak.mib()})")
    print(f"  server + its child processes: peak of the sum {memory.total / MIB:.0f} MiB (sampled); sum of "
          f"each one's peak {(peak + sum(max(c.hwm, c.peak.rss) for c in memory.children.values())) / MIB:.0f} MiB")
    print(f"index job: {job['status']}, total {job['total']} = done {job['done']} + skipped {job['skipped']} "
          f"+ failed {job['failed']}; {job['message']}")
    errors = sum(len(r["errors"]) for runs in (quiet, busy) for r in runs.values())
    print(f"failed requests: {errors}")
    for name, value, target in (
        ("by-id p50 (during job)", busy["by_id"]["p50_ms"], TARGETS["by_id_p50_ms"]),
        ("by-upload p50 (during job)", busy["by_upload"]["p50_ms"], TARGETS["by_upload_p50_ms"]),
        ("server peak RSS MiB", peak / MIB, TARGETS["rss_mib"]),
    ):
        print(f"  target {name}: {value:.1f} <= {target:.0f}: {'met' if value <= target else 'MISSED'}")
    for problem in problems:
        print(f"  CHECK FAILED: {problem}")
    print("checks: " + ("all passed" if not problems and not errors else "FAILED"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/imsearch-bench-api", help="work folder (the collection is kept)")
    parser.add_argument("--real", type=int, default=300, help="real photos indexed for real")
    parser.add_argument("--vectors", type=int, default=100_000, help="total image vectors")
    parser.add_argument("--job-photos", type=int, default=150, help="photos the index job adds")
    parser.add_argument("--slice-seconds", type=float, default=3.0, help="during the job: alternate kinds this often")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="load duration of each kind before it")
    parser.add_argument("--clients", type=int, default=1, help="concurrent client connections")
    parser.add_argument("--server-set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="server settings (api/settings.py), e.g. malloc_mmap_threshold_mib=8 job_threads=2")
    parser.add_argument("--index-kind", default="auto", help="kind of the image index: auto (default), ivfpq, hnsw...")
    args = parser.parse_args()
    out = Path(args.out)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    build(data_dir, args.real, args.vectors)
    ensure_index_kind(data_dir, args.index_kind)
    _, sample_ids, uploads = real_photos(data_dir)
    engine = next((v for k, _, v in (i.partition("=") for i in args.server_set) if k == "model_engine"), "auto")
    ref = reference(data_dir, sample_ids, uploads, model_engine=engine)  # the server's engine: the ratio is HTTP's cost
    folder = job_folder(out, args.job_photos)
    proc, url = start_server(data_dir, out / "jobs", args.server_set)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        http = httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120)
        sampler.mark("start-up")
        load(url, "by_id", 2, 1, sample_ids, uploads)  # warm-up
        load(url, "by_upload", 5, 1, sample_ids, uploads)
        kinds = ("by_id", "by_upload")
        quiet = {k: summary(load(url, k, args.quiet_seconds, args.clients, sample_ids, uploads)) for k in kinds}
        sampler.mark("quiet searches")
        stats = http.get("/api/v1/stats").json()
        job_id = http.post("/api/v1/jobs", json={"path": str(folder)}).json()["id"]
        raw = {k: load(url, k, 0, 0, sample_ids, uploads) for k in kinds}
        while True:  # alternate short slices of each kind for as long as the job runs
            for kind in kinds:
                raw[kind] = merge(raw[kind], load(url, kind, args.slice_seconds, args.clients, sample_ids, uploads))
            if http.get(f"/api/v1/jobs/{job_id}").json()["finished"]:
                break
        busy = {k: summary(raw[k]) for k in kinds}
        deadline = time.monotonic() + 1800
        while not http.get(f"/api/v1/jobs/{job_id}").json()["finished"] and time.monotonic() < deadline:
            time.sleep(1.0)
        sampler.mark("searches during the job, job to its end")
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        problems = verify_job(http, job_id, folder, stats["images"])
        rss_end = sampler.sample()
    finally:
        sampler.done.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    report(stats, ref, quiet, busy, sampler, rss_end, job, problems)
    print("RSS peak per phase, server all / anonymous (server + children): " + ", ".join(
        f"{p.name} {p.root.rss / MIB:.0f} / {p.root.anon / MIB:.0f} ({p.total / MIB:.0f}) MiB" for p in sampler.phases
    ))


if __name__ == "__main__":
    main()
