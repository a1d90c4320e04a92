"""Concurrent use of one catalog: processes opening a fresh database at once, writers in parallel."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np
import sqlalchemy as sa

from retrieval.store import catalog
from retrieval.store.catalog import FileInfo
from retrieval.store.db import head_revision, open_database
from tests.retrieval.catalog_data import add_image, info, model_id


def _open_and_write(url: str, barrier: Any, results: Any, index: int) -> None:
    try:
        barrier.wait(timeout=60)
        with open_database(url) as db:
            with db.session() as s:
                add_image(s, f"proc-{index}", f"/proc/{index}.jpg")
            results.put((index, "ok", db.schema_revision()))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((index, "error", repr(exc)))


def test_processes_open_a_fresh_database_at_once(catalog_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_and_write, args=(catalog_url, barrier, results, i)) for i in range(n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == [(i, "ok", head_revision()) for i in range(n)]
    with open_database(catalog_url) as db, db.session(readonly=True) as s:
        assert s.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert catalog.stats(s).images == n


def test_concurrent_writers_lose_nothing(catalog_url: str) -> None:
    dbs = [open_database(catalog_url, busy_timeout_s=30), open_database(catalog_url, busy_timeout_s=30)]
    with dbs[0].session() as s:
        mid = model_id(s)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for batch in range(15):
                names = [f"w{w}-{batch}-{k}" for k in range(6)] + [f"shared-{batch}"]
                with dbs[w].session() as s:  # read first, then write: the indexer's pattern
                    assert catalog.get_file(s, path=f"/w/{names[0]}.jpg") is None
                    image_ids = catalog.upsert_images(s, images=[info(n, f"/w/{n}.jpg") for n in names])
                    files = [
                        FileInfo(path=f"/w/{n}.jpg", image_id=int(i), size_bytes=1, mtime_ns=w)
                        for n, i in zip(names, image_ids, strict=True)
                    ]
                    catalog.upsert_files(s, files=files)
                    vecs = np.full((len(names), 4), w, dtype=np.float32)
                    catalog.put_vectors(
                        s, space="image", ids=image_ids, image_ids=image_ids, vectors=vecs, model_id=mid
                    )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    try:
        assert errors == []
        with dbs[1].session(readonly=True) as s:
            st = catalog.stats(s)
            assert (st.images, st.files, st.vectors["image"]) == (2 * 15 * 6 + 15,) * 3
    finally:
        for db in dbs:
            db.dispose()
