"""The words of the domain as plain data: no I/O, no SDK types.

Everything that crosses a module boundary (adapters -> passes -> decide -> state/execute) is one of
these. They are deliberately small: a large estate holds millions of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple


class BlobKey(NamedTuple):
    """The identity of a blob: what references and listings are matched on.

    ``account`` and ``container`` are lower-case (Azure compares them without case); ``blob`` is the
    exact, percent-decoded blob name (Azure blob names are case-sensitive).
    """

    account: str
    container: str
    blob: str

    def __str__(self) -> str:
        return f"{self.account}/{self.container}/{self.blob}"


class ContainerKey(NamedTuple):
    account: str
    container: str


class RefKind(str, enum.Enum):
    """Where Azure holds a blob URI (see AZURE-NOTES.md and gc_daemon/sources/)."""

    VM_OS_DISK = "vm_os_disk"  # virtualMachines: storageProfile.osDisk.vhd.uri
    VM_DATA_DISK = "vm_data_disk"  # storageProfile.dataDisks[].vhd.uri
    VM_IMAGE = "vm_image"  # osDisk.image.uri / dataDisks[].image.uri (user image of an unmanaged VM)
    VMSS_CONTAINER = "vmss_vhd_container"  # scale set osDisk.vhdContainers[]: a whole container
    VMSS_IMAGE = "vmss_image"  # scale set osDisk.image.uri
    VMSS_VM_DISK = "vmss_vm_disk"  # scale-set instance osDisk.vhd.uri / dataDisks[].vhd.uri
    VMSS_VM_IMAGE = "vmss_vm_image"  # scale-set instance osDisk.image.uri
    IMAGE_BLOB = "image_blob"  # images: storageProfile.osDisk.blobUri / dataDisks[].blobUri
    GALLERY_SOURCE = "gallery_source"  # gallery image versions: osDiskImage/dataDiskImages source.uri
    DISK_IMPORT = "disk_import"  # disks: creationData.sourceUri (time-limited, see import_hold)
    SNAPSHOT_IMPORT = "snapshot_import"  # snapshots: creationData.sourceUri (time-limited)
    DISK_SECURITY = "disk_security"  # disks: securityDataUri / securityMetadataUri (kept, to be safe)
    GALLERY_APPLICATION = "gallery_application"  # gallery application versions: mediaLink, defaultConfigurationLink
    SITE_RECOVERY = "site_recovery"  # replication protected items: diskUri, recoveryDiskUri, ...
    SITE_RECOVERY_ACCOUNT = "site_recovery_account"  # their staging (cache), log, recovery accounts: whole accounts
    MIGRATION = "azure_migrate"  # migration items: seedBlobUri, targetBlobUri, ...
    MIGRATION_ACCOUNT = "azure_migrate_account"  # their log accounts: whole accounts
    IMAGE_BUILDER_OUTPUT = "image_builder_output"  # Image Builder run outputs: artifactUri
    DEVTEST_LAB_IMAGE = "devtest_lab_image"  # DevTest Labs custom images: vhd.imageName in the lab's uploads

    @property
    def is_import(self) -> bool:
        return self in (RefKind.DISK_IMPORT, RefKind.SNAPSHOT_IMPORT)

    @property
    def scope(self) -> str:
        """What one reference of this kind protects: a ``blob``, a whole ``container`` (its URI is a
        container URL) or a whole ``account`` (its URI is the storage account's ARM id)."""
        if self is RefKind.VMSS_CONTAINER:
            return "container"
        if self in (RefKind.SITE_RECOVERY_ACCOUNT, RefKind.MIGRATION_ACCOUNT):
            return "account"
        return "blob"


@dataclass(frozen=True, slots=True)
class RawReference:
    """A blob or container URI exactly as an Azure Compute resource holds it.

    Produced by the compute adapter; turned into a :class:`Reference` by parsing the URI (a URI
    that cannot be parsed makes the pass incomplete).
    """

    kind: RefKind
    holder: str  # ARM resource id of the resource that holds the reference
    uri: str
    # Imports only: when the disk/snapshot was created and whether it is provisioned yet.
    time_created: datetime | None = None
    provisioning_state: str | None = None
    field: str | None = None  # where in the holder it was found, when the kind does not say it


@dataclass(frozen=True, slots=True)
class Reference:
    kind: RefKind
    holder: str
    uri: str
    key: BlobKey | None  # the blob, for references of blob scope
    container: ContainerKey | None  # container scope (VMSS_CONTAINER): every blob in it is protected
    time_created: datetime | None = None
    provisioning_state: str | None = None
    field: str | None = None  # where in the holder it was found, when the kind does not say it

    def protects_at(self, now: datetime, import_hold: timedelta) -> bool:
        """Whether this reference keeps its blob in use at ``now``.

        Everything but an import protects for as long as it exists. An import copies the data, so
        it protects its source only until the disk/snapshot is provisioned and ``import_hold``
        has passed since its creation. Missing facts keep the blob (uncertainty keeps).
        """
        if not self.kind.is_import:
            return True
        if str(self.provisioning_state or "").lower() != "succeeded":
            return True
        if self.time_created is None:
            return True
        return now < self.time_created + import_hold


class ServiceTime(NamedTuple):
    """The storage service's own time, from the ``Date`` header of the first answer of an account's
    listing: what a blob's age is measured against (``min_age``), and what the local clock is checked
    against (``azure.max_clock_skew``). Blobs listed later can only look younger against it."""

    date: datetime | None  # timezone-aware UTC; None when the answer carried no Date header
    received: float  # time.monotonic() when that answer had arrived


class LeaseState(str, enum.Enum):
    AVAILABLE = "available"
    LEASED = "leased"
    EXPIRED = "expired"
    BREAKING = "breaking"
    BROKEN = "broken"


@dataclass(slots=True)
class BlobSeen:
    """One base blob as a listing (or a re-read) saw it. Snapshots are folded into ``snapshot_count``."""

    key: BlobKey
    url: str
    blob_type: str  # "PageBlob" | "BlockBlob" | "AppendBlob"
    size: int
    etag: str
    last_modified: datetime  # timezone-aware UTC
    lease_state: str | None = None  # a LeaseState value; None when the service did not say
    lease_status: str | None = None  # "locked" | "unlocked"
    snapshot_count: int = 0
    keep_metadata: bool = False  # metadata has the key vhdgc_keep (any value, any case of the key)
    keep_tag: bool = False  # index tags have the key vhdgc-keep
    owner_hint: str | None = None  # metadata MicrosoftAzureCompute_VMName, left by an attached VM
    tier: str | None = None  # access tier; premium page blobs say P10, P20, ...
    # Evidence that other services left in the metadata (None when absent):
    image_type: str | None = None  # MicrosoftAzureCompute_ImageType: a captured VM image
    created_by: str | None = None  # createdby: k8sAzureDataDisk for a Kubernetes in-tree volume
    owner_group: str | None = None  # MicrosoftAzureCompute_ResourceGroupName of the last VM
    owner_disk: str | None = None  # MicrosoftAzureCompute_DiskName it had there

    @property
    def leased(self) -> bool:
        """A blob holds a lease unless the service says it has none (available, expired, broken)
        and does not say it is locked: an unknown or unexpected lease state counts as leased."""
        state = (self.lease_state or "").lower()
        return state not in ("available", "expired", "broken") or (self.lease_status or "").lower() == "locked"

    @property
    def is_vhd(self) -> bool:
        return self.blob_type == "PageBlob" and self.key.blob.lower().endswith(".vhd")


class State(str, enum.Enum):
    """Lifecycle of a tracked blob, as the report names it."""

    CANDIDATE = "candidate"  # orphaned, not yet due
    DUE = "due"  # would be deleted: dry-run, or over the pass limit
    DELETED = "deleted"  # vhd-gc deleted it
    KEPT = "kept"  # an orphan that is held (snapshots, opt-out, operator, not a VHD)
    RELEASED = "released"  # was a candidate, is in use again (or was modified)


class Hold(str, enum.Enum):
    """Why an orphan is kept."""

    SNAPSHOTS = "snapshots"
    METADATA = "metadata"  # metadata key vhdgc_keep
    TAG = "tag"  # index tag vhdgc-keep
    OPERATOR = "operator"  # `vhd-gc keep`
    BLOCK_BLOB = "block_blob"  # a .vhd uploaded as a block blob: reported, never deleted
    NOT_VHD = "not_vhd"  # a page blob not named .vhd: reported, never deleted
    CAPTURED_IMAGE = "captured_image"  # system/Microsoft.Compute/Images/..., or ImageType metadata
    KUBERNETES = "kubernetes"  # an in-tree azureDisk volume (unleased while no pod mounts it)


@dataclass(frozen=True, slots=True)
class Policy:
    min_age: timedelta
    grace_period: timedelta
    min_sightings: int
    import_hold: timedelta
    delete_block_blob_vhds: bool = False
    delete_non_vhd_page_blobs: bool = False
    captured_image_max_age: timedelta | None = None  # None: captured images are held forever
    hold_kubernetes_volumes: bool = True


@dataclass(slots=True)
class Tracked:
    """The stored state of one tracked blob (one row of the state database)."""

    key: BlobKey
    url: str
    state: State
    blob_type: str
    size_bytes: int
    etag: str | None  # the ETag recorded when it was marked (candidate) or last seen
    last_modified: datetime | None
    first_orphaned_at: datetime | None
    delete_after: datetime | None
    # Sequence number (among complete passes) of the first sighting of the current run of
    # consecutive sightings. A row that is still candidate/due/kept after a complete pass was seen
    # orphaned by it, so the count is derived, and an unchanged blob costs no write.
    streak_start: int | None
    sightings_frozen: int | None = None  # sightings when it left the counting states
    billed_bytes: int | None = None
    hold: Hold | None = None
    reason: str | None = None
    last_owner: str | None = None
    tier: str | None = None
    deleted_at: datetime | None = None
    updated_at: datetime | None = None
    recoverable_until: datetime | None = None  # deleted with soft delete on: restorable until then

    def sightings(self, current_seq: int) -> int:
        if self.state in (State.CANDIDATE, State.DUE, State.KEPT) and self.streak_start is not None:
            return max(0, current_seq - self.streak_start + 1)
        return self.sightings_frozen or 0


@dataclass(slots=True)
class Change:
    """A row to write: the new stored state of a blob, and whether its billed bytes need measuring."""

    row: Tracked
    measure: bool = False  # measure billed bytes (new candidate, or its ETag changed)
    event: str = ""  # what happened, for the log: marked, due, kept, released, restarted, ...


@dataclass(frozen=True, slots=True)
class Forget:
    """Stop tracking a blob (it vanished without vhd-gc deleting it)."""

    key: BlobKey
    reason: str = "vanished"


class Verdict(str, enum.Enum):
    """What the pure classifier says of one blob at one instant."""

    REFERENCED = "referenced"
    LEASED = "leased"
    TOO_YOUNG = "too_young"
    ORPHAN = "orphan"


@dataclass(frozen=True, slots=True)
class Classification:
    verdict: Verdict
    hold: Hold | None = None  # for orphans: why it is kept, if it is
    references: tuple[Reference, ...] = ()  # the references that hold it (or expired imports)
    reason: str = ""

    @property
    def deletable(self) -> bool:
        return self.verdict is Verdict.ORPHAN and self.hold is None


@dataclass(slots=True)
class PassStats:
    references: int = 0
    references_foreign: int = 0  # on hosts that can be no collected account: ignored for matching
    references_by_kind: dict[str, int] = field(default_factory=dict)
    blobs: int = 0
    blobs_by_account: dict[str, int] = field(default_factory=dict)
    # The storage service's time each account's blobs were aged at (ISO 8601), when it gave one.
    service_time_by_account: dict[str, str] = field(default_factory=dict)
    vhds: int = 0
    changes: int = 0
    marked: int = 0
    due: int = 0
    deleted: int = 0
    refused: int = 0
    failed: int = 0
    released: int = 0
    kept: int = 0
    vanished: int = 0
    # Billed bytes (Get Page Ranges): calls made, and rows written still unmeasured (measured next pass).
    billed_measured: int = 0
    billed_pending: int = 0
    new_candidates: int = 0  # blobs this pass made candidates (first sighting of a run)
    new_bytes: int = 0
    # account -> {"blobs": n, "bytes": nominal}: what this pass newly marked there (the guard names it)
    new_by_account: dict[str, dict[str, int]] = field(default_factory=dict)
    blocked: str | None = None  # why the blast-radius guard held the pass back
    # Managed disks and snapshots (issue 13): what the pass saw of them and what it did.
    disks: int = 0  # managed disks listed
    disks_unattached: int = 0
    snapshots: int = 0
    ownership_reads: int = 0  # GETs of single disks for LastOwnershipUpdateTime
    ownership_deferred: int = 0  # unattached disks over managed_disks.max_ownership_reads: read next pass
    disk_marked: int = 0
    disk_due: int = 0
    disk_kept: int = 0
    disk_released: int = 0
    disk_vanished: int = 0
    disks_deleted: int = 0
    snapshots_deleted: int = 0
    quarantine_snapshots: int = 0  # made this pass
    quarantine_expired: int = 0  # deleted this pass, their quarantine over
    new_disk_candidates: int = 0
    new_disk_bytes: int = 0
