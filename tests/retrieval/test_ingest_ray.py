"""The Ray runner on a local Ray instance (2 CPUs, started by the ``ray_local`` fixture), on real photos.

* it yields the catalog of the local pipeline: same ids and sha256, same files, cosine >= 0.9999
  per descriptor, same labels and regions with detection, and a broken file reported by name;
* a worker killed mid-run still ends with every file indexed exactly once;
* a driver killed with SIGKILL, then a re-run, ends identical to one clean run; a further
  re-run with nothing changed is a no-op.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from retrieval.collection import Collection
from retrieval.ingest import IndexOptions, IngestSettings, LocalIngest
from retrieval.ingest.ray_runner import RayIngest
from retrieval.models.descriptor import DescriptorModel
from retrieval.store import catalog
from tests.imagefactory import real_photos

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.pt"
    DescriptorModel.create("efficientnet_lite0", max_side=160, scales=(1.0, 0.7071)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real photos, one of them twice (a duplicate), and one broken file."""
    root = tmp_path_factory.mktemp("ray-photos")
    sources = real_photos(24, stride=131)
    for i, src in enumerate(sources):
        shutil.copy(src, root / f"p{i:02d}_{src.parent.name}.jpg")
    shutil.copy(sources[3], root / "zz_copy.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    return root


def _catalog(data_dir: Path) -> dict[str, Any]:
    with Collection.open(data_dir, writable=False, create=False) as col:
        ids = col.index_ids("image")
        images = {r.id: r for r in col.read(catalog.get_images, image_ids=ids) if r is not None}
        files = {f.path: f.image_id for i in ids for f in col.read(catalog.get_files, image_id=int(i))}
        labels = col.read(catalog.get_labels, image_ids=ids)
        regions = col.read(catalog.get_regions, image_ids=ids)
        return {
            "ids": ids.tolist(),
            "sha": {i: images[i].sha256 for i in images},
            "files": files,
            "vectors": dict(zip(ids.tolist(), col.reconstruct("image", ids), strict=True)),
            "labels": {i: sorted((lab.source, lab.label, lab.count) for lab in labs) for i, labs in labels.items()},
            "regions": sorted((r.image_id, r.label, tuple(round(v) for v in r.box)) for r in regions),
            "failures": sorted(f.path for f in col.read(catalog.list_failures, limit=100)),
        }


def _same(a: dict[str, Any], b: dict[str, Any], *, regions: bool = True) -> None:
    assert a["ids"] == b["ids"] and a["sha"] == b["sha"] and a["files"] == b["files"]
    for i in a["ids"]:
        cos = float(np.dot(a["vectors"][i], b["vectors"][i]))
        assert cos >= 0.9999, (i, cos)
    if regions:
        assert a["labels"] == b["labels"] and a["regions"] == b["regions"]
    assert a["failures"] == b["failures"]


def _local(photos: Path, data_dir: Path, model_file: Path, settings: IngestSettings) -> dict[str, Any]:
    with Collection.open(data_dir, model=model_file) as col:
        summary = LocalIngest.over(col, settings, options=IndexOptions(progress=False)).run([photos])
        assert summary.failed == 1 and summary.failures[0][0].endswith("broken.jpg")
    return _catalog(data_dir)


def test_ray_yields_the_local_catalog_with_detection(
    ray_local: Any, photos: Path, model_file: Path, tmp_path: Path
) -> None:
    settings = IngestSettings(detect=True, model_dir=str(MODELS), region_min_score=0.3, batch_size=8)
    local = _local(photos, tmp_path / "local", model_file, settings)
    assert local["regions"], "the detector found no object: the comparison would prove nothing"
    with Collection.open(tmp_path / "ray", model=model_file) as col:
        summary = RayIngest(col, settings, IndexOptions(progress=False), workers=2, batch_size=4).run([photos])
    assert summary.found == 26 and summary.indexed == 24 and summary.duplicates == 1
    [(path, why)] = summary.failures  # by name and reason, never the file's bytes
    assert Path(path).name == "broken.jpg" and why and "not a JPEG" not in why, summary.failures
    _same(local, _catalog(tmp_path / "ray"))


def _describe_actor_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        text = " ".join(proc.info.get("cmdline") or []) + " " + (proc.info.get("name") or "")
        if "_DescribeActor" in text or "MapWorker(MapBatches(_DescribeActor" in text:
            pids.append(int(proc.info["pid"]))
    return pids


def test_a_worker_killed_mid_run_still_indexes_every_file_once(
    ray_local: Any, photos: Path, model_file: Path, tmp_path: Path
) -> None:
    settings = IngestSettings(batch_size=4)
    local = _local(photos, tmp_path / "local", model_file, settings)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # kill one map worker as soon as one is describing
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            pids = _describe_actor_pids()
            if pids:
                time.sleep(1.0)  # let it load the model and take a batch
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        with Collection.open(tmp_path / "ray", model=model_file) as col:
            ray_run = RayIngest(col, settings, IndexOptions(progress=False, commit_every=2), workers=2, batch_size=2)
            summary = ray_run.run([photos])
    finally:
        stop.set()
        thread.join()
    assert killed, "no map worker was found to kill"
    assert summary.indexed + summary.duplicates == 25 and summary.failed == 1
    after = _catalog(tmp_path / "ray")
    _same(local, after, regions=False)
    assert len(after["files"]) == 25  # every readable file exactly once


def _rows(data_dir: Path) -> int:
    db = data_dir / "catalog.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("select count(*) from files").fetchone()[0])
    except sqlite3.Error:
        return 0


def _index_cmd(photos: Path, data_dir: Path, model_file: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "indexer", "index", str(photos), "--engine", "ray", "--ray-address", address,
        "--workers", "1", "--batch-size", "2", "--commit-every", "2", "--data-dir", str(data_dir),
        "--model", str(model_file), "--no-progress",
    ]


@pytest.fixture
def cluster_address(ray_local: Any) -> Iterator[str]:
    yield str(ray_local.get_runtime_context().gcs_address)


def test_driver_sigkill_then_rerun_equals_one_clean_run(
    cluster_address: str, photos: Path, model_file: Path, tmp_path: Path
) -> None:
    local = _local(photos, tmp_path / "local", model_file, IngestSettings())
    data_dir = tmp_path / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(_index_cmd(photos, data_dir, model_file, cluster_address), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _rows(data_dir) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r:.2000}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    partial = _rows(data_dir)
    assert 4 <= partial < 25, partial
    done = subprocess.run(_index_cmd(photos, data_dir, model_file, cluster_address), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same(local, _catalog(data_dir), regions=False)
    again = subprocess.run(_index_cmd(photos, data_dir, model_file, cluster_address), env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "indexed 0 " in again.stdout and "unchanged 25" in again.stdout, again.stdout
    _same(local, _catalog(data_dir), regions=False)
