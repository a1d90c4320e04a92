"""An index on ``images (added_at, id)``: browsing by date added walks it instead of sorting.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_images_added", "images", ["added_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_images_added", table_name="images")
