"""SQLAlchemy Core tables of the metadata catalog.

The schema itself is created and upgraded by the Alembic revisions in
``retrieval/store/migrations/versions`` (``open_database`` runs them); these ``Table``
objects describe the same schema for queries, and a test checks the two agree.

Conventions:

* ``images.id`` and ``regions.id`` are stable 64-bit keys computed by the caller from
  content (:func:`retrieval.store.keys.image_key`, :func:`~retrieval.store.keys.region_key`),
  never autoincremented; they are also the FAISS ids of the vectors in the spaces
  ``"image"`` and ``"region"``.
* Every timestamp is stored as naive UTC (:class:`UtcDateTime`) and read back as an aware
  UTC ``datetime``; naive inputs are taken as UTC.
* Paths compare byte-wise (PostgreSQL column collation ``"C"``, SQLite ``BINARY``), so
  prefix ranges and ordering are identical on both back ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

IMAGE_SPACE = "image"
REGION_SPACE = "region"
SPACES: tuple[str, ...] = (IMAGE_SPACE, REGION_SPACE)
#: where `imsearch reindex` stages the vectors of a new model before swapping them in
STAGING: dict[str, str] = {IMAGE_SPACE: "image_next", REGION_SPACE: "region_next"}
ALL_SPACES: tuple[str, ...] = SPACES + tuple(STAGING.values())
REGION_SOURCES: tuple[str, ...] = ("detector", "query", "grid", "manual")
LABEL_SOURCES: tuple[str, ...] = ("detector", "segmenter")
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A ``DateTime`` stored as naive UTC and returned as aware UTC on every back end."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - drivers return datetime
            value = datetime.fromisoformat(str(value))
        return value.replace(tzinfo=UTC)


def key_type() -> sa.types.TypeEngine[int]:
    """64-bit key column; ``INTEGER`` on SQLite so a single-column key is the rowid."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def path_type() -> sa.types.TypeEngine[str]:
    """Text compared byte-wise on both back ends (prefix ranges use the index)."""
    return sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def _image_fk(table: str) -> sa.Column[int]:
    fk = sa.ForeignKey("images.id", ondelete="CASCADE", name=f"fk_{table}_image_id")
    return sa.Column("image_id", sa.BigInteger(), fk, nullable=False)


metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("meta", sa.JSON(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False),
    sa.UniqueConstraint("fingerprint", name="uq_models_fingerprint"),
)
sa.Index(
    "uq_models_one_active",
    models.c.is_active,
    unique=True,
    sqlite_where=sa.text("is_active"),
    postgresql_where=sa.text("is_active"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", key_type(), primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("path", path_type(), nullable=True),
    sa.Column("stored_path", sa.Text(), nullable=True),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("exif_time", UtcDateTime(), nullable=True),
    sa.Column("added_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("sha256", name="uq_images_sha256"),
)
sa.Index("ix_images_path", images.c.path)
sa.Index("ix_images_taken", sa.func.coalesce(images.c.exif_time, images.c.added_at))
sa.Index("ix_images_added", images.c.added_at, images.c.id)

files = sa.Table(
    "files",
    metadata,
    sa.Column("path", path_type(), primary_key=True),
    _image_fk("files"),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
    sa.Column("seen_at", UtcDateTime(), nullable=False),
)
sa.Index("ix_files_image_id", files.c.image_id)

vectors = sa.Table(
    "vectors",
    metadata,
    sa.Column("space", sa.String(16), primary_key=True),
    sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
    _image_fk("vectors"),
    sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_vectors_model"), nullable=False),
    sa.Column("dim", sa.Integer(), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.CheckConstraint("space IN ('image', 'region', 'image_next', 'region_next')", name="ck_vectors_space"),
)
# Covering indexes: cascades and filters look vectors up by image, filters scan a space's
# (image_id, id) pairs without reading the vector data.
sa.Index("ix_vectors_image_id", vectors.c.image_id, vectors.c.space, vectors.c.id)
sa.Index("ix_vectors_space_image", vectors.c.space, vectors.c.image_id, vectors.c.id)

regions = sa.Table(
    "regions",
    metadata,
    sa.Column("id", key_type(), primary_key=True, autoincrement=False),
    _image_fk("regions"),
    sa.Column("x0", sa.Float(), nullable=False),
    sa.Column("y0", sa.Float(), nullable=False),
    sa.Column("x1", sa.Float(), nullable=False),
    sa.Column("y1", sa.Float(), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("score", sa.Float(), nullable=True),
    sa.CheckConstraint("source IN ('detector', 'query', 'grid', 'manual')", name="ck_regions_source"),
)
sa.Index("ix_regions_image_id", regions.c.image_id)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column(
        "image_id",
        sa.BigInteger(),
        sa.ForeignKey("images.id", ondelete="CASCADE", name="fk_labels_image_id"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("label", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(16), primary_key=True),
    sa.Column("max_score", sa.Float(), nullable=False),
    sa.Column("area_fraction", sa.Float(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.CheckConstraint("source IN ('detector', 'segmenter')", name="ck_labels_source"),
)
# (label, max_score) first; area and image id make it covering for every label condition.
sa.Index("ix_labels_label_score", labels.c.label, labels.c.max_score, labels.c.area_fraction, labels.c.image_id)

failures = sa.Table(
    "failures",
    metadata,
    sa.Column("path", path_type(), primary_key=True),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("total", sa.BigInteger(), nullable=False),
    sa.Column("done", sa.BigInteger(), nullable=False),
    sa.Column("failed", sa.BigInteger(), nullable=False),
    sa.Column("skipped", sa.BigInteger(), nullable=False),
    sa.Column("message", sa.Text(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
sa.Index("ix_jobs_created_at", jobs.c.created_at)
