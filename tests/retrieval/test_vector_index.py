"""FaissIndex against a float64 NumPy brute force, with real FAISS and seeded synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from faiss.contrib.datasets import SyntheticDataset

from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index import structures as vf
from retrieval.index.faiss_index import FaissIndex, SearchParams

DIM = 64
N = 12_000  # >= the ivfpq training minimum, so every kind builds its ANN structure
ANN_KINDS = ["hnsw", "ivf", "ivfsq", "ivfpq", "PCA32,IVF64,SQ8"]  # + a factory string with a pre-transform
KINDS = ["flat", *ANN_KINDS]
FORCE_FAISS = SearchParams(exact_below=0)
Data = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, database vectors, queries
Saved = dict[str, Path]  # filtered searches through the FAISS IDSelector path


def normalized(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture(scope="module")
def data() -> Data:
    ds = SyntheticDataset(DIM, 0, N, 60, seed=7)
    ids = np.random.default_rng(7).choice(2**62, size=N, replace=False).astype(np.int64)  # hash-like keys
    return ids, normalized(ds.get_database()), normalized(ds.get_queries())


@pytest.fixture(scope="module")
def saved(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """Each kind built once over the data set and saved; tests load private copies."""
    ids, xb, _ = data
    out = {}
    for kind in KINDS:
        index = FaissIndex(DIM, kind=kind)
        index.add(ids, xb)
        out[kind] = tmp_path_factory.mktemp("saved") / "index"
        index.save(out[kind])
        index.close()
    return out


def fresh(saved: Saved, kind: str) -> FaissIndex:
    return FaissIndex.load(saved[kind], mmap=False)  # RAM copy: free to mutate


def brute(
    xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference: top-k (scores, ids) over the rows where ``keep`` is True."""
    scores = xq.astype(np.float64) @ xb.astype(np.float64).T
    if keep is not None:
        scores[:, ~keep] = -np.inf
    if scores.shape[1] < k:
        scores = np.hstack([scores, np.full((scores.shape[0], k - scores.shape[1]), -np.inf)])
        ids = np.concatenate([ids, np.full(k, -1, dtype=np.int64)])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    return top, np.where(np.isfinite(top), ids[order], -1)


def assert_exact(
    result: tuple[np.ndarray, np.ndarray],
    xb: np.ndarray,
    ids: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    keep: np.ndarray | None = None,
) -> None:
    """``result`` (scores, ids) is the exact top-k: scores match the reference and each id has its score."""
    scores, found = result
    ref_D, ref_I = brute(xb, ids, xq, k, keep)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (xq.shape[0], k)
    np.testing.assert_array_equal(found < 0, ref_I < 0)
    np.testing.assert_allclose(np.where(found < 0, 0, scores), np.where(ref_I < 0, 0, ref_D), atol=1e-5)
    assert np.all(scores[found < 0] == -np.inf)
    row_of = {int(i): r for r, i in enumerate(ids)}
    for q in range(xq.shape[0]):
        got = [int(i) for i in found[q] if i >= 0]
        assert len(set(got)) == len(got)
        true = [float(xb[row_of[i]].astype(np.float64) @ xq[q].astype(np.float64)) for i in got]
        np.testing.assert_allclose(true, ref_D[q, : len(got)], atol=1e-5)  # ties may swap ids, not scores


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, ref, strict=True)]))


# ---------------------------------------------------------------------- search results
def test_flat_search_equals_float64_brute_force(data: Data, saved: Saved) -> None:
    ids, xb, xq = data
    index = fresh(saved, "flat")
    scores, found = index.search(xq, 10)
    assert_exact((scores, found), xb, ids, xq, 10)
    assert index.factory == "IDMap2,Flat"


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_ann_kinds_reach_recall(data: Data, saved: Saved, kind: str) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    assert index.factory != vf.FLAT  # the ANN structure was trained
    _, found = index.search(xq, 10)
    assert (found >= 0).all()
    assert recall(found, brute(xb, ids, xq, 10)[1]) >= 0.9


@pytest.mark.parametrize("params", [FORCE_FAISS, None], ids=["faiss-selector", "default"])
@pytest.mark.parametrize("kind", KINDS)
def test_filtered_search_returns_k_allowed(data: Data, saved: Saved, kind: str, params: SearchParams | None) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    rng = np.random.default_rng(1)
    allowed = rng.choice(ids, size=N // 10, replace=False)
    with_unknown = np.concatenate([allowed, [7, 8, 2**62 + 5]])  # ids the index never saw are ignored
    scores, found = index.search(xq, 10, allowed_ids=with_unknown, params=params)
    assert (found >= 0).all() and np.isin(found, allowed).all()
    keep = np.isin(ids, allowed)
    if kind == "flat" or params is None:  # exact (flat, or a 1,200-id selection below exact_below)
        assert_exact((scores, found), xb, ids, xq, 10, keep=keep)
    else:
        assert recall(found, brute(xb, ids, xq, 10, keep)[1]) >= 0.9


@pytest.mark.parametrize("params", [FORCE_FAISS, None], ids=["faiss-selector", "default"])
@pytest.mark.parametrize("kind", KINDS)
def test_filtered_search_pads_when_fewer_allowed(
    data: Data, saved: Saved, kind: str, params: SearchParams | None
) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    allowed = ids[[3, 500, 4000, 9000, 11_999]]
    scores, found = index.search(xq[:8], 10, allowed_ids=allowed, params=params)
    assert_exact((scores, found), xb, ids, xq[:8], 10, keep=np.isin(ids, allowed))
    assert (found[:, 5:] == -1).all() and (scores[:, 5:] == -np.inf).all()
    _, found = index.search(xq[:2], 3, allowed_ids=np.array([1, 2, 3]))  # nothing allowed is stored
    assert (found == -1).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_exclude_ids(data: Data, saved: Saved, kind: str) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    _, first = index.search(xq, 1)
    scores, found = index.search(xq[:1], 10, exclude_ids=first[0], params=SearchParams(exact_below=N))
    assert first[0, 0] not in found
    assert_exact((scores, found), xb, ids, xq[:1], 10, keep=~np.isin(ids, first[0]))


def test_k_larger_than_collection_pads(data: Data) -> None:
    ids, xb, xq = data
    index = FaissIndex(DIM, kind="flat")
    index.add(ids[:4], xb[:4])
    scores, found = index.search(xq[:3], 6)
    assert_exact((scores, found), xb[:4], ids[:4], xq[:3], 6)
    assert (found[:, 4:] == -1).all()
    scores, found = FaissIndex(DIM).search(xq[:2], 2)
    assert (found == -1).all() and np.isneginf(scores).all()


# ---------------------------------------------------------------------- mutations
@pytest.mark.parametrize("kind", KINDS)
def test_add_remove_readd(data: Data, saved: Saved, kind: str) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    gone = ids[::5]
    assert index.remove(np.concatenate([gone, [1, 2]])) == gone.size  # unknown ids are ignored
    assert index.remove(gone) == 0
    assert len(index) == N - gone.size
    keep = ~np.isin(ids, gone)
    np.testing.assert_array_equal(index.ids(), np.sort(ids[keep]))
    np.testing.assert_array_equal(index.contains(ids), keep)
    _, found = index.search(xq, 10)
    assert (found >= 0).all() and not np.isin(found, gone).any()
    if kind == "flat":
        assert_exact(index.search(xq, 10), xb[keep], ids[keep], xq, 10)
    # re-add two removed ids and replace two present ones, with new vectors
    new_ids = np.array([gone[0], gone[1], ids[1], ids[2]])
    new_vecs = normalized(np.random.default_rng(3).standard_normal((4, DIM)))
    index.add(new_ids, new_vecs)
    assert len(index) == N - gone.size + 2
    np.testing.assert_array_equal(index.reconstruct(new_ids), new_vecs)
    np.testing.assert_array_equal(index.reconstruct(ids[3:5]), xb[3:5])
    scores, found = index.search(new_vecs, 1)
    np.testing.assert_array_equal(found[:, 0], new_ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    scores, _ = index.search(xb[1:3], 1)
    assert (scores[:, 0] < 0.9999).all()  # the replaced vectors are gone


def test_reconstruct_and_contains(data: Data, saved: Saved) -> None:
    ids, xb, _ = data
    index = fresh(saved, "ivfpq")
    np.testing.assert_array_equal(index.reconstruct(ids[[5, 0, 5]]), xb[[5, 0, 5]])  # full precision
    assert index.contains([ids[0], 123]).tolist() == [True, False]
    with pytest.raises(VectorIndexError, match="not in the index"):
        index.reconstruct([123])


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(data: Data, saved: Saved, kind: str, mmap: bool, tmp_path: Path) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    index.model_info = {"backbone": "resnet50", "dim": DIM, "whitening": [1, 2]}
    allowed = ids[::7]
    before = [index.search(xq, 10), index.search(xq, 10, allowed_ids=allowed, params=FORCE_FAISS)]
    index.save(tmp_path / "ix")
    loaded = FaissIndex.load(tmp_path / "ix", mmap=mmap)
    after = [loaded.search(xq, 10), loaded.search(xq, 10, allowed_ids=allowed, params=FORCE_FAISS)]
    for (D0, I0), (D1, I1) in zip(before, after, strict=True):
        np.testing.assert_array_equal(I0, I1)
        np.testing.assert_allclose(D0, D1, atol=1e-6)
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids))
    np.testing.assert_array_equal(loaded.reconstruct(ids), xb)
    assert loaded.model_info == index.model_info and loaded.kind == kind and loaded.factory == index.factory
    assert (loaded.memory_usage()["vectors"] == 0) == mmap
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    assert meta["dim"] == DIM and meta["count"] == N and meta["format_version"] == 1


def test_on_disk_vectors_are_read_not_mapped(data: Data, tmp_path: Path) -> None:
    """After a save the full vectors are read with pread: any rows (runs, repeats, any order,
    rows appended since the save) come back exact, and the file is never mapped into the process
    (its pages stay in the page cache, out of the server's resident memory)."""
    ids, xb, xq = data
    index = FaissIndex(DIM, kind="ivfsq")
    index.add(ids[:8000], xb[:8000])
    index.save(tmp_path / "ix")
    index.add(ids[8000:], xb[8000:])  # appended to the file beyond the committed rows
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.integers(0, N, 300), np.arange(7990, 8010), [5, 5, 0, N - 1]])
    np.testing.assert_array_equal(index.reconstruct(ids[pick]), xb[pick])
    np.testing.assert_array_equal(index.reconstruct(ids), xb)  # one long run
    scores, found = index.search(xq, 10)  # re-ranked from the file
    rows = {int(i): r for r, i in enumerate(ids)}
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", xb[[[rows[int(i)] for i in q] for q in found]], xq),
                               atol=1e-5)
    maps = Path("/proc/self/maps")
    if maps.exists():
        vec_file = json.loads((tmp_path / "ix" / "meta.json").read_text())["files"]["vectors"]
        assert vec_file not in maps.read_text()
    index.close()


def test_incremental_save_and_compaction(data: Data, tmp_path: Path) -> None:
    ids, xb, xq = data
    d = tmp_path / "ix"
    index = FaissIndex(DIM, kind="ivf")
    index.add(ids[:6000], xb[:6000])
    index.save(d)
    index.add(ids[6000:], xb[6000:])  # appended to the memory-mapped vectors file
    index.remove(ids[:100])  # few holes: no compaction
    index.save(d)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["rows"] == N and meta["count"] == N - 100
    reloaded = FaissIndex.load(d)
    np.testing.assert_array_equal(reloaded.search(xq, 10)[1], index.search(xq, 10)[1])
    reloaded.remove(ids[100:4000])  # > 20 % holes: the next save compacts
    expected = reloaded.search(xq, 10)
    reloaded.save(d)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["rows"] == meta["count"] == N - 4000
    assert (d / meta["files"]["vectors"]).stat().st_size == (N - 4000) * DIM * 4
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == sorted(
        ["meta.json", *meta["files"].values()]
    )  # older generations collected
    for got in (reloaded.search(xq, 10), FaissIndex.load(d).search(xq, 10)):
        np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(FaissIndex.load(d).reconstruct(ids[4000:]), xb[4000:])


def test_hnsw_tombstones_are_rebuilt_on_save(data: Data, saved: Saved, tmp_path: Path) -> None:
    ids, xb, xq = data
    index = fresh(saved, "hnsw")
    index.remove(ids[: N // 3])
    _, found = index.search(xq, 10)
    assert not np.isin(found, ids[: N // 3]).any() and (found >= 0).all()
    index.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    assert meta["dead"] == 0 and meta["count"] == N - N // 3
    keep = slice(N // 3, None)
    _, found = FaissIndex.load(tmp_path / "ix").search(xq, 10)
    assert recall(found, brute(xb[keep], ids[keep], xq, 10)[1]) >= 0.9


def test_second_writer_is_refused(data: Data, tmp_path: Path) -> None:
    ids, xb, _ = data
    a = FaissIndex(DIM, kind="flat")
    a.add(ids[:100], xb[:100])
    a.save(tmp_path / "ix")
    b = FaissIndex.load(tmp_path / "ix")
    b.add(ids[100:200], xb[100:200])  # b now owns the directory until it saves
    with pytest.raises(VectorIndexError, match="another FaissIndex"):
        a.add(ids[200:300], xb[200:300])
    b.save(tmp_path / "ix")
    with pytest.raises(VectorIndexError, match="saved by another writer"):
        a.add(ids[200:300], xb[200:300])  # a's view of the directory is stale
    assert len(FaissIndex.load(tmp_path / "ix")) == 200


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from retrieval.index.faiss_index import FaissIndex
    directory, when = sys.argv[1], sys.argv[2]
    real_replace = os.replace
    def replace(src, dst):
        if when == "before-commit" and str(dst).endswith("meta.json"):
            os.kill(os.getpid(), signal.SIGKILL)  # all new files written, meta not yet replaced
        real_replace(src, dst)
        if when == "after-commit" and str(dst).endswith("meta.json"):
            os.kill(os.getpid(), signal.SIGKILL)  # committed, old generation not yet collected
    os.replace = replace
    index = FaissIndex.load(directory)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, index.dim)).astype(np.float32)
    index.add(np.arange(10**12, 10**12 + 3000), x / np.linalg.norm(x, axis=1, keepdims=True))
    index.remove(index.ids()[:4000])  # forces a compacting save (new vectors file)
    index.save(directory)
    """
)


@pytest.mark.parametrize(("when", "count"), [("before-commit", N), ("after-commit", N - 1000)])
def test_save_survives_a_crash(data: Data, saved: Saved, tmp_path: Path, when: str, count: int) -> None:
    ids, _, xq = data
    d = tmp_path / "ix"
    v1 = fresh(saved, "ivf")
    v1.save(d)
    v1.close()
    expected = v1.search(xq, 10)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(d), when], capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    loaded = FaissIndex.load(d)
    assert len(loaded) == count
    if when == "before-commit":
        np.testing.assert_array_equal(loaded.search(xq, 10)[1], expected[1])
        np.testing.assert_array_equal(loaded.ids(), np.sort(ids))
    loaded.add(ids[:1], xq[:1])
    loaded.save(d)  # writing over the leftovers works, and collects them
    assert len(FaissIndex.load(d)) == len(loaded)


def test_leftover_temp_files_do_not_break_loading(data: Data, saved: Saved, tmp_path: Path) -> None:
    _, _, xq = data
    d = tmp_path / "ix"
    v1 = fresh(saved, "flat")
    v1.save(d)
    (d / "meta.json.tmp").write_text('{"format": "imsearch-vector-index", "trunc')
    (d / "index-000099.faiss.tmp").write_bytes(b"\x00" * 100)
    (d / "vectors-000099.f32").write_bytes(b"\x01" * 1000)
    loaded = FaissIndex.load(d)
    np.testing.assert_array_equal(loaded.search(xq, 5)[1], v1.search(xq, 5)[1])
    loaded.save(d)
    assert not (d / "meta.json.tmp").exists() and not (d / "vectors-000099.f32").exists()


def _corrupt(d: Path, how: str) -> None:
    meta = json.loads((d / "meta.json").read_text())
    files = {k: d / v for k, v in meta["files"].items()}
    if how == "no-meta":
        (d / "meta.json").unlink()
    elif how == "bad-json":
        (d / "meta.json").write_text("{not json")
    elif how == "version":
        (d / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    elif how == "count":
        (d / "meta.json").write_text(json.dumps({**meta, "count": meta["count"] - 1}))
    elif how == "missing-file":
        files["rowids"].unlink()
    elif how == "short-vectors":
        with open(files["vectors"], "r+b") as f:
            f.truncate(100)
    elif how == "short-rowids":
        with open(files["rowids"], "r+b") as f:
            f.truncate(16)
    elif how == "garbage-index":
        files["index"].write_bytes(np.random.default_rng(0).bytes(5000))
    elif how == "truncated-index":
        data = files["index"].read_bytes()
        files["index"].write_bytes(data[: len(data) // 2])
    elif how == "mismatched-index":  # an index file over other rows, same size
        ids = np.fromfile(files["rowids"], dtype=np.int64)
        other = faiss.IndexIDMap2(faiss.IndexFlatIP(meta["dim"]))
        other.add_with_ids(np.zeros((ids.size, meta["dim"]), np.float32), np.arange(ids.size) + 5)
        faiss.write_index(other, str(files["index"]))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no-meta", "meta.json is missing"),
        ("bad-json", "unreadable"),
        ("version", "format version 99"),
        ("count", "disagrees"),
        ("missing-file", "missing"),
        ("short-vectors", "expected at least"),
        ("short-rowids", "row ids"),
        ("garbage-index", "cannot read FAISS index"),
        ("truncated-index", "cannot read FAISS index"),
        ("mismatched-index", "exactly the stored rows"),
    ],
)
def test_load_rejects_corrupt_directories(data: Data, tmp_path: Path, how: str, message: str) -> None:
    ids, xb, _ = data
    index = FaissIndex(DIM, kind="flat")
    index.add(ids[:500], xb[:500])
    index.save(tmp_path / "ix")
    index.close()
    _corrupt(tmp_path / "ix", how)
    with pytest.raises(VectorIndexError, match=message):
        FaissIndex.load(tmp_path / "ix")
    with pytest.raises(VectorIndexError, match="not a directory"):
        FaissIndex.load(tmp_path / "nothing-here")


# ---------------------------------------------------------------------- kinds and policy
def test_auto_switches_from_exact_to_ivfsq_at_50k() -> None:
    ds = SyntheticDataset(16, 0, 60_000, 40, seed=3)
    xb, xq = normalized(ds.get_database()), normalized(ds.get_queries())
    ids = np.arange(60_000, dtype=np.int64) * 7 + 11
    index = FaissIndex(16)
    index.add(ids[:49_999], xb[:49_999])
    assert index.factory == vf.FLAT and index.trained_size == 0
    index.add(ids[49_999:], xb[49_999:])  # crosses 50k: trained from the stored vectors
    assert index.factory == "IVF979,SQ8" and index.trained_size == 60_000
    assert index.memory_usage()["faiss"] < 60_000 * (16 + 8) * 1.2  # 1-byte codes + list ids
    scores, found = index.search(xq, 10)
    assert recall(found, brute(xb, ids, xq, 10)[1]) >= 0.9
    rows = {int(i): r for r, i in enumerate(ids)}
    exact = np.einsum("qkd,qd->qk", xb[[[rows[int(i)] for i in q] for q in found]], xq)
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked: exact scores, not 8-bit ones


def test_ivf_retrains_when_grown_4x() -> None:
    ds = SyntheticDataset(16, 0, 16_000, 40, seed=4)
    xb, xq = normalized(ds.get_database()), normalized(ds.get_queries())
    ids = np.arange(16_000, dtype=np.int64) * 3 + 1
    index = FaissIndex(16, kind="ivf")
    index.add(ids[:999], xb[:999])
    assert index.factory == vf.FLAT  # exact until trainable
    assert_exact(index.search(xq[:5], 10), xb[:999], ids[:999], xq[:5], 10)
    index.add(ids[999:1000], xb[999:1000])
    assert index.factory == "IVF25,Flat" and index.trained_size == 1000
    index.add(ids[1000:3999], xb[1000:3999])  # < 4 x 1000: same structure, vectors added to it
    assert index.factory == "IVF25,Flat"
    index.add(ids[3999:16_000], xb[3999:16_000])  # >= 4x: retrained with more lists
    assert index.factory == "IVF410,Flat" and index.trained_size == 16_000
    assert recall(index.search(xq, 10)[1], brute(xb, ids, xq, 10)[1]) >= 0.9
    index.remove(ids[:12_000])  # shrinking keeps the trained structure
    assert index.factory == "IVF410,Flat" and len(index) == 4000
    pq = FaissIndex(16, kind="ivfpq")
    pq.add(ids[:9999], xb[:9999])
    assert pq.factory == vf.FLAT
    pq.add(ids[9999:10_000], xb[9999:10_000])
    assert pq.factory == "IVF200,PQ4x8" and pq.trained_size == 10_000


def test_ivfpq_bytes_per_vector(data: Data, saved: Saved) -> None:
    ids, _, xq = data
    index = FaissIndex.load(saved["ivfpq"])  # vectors memory-mapped, on disk
    usage = index.memory_usage()
    nlist = vf.ivf_nlist(N, 2.0)
    m = vf.pq_m(DIM, N, nlist)
    assert index.factory == f"IVF{nlist},PQ{m}x8" and m == 16
    assert usage["vectors"] == 0
    assert usage["id_map"] == N * (8 + 8 + 4)  # row -> id, sorted ids, their rows
    ivf = faiss.extract_index_ivf(index._structure.index)
    serialized = len(faiss.serialize_index(index._structure.index))
    assert abs(usage["faiss"] - serialized) < 0.01 * serialized  # the analytic count matches FAISS's own
    assert usage["faiss"] >= N * (m + 8) + nlist * DIM * 4 and ivf.code_size == m
    assert usage["bytes_per_vector"] <= 100
    _, found = index.search(xq, 10)  # re-ranks from the memory-mapped vectors
    assert (found >= 0).all() and np.isin(found, ids).all()
    # at the bench scale (1M x 512-d) the budget allows 64-byte codes and holds
    n, d = 1_000_000, 512
    nlist = vf.ivf_nlist(n, 2.0)
    assert vf.pq_m(d, n, nlist) == 64
    assert 64 + vf.PER_VECTOR_FIXED + (nlist * d * 4 + 256 * d * 4) / n <= 100


def test_unknown_kinds_and_gpu() -> None:
    with pytest.raises(UnknownNameError, match=r"valid index kinds: .*auto, flat, hnsw, ivf, ivfpq, ivfsq"):
        FaissIndex(8, kind="hsnw")
    with pytest.raises(VectorIndexError, match="invalid FAISS factory string"):
        FaissIndex(8, kind="IVF10,PQ3")  # 3 does not divide 8
    with pytest.raises(VectorIndexError, match="only supported in front of an IVF"):
        FaissIndex(8, kind="PCA4,HNSW8")
    if faiss.get_num_gpus() == 0:
        with pytest.raises(VectorIndexError, match="sees no GPU"):
            FaissIndex(8, gpu=True)
    assert FaissIndex(8, kind="HNSW8,Flat").factory == "HNSW8,Flat"


def test_validation_errors(data: Data) -> None:
    ids, xb, xq = data
    index = FaissIndex(DIM, kind="flat")
    bad_adds = [
        (ids[:2], xb[:2].astype(np.float64), "must be float32"),
        (ids[:1], xb[0], "must be 2-D"),
        (ids[:2], np.ascontiguousarray(xb[:2, :10]), "dimension 10 but the index has dimension 64"),
        (ids[:2], np.asfortranarray(xb[:2]), "C-contiguous"),
        (ids[:3], xb[:2], "3 ids for 2 vectors"),
        (np.array([1, 2, 1]), xb[:3], "more than once"),
        (np.array([-4, 2]), xb[:2], "non-negative"),
        (np.array([1.0, 2.0]), xb[:2], "must be integers"),
        (np.array([[1, 2]]), xb[:2], "must be 1-D"),
        (ids[:2], xb[:2].tolist(), "numpy float32 array"),
    ]
    for bad_ids, bad_x, message in bad_adds:
        with pytest.raises(VectorIndexError, match=message):
            index.add(bad_ids, bad_x)
    for value in (np.nan, np.inf):
        x = xb[:3].copy()
        x[1, 5] = value
        with pytest.raises(VectorIndexError, match="row 1 holds NaN or inf"):
            index.add(ids[:3], x)
    assert len(index) == 0  # nothing half-added
    index.add(ids[:10], xb[:10])
    bad_searches: list[tuple[dict[str, Any], str]] = [
        ({"k": 0}, "k must be an int >= 1"),
        ({"k": 2.5}, "k must be an int"),
        ({"k": 3, "allowed_ids": [-1]}, "non-negative"),
        ({"k": 3, "params": {"nprobe": 3}}, "must be a SearchParams"),
    ]
    for kwargs, message in bad_searches:
        with pytest.raises(VectorIndexError, match=message):
            index.search(xq[:2], **kwargs)
    bad_params: list[dict[str, Any]] = [{"nprobe": 0}, {"rerank": True}, {"filter_boost": 0.5}, {"exact_below": -1}]
    for bad in bad_params:
        with pytest.raises(VectorIndexError, match="SearchParams"):
            SearchParams(**bad)
    with pytest.raises(VectorIndexError, match="dim must be a positive int"):
        FaissIndex(0)
    with pytest.raises(VectorIndexError, match="model_info must be a dict"):
        index.model_info = ["resnet"]  # type: ignore[assignment]


# ---------------------------------------------------------------------- threads
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_searches_run_while_a_writer_adds_and_removes(data: Data, saved: Saved, kind: str) -> None:
    ids, xb, xq = data
    index = fresh(saved, kind)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                scores, found = index.search(xq[:5], 10, allowed_ids=ids[::3] if kind == "ivf" else None)
                assert (found >= 0).all() and np.isin(found, ids).all() and np.isfinite(scores).all()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            part = slice(i * 200, (i + 1) * 200)
            assert index.remove(ids[part]) == 200
            index.add(ids[part], xb[part])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(index) == N
    assert_exact(fresh(saved, "flat").search(xq[:3], 5), xb, ids, xq[:3], 5)
