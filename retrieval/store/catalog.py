"""The metadata catalog: one import for every repository function and record.

Every function takes the SQLAlchemy :class:`~sqlalchemy.orm.Session` first and keyword
arguments after it, runs Core statements that behave identically on SQLite and
PostgreSQL, and returns frozen dataclasses or numpy arrays, never ORM objects::

    from retrieval.store import catalog
    from retrieval.store.db import open_database

    db = open_database("sqlite:///catalog.db")
    with db.session() as session:
        model = catalog.register_model(session, fingerprint=fp, name="rmac-resnet50", meta={})
        [image_id] = catalog.upsert_images(session, images=[catalog.ImageInfo(sha256=..., path=..., ...)])
        catalog.put_vectors(session, space="image", ids=[image_id], image_ids=[image_id],
                            vectors=descriptors, model_id=model.id)

Iterators (``files_under``, ``iter_vectors``) query lazily, batch by batch: consume them
inside the session that made them. The functions live in ``catalog_images`` (images,
files), ``catalog_regions`` (regions, labels), ``catalog_vectors`` (vectors),
``catalog_filter`` (``resolve_filter``) and ``catalog_admin`` (models, failures, jobs,
meta, stats); ids come from ``keys``.
"""

from __future__ import annotations

from retrieval.store.catalog_admin import (
    clear_failure,
    clear_failures,
    create_job,
    get_active_model,
    get_failure,
    get_failures_by_path,
    get_job,
    get_meta,
    get_model,
    list_failures,
    list_jobs,
    list_models,
    record_failure,
    register_model,
    set_meta,
    stats,
    update_job,
)
from retrieval.store.catalog_browse import ImagePage, failures_under, label_facets, list_images
from retrieval.store.catalog_filter import resolve_filter
from retrieval.store.catalog_images import (
    delete_files,
    delete_images,
    existing_images,
    files_under,
    find_image_by_sha,
    get_file,
    get_files,
    get_files_by_path,
    get_image,
    get_images,
    upsert_files,
    upsert_image,
    upsert_images,
)
from retrieval.store.catalog_regions import (
    add_regions,
    delete_regions,
    get_labels,
    get_regions,
    get_regions_by_id,
    label_counts,
    put_labels,
    put_labels_bulk,
)
from retrieval.store.catalog_vectors import (
    delete_vectors,
    get_vectors,
    iter_vectors,
    promote_staged_vectors,
    put_vectors,
    vector_dim,
    vector_ids,
)
from retrieval.store.keys import image_key, region_key
from retrieval.store.records import (
    CatalogStats,
    FailureRecord,
    FileInfo,
    FileRecord,
    ImageInfo,
    ImageRecord,
    JobRecord,
    LabelRecord,
    LabelStat,
    ModelRecord,
    RegionInfo,
    RegionRecord,
)
from retrieval.store.tables import (
    IMAGE_SPACE,
    JOB_STATUSES,
    LABEL_SOURCES,
    REGION_SOURCES,
    REGION_SPACE,
    SPACES,
)

__all__ = [
    "IMAGE_SPACE",
    "JOB_STATUSES",
    "LABEL_SOURCES",
    "REGION_SOURCES",
    "REGION_SPACE",
    "SPACES",
    "CatalogStats",
    "FailureRecord",
    "FileInfo",
    "FileRecord",
    "ImageInfo",
    "ImagePage",
    "ImageRecord",
    "JobRecord",
    "LabelRecord",
    "LabelStat",
    "ModelRecord",
    "RegionInfo",
    "RegionRecord",
    "add_regions",
    "clear_failure",
    "clear_failures",
    "create_job",
    "delete_files",
    "delete_images",
    "delete_regions",
    "delete_vectors",
    "existing_images",
    "failures_under",
    "files_under",
    "find_image_by_sha",
    "get_active_model",
    "get_failure",
    "get_failures_by_path",
    "get_file",
    "get_files",
    "get_files_by_path",
    "get_image",
    "get_images",
    "get_job",
    "get_labels",
    "get_meta",
    "get_model",
    "get_regions",
    "get_regions_by_id",
    "get_vectors",
    "image_key",
    "iter_vectors",
    "label_counts",
    "label_facets",
    "list_failures",
    "list_images",
    "list_jobs",
    "list_models",
    "promote_staged_vectors",
    "put_labels",
    "put_labels_bulk",
    "put_vectors",
    "record_failure",
    "region_key",
    "register_model",
    "resolve_filter",
    "set_meta",
    "stats",
    "update_job",
    "upsert_files",
    "upsert_image",
    "upsert_images",
    "vector_dim",
    "vector_ids",
]
