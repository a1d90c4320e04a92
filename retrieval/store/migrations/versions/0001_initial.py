"""Initial catalog schema: models, images, files, vectors, regions, labels, failures, jobs, meta.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key() -> sa.types.TypeEngine[int]:
    # INTEGER on SQLite makes a single-column key the rowid (64-bit anyway).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _path() -> sa.types.TypeEngine[str]:
    # Byte-wise comparison on PostgreSQL, as SQLite's default BINARY collation does.
    return sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def _image_fk(table: str) -> sa.Column[int]:
    return sa.Column(
        "image_id",
        sa.BigInteger(),
        sa.ForeignKey("images.id", ondelete="CASCADE", name=f"fk_{table}_image_id"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("fingerprint", name="uq_models_fingerprint"),
    )
    op.create_index(
        "uq_models_one_active",
        "models",
        ["is_active"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )
    op.create_table(
        "images",
        sa.Column("id", _key(), primary_key=True, autoincrement=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", _path(), nullable=True),
        sa.Column("stored_path", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("exif_time", sa.DateTime(), nullable=True),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("sha256", name="uq_images_sha256"),
    )
    op.create_index("ix_images_path", "images", ["path"])
    op.create_index("ix_images_taken", "images", [sa.text("coalesce(exif_time, added_at)")])
    _files_vectors()
    _regions_labels()
    _failures_jobs()


def _files_vectors() -> None:
    op.create_table(
        "files",
        sa.Column("path", _path(), primary_key=True),
        _image_fk("files"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_files_image_id", "files", ["image_id"])
    op.create_table(
        "vectors",
        sa.Column("space", sa.String(16), primary_key=True),
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        _image_fk("vectors"),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", name="fk_vectors_model"), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("space IN ('image', 'region')", name="ck_vectors_space"),
    )
    op.create_index("ix_vectors_image_id", "vectors", ["image_id", "space", "id"])
    op.create_index("ix_vectors_space_image", "vectors", ["space", "image_id", "id"])


def _regions_labels() -> None:
    op.create_table(
        "regions",
        sa.Column("id", _key(), primary_key=True, autoincrement=False),
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
    op.create_index("ix_regions_image_id", "regions", ["image_id"])
    op.create_table(
        "labels",
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
    op.create_index("ix_labels_label_score", "labels", ["label", "max_score", "area_fraction", "image_id"])


def _failures_jobs() -> None:
    op.create_table(
        "failures",
        sa.Column("path", _path(), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])


def downgrade() -> None:
    for table in ("jobs", "failures", "labels", "regions", "vectors", "files", "images", "models", "meta"):
        op.drop_table(table)
