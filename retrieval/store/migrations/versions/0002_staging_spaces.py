"""Staging vector spaces for `imsearch reindex`: ``image_next`` and ``region_next``.

A re-index with another descriptor model writes the new vectors beside the current ones,
then swaps them in one transaction; until then searches keep using the old vectors.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from alembic import op
from sqlalchemy import exc as sa_exc

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "space IN ('image', 'region')"
NEW = "space IN ('image', 'region', 'image_next', 'region_next')"


def _replace_check(condition: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot alter a CHECK: the table is rebuilt (rows, keys and indexes kept);
        # reflecting it also meets the expression index on images, which is not touched
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Skipped unsupported reflection", category=sa_exc.SAWarning)
            with op.batch_alter_table("vectors", recreate="always") as batch:
                batch.drop_constraint("ck_vectors_space", type_="check")
                batch.create_check_constraint("ck_vectors_space", condition)
    else:
        op.drop_constraint("ck_vectors_space", "vectors", type_="check")
        op.create_check_constraint("ck_vectors_space", "vectors", condition)


def upgrade() -> None:
    _replace_check(NEW)


def downgrade() -> None:
    op.execute("DELETE FROM vectors WHERE space IN ('image_next', 'region_next')")
    _replace_check(OLD)
