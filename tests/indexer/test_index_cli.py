"""`imsearch index` end to end, as a user runs it: real photos, real subprocesses, SIGKILL, broken files."""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagefactory as f

REPO = Path(__file__).resolve().parents[2]
# a small model keeps these tests fast; it is still the real offline backbone
MODEL_FLAGS = ["--backbone", "efficientnet_lite0", "--max-side", "128", "--scales", "1"]


def _drop_file_override() -> None:
    """In the child: give up root's power to read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def imsearch(
    *args: str, data: Path, check: bool = True, honour_permissions: bool = False
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "indexer", *args, "--data-dir", str(data)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    preexec = _drop_file_override if honour_permissions and os.geteuid() == 0 else None
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, preexec_fn=preexec, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"imsearch {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def catalog_state(data: Path) -> tuple[list[tuple[str, int]], int, int]:
    """(sorted (path, image id) pairs, number of image vectors, FAISS image index size)."""
    con = sqlite3.connect(data / "catalog.db")
    try:
        files = sorted(con.execute("SELECT path, image_id FROM files").fetchall())
        vectors = con.execute("SELECT count(*) FROM vectors WHERE space = 'image'").fetchone()[0]
    finally:
        con.close()
    meta = (
        json.loads((data / "index" / "image" / "meta.json").read_text()) if (data / "index" / "image").exists() else {}
    )
    return files, vectors, int(meta.get("count", -1))


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, p in enumerate(f.real_photos(12, stride=331)):
        sub = root / p.parent.name
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, sub / f"{i:02d}.jpg")
    return root


def test_index_search_rerun_change_prune(tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "data"
    out = imsearch("index", str(photos), *MODEL_FLAGS, data=data).stdout
    assert "indexed 12" in out and "failed 0" in out
    query = sorted(photos.rglob("*.jpg"))[4]
    res = json.loads(imsearch("search", str(query), "-k", "3", "--json", data=data).stdout)
    assert res["hits"][0]["path"] == str(query) and res["hits"][0]["score"] > 0.999
    again = imsearch("index", str(photos), data=data).stdout  # no model flags: the collection's own model
    assert "indexed 0" in again and "unchanged 12" in again
    # a changed file is re-indexed: its old content is gone, the new one found
    changed = sorted(photos.rglob("*.jpg"))[0]
    Image.open(sorted(photos.rglob("*.jpg"))[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    out = imsearch("index", str(photos), data=data).stdout
    assert "indexed 1" in out and "unchanged 11" in out
    res = json.loads(imsearch("search", str(changed), "-k", "1", "--json", data=data).stdout)
    assert res["hits"][0]["path"] == str(changed) and res["hits"][0]["score"] > 0.999
    files, vectors, faiss_count = catalog_state(data)
    assert len(files) == 12 and vectors == 12 and faiss_count == 12
    # prune: a deleted file (and its image) leaves the index
    sorted(photos.rglob("*.jpg"))[2].unlink()
    out = imsearch("index", str(photos), "--prune", data=data).stdout
    assert "pruned 1" in out
    files, vectors, faiss_count = catalog_state(data)
    assert len(files) == 11 and vectors == 11 and faiss_count == 11
    stats = json.loads(imsearch("stats", "--json", data=data).stdout)
    assert stats["images"] == 11 and stats["index"]["image"]["size"] == 11
    sheet = tmp_path / "sheet.png"
    imsearch("search", str(query), "-k", "4", "--show", str(sheet), data=data)
    assert Image.open(sheet).size[0] > 400


def test_duplicates_are_recorded_not_reindexed(tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "data"
    first = sorted(photos.rglob("*.jpg"))[0]
    shutil.copy(first, photos / "copy_of_first.jpg")
    out = imsearch("index", str(photos), *MODEL_FLAGS, data=data).stdout
    assert "indexed 12" in out and "duplicates 1" in out
    files, vectors, _ = catalog_state(data)
    assert len(files) == 13 and vectors == 12
    groups = json.loads(imsearch("duplicates", "--threshold", "0.99", "--json", data=data).stdout)
    assert groups == [] or all(len(g["image_ids"]) >= 2 for g in groups)


def test_sigkill_at_random_points_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(f.real_photos(40, stride=113)):
        shutil.copy(p, photos / f"{i:02d}_{p.name}")
    clean = tmp_path / "clean"
    imsearch("index", str(photos), *MODEL_FLAGS, "--no-progress", data=clean)
    killed = tmp_path / "killed"
    rng = random.Random(1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for attempt in range(4):
        flags = MODEL_FLAGS if attempt == 0 else []
        cmd = [
            sys.executable,
            "-m",
            "indexer",
            "index",
            str(photos),
            *flags,
            "--batch-size",
            "4",
            "--data-dir",
            str(killed),
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    imsearch("index", str(photos), data=killed)
    assert catalog_state(killed) == catalog_state(clean)
    assert catalog_state(clean)[1] == 40


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(f.real_photos(80, stride=89)):
        shutil.copy(p, photos / f"{i:02d}.jpg")
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "index",
        str(photos),
        *MODEL_FLAGS,
        "--batch-size",
        "2",
        "--commit-every",
        "4",
        "--data-dir",
        str(data),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # interrupt once indexing is under way
        try:
            if catalog_state(data)[1] > 0:
                break
        except sqlite3.Error:  # not created yet
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # interrupted: what was in flight is written, the rest left for later
    files, vectors, faiss_count = catalog_state(data)
    assert vectors == faiss_count == len({i for _, i in files})  # consistent, index saved
    assert "interrupted" in out and 0 < vectors < 80
    rest = imsearch("index", str(photos), data=data).stdout
    assert f"indexed {80 - vectors}" in rest and f"unchanged {vectors}" in rest


def test_broken_files_are_reported_and_good_files_indexed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    odd = f.odd_files(photos)
    locked = photos / "locked.jpg"
    shutil.copy(f.real_photos(1)[0], locked)
    locked.chmod(0)
    data = tmp_path / "data"
    # root reads any file: the child gives up that power so that permissions matter
    proc = imsearch("index", str(photos), *MODEL_FLAGS, data=data, honour_permissions=True)
    out = proc.stdout
    good = [name for name, (_, ok) in odd.items() if ok]
    bad = [name for name, (_, ok) in odd.items() if not ok]
    assert f"indexed {len(good)}" in out, out
    assert f"failed {len(bad) + 1}" in out, out
    reasons = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not a recognized image format",
        "bomb.png": "over the limit",
        "locked.jpg": "permission denied",
    }
    for name, reason in reasons.items():
        assert any(name in line and reason in line for line in out.splitlines()), (name, out)
    report = next((data / "reports").glob("index-*.tsv")).read_text()
    assert all(name in report for name in reasons)
    _files, vectors, faiss_count = catalog_state(data)
    assert vectors == faiss_count == len(good)
    # unchanged broken files are not retried; the summary says so
    again = imsearch("index", str(photos), data=data, honour_permissions=True).stdout
    assert "indexed 0" in again and "failed before" in again


def test_reindex_with_another_model_swaps_atomically(tmp_path: Path, photos: Path) -> None:
    data = tmp_path / "data"
    imsearch("index", str(photos), *MODEL_FLAGS, data=data)
    before = json.loads(imsearch("stats", "--json", data=data).stdout)
    query = sorted(photos.rglob("*.jpg"))[3]
    out = imsearch(
        "reindex", "--backbone", "efficientnet_lite0", "--max-side", "160", "--scales", "1", data=data
    ).stdout
    assert "re-indexed 12 images" in out and "index rebuilt: 12 images" in out
    after = json.loads(imsearch("stats", "--json", data=data).stdout)
    assert after["model_fingerprint"] != before["model_fingerprint"] and "max side 160" in after["model"]
    assert after["images"] == 12 and after["index"]["image"]["size"] == 12
    res = json.loads(imsearch("search", str(query), "-k", "1", "--json", data=data).stdout)
    assert res["hits"][0]["path"] == str(query) and res["hits"][0]["score"] > 0.999
    # a missing file stops the swap (nothing changes) unless --drop-missing
    sorted(photos.rglob("*.jpg"))[0].unlink()
    failed = imsearch(
        "reindex", "--backbone", "efficientnet_lite0", "--max-side", "192", "--scales", "1", data=data, check=False
    )
    assert failed.returncode == 1 and "cannot be read again" in failed.stderr
    assert json.loads(imsearch("stats", "--json", data=data).stdout)["model_fingerprint"] == after["model_fingerprint"]
    out = imsearch(
        "reindex", "--backbone", "efficientnet_lite0", "--max-side", "192", "--scales", "1", "--drop-missing", data=data
    ).stdout
    assert "1 dropped" in out and "index rebuilt: 11 images" in out
    # PCA-whitening learned from the collection itself, then swapped in the same way
    out = imsearch("reindex", "--learn-whitening", "--whiten-dim", "16", data=data).stdout
    assert "whitening learned from 11 images of the collection" in out and "index rebuilt: 11 images" in out
    stats = json.loads(imsearch("stats", "--json", data=data).stdout)
    assert stats["dim"] == 16 and "whitened to 16" in stats["model"]
    res = json.loads(imsearch("search", str(query), "-k", "1", "--json", data=data).stdout)
    assert res["hits"][0]["path"] == str(query) and res["hits"][0]["score"] > 0.999


def _naive_descriptor(path: Path, max_side: int, scales: tuple[float, ...]) -> np.ndarray:
    """Decode (as the pipeline does: JPEG detail beyond the largest input skipped), resize, float32
    forward one image at a time, sum over scales in float64, L2."""
    import torch

    from retrieval.imageio import decode_image
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.models.extract import input_size

    model = DescriptorModel.create("efficientnet_lite0", max_side=max_side, scales=scales)
    decoded = decode_image(path, max_side=round(max_side * max(scales)))
    img = Image.fromarray(decoded.pixels)
    width, height = decoded.original_size  # input sizes follow the photo's own size
    total = np.zeros(model.meta.dim, dtype=np.float64)
    for scale in scales:
        size = input_size(width, height, max_side, scale, model.meta.stride)
        x = torch.from_numpy(np.asarray(img.resize(size, Image.Resampling.BILINEAR)).copy()).permute(2, 0, 1)[None]
        with torch.inference_mode():
            total += model(x)[0].double().numpy()
    return total / np.linalg.norm(total)


def test_the_vectors_written_are_the_naive_references_descriptors(tmp_path: Path) -> None:
    """The whole pipeline (reader, hashing, decode workers, model threads, scales summed, writer):
    what it stores for each file is that file's own descriptor."""
    photos = tmp_path / "photos"
    photos.mkdir()
    chosen = f.real_photos(10, stride=173)
    for i, p in enumerate(chosen):
        shutil.copy(p, photos / f"{i:02d}.jpg")
    data = tmp_path / "data"
    flags = ["--backbone", "efficientnet_lite0", "--max-side", "128", "--scales", "1", "0.5", "--batch-size", "3"]
    out = imsearch("index", str(photos), *flags, "--no-progress", data=data).stdout
    assert "indexed 10" in out, out
    con = sqlite3.connect(data / "catalog.db")
    try:
        rows = con.execute(
            "SELECT f.path, v.data FROM files f JOIN vectors v ON v.image_id = f.image_id AND v.space = 'image'"
        ).fetchall()
    finally:
        con.close()
    stored = {Path(path).name: np.frombuffer(blob, dtype="<f4") for path, blob in rows}
    assert len(stored) == 10
    wants = np.stack([_naive_descriptor(p, 128, (1.0, 0.5)) for p in chosen])
    for i, p in enumerate(chosen):
        cos = wants @ stored[f"{i:02d}.jpg"].astype(np.float64)
        # bf16 on CPU: ~1e-4 from float32 where bf16 is emulated, ~5e-4 on CPUs with native bf16 (AVX512-BF16)
        assert cos[i] > 0.999, p
        assert int(np.argmax(cos)) == i and np.sort(cos)[-2] < cos[i] - 0.01, p  # its own, by a clear margin
