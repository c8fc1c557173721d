"""The initial schema: tracked blobs, passes, the audit log and operator holds.

Written out by hand (not imported from the models) so that it keeps creating exactly this schema
whatever the models become; ``gc_daemon.state.db.model_drift`` checks that the two agree.

Revision ID: 0001
Revises:
Create Date: 2026-05-20 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' UTCDateTime stores this type.
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "passes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "seq",
            sa.Integer(),
            nullable=True,
            comment="Number among complete passes (1, 2, 3...); NULL unless complete. "
            "Unique, so two replicas can never both complete the same pass",
        ),
        sa.Column("started_at", UTC_DATETIME, nullable=False, comment="When the pass began"),
        sa.Column("finished_at", UTC_DATETIME, nullable=True, comment="When the pass ended"),
        sa.Column(
            "outcome",
            sa.String(length=16),
            nullable=False,
            comment="running, complete, incomplete (changed nothing) or failed",
        ),
        sa.Column("mode", sa.String(length=16), nullable=False, comment="dry-run or delete"),
        sa.Column(
            "host", sa.String(length=255), nullable=False, comment="Host (replica) that ran the pass"
        ),
        sa.Column("error", sa.Text(), nullable=True, comment="Why the pass was incomplete or failed"),
        sa.Column("stats", sa.JSON(), nullable=True, comment="Counts of the pass"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passes")),
        sa.UniqueConstraint("seq", name=op.f("uq_passes_seq")),
        sa.CheckConstraint(
            "outcome IN ('running', 'complete', 'incomplete', 'failed')",
            name=op.f("ck_passes_outcome"),
        ),
        comment="One row per pass; complete passes are numbered by seq",
    )

    op.create_table(
        "tracked_blobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "account", sa.String(length=63), nullable=False, comment="Storage account name, lower-case"
        ),
        sa.Column(
            "container", sa.String(length=63), nullable=False, comment="Container name, lower-case"
        ),
        sa.Column(
            "blob",
            sa.String(length=1024),
            nullable=False,
            comment="Blob name, percent-decoded, case as in Azure",
        ),
        sa.Column("url", sa.Text(), nullable=False, comment="Canonical blob URL"),
        sa.Column(
            "state",
            sa.String(length=16),
            nullable=False,
            comment="Lifecycle state: candidate, due, deleted, kept, released",
        ),
        sa.Column(
            "blob_type",
            sa.String(length=16),
            nullable=False,
            comment="PageBlob, BlockBlob or AppendBlob, as the listing said",
        ),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False, comment="Nominal size of the blob"),
        sa.Column(
            "billed_bytes",
            sa.BigInteger(),
            nullable=True,
            comment="Bytes actually stored (sum of written page ranges); NULL: not measured",
        ),
        sa.Column(
            "etag",
            sa.String(length=128),
            nullable=True,
            comment="ETag recorded when marked; a delete is conditional on it",
        ),
        sa.Column("last_modified", UTC_DATETIME, nullable=True, comment="Last-Modified of the blob"),
        sa.Column(
            "first_orphaned_at",
            UTC_DATETIME,
            nullable=True,
            comment="When the current run of orphan sightings began",
        ),
        sa.Column(
            "delete_after",
            UTC_DATETIME,
            nullable=True,
            comment="Earliest deletion time (first_orphaned_at + grace period)",
        ),
        sa.Column("deleted_at", UTC_DATETIME, nullable=True, comment="When vhd-gc deleted it"),
        sa.Column("updated_at", UTC_DATETIME, nullable=True, comment="When this row was last written"),
        sa.Column(
            "streak_start",
            sa.Integer(),
            nullable=True,
            comment="passes.seq of the first sighting of the current run of consecutive sightings",
        ),
        sa.Column(
            "sightings_frozen",
            sa.Integer(),
            nullable=True,
            comment="Sightings when the blob left the counting states (deleted, released)",
        ),
        sa.Column(
            "hold",
            sa.String(length=16),
            nullable=True,
            comment="Why a kept orphan is kept: snapshots, metadata, tag, operator, block_blob, not_vhd",
        ),
        sa.Column("reason", sa.Text(), nullable=True, comment="Human-readable reason of the state"),
        sa.Column(
            "last_owner",
            sa.Text(),
            nullable=True,
            comment="VM that last held the blob (metadata MicrosoftAzureCompute_VMName)",
        ),
        sa.Column(
            "tier",
            sa.String(length=16),
            nullable=True,
            comment="Access tier; premium page blobs say P10, P20, ...",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracked_blobs")),
        sa.UniqueConstraint(
            "account", "container", "blob", name=op.f("uq_tracked_blobs_account_container_blob")
        ),
        sa.CheckConstraint(
            "state IN ('candidate', 'due', 'deleted', 'kept', 'released')",
            name=op.f("ck_tracked_blobs_state"),
        ),
        comment="Orphaned blobs vhd-gc follows from first sighting to deletion or release",
    )
    op.create_index(op.f("ix_tracked_blobs_state"), "tracked_blobs", ["state"])
    op.create_index(op.f("ix_tracked_blobs_account_state"), "tracked_blobs", ["account", "state"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False, comment="When it happened"),
        sa.Column("pass_id", sa.Integer(), nullable=True, comment="The pass that acted, if any"),
        sa.Column(
            "intent_id",
            sa.Integer(),
            nullable=True,
            comment="For an outcome (deleted, delete-refused, delete-failed): its delete-intent row",
        ),
        sa.Column(
            "action",
            sa.String(length=32),
            nullable=False,
            comment="delete-intent, deleted, delete-refused, delete-failed, keep, unkeep, ...",
        ),
        sa.Column(
            "account", sa.String(length=63), nullable=False, comment="Storage account name, lower-case"
        ),
        sa.Column(
            "container", sa.String(length=63), nullable=False, comment="Container name, lower-case"
        ),
        sa.Column(
            "blob", sa.String(length=1024), nullable=False, comment="Blob name, percent-decoded"
        ),
        sa.Column("url", sa.Text(), nullable=False, comment="Canonical blob URL"),
        sa.Column(
            "etag", sa.String(length=128), nullable=True, comment="ETag the action was bound to"
        ),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True, comment="Nominal size"),
        sa.Column("billed_bytes", sa.BigInteger(), nullable=True, comment="Bytes actually stored"),
        sa.Column("reason", sa.Text(), nullable=True, comment="Why"),
        sa.Column(
            "error_code",
            sa.String(length=64),
            nullable=True,
            comment="Azure error code of a refused or failed delete",
        ),
        sa.Column(
            "actor",
            sa.String(length=255),
            nullable=False,
            comment="Who acted: host of the daemon, or operator",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.ForeignKeyConstraint(
            ["pass_id"], ["passes.id"], name=op.f("fk_audit_log_pass_id_passes")
        ),
        sa.ForeignKeyConstraint(
            ["intent_id"], ["audit_log.id"], name=op.f("fk_audit_log_intent_id_audit_log")
        ),
        comment="Append-only record of deletion decisions: an intent precedes every delete",
    )
    op.create_index(
        op.f("ix_audit_log_account_container_blob"), "audit_log", ["account", "container", "blob"]
    )
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"])

    op.create_table(
        "operator_holds",
        sa.Column(
            "account", sa.String(length=63), nullable=False, comment="Storage account name"
        ),
        sa.Column("container", sa.String(length=63), nullable=False, comment="Container name"),
        sa.Column(
            "blob", sa.String(length=1024), nullable=False, comment="Blob name, percent-decoded"
        ),
        sa.Column("reason", sa.Text(), nullable=False, comment="Why the operator keeps it"),
        sa.Column("created_by", sa.String(length=255), nullable=False, comment="Who asked"),
        sa.Column("created_at", UTC_DATETIME, nullable=False, comment="When"),
        sa.PrimaryKeyConstraint("account", "container", "blob", name=op.f("pk_operator_holds")),
        comment="Blobs an operator asked vhd-gc to keep (vhd-gc keep)",
    )


def downgrade() -> None:
    op.drop_table("operator_holds")
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")
    op.drop_index(op.f("ix_audit_log_account_container_blob"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_tracked_blobs_account_state"), table_name="tracked_blobs")
    op.drop_index(op.f("ix_tracked_blobs_state"), table_name="tracked_blobs")
    op.drop_table("tracked_blobs")
    op.drop_table("passes")
