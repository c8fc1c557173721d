"""Managed disks and snapshots: tracked_disks, disk_holds, and the audit log's kind.

``tracked_disks`` holds every field of :class:`gc_daemon.disks.DiskRow`, one row per disk or snapshot,
keyed by its lower-cased ARM id (``resource_key``: ARM ids compare without case). ``disk_holds`` is
``vhd-gc keep`` for an ARM id. ``audit_log.kind`` says what an entry is about: ``vhd`` (every entry
written before this revision, by the server default), ``managed_disk`` or ``snapshot``; a disk entry
has account = subscription, container = '', blob = resource key, url = ARM id.

Adding a column with a default is an ``ALTER TABLE ... ADD COLUMN`` on both backends (SQLite does not
rebuild the table); the downgrade drops it (SQLite >= 3.35 drops a column in place).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
STATES = ("candidate", "due", "deleted", "kept", "released")
KINDS = ("managed_disk", "snapshot")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "tracked_disks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resource_key", sa.String(length=1024), nullable=False,
                  comment="The ARM id, lower-cased (ARM ids compare without case)"),
        sa.Column("resource_id", sa.Text(), nullable=False, comment="The ARM id, as Azure spells it"),
        sa.Column("kind", sa.String(length=16), nullable=False, comment="managed_disk or snapshot"),
        sa.Column("state", sa.String(length=16), nullable=False,
                  comment="Lifecycle state: candidate, due, deleted, kept, released"),
        sa.Column("first_orphaned_at", UTC_DATETIME, nullable=True,
                  comment="When the current run of orphan sightings began"),
        sa.Column("delete_after", UTC_DATETIME, nullable=True,
                  comment="Earliest deletion time (first_orphaned_at + grace period)"),
        sa.Column("streak_start", sa.Integer(), nullable=True,
                  comment="passes.seq of the first sighting of the current run of consecutive sightings"),
        sa.Column("sightings_frozen", sa.Integer(), nullable=True,
                  comment="Sightings when the row left the counting states (deleted, released)"),
        sa.Column("ownership_time", UTC_DATETIME, nullable=True,
                  comment="LastOwnershipUpdateTime when marked (a snapshot: timeCreated); the delete is bound to it"),
        sa.Column("ownership_known", sa.Boolean(), nullable=False, server_default=sa.false(),
                  comment="Whether an ownership time was recorded (NULL ownership_time then means never attached)"),
        sa.Column("hold", sa.String(length=16), nullable=True,
                  comment="Why a kept disk is kept: referenced, operator, locked, managed_group, kubernetes, "
                          "site_recovery, backup, tag"),
        sa.Column("reason", sa.Text(), nullable=True, comment="Human-readable reason of the state"),
        sa.Column("updated_at", UTC_DATETIME, nullable=True, comment="When this row was last written"),
        sa.Column("deleted_at", UTC_DATETIME, nullable=True, comment="When vhd-gc deleted it"),
        sa.Column("subscription", sa.String(length=64), nullable=True, comment="Subscription id"),
        sa.Column("resource_group", sa.String(length=90), nullable=True, comment="Resource group name"),
        sa.Column("name", sa.String(length=255), nullable=True, comment="Resource name"),
        sa.Column("sku", sa.String(length=32), nullable=True, comment="Premium_LRS, StandardSSD_LRS, ..."),
        sa.Column("disk_state", sa.String(length=32), nullable=True, comment="diskState of a disk as last listed"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True,
                  comment="Provisioned bytes (a snapshot: its source's size)"),
        sa.Column("location", sa.String(length=64), nullable=True, comment="Azure region"),
        sa.Column("zones", sa.JSON(), nullable=True, comment="Availability zones (a list)"),
        sa.Column("tags", sa.JSON(), nullable=True, comment="Tags as last listed (an object)"),
        sa.Column("fingerprint", sa.Text(), nullable=True,
                  comment="The listing when the ownership time was last read: a GET again when it differs"),
        sa.Column("quarantine_snapshot", sa.Text(), nullable=True,
                  comment="ARM id of the quarantine snapshot made before deleting it"),
        sa.Column("quarantine_until", UTC_DATETIME, nullable=True,
                  comment="Until when the quarantine snapshot is kept"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracked_disks")),
        sa.UniqueConstraint("resource_key", name=op.f("uq_tracked_disks_resource_key")),
        sa.CheckConstraint(_in("state", STATES), name=op.f("ck_tracked_disks_state")),
        sa.CheckConstraint(_in("kind", KINDS), name=op.f("ck_tracked_disks_kind")),
        comment="Unattached managed disks and orphaned snapshots vhd-gc follows",
    )
    op.create_index(op.f("ix_tracked_disks_state"), "tracked_disks", ["state"])
    op.create_index(op.f("ix_tracked_disks_subscription_kind_state"), "tracked_disks",
                    ["subscription", "kind", "state"])

    op.create_table(
        "disk_holds",
        sa.Column("resource_key", sa.String(length=1024), nullable=False, comment="The ARM id, lower-cased"),
        sa.Column("resource_id", sa.Text(), nullable=False, comment="The ARM id, as the operator gave it"),
        sa.Column("reason", sa.Text(), nullable=False, comment="Why the operator keeps it"),
        sa.Column("created_by", sa.String(length=255), nullable=False, comment="Who asked"),
        sa.Column("created_at", UTC_DATETIME, nullable=False, comment="When"),
        sa.PrimaryKeyConstraint("resource_key", name=op.f("pk_disk_holds")),
        comment="Disks and snapshots an operator asked vhd-gc to keep (vhd-gc keep ID)",
    )

    op.add_column(
        "audit_log",
        sa.Column("kind", sa.String(length=16), nullable=False, server_default="vhd",
                  comment="What the entry is about: vhd, managed_disk or snapshot"),
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", recreate="never") as batch:
        batch.drop_column("kind")
    op.drop_table("disk_holds")
    op.drop_index(op.f("ix_tracked_disks_subscription_kind_state"), table_name="tracked_disks")
    op.drop_index(op.f("ix_tracked_disks_state"), table_name="tracked_disks")
    op.drop_table("tracked_disks")
