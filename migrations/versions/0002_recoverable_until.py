"""Blob soft delete: how long a blob vhd-gc deleted stays recoverable.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tracked_blobs") as batch:
        batch.add_column(
            sa.Column(
                "recoverable_until",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="Deleted with blob soft delete on: until when `vhd-gc restore` can bring it back",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tracked_blobs") as batch:
        batch.drop_column("recoverable_until")
