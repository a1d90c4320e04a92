"""The metadata catalog on the real SQLite and PostgreSQL back ends (``catalog_url`` runs both).

``resolve_filter`` is tested in ``test_catalog_filter.py``, concurrent use in
``test_catalog_concurrency.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from retrieval.errors import CatalogError, NotFoundError
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, LabelStat, RegionInfo
from retrieval.store.db import Database, head_revision, open_database
from retrieval.store.tables import metadata
from tests.retrieval.catalog_data import add_image, info, model_id, sha

TABLES = {"meta", "models", "images", "files", "vectors", "regions", "labels", "failures", "jobs"}


# --------------------------------------------------------------------------- schema


def test_open_migrates_to_head_and_reopen_is_idempotent(catalog_url: str) -> None:
    db = open_database(catalog_url)
    try:
        assert db.schema_revision() == head_revision()
        assert set(sa.inspect(db.engine).get_table_names()) >= TABLES
        with db.session() as s:
            image_id = add_image(s, "a", "/p/a.jpg")
    finally:
        db.dispose()
    with open_database(catalog_url) as again:
        assert again.schema_revision() == head_revision()
        with again.session(readonly=True) as s:
            assert catalog.get_image(s, image_id=image_id) is not None
            assert s.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.filterwarnings("ignore:.*expression-based index:UserWarning")
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_tables_module_matches_the_migrations(catalog_db: Database) -> None:
    with catalog_db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_newer_schema_revision_is_a_clear_error(catalog_url: str) -> None:
    with open_database(catalog_url) as db, db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(CatalogError, match="newer imsearch"):
        open_database(catalog_url)


def test_bad_urls_are_clear_errors(tmp_path: Any) -> None:
    with pytest.raises(CatalogError, match="unsupported catalog database 'mysql'"):
        open_database("mysql://u@localhost/db")
    with pytest.raises(CatalogError, match="cannot parse"):
        open_database("not a url")
    with pytest.raises(CatalogError, match="psycopg 3"):
        open_database("postgresql+asyncpg://u@localhost/db")
    with pytest.raises(CatalogError, match="does not exist"):
        open_database(f"sqlite:///{tmp_path / 'missing' / 'catalog.db'}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        open_database(f"sqlite:///{garbage}")
    with pytest.raises(CatalogError, match="PostgreSQL server running"):
        open_database("postgresql://postgres@127.0.0.1:1/imsearch")  # nothing listens on port 1


@pytest.mark.postgres
def test_missing_postgres_database_is_a_clear_error(pg_url: str) -> None:
    with pytest.raises(CatalogError, match="createdb"):
        open_database(pg_url.rsplit("/", 1)[0] + "/imsearch_no_such_database")


# --------------------------------------------------------------------------- keys


def test_keys_are_stable_non_negative_int64() -> None:
    digest = sha("x")
    assert catalog.image_key(digest) == int(digest[:16], 16) & (2**63 - 1)
    assert catalog.image_key(digest.upper()) == catalog.image_key(digest)
    keys = [catalog.image_key(sha(i)) for i in range(2000)]
    assert min(keys) >= 0 and max(keys) < 2**63 and len(set(keys)) == 2000
    with pytest.raises(CatalogError, match="64 hex digits"):
        catalog.image_key("abc")
    k = catalog.region_key(7, (1.0, 2.0, 30.0, 40.0), "detector")
    assert k == catalog.region_key(7, (1.001, 2.0, 30.0, 40.0), "detector")  # 0.01 px resolution
    assert catalog.region_key(7, (-0.001, 0, 1, 1), "grid") == catalog.region_key(7, (0.0, 0, 1, 1), "grid")
    assert k != catalog.region_key(7, (1.0, 2.0, 30.0, 40.0), "query")
    assert k != catalog.region_key(8, (1.0, 2.0, 30.0, 40.0), "detector")
    assert 0 <= k < 2**63


# --------------------------------------------------------------------------- images and files


def test_upsert_and_get_images(catalog_db: Database) -> None:
    exif = datetime(2021, 5, 4, 3, 2, 1)
    with catalog_db.session() as s:
        first = catalog.upsert_image(s, image=info("a", "/p/a.jpg", exif_time=exif))
        assert first.id == catalog.image_key(sha("a"))
        assert first.exif_time == exif.replace(tzinfo=UTC) and first.added_at.tzinfo is not None
        again = catalog.upsert_image(s, image=info("a", "/q/copy.jpg", size_bytes=5, stored_path="/s/a"))
        assert again.path == "/p/a.jpg"  # first-seen path kept
        assert (again.size_bytes, again.stored_path, again.exif_time) == (5, "/s/a", first.exif_time)
        assert again.added_at == first.added_at and again.updated_at >= first.updated_at
        b = catalog.upsert_image(s, image=info("b", None, width=10, height=20, format="PNG"))
        found = catalog.get_images(s, image_ids=[b.id, 12345, first.id])
        assert [r.id if r else None for r in found] == [b.id, None, first.id]
        assert catalog.find_image_by_sha(s, sha256=sha("b").upper()) == b
        assert catalog.find_image_by_sha(s, sha256=sha("zz")) is None
        assert catalog.get_image(s, image_id=999) is None
        with pytest.raises(CatalogError, match="positive"):
            catalog.upsert_images(s, images=[info("c", width=0)])
    with pytest.raises(CatalogError, match="catalog operation"), catalog_db.session() as s:  # a DB error
        catalog.upsert_files(s, files=[FileInfo(path="/x", image_id=424242, size_bytes=1, mtime_ns=1)])
    with pytest.raises(RuntimeError), catalog_db.session() as s:
        add_image(s, "rolled back", "/r.jpg")
        raise RuntimeError("boom")
    with catalog_db.session(readonly=True) as s:
        assert catalog.find_image_by_sha(s, sha256=sha("rolled back")) is None
        assert catalog.stats(s).images == 2


def test_files_upsert_under_and_delete(catalog_db: Database) -> None:
    paths = ["/a/b/1.jpg", "/a/b/2.jpg", "/a/b2/3.jpg", "/a/b/sub/4.jpg", "/a/bé/5.jpg", "/a/c.jpg", "/z/6.jpg"]
    with catalog_db.session() as s:
        one = add_image(s, "one")
        two = add_image(s, "two", "/a/b/1.jpg")
        rows = [
            FileInfo(path=p, image_id=one if i % 2 else two, size_bytes=i, mtime_ns=10 * i) for i, p in enumerate(paths)
        ]
        catalog.upsert_files(s, files=rows)
        catalog.upsert_files(s, files=[FileInfo(path="/z/6.jpg", image_id=one, size_bytes=66, mtime_ns=7)])
        moved = catalog.get_file(s, path="/z/6.jpg")
        assert moved is not None and (moved.image_id, moved.size_bytes, moved.mtime_ns) == (one, 66, 7)
        assert moved.seen_at.tzinfo is not None
        assert catalog.get_file(s, path="/nope") is None
        for prefix in ("/a/b", "/a/b/", "/a/", "", "/q"):
            got = [f.path for f in catalog.files_under(s, prefix=prefix, batch_size=2)]
            assert got == sorted(p for p in paths if p.startswith(prefix)), prefix
        assert [f.path for f in catalog.get_files(s, image_id=two)] == sorted(paths[0:6:2])
    with catalog_db.session() as s:
        orphans = catalog.delete_files(s, paths=["/a/b/1.jpg", "/a/b2/3.jpg", "/missing"])
        assert orphans.tolist() == []
        image = catalog.get_image(s, image_id=two)  # its first path is gone: moved to a remaining file
        assert image is not None and image.path == "/a/bé/5.jpg"
        left = [f.path for f in catalog.files_under(s, prefix="")]
        orphans = catalog.delete_files(s, paths=left)
        assert orphans.dtype == np.int64 and orphans.tolist() == sorted([one, two])
        assert catalog.stats(s).files == 0 and catalog.stats(s).images == 2


# --------------------------------------------------------------------------- vectors


def test_vectors_round_trip_bit_exact_and_batches(catalog_db: Database) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((50, 16)).astype(np.float32)
    special = [1e-45, -0.0, float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)]
    vecs[0, :4] = np.array(special, dtype=np.float32)  # subnormal, negative zero, extremes
    with catalog_db.session() as s:
        mid = model_id(s)
        owner = add_image(s, "owner")
        ids = rng.choice(2**62, size=50, replace=False).astype(np.int64)
        catalog.put_vectors(s, space="region", ids=ids, image_ids=[owner] * 50, vectors=vecs, model_id=mid)
        catalog.put_vectors(s, space="image", ids=[owner], image_ids=[owner], vectors=vecs[1:2], model_id=mid)
    with catalog_db.session(readonly=True) as s:
        order = rng.permutation(50)
        got = catalog.get_vectors(s, space="region", ids=ids[order])
        assert got.dtype == np.float32 and got.shape == (50, 16)
        assert np.array_equal(got.view(np.uint32), vecs[order].view(np.uint32))
        assert catalog.vector_ids(s, space="region").tolist() == sorted(ids.tolist())
        assert catalog.vector_ids(s, space="image").tolist() == [owner]
        batches = list(catalog.iter_vectors(s, space="region", batch_size=7))
        assert [len(b[0]) for b in batches] == [7] * 7 + [1]
        all_ids = np.concatenate([b[0] for b in batches])
        assert all_ids.tolist() == sorted(ids.tolist())
        by_id = dict(zip(ids.tolist(), vecs, strict=True))
        expected = np.stack([by_id[i] for i in all_ids.tolist()])
        assert np.array_equal(np.concatenate([b[1] for b in batches]).view(np.uint32), expected.view(np.uint32))
        [(one_batch, _)] = list(catalog.iter_vectors(s, space="region", batch_size=50))
        assert one_batch.tolist() == all_ids.tolist()
        assert catalog.vector_dim(s, space="region") == 16
        assert catalog.stats(s).vectors == {"image": 1, "region": 50}
        with pytest.raises(NotFoundError, match="no region vector for 1"):
            catalog.get_vectors(s, space="region", ids=[ids[0], 123])
        with pytest.raises(CatalogError, match="unknown vector space"):
            catalog.vector_ids(s, space="faces")


def test_vectors_overwrite_validate_and_delete(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        mid = model_id(s)
        a, b = add_image(s, "a"), add_image(s, "b")
        ones = np.ones((2, 4), dtype=np.float32)
        catalog.put_vectors(s, space="image", ids=[a, b], image_ids=[a, b], vectors=ones, model_id=mid)
        catalog.put_vectors(s, space="image", ids=[b], image_ids=[b], vectors=ones[:1] * 3, model_id=mid)
        assert catalog.get_vectors(s, space="image", ids=[b, a]).tolist() == [[3.0] * 4, [1.0] * 4]
        with pytest.raises(CatalogError, match="4-dimensional"):
            catalog.put_vectors(s, space="image", ids=[a], image_ids=[a], vectors=np.ones((1, 8)), model_id=mid)
        with pytest.raises(CatalogError, match="NaN"):
            catalog.put_vectors(s, space="image", ids=[a], image_ids=[a], vectors=ones[:1] * np.nan, model_id=mid)
        with pytest.raises(CatalogError, match="shape"):
            catalog.put_vectors(s, space="image", ids=[a, b], image_ids=[a, b], vectors=ones[0], model_id=mid)
        with pytest.raises(CatalogError, match="not registered"):
            catalog.put_vectors(s, space="image", ids=[a], image_ids=[a], vectors=ones[:1], model_id=mid + 9)
        assert catalog.delete_vectors(s, space="image", ids=[a, 77]) == 1
        assert catalog.vector_ids(s, space="image").tolist() == [b]
        assert catalog.delete_vectors(s, space="image") == 1
        assert catalog.vector_dim(s, space="image") is None
    with pytest.raises(CatalogError, match="not in the catalog"), catalog_db.session() as s:
        catalog.put_vectors(s, space="image", ids=[5], image_ids=[5], vectors=np.ones((1, 4)), model_id=mid)


# --------------------------------------------------------------------------- regions, labels, cascades


def test_regions_and_labels(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        mid = model_id(s)
        a, b = add_image(s, "a"), add_image(s, "b")
        regions = [
            RegionInfo(a, 0, 0, 10, 10, "detector", "dog", 0.9),
            RegionInfo(a, 5, 5, 20, 20, "grid"),
            RegionInfo(b, 1, 1, 2, 2, "detector", "cat", 0.4),
        ]
        rids = catalog.add_regions(s, regions=regions)
        assert rids.tolist() == [catalog.region_key(r.image_id, r.box, r.source) for r in regions]
        again = catalog.add_regions(s, regions=[RegionInfo(a, 0, 0, 10, 10, "detector", "wolf", 0.95)])
        assert again.tolist() == rids[:1].tolist()
        got = catalog.get_regions(s, image_ids=[b, a])
        assert [r.image_id for r in got] == [b, a, a] and got[0].box == (1.0, 1.0, 2.0, 2.0)
        assert {r.label for r in got} == {"cat", "wolf", None}
        by_id = catalog.get_regions_by_id(s, region_ids=[rids[2], 1, rids[0]])
        assert by_id[0].id == rids[2] and by_id[1] is None and by_id[2].label == "wolf"  # type: ignore[union-attr]
        catalog.put_vectors(s, space="region", ids=rids, image_ids=[a, a, b], vectors=np.eye(3, 4), model_id=mid)
        removed = catalog.delete_regions(s, image_ids=[a], source="detector")
        assert removed.tolist() == [rids[0]]
        assert catalog.vector_ids(s, space="region").tolist() == sorted(rids[1:].tolist())
        assert catalog.delete_regions(s, region_ids=[rids[2]]).tolist() == [rids[2]]
        for bad in (RegionInfo(a, 5, 5, 5, 9, "grid"), RegionInfo(a, 0, 0, 1, 1, "ocr")):
            with pytest.raises(CatalogError):
                catalog.add_regions(s, regions=[bad])

        catalog.put_labels(s, image_id=a, source="detector", labels=[LabelStat("Dog", 0.9, 0.3, 2)])
        catalog.put_labels(s, image_id=a, source="segmenter", labels=[LabelStat("dog", 0.8, 0.35, 1)])
        catalog.put_labels_bulk(
            s, source="detector", labels_by_image={b: [LabelStat("cat", 0.2, 0.1, 1)], a: [LabelStat("x", 0.1, 0.1, 1)]}
        )
        catalog.put_labels(s, image_id=a, source="detector", labels=[LabelStat("person", 0.7, 0.2, 1)])
        labels = catalog.get_labels(s, image_ids=[a, b, 999])
        assert [(r.label, r.source) for r in labels[a]] == [("dog", "segmenter"), ("person", "detector")]
        assert labels[999] == [] and labels[b][0].max_score == 0.2
        assert catalog.label_counts(s) == [("cat", 1), ("dog", 1), ("person", 1)]
        assert catalog.label_counts(s, min_score=0.5) == [("dog", 1), ("person", 1)]
        with pytest.raises(CatalogError, match="within"):
            catalog.put_labels(s, image_id=a, source="detector", labels=[LabelStat("x", 1.5, 0.1, 1)])
        with pytest.raises(CatalogError, match="repeat"):
            catalog.put_labels(s, image_id=a, source="detector", labels=[LabelStat("x", 0.5, 0.1, 1)] * 2)
        with pytest.raises(CatalogError, match="label source"):
            catalog.put_labels(s, image_id=a, source="ocr", labels=[])


def test_delete_images_cascades(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        mid = model_id(s)
        a, b = add_image(s, "a", "/a.jpg"), add_image(s, "b", "/b.jpg")
        catalog.upsert_files(s, files=[FileInfo(path="/dup/a.jpg", image_id=a, size_bytes=1, mtime_ns=1)])
        ra = catalog.add_regions(s, regions=[RegionInfo(a, 0, 0, 5, 5, "grid"), RegionInfo(a, 1, 1, 5, 5, "grid")])
        rb = catalog.add_regions(s, regions=[RegionInfo(b, 0, 0, 5, 5, "grid")])
        catalog.put_vectors(s, space="image", ids=[a, b], image_ids=[a, b], vectors=np.eye(2, 3), model_id=mid)
        catalog.put_vectors(s, space="region", ids=[*ra, *rb], image_ids=[a, a, b], vectors=np.eye(3, 3), model_id=mid)
        for image_id in (a, b):
            catalog.put_labels(s, image_id=image_id, source="detector", labels=[LabelStat("dog", 0.9, 0.3, 1)])
    with catalog_db.session() as s:
        removed = catalog.delete_images(s, image_ids=[a, 31337])
        assert removed["image"].tolist() == [a]
        assert removed["region"].tolist() == sorted(ra.tolist())
        assert catalog.get_image(s, image_id=a) is None and catalog.get_files(s, image_id=a) == []
        assert catalog.get_regions(s, image_ids=[a]) == [] and catalog.get_labels(s, image_ids=[a])[a] == []
        st = catalog.stats(s)
        assert (st.images, st.files, st.regions, st.labels, st.vectors) == (1, 1, 1, 1, {"image": 1, "region": 1})


def test_optimize_refreshes_planner_statistics(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        for i in range(20):
            add_image(s, i, f"/o/{i}.jpg")
    catalog_db.optimize()
    with catalog_db.session(readonly=True) as s:
        if catalog_db.dialect == "sqlite":
            analyzed = s.execute(sa.text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'images'")).scalar()
        else:
            analyzed = s.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'images' AND last_analyze IS NOT NULL"
                )
            ).scalar()
        assert analyzed
        assert catalog.stats(s).images == 20


# --------------------------------------------------------------------------- bookkeeping


def test_models_failures_jobs_meta(catalog_db: Database) -> None:
    with catalog_db.session() as s:
        assert catalog.get_active_model(s) is None
        m1 = catalog.register_model(s, fingerprint="fp1", name="one", meta={"dim": 512})
        m2 = catalog.register_model(s, fingerprint="fp2", name="two", meta={"dim": 256})
        assert catalog.get_active_model(s) == m2 and m2.is_active
        back = catalog.register_model(s, fingerprint="fp1", name="one again", meta={"dim": 512, "x": [1]})
        assert back.id == m1.id and back.name == "one again" and back.meta == {"dim": 512, "x": [1]}
        assert [m.is_active for m in catalog.list_models(s)] == [True, False]
        with pytest.raises(CatalogError, match="JSON"):
            catalog.register_model(s, fingerprint="fp3", name="bad", meta={"f": object()})

        catalog.record_failure(s, path="/bad/1.jpg", reason="truncated", size_bytes=10, mtime_ns=5)
        catalog.record_failure(s, path="/bad/0.jpg", reason="not an image", size_bytes=3, mtime_ns=4)
        catalog.record_failure(s, path="/bad/1.jpg", reason="still truncated", size_bytes=11, mtime_ns=6)
        failure = catalog.get_failure(s, path="/bad/1.jpg")
        assert failure is not None and (failure.reason, failure.size_bytes, failure.mtime_ns) == (
            "still truncated",
            11,
            6,
        )
        assert [f.path for f in catalog.list_failures(s)] == ["/bad/0.jpg", "/bad/1.jpg"]
        assert [f.path for f in catalog.list_failures(s, limit=1, offset=1)] == ["/bad/1.jpg"]
        assert catalog.clear_failure(s, path="/bad/1.jpg") and not catalog.clear_failure(s, path="/bad/1.jpg")
        assert catalog.clear_failures(s, paths=["/bad/0.jpg", "/x"]) == 1

        job = catalog.create_job(s, kind="index", params={"root": "/photos"}, total=10)
        assert (job.status, job.done, job.params) == ("queued", 0, {"root": "/photos"})
        job = catalog.update_job(s, job_id=job.id, status="running", done=4, skipped=1, message="half")
        assert (job.status, job.done, job.skipped, job.failed, job.total, job.message) == (
            "running",
            4,
            1,
            0,
            10,
            "half",
        )
        assert catalog.get_job(s, job_id=job.id) == job and catalog.get_job(s, job_id="nope") is None
        other = catalog.create_job(s, kind="index")
        assert [j.id for j in catalog.list_jobs(s)] == [other.id, job.id]  # newest first
        assert [j.id for j in catalog.list_jobs(s, status="running")] == [job.id]
        with pytest.raises(NotFoundError):
            catalog.update_job(s, job_id="nope", done=1)
        with pytest.raises(CatalogError, match="job status"):
            catalog.update_job(s, job_id=job.id, status="exploded")

        assert catalog.get_meta(s, key="generation") is None
        catalog.set_meta(s, key="generation", value="1")
        catalog.set_meta(s, key="generation", value="2")
        assert catalog.get_meta(s, key="generation") == "2"
        assert catalog.stats(s).jobs == 2
