"""Collection: catalog + FAISS + model on SQLite and PostgreSQL; restarts, model identity, crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.collection import Collection
from retrieval.errors import CatalogError, ModelMismatchError
from retrieval.filters import SearchFilter
from retrieval.models.descriptor import DescriptorModel
from retrieval.search import SearchEngine
from retrieval.store import catalog
from tests.retrieval.collection_data import synthetic_images, tiny_model

REPO = Path(__file__).resolve().parents[2]


def _ids(collection: Collection, space: str = "image") -> tuple[np.ndarray, np.ndarray]:
    return collection.read(catalog.vector_ids, space=space), collection.index_ids(space)


def test_add_remove_readd_and_restart(tmp_path: Path, catalog_url: str) -> None:
    images = synthetic_images(60)
    with Collection.open(tmp_path / "c", db_url=catalog_url, model=tiny_model()) as col:
        ids = col.write(images[:40])
        assert len(set(ids.tolist())) == 40 and col.count("image") == 40
        assert col.count("region") == 40
        col.write(images[40:])
        assert col.remove_images(ids[:10]) == 10
        assert col.count("image") == 50 and col.count("region") == 50
        col.write(images[:5])  # re-add without a rebuild
        cat, idx = _ids(col)
        assert np.array_equal(cat, idx) and len(idx) == 55
        before = col.search("image", images[7].descriptor[None], 5)
    with Collection.open(tmp_path / "c", db_url=catalog_url) as col:  # restart: same content, same results
        cat, idx = _ids(col)
        assert np.array_equal(cat, idx) and len(idx) == 55
        after = col.search("image", images[7].descriptor[None], 5)
        assert np.array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0], atol=1e-6)
        cat_r, idx_r = _ids(col, "region")
        assert np.array_equal(cat_r, idx_r) and len(idx_r) == 55


def test_filters_return_exactly_k_when_k_exist(tmp_path: Path, catalog_url: str) -> None:
    images = synthetic_images(200, label_every=10)  # 20 dogs
    with Collection.open(tmp_path / "c", db_url=catalog_url, model=tiny_model()) as col:
        col.write(images)
        engine = SearchEngine(col)
        dogs = SearchFilter(labels_any=("dog",))
        for k in (1, 5, 20):
            vec = images[3].descriptor  # a cat: its nearest neighbours are mostly cats
            _, ids = engine._vector_search(vec, k, engine._allowed("image", dogs), None, engine_rerank())
            assert len(ids) == k and (ids >= 0).all()
        _, ids = engine._vector_search(
            images[3].descriptor, 30, engine._allowed("image", dogs), None, engine_rerank()
        )
        assert (ids >= 0).sum() == 20  # only 20 exist: padded, never a cat
        dog_ids = {im.image_id for im in images[::10]}
        assert set(ids[ids >= 0].tolist()) == dog_ids
        none_dog = engine._allowed("image", SearchFilter(labels_none=("dog",)))
        assert none_dog is not None and len(none_dog) == 180


def engine_rerank():  # type: ignore[no-untyped-def]
    from retrieval.rerank import RerankOptions

    return RerankOptions()


def test_a_different_model_is_refused(tmp_path: Path) -> None:
    with Collection.open(tmp_path / "c", model=tiny_model()) as col:
        col.write(synthetic_images(3))
    other = DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))
    with pytest.raises(ModelMismatchError, match="max_side: 96 there vs 128 here"):
        Collection.open(tmp_path / "c", model=other)
    # and the one it was built with opens fine, without naming it
    with Collection.open(tmp_path / "c") as col:
        assert col.model.fingerprint == tiny_model().fingerprint


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with Collection.open(tmp_path / "c", model=tiny_model()) as col:
        col.write(synthetic_images(2))
        with pytest.raises(CatalogError, match="another imsearch process"):
            Collection.open(tmp_path / "c")
        reader = Collection.open(tmp_path / "c", writable=False)  # readers are welcome
        assert reader.count("image") == 2
        reader.close()


def test_a_corrupt_index_is_rebuilt_from_the_catalog(tmp_path: Path) -> None:
    with Collection.open(tmp_path / "c", model=tiny_model()) as col:
        col.write(synthetic_images(25))
    for f in (tmp_path / "c" / "index" / "image").iterdir():
        if f.is_file():
            f.write_bytes(b"garbage")
    with Collection.open(tmp_path / "c") as col:
        cat, idx = _ids(col)
        assert np.array_equal(cat, idx) and len(idx) == 25


def _child(root: Path, db_url: str, mode: str, n: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.retrieval.crash_writer", str(root), db_url, mode, str(n)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def _kill_after(proc: subprocess.Popen[str], marker: str) -> list[str]:
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(marker):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return lines


def test_crash_after_catalog_commit_before_index_save(tmp_path: Path, catalog_url: str) -> None:
    root = tmp_path / "c"
    lines = _kill_after(_child(root, catalog_url, "catalog-first", 50), "COMMITTED 30")
    assert lines[-1] == "COMMITTED 30"  # batch 3 is in the catalog, the saved index has only 20
    with Collection.open(root, db_url=catalog_url) as col:
        cat, idx = _ids(col)
        assert len(cat) == 30 and np.array_equal(cat, idx)
        assert len(np.unique(idx)) == len(idx)


def test_crash_after_index_save_before_catalog_commit(tmp_path: Path, catalog_url: str) -> None:
    root = tmp_path / "c"
    with Collection.open(root, db_url=catalog_url, model=tiny_model()) as col:
        col.write(synthetic_images(10, prefix="kept"))
    _kill_after(_child(root, catalog_url, "index-first", 15), "INDEX-SAVED")
    with Collection.open(root, db_url=catalog_url) as col:
        cat, idx = _ids(col)
        assert len(cat) == 10 and np.array_equal(cat, idx)  # the uncommitted vectors are gone again


def test_random_kills_lose_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    url = f"sqlite:///{root / 'catalog.db'}"
    rng = random.Random(7)
    for _ in range(3):
        proc = _child(root, url, "catalog-first", 60)
        marker = f"{rng.choice(['COMMITTED', 'SAVED'])} {rng.choice([10, 20, 30])}"
        lines = _kill_after(proc, marker)
        committed = max(int(x.split()[1]) for x in lines if x.startswith("COMMITTED"))
        with Collection.open(root, db_url=url) as col:
            cat, idx = _ids(col)
            assert np.array_equal(cat, idx) and len(np.unique(idx)) == len(idx)
            assert len(cat) >= committed  # every committed batch survived (earlier runs may have added more)


def test_a_reader_sees_unsaved_writes_without_touching_the_writers_files(tmp_path: Path) -> None:
    with Collection.open(tmp_path / "c", model=tiny_model()) as writer:
        writer.write(synthetic_images(10, prefix="saved"))
        writer.save()
        writer.write(synthetic_images(5, prefix="unsaved"))  # in the catalog, not yet in the saved index
        files_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "index").rglob("*") if p.is_file()}
        with Collection.open(tmp_path / "c", writable=False) as reader:
            cat, idx = _ids(reader)
            assert len(idx) == 15 and np.array_equal(cat, idx)
        files_after = {p: p.stat().st_mtime_ns for p in (tmp_path / "c" / "index").rglob("*") if p.is_file()}
        assert files_after == files_before
        writer.write(synthetic_images(2, prefix="later"))  # the writer still owns its files
