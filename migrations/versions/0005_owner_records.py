"""Who owned it (issue 15): ``owner_records``, one row per blob or disk a pass saw held.

``item_id`` is :func:`gc_daemon.owners.blob_item_id` (``account/container/blob``) or
:func:`gc_daemon.owners.disk_item_id` (the lower-cased ARM id). The row keeps the last holder seen,
the owner named by its owner tags (or its resource group's), those tags and the group's, and where it
came from (``reference``: seen held by a pass; ``metadata``: a blob's ``MicrosoftAzureCompute_*``
metadata only). A record outlives the reference: it is the last owner of a leftover.

Revision ID: 0005_owner_records
Revises: 0004
Create Date: 2026-12-04 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_owner_records"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
SOURCES = ("reference", "metadata")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "owner_records",
        sa.Column("item_id", sa.String(length=1200), nullable=False,
                  comment="account/container/blob of a blob, the lower-cased ARM id of a disk or snapshot"),
        sa.Column("holder", sa.Text(), nullable=True,
                  comment="ARM id of the last holder seen (VM, scale set, image, gallery version, disk)"),
        sa.Column("owner", sa.Text(), nullable=True,
                  comment="The first owner tag's value on the holder, then on its resource group"),
        sa.Column("tags", sa.JSON(), nullable=True, comment="The holder's owner tags (an object)"),
        sa.Column("group_tags", sa.JSON(), nullable=True, comment="The holder's resource group's tags (an object)"),
        sa.Column("source", sa.String(length=16), nullable=False,
                  comment="reference (seen held by a pass) or metadata (MicrosoftAzureCompute_* only)"),
        sa.Column("first_seen", UTC_DATETIME, nullable=True,
                  comment="First pass that saw it held by this holder"),
        sa.Column("last_seen", UTC_DATETIME, nullable=True,
                  comment="Last pass that saw it held (NULL: only from metadata)"),
        sa.Column("updated_at", UTC_DATETIME, nullable=True, comment="When this row was last written"),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_owner_records")),
        sa.CheckConstraint(_in("source", SOURCES), name=op.f("ck_owner_records_source")),
        comment="Who owned a blob or a disk: its last holder and that holder's owner tags",
    )


def downgrade() -> None:
    op.drop_table("owner_records")
