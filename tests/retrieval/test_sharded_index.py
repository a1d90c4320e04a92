"""ShardedIndex (local threads and Ray actors) and bulk_build against the single FaissIndex, on
seeded synthetic vectors; shards repaired from the catalog through a real Collection."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faiss.contrib.datasets import SyntheticDataset

from retrieval.collection import Collection
from retrieval.errors import UnknownNameError, VectorIndexError
from retrieval.index import FaissIndex, SearchParams, ShardedIndex, bulk_build, create_index, load_index
from retrieval.index.merge import merge_results
from retrieval.index.shard_layout import LAYOUT, shard_dir, shard_of, splitmix64
from retrieval.store import catalog
from tests.retrieval.collection_data import synthetic_images, tiny_model

DIM = 64
N = 6_000  # 2,000 per shard at 3 shards: above the IVF training minimum, so every ANN kind trains
K = 10
ANN_KINDS = ["ivf", "ivfsq", "hnsw"]
FORCE_FAISS = SearchParams(exact_below=0)  # filtered searches through the FAISS selector, not brute force
REPO = Path(__file__).resolve().parents[2]
Data = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, database vectors, queries


def normalized(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@pytest.fixture(scope="module")
def data() -> Data:
    ds = SyntheticDataset(DIM, 0, N, 40, seed=11)
    ids = np.random.default_rng(11).choice(2**62, size=N, replace=False).astype(np.int64)
    return ids, normalized(ds.get_database()), normalized(ds.get_queries())


@pytest.fixture(scope="module")
def truth(data: Data) -> np.ndarray:
    ids, xb, xq = data
    scores = xq.astype(np.float64) @ xb.astype(np.float64).T
    return ids[np.argsort(-scores, axis=1, kind="stable")[:, :K]]


def built(kind: str, data: Data, shards: int = 1) -> Any:
    ids, xb, _ = data
    index = create_index(DIM, kind=kind, shards=shards)
    index.add(ids, xb)
    return index


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, ref, strict=True)]))


def assert_same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


# ---------------------------------------------------------------------- hash and merge
def _splitmix64_reference(x: int) -> int:
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_ids_hash_to_shards_by_splitmix64_and_spread_evenly() -> None:
    ids = np.array([0, 1, 2, 12345, 2**62 + 7, 2**63 - 1], dtype=np.int64)
    assert [int(v) for v in splitmix64(ids)] == [_splitmix64_reference(int(i)) for i in ids]
    sequential = np.arange(0, 40_000, 4, dtype=np.int64)  # correlated keys: id % 4 would put all in shard 0
    counts = np.bincount(shard_of(sequential, 4), minlength=4)
    assert counts.min() > 0.9 * sequential.size / 4
    assert np.array_equal(shard_of(sequential, 4), shard_of(sequential.copy(), 4))  # a function of the id alone


def test_merge_keeps_the_best_k_ties_by_id_padding_last() -> None:
    rng = np.random.default_rng(3)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    rows: list[list[tuple[float, int]]] = [[] for _ in range(4)]
    next_id = 0
    for width in (5, 0, 7, 3):
        scores = rng.choice([0.1, 0.5, 0.5, 0.9], size=(4, width)).astype(np.float32)
        ids = np.arange(next_id, next_id + 4 * width, dtype=np.int64).reshape(4, width)[:, ::-1].copy()
        next_id += 4 * width
        if width:
            ids[:, -1], scores[:, -1] = -1, -np.inf  # padding inside a block
        parts.append((scores, ids))
        for q in range(4):
            rows[q] += [(-float(s), int(i)) for s, i in zip(scores[q], ids[q], strict=True) if i >= 0]
    D, I = merge_results(parts, 4, 12)
    for q in range(4):
        want = sorted(rows[q])[:12]
        assert I[q].tolist() == [i for _, i in want] + [-1] * (12 - len(want))
        np.testing.assert_allclose(D[q, : len(want)], [-s for s, _ in want])
        assert np.all(D[q, len(want) :] == -np.inf)


# ---------------------------------------------------------------------- search: sharded vs single
@pytest.mark.parametrize("shards", [2, 3])
def test_exact_kind_gives_identical_top_k(data: Data, shards: int) -> None:
    ids, _, xq = data
    single, sharded = built("flat", data), built("flat", data, shards)
    assert isinstance(sharded, ShardedIndex) and sharded.n_shards == shards
    assert sum(sharded.shard_sizes()) == len(sharded) == N and min(sharded.shard_sizes()) > N / shards * 0.9
    assert_same(sharded.search(xq, K), single.search(xq, K))
    allowed = ids[::7]
    exclude = ids[::21]
    assert_same(
        sharded.search(xq, K, allowed_ids=allowed, exclude_ids=exclude),
        single.search(xq, K, allowed_ids=allowed, exclude_ids=exclude),
    )
    assert_same(sharded.search(xq[:3], 50, exclude_ids=ids[:100]), single.search(xq[:3], 50, exclude_ids=ids[:100]))


def test_ties_go_to_the_smaller_id_in_both(data: Data) -> None:
    ids, xb, _ = data
    x = xb[:400].copy()
    x[50:80] = x[50]  # 30 identical vectors spread over the shards: ties across shards
    order = np.random.default_rng(5).permutation(400)  # insertion order unrelated to the ids
    single, sharded = create_index(DIM, kind="flat"), create_index(DIM, kind="flat", shards=3)
    for index in (single, sharded):
        index.add(ids[:400][order], x[order])
    for k in (5, 30, 40):  # the tie group cut at the k-th place, whole, and followed by others
        s_res, m_res = single.search(x[50:51], k), sharded.search(x[50:51], k)
        assert_same(m_res, s_res)
        tied = np.sort(ids[50:80])[: min(k, 30)]
        assert m_res[1][0, : min(k, 30)].tolist() == tied.tolist()


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_ann_kinds_recall_within_0_01_of_the_single_index(data: Data, truth: np.ndarray, kind: str) -> None:
    _, _, xq = data
    single, sharded = built(kind, data), built(kind, data, 3)
    assert "IDMap2,Flat" not in sharded.factory  # every shard trained its ANN structure
    assert "shards x" in sharded.factory and sharded.trained_size in (0, N)
    r_single = recall(single.search(xq, K)[1], truth)
    r_sharded = recall(sharded.search(xq, K)[1], truth)
    assert r_single >= 0.9 and r_sharded >= r_single - 0.01
    sharded.retrain()  # every shard rebuilt from its stored vectors: as good as before
    assert recall(sharded.search(xq, K)[1], truth) >= r_single - 0.01


@pytest.mark.parametrize("params", [FORCE_FAISS, None], ids=["faiss-selector", "default"])
@pytest.mark.parametrize("kind", ["flat", "ivfsq", "hnsw"])
def test_filtered_search_returns_exactly_k_when_k_exist(data: Data, kind: str, params: SearchParams | None) -> None:
    ids, _, xq = data
    sharded = built(kind, data, 3)
    rng = np.random.default_rng(2)
    for size in (12, 300, 3000):
        allowed = rng.choice(ids, size=size, replace=False)
        with_unknown = np.concatenate([allowed, [5, 2**62 + 9]])  # unknown ids are ignored
        D, I = sharded.search(xq, K, allowed_ids=with_unknown, params=params)
        assert (I >= 0).all() and np.isin(I, allowed).all() and np.isfinite(D).all()
    few = ids[[3, 99, 1000, 4000, 5999]]  # fewer than k exist: all of them, then padding
    D, I = sharded.search(xq, K, allowed_ids=few, exclude_ids=few[:1], params=params)
    assert (np.sort(I[:, :4], axis=1) == np.sort(few[1:])).all() and (I[:, 4:] == -1).all()
    assert np.all(D[:, 4:] == -np.inf)


def test_remove_and_readd(data: Data) -> None:
    ids, xb, xq = data
    sharded = built("flat", data, 3)
    before = sharded.search(xq, K)
    gone = ids[::3]
    assert sharded.remove(np.concatenate([gone, [12345]])) == gone.size
    assert len(sharded) == N - gone.size and not sharded.contains(gone).any()
    assert not np.isin(sharded.search(xq, K)[1], gone).any()
    assert np.array_equal(sharded.ids(), np.sort(np.setdiff1d(ids, gone)))
    sharded.add(gone, np.ascontiguousarray(xb[::3]))
    assert len(sharded) == N and np.array_equal(sharded.ids(), np.sort(ids))
    assert_same(sharded.search(xq, K), before)
    np.testing.assert_array_equal(sharded.reconstruct(ids[[5, 0, 4000]]), xb[[5, 0, 4000]])
    sharded.add(ids[:2], xb[2:4])  # replace in place: still one copy each
    assert len(sharded) == N and np.array_equal(sharded.reconstruct(ids[:2]), xb[2:4])
    with pytest.raises(VectorIndexError, match="not in the index"):
        sharded.reconstruct(np.array([7], dtype=np.int64))


# ---------------------------------------------------------------------- persistence
def test_save_load_round_trip(data: Data, tmp_path: Path) -> None:
    ids, _, xq = data
    sharded = built("ivfsq", data, 3)
    sharded.model_info = {"fingerprint": "abc", "dim": DIM}
    before = sharded.search(xq, K)
    sharded.save(tmp_path / "ix")
    layout = json.loads((tmp_path / "ix" / LAYOUT).read_text())
    assert layout["shards"] == 3 and layout["kind"] == "ivfsq" and layout["hash"] == "splitmix64"
    assert layout["model"] == {"fingerprint": "abc", "dim": DIM}
    for i in range(3):  # every shard is a FaissIndex directory of its own ids
        shard = FaissIndex.load(shard_dir(tmp_path / "ix", i))
        assert (shard_of(shard.ids(), 3) == i).all() and shard.model_info["fingerprint"] == "abc"
        shard.close()
    sharded.close()
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, ShardedIndex) and loaded.n_shards == 3 and loaded.model_info["fingerprint"] == "abc"
    assert loaded.factory == sharded.factory and np.array_equal(loaded.ids(), np.sort(ids))
    assert_same(loaded.search(xq, K), before)
    usage = loaded.memory_usage()
    assert usage["total"] > 0 and 0 < usage["bytes_per_vector"] < DIM * 4
    loaded.add(np.array([1, 2], dtype=np.int64), np.ascontiguousarray(data[1][:2]))  # saved in place again
    loaded.save(tmp_path / "ix")
    loaded.close()
    assert len(load_index(tmp_path / "ix", mmap=False)) == N + 2


def test_a_missing_or_corrupt_shard_starts_empty(
    data: Data, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sharded = built("flat", data, 3)
    sharded.save(tmp_path / "ix")
    sizes = sharded.shard_sizes()
    sharded.close()
    shutil.rmtree(shard_dir(tmp_path / "ix", 1))
    for f in shard_dir(tmp_path / "ix", 2).iterdir():
        if f.name.startswith("index-"):
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="retrieval.index.sharded"):
        loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, ShardedIndex) and loaded.shard_sizes() == [sizes[0], 0, 0]
    assert "shard 1" in caplog.text and "missing" in caplog.text and "shard 2" in caplog.text


def test_factory_errors_say_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="valid index placements: local, ray"):
        create_index(DIM, shards=2, placement="cluster")
    with pytest.raises(UnknownNameError, match=r"valid index kinds: .*flat"):
        create_index(DIM, kind="ivfs", shards=2)
    with pytest.raises(VectorIndexError, match="shards must be an int between 1"):
        create_index(DIM, shards=0)
    assert isinstance(create_index(DIM, shards=1), FaissIndex)
    with pytest.raises(VectorIndexError, match="no vector index at"):
        load_index(tmp_path)
    with pytest.raises(UnknownNameError, match="placement"):
        load_index(tmp_path, placement="gpu")


def test_ray_placement_without_ray_initialized_is_a_clear_error() -> None:
    code = "from retrieval.index import create_index; create_index(8, shards=2, placement='ray')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "Ray is not initialized: call ray.init()" in proc.stderr


# ---------------------------------------------------------------------- Collection: shards and repair
def _snapshot(col: Collection, images: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    q = np.stack([im.descriptor for im in images[:8]]).astype(np.float32)
    regions = col.reconstruct("region", col.index_ids("region")[:8])
    return [col.search("image", q, 5), col.search("region", regions, 5)]


def test_collection_repairs_one_shard_after_a_crash(tmp_path: Path) -> None:
    images = synthetic_images(60)
    with Collection.open(tmp_path / "clean", model=tiny_model(), shards=3) as col:
        col.write(images)
        clean = _snapshot(col, images)
    with Collection.open(tmp_path / "c", model=tiny_model(), shards=3) as col:
        col.write(images)
        assert col.index_info()["image"]["shards"] == 3 and col.index_info()["region"]["shards"] == 3
    shutil.rmtree(shard_dir(tmp_path / "c" / "index" / "image", 1))  # lost
    for f in shard_dir(tmp_path / "c" / "index" / "region", 0).iterdir():
        f.write_bytes(b"garbage")  # corrupt
    with Collection.open(tmp_path / "c") as col:
        assert col.index_info()["image"]["shards"] == 3
        for space in ("image", "region"):
            assert np.array_equal(col.read(catalog.vector_ids, space=space), col.index_ids(space))
            assert col.count(space) == 60
        for got, want in zip(_snapshot(col, images), clean, strict=True):
            assert_same(got, want)
    with Collection.open(tmp_path / "c") as col:  # the repair was saved
        assert col.count("image") == 60 and col.count("region") == 60


def test_collection_keeps_its_shard_count_and_rebuilds_on_a_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = synthetic_images(30)
    with Collection.open(tmp_path / "c", model=tiny_model(), shards=2) as col:
        col.write(images)
        before = _snapshot(col, images)
    with Collection.open(tmp_path / "c") as col:  # None: as saved
        assert col.index_info()["image"]["shards"] == 2
    with caplog.at_level(logging.WARNING, logger="retrieval.collection"), Collection.open(
        tmp_path / "c", shards=3
    ) as col:
        assert col.index_info()["image"]["shards"] == 3 and col.count("image") == 30
        for got, want in zip(_snapshot(col, images), before, strict=True):
            assert_same(got, want)
    assert "2 shard(s), 3 asked for" in caplog.text
    with Collection.open(tmp_path / "c", shards=1) as col:
        assert col.index_info()["region"]["shards"] == 1 and col.count("region") == 30
    assert (tmp_path / "c" / "index" / "image" / "meta.json").is_file()
    assert not (tmp_path / "c" / "index" / "image" / LAYOUT).exists()
    with pytest.raises(VectorIndexError, match="shards must be None or an int"):
        Collection.open(tmp_path / "c", shards=0)


# ---------------------------------------------------------------------- bulk build
def test_bulk_build_equals_adding_incrementally_exact(data: Data, tmp_path: Path) -> None:
    ids, xb, xq = data
    report = bulk_build(xb, ids, dim=DIM, kind="flat", shards=3, directory=tmp_path / "b", model_info={"m": 1})
    assert report.count == N and report.shards == 3 and report.trained_on == 0
    bulk = load_index(tmp_path / "b")
    assert isinstance(bulk, ShardedIndex) and bulk.model_info == {"m": 1}
    incremental = built("flat", data, 3)
    assert bulk.shard_sizes() == incremental.shard_sizes() == report.shard_sizes
    assert_same(bulk.search(xq, K), incremental.search(xq, K))
    assert_same(bulk.search(xq, K, allowed_ids=ids[::9]), incremental.search(xq, K, allowed_ids=ids[::9]))
    one = bulk_build(xb, ids, dim=DIM, kind="flat", directory=tmp_path / "one")
    assert one.shards == 1 and isinstance(load_index(tmp_path / "one"), FaissIndex)
    with pytest.raises(VectorIndexError, match="not empty"):
        bulk_build(xb, ids, dim=DIM, kind="flat", shards=3, directory=tmp_path / "b")


@pytest.mark.parametrize("kind", ["ivfsq", "hnsw"])
def test_bulk_build_recall_within_0_01_of_incremental(data: Data, truth: np.ndarray, tmp_path: Path, kind: str) -> None:
    ids, xb, xq = data
    np.save(tmp_path / "xb.npy", xb)
    source = np.load(tmp_path / "xb.npy", mmap_mode="r")  # a memory-mapped source, as for a large collection
    report = bulk_build(source, ids, dim=DIM, kind=kind, shards=3, directory=tmp_path / "b", sample=3000)
    assert report.trained_on == (3000 if kind == "ivfsq" else 0)
    bulk = load_index(tmp_path / "b")
    assert np.array_equal(bulk.ids(), np.sort(ids))
    if kind == "ivfsq":  # one coarse quantizer trained once, shared by every shard
        assert report.factory.startswith("IVF") and bulk.factory == f"3 shards x {report.factory}"
    r_bulk = recall(bulk.search(xq, K)[1], truth)
    r_incremental = recall(built(kind, data, 3).search(xq, K)[1], truth)
    assert r_bulk >= r_incremental - 0.01 and r_bulk >= 0.9
    bulk.add(ids[:5], xb[5:10])  # a bulk-built shard takes writes like any FaissIndex
    assert len(bulk) == N


# ---------------------------------------------------------------------- shards in Ray actors
@pytest.fixture(scope="module")
def small(data: Data) -> Data:
    ids, xb, xq = data
    return ids[:1500], np.ascontiguousarray(xb[:1500]), np.ascontiguousarray(xq[:10])


@pytest.mark.ray
def test_ray_shards_search_like_one_index(ray_local: Any, small: Data) -> None:
    ids, xb, xq = small
    single = create_index(DIM, kind="flat")
    single.add(ids, xb)
    remote = create_index(DIM, kind="flat", shards=2, placement="ray")
    try:
        assert isinstance(remote, ShardedIndex) and remote.placement == "ray"
        remote.add(ids, xb)
        assert len(remote) == 1500 and np.array_equal(remote.ids(), np.sort(ids))
        assert_same(remote.search(xq, K), single.search(xq, K))
        allowed = ids[::50]  # 30 allowed: exactly k come back
        D, I = remote.search(xq, K, allowed_ids=allowed)
        assert (I >= 0).all() and np.isin(I, allowed).all()
        assert_same((D, I), single.search(xq, K, allowed_ids=allowed))
        assert remote.remove(ids[:500]) == 500 and len(remote) == 1000
        assert not np.isin(remote.search(xq, K)[1], ids[:500]).any()
        remote.add(ids[:500], xb[:500])
        assert_same(remote.search(xq, K), single.search(xq, K))
        np.testing.assert_array_equal(remote.reconstruct(ids[[3, 1400]]), xb[[3, 1400]])
        with pytest.raises(VectorIndexError, match="not in the index"):  # errors in an actor arrive as they are
            remote.reconstruct(np.array([7], dtype=np.int64))
    finally:
        remote.close()


@pytest.mark.ray
def test_ray_and_local_shards_open_each_others_directories(ray_local: Any, small: Data, tmp_path: Path) -> None:
    ids, xb, xq = small
    local = create_index(DIM, kind="flat", shards=2)
    local.add(ids, xb)
    local.model_info = {"fingerprint": "f"}
    want = local.search(xq, K)
    local.save(tmp_path / "ix")
    local.close()
    remote = load_index(tmp_path / "ix", placement="ray")
    try:
        assert isinstance(remote, ShardedIndex) and remote.placement == "ray"
        assert remote.model_info == {"fingerprint": "f"}
        assert_same(remote.search(xq, K), want)
        remote.remove(ids[:10])
        remote.save(tmp_path / "ix")  # each actor saves its own shard directory
    finally:
        remote.close()
    again = load_index(tmp_path / "ix")
    assert isinstance(again, ShardedIndex) and len(again) == 1490
    again.close()
    shutil.rmtree(shard_dir(tmp_path / "ix", 0))
    broken = load_index(tmp_path / "ix", placement="ray")
    assert isinstance(broken, ShardedIndex)
    try:  # the missing shard starts empty in its actor, ready for repair
        in_shard_1 = int((shard_of(ids[10:], 2) == 1).sum())
        assert broken.shard_sizes() == [0, in_shard_1]
    finally:
        broken.close()


@pytest.mark.ray
def test_bulk_build_in_ray_tasks_equals_threads(ray_local: Any, data: Data, tmp_path: Path) -> None:
    ids, xb, xq = data
    by_ray = bulk_build(xb, ids, dim=DIM, kind="ivfsq", shards=2, directory=tmp_path / "r", use_ray=True)
    by_threads = bulk_build(xb, ids, dim=DIM, kind="ivfsq", shards=2, directory=tmp_path / "t", use_ray=False)
    assert by_ray.factory == by_threads.factory and by_ray.factory.startswith("IVF")
    assert by_ray.shard_sizes == by_threads.shard_sizes
    a, b = load_index(tmp_path / "r"), load_index(tmp_path / "t")
    assert_same(a.search(xq, K), b.search(xq, K))  # same trained quantizer, same shards: same index


def test_a_reader_repairs_a_sharded_index_in_memory(tmp_path: Path) -> None:
    """A writer saved 40 images then wrote 20 more without saving: a reader opens the sharded
    index and repairs a copy in memory, leaving the writer's files alone."""
    images = synthetic_images(60)
    writer = Collection.open(tmp_path / "c", model=tiny_model(), shards=2)
    try:
        writer.write(images[:40])
        writer.save()
        writer.write(images[40:])
        with Collection.open(tmp_path / "c", writable=False) as reader:
            assert reader.index_info()["image"]["shards"] == 2
            assert reader.count("image") == 60 and reader.count("region") == 60
            assert np.array_equal(reader.index_ids("image"), writer.index_ids("image"))
    finally:
        writer.close()
