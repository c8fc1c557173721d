"""The state database: what vhd-gc remembers between passes.

Seven tables: ``tracked_blobs`` (one row per orphaned blob we follow through its lifecycle),
``passes`` (one row per pass; complete passes get a sequence number that sightings are counted in),
``audit_log`` (every deletion decision, intent before the act; ``kind`` says whether about a blob, a
managed disk or a snapshot), ``operator_holds`` (``vhd-gc keep`` of a blob), ``tracked_disks`` (the
managed disks and snapshots, as :class:`gc_daemon.disks.DiskRow`), ``disk_holds`` (``vhd-gc keep``
of an ARM id) and ``owner_records`` (who owned a blob or a disk: its last holder and owner tags).

The schema is built and changed only by the Alembic migrations under ``migrations/``; these models
must describe exactly what the migrations create (``gc_daemon.state.db.model_drift`` checks it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from gc_daemon.domain import State

# Every constraint and index gets a predictable name, so a later migration can drop or alter it by
# name on every backend (SQLite batch mode needs names to rebuild a table).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PASS_OUTCOMES = ("running", "complete", "incomplete", "failed", "stopped")
TRACKED_STATES = tuple(s.value for s in State)
DISK_KINDS = ("managed_disk", "snapshot")
AUDIT_KINDS = ("vhd", *DISK_KINDS)
OWNER_SOURCES = ("reference", "metadata")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    Naive datetimes are refused on write (a naive "now" is the classic off-by-hours bug). SQLite has
    no time zones: it stores the UTC wall time and we put UTC back on when reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"UTCDateTime needs a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime refused (timezone-aware UTC required): {value!r}")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# Reusable column types.
intpk = Annotated[int, mapped_column(Integer, primary_key=True)]
Account = Annotated[str, mapped_column(String(63))]  # storage account names: 3-24, containers: 3-63
Container = Annotated[str, mapped_column(String(63))]
BlobName = Annotated[str, mapped_column(String(1024))]  # Azure caps blob names at 1024 characters


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class TrackedBlob(Base):
    __tablename__ = "tracked_blobs"
    __table_args__ = (
        UniqueConstraint("account", "container", "blob"),
        CheckConstraint(_in("state", TRACKED_STATES), name="state"),
        Index("ix_tracked_blobs_state", "state"),
        Index("ix_tracked_blobs_account_state", "account", "state"),
        {"comment": "Orphaned blobs vhd-gc follows from first sighting to deletion or release"},
    )

    id: Mapped[intpk]
    account: Mapped[Account] = mapped_column(comment="Storage account name, lower-case")
    container: Mapped[Container] = mapped_column(comment="Container name, lower-case")
    blob: Mapped[BlobName] = mapped_column(comment="Blob name, percent-decoded, case as in Azure")
    url: Mapped[str] = mapped_column(Text, comment="Canonical blob URL")
    state: Mapped[str] = mapped_column(
        String(16), comment="Lifecycle state: candidate, due, deleted, kept, released"
    )
    blob_type: Mapped[str] = mapped_column(
        String(16), comment="PageBlob, BlockBlob or AppendBlob, as the listing said"
    )
    size_bytes: Mapped[int] = mapped_column(BigInteger, comment="Nominal size of the blob")
    billed_bytes: Mapped[int | None] = mapped_column(
        BigInteger, comment="Bytes actually stored (sum of written page ranges); NULL: not measured"
    )
    etag: Mapped[str | None] = mapped_column(
        String(128), comment="ETag recorded when marked; a delete is conditional on it"
    )
    last_modified: Mapped[datetime | None] = mapped_column(comment="Last-Modified of the blob")
    first_orphaned_at: Mapped[datetime | None] = mapped_column(
        comment="When the current run of orphan sightings began"
    )
    delete_after: Mapped[datetime | None] = mapped_column(
        comment="Earliest deletion time (first_orphaned_at + grace period)"
    )
    deleted_at: Mapped[datetime | None] = mapped_column(comment="When vhd-gc deleted it")
    updated_at: Mapped[datetime | None] = mapped_column(comment="When this row was last written")
    streak_start: Mapped[int | None] = mapped_column(
        Integer,
        comment="passes.seq of the first sighting of the current run of consecutive sightings",
    )
    sightings_frozen: Mapped[int | None] = mapped_column(
        Integer, comment="Sightings when the blob left the counting states (deleted, released)"
    )
    hold: Mapped[str | None] = mapped_column(
        String(16),
        comment="Why a kept orphan is kept: snapshots, metadata, tag, operator, block_blob, not_vhd",
    )
    reason: Mapped[str | None] = mapped_column(Text, comment="Human-readable reason of the state")
    last_owner: Mapped[str | None] = mapped_column(
        Text, comment="VM that last held the blob (metadata MicrosoftAzureCompute_VMName)"
    )
    tier: Mapped[str | None] = mapped_column(
        String(16), comment="Access tier; premium page blobs say P10, P20, ..."
    )
    recoverable_until: Mapped[datetime | None] = mapped_column(
        comment="Deleted with blob soft delete on: until when `vhd-gc restore` can bring it back",
    )


class Pass(Base):
    __tablename__ = "passes"
    __table_args__ = (
        UniqueConstraint("seq"),
        CheckConstraint(_in("outcome", PASS_OUTCOMES), name="outcome"),
        {"comment": "One row per pass; complete passes are numbered by seq"},
    )

    id: Mapped[intpk]
    seq: Mapped[int | None] = mapped_column(
        Integer,
        comment="Number among complete passes (1, 2, 3...); NULL unless complete. "
        "Unique, so two replicas can never both complete the same pass",
    )
    started_at: Mapped[datetime] = mapped_column(comment="When the pass began")
    finished_at: Mapped[datetime | None] = mapped_column(comment="When the pass ended")
    outcome: Mapped[str] = mapped_column(
        String(16),
        comment="running, complete, incomplete (changed nothing), failed, or stopped (by SIGTERM/SIGINT)",
    )
    mode: Mapped[str] = mapped_column(String(16), comment="dry-run or delete")
    host: Mapped[str] = mapped_column(String(255), comment="Host (replica) that ran the pass")
    error: Mapped[str | None] = mapped_column(Text, comment="Why the pass was incomplete or failed")
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, comment="Counts of the pass")


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_account_container_blob", "account", "container", "blob"),
        Index("ix_audit_log_action", "action"),
        {"comment": "Append-only record of deletion decisions: an intent precedes every delete"},
    )

    id: Mapped[intpk]
    at: Mapped[datetime] = mapped_column(comment="When it happened")
    pass_id: Mapped[int | None] = mapped_column(
        ForeignKey("passes.id"), comment="The pass that acted, if any"
    )
    intent_id: Mapped[int | None] = mapped_column(
        ForeignKey("audit_log.id"),
        comment="For an outcome (deleted, delete-refused, delete-failed): its delete-intent row",
    )
    action: Mapped[str] = mapped_column(
        String(32),
        comment="delete-intent, deleted, delete-refused, delete-failed, keep, unkeep, ...",
    )
    account: Mapped[Account] = mapped_column(comment="Storage account name, lower-case")
    container: Mapped[Container] = mapped_column(comment="Container name, lower-case")
    blob: Mapped[BlobName] = mapped_column(comment="Blob name, percent-decoded")
    url: Mapped[str] = mapped_column(Text, comment="Canonical blob URL")
    etag: Mapped[str | None] = mapped_column(String(128), comment="ETag the action was bound to")
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, comment="Nominal size")
    billed_bytes: Mapped[int | None] = mapped_column(BigInteger, comment="Bytes actually stored")
    reason: Mapped[str | None] = mapped_column(Text, comment="Why")
    error_code: Mapped[str | None] = mapped_column(
        String(64), comment="Azure error code of a refused or failed delete"
    )
    actor: Mapped[str] = mapped_column(String(255), comment="Who acted: host of the daemon, or operator")
    kind: Mapped[str] = mapped_column(
        String(16), server_default="vhd", comment="What the entry is about: vhd, managed_disk or snapshot"
    )


class OperatorHold(Base):
    __tablename__ = "operator_holds"
    __table_args__ = ({"comment": "Blobs an operator asked vhd-gc to keep (vhd-gc keep)"},)

    account: Mapped[Account] = mapped_column(primary_key=True, comment="Storage account name")
    container: Mapped[Container] = mapped_column(primary_key=True, comment="Container name")
    blob: Mapped[BlobName] = mapped_column(primary_key=True, comment="Blob name, percent-decoded")
    reason: Mapped[str] = mapped_column(Text, comment="Why the operator keeps it")
    created_by: Mapped[str] = mapped_column(String(255), comment="Who asked")
    created_at: Mapped[datetime] = mapped_column(comment="When")


ResourceKey = Annotated[str, mapped_column(String(1024))]


class TrackedDisk(Base):
    __tablename__ = "tracked_disks"
    __table_args__ = (
        UniqueConstraint("resource_key"),
        CheckConstraint(_in("state", TRACKED_STATES), name="state"),
        CheckConstraint(_in("kind", DISK_KINDS), name="kind"),
        Index("ix_tracked_disks_state", "state"),
        Index("ix_tracked_disks_subscription_kind_state", "subscription", "kind", "state"),
        {"comment": "Unattached managed disks and orphaned snapshots vhd-gc follows"},
    )

    id: Mapped[intpk]
    resource_key: Mapped[ResourceKey] = mapped_column(
        comment="The ARM id, lower-cased (ARM ids compare without case)"
    )
    resource_id: Mapped[str] = mapped_column(Text, comment="The ARM id, as Azure spells it")
    kind: Mapped[str] = mapped_column(String(16), comment="managed_disk or snapshot")
    state: Mapped[str] = mapped_column(
        String(16), comment="Lifecycle state: candidate, due, deleted, kept, released"
    )
    first_orphaned_at: Mapped[datetime | None] = mapped_column(
        comment="When the current run of orphan sightings began"
    )
    delete_after: Mapped[datetime | None] = mapped_column(
        comment="Earliest deletion time (first_orphaned_at + grace period)"
    )
    streak_start: Mapped[int | None] = mapped_column(
        Integer,
        comment="passes.seq of the first sighting of the current run of consecutive sightings",
    )
    sightings_frozen: Mapped[int | None] = mapped_column(
        Integer, comment="Sightings when the row left the counting states (deleted, released)"
    )
    ownership_time: Mapped[datetime | None] = mapped_column(
        comment="LastOwnershipUpdateTime when marked (a snapshot: timeCreated); the delete is bound to it"
    )
    ownership_known: Mapped[bool] = mapped_column(
        Boolean,
        server_default=false(),
        comment="Whether an ownership time was recorded (NULL ownership_time then means never attached)",
    )
    hold: Mapped[str | None] = mapped_column(
        String(16),
        comment="Why a kept disk is kept: referenced, operator, locked, managed_group, kubernetes, "
        "site_recovery, backup, tag",
    )
    reason: Mapped[str | None] = mapped_column(Text, comment="Human-readable reason of the state")
    updated_at: Mapped[datetime | None] = mapped_column(comment="When this row was last written")
    deleted_at: Mapped[datetime | None] = mapped_column(comment="When vhd-gc deleted it")
    subscription: Mapped[str | None] = mapped_column(String(64), comment="Subscription id")
    resource_group: Mapped[str | None] = mapped_column(String(90), comment="Resource group name")
    name: Mapped[str | None] = mapped_column(String(255), comment="Resource name")
    sku: Mapped[str | None] = mapped_column(String(32), comment="Premium_LRS, StandardSSD_LRS, ...")
    disk_state: Mapped[str | None] = mapped_column(String(32), comment="diskState of a disk as last listed")
    size_bytes: Mapped[int | None] = mapped_column(
        BigInteger, comment="Provisioned bytes (a snapshot: its source's size)"
    )
    location: Mapped[str | None] = mapped_column(String(64), comment="Azure region")
    zones: Mapped[Any | None] = mapped_column(JSON, comment="Availability zones (a list)")
    tags: Mapped[Any | None] = mapped_column(JSON, comment="Tags as last listed (an object)")
    fingerprint: Mapped[str | None] = mapped_column(
        Text, comment="The listing when the ownership time was last read: a GET again when it differs"
    )
    quarantine_snapshot: Mapped[str | None] = mapped_column(
        Text, comment="ARM id of the quarantine snapshot made before deleting it"
    )
    quarantine_until: Mapped[datetime | None] = mapped_column(
        comment="Until when the quarantine snapshot is kept"
    )


class DiskHoldRow(Base):
    __tablename__ = "disk_holds"
    __table_args__ = ({"comment": "Disks and snapshots an operator asked vhd-gc to keep (vhd-gc keep ID)"},)

    resource_key: Mapped[ResourceKey] = mapped_column(primary_key=True, comment="The ARM id, lower-cased")
    resource_id: Mapped[str] = mapped_column(Text, comment="The ARM id, as the operator gave it")
    reason: Mapped[str] = mapped_column(Text, comment="Why the operator keeps it")
    created_by: Mapped[str] = mapped_column(String(255), comment="Who asked")
    created_at: Mapped[datetime] = mapped_column(comment="When")


class OwnerRecordRow(Base):
    __tablename__ = "owner_records"
    __table_args__ = (
        CheckConstraint(_in("source", OWNER_SOURCES), name="source"),
        {"comment": "Who owned a blob or a disk: its last holder and that holder's owner tags"},
    )

    item_id: Mapped[str] = mapped_column(
        String(1200),
        primary_key=True,
        comment="account/container/blob of a blob, the lower-cased ARM id of a disk or snapshot",
    )
    holder: Mapped[str | None] = mapped_column(
        Text, comment="ARM id of the last holder seen (VM, scale set, image, gallery version, disk)"
    )
    owner: Mapped[str | None] = mapped_column(
        Text, comment="The first owner tag's value on the holder, then on its resource group"
    )
    tags: Mapped[Any | None] = mapped_column(JSON, comment="The holder's owner tags (an object)")
    group_tags: Mapped[Any | None] = mapped_column(
        JSON, comment="The holder's resource group's tags (an object)"
    )
    source: Mapped[str] = mapped_column(
        String(16), comment="reference (seen held by a pass) or metadata (MicrosoftAzureCompute_* only)"
    )
    first_seen: Mapped[datetime | None] = mapped_column(comment="First pass that saw it held by this holder")
    last_seen: Mapped[datetime | None] = mapped_column(
        comment="Last pass that saw it held (NULL: only from metadata)"
    )
    updated_at: Mapped[datetime | None] = mapped_column(comment="When this row was last written")


tracked_blobs = TrackedBlob.__table__
passes = Pass.__table__
audit_log = AuditEntry.__table__
operator_holds = OperatorHold.__table__
tracked_disks = TrackedDisk.__table__
disk_holds = DiskHoldRow.__table__
owner_records = OwnerRecordRow.__table__
