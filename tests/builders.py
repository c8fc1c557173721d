"""Small builders for the decision's inputs, so a test reads like the scenario it checks.

Every builder has safe, boring defaults (an old, unleased, unreferenced page blob named .vhd) and
takes keyword overrides for the one fact the scenario is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from gc_daemon.decide import BlobDecision, ReferenceIndex, classify, decide_blob
from gc_daemon.domain import (
    BlobKey,
    BlobSeen,
    ContainerKey,
    Hold,
    Policy,
    RawReference,
    Reference,
    RefKind,
    State,
    Tracked,
)
from gc_daemon.urls import blob_url, default_blob_endpoint

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
ACCOUNT = "gcacct1"
SUB_ID = "00000000-0000-0000-0000-000000000001"
CONTAINER = "vhds"
VM = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
DISK = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Compute/disks/disk1"
GIB = 1024**3


def key(name: str = "disk.vhd", *, container: str = CONTAINER, account: str = ACCOUNT) -> BlobKey:
    return BlobKey(account, container, name)


def url(k: BlobKey) -> str:
    return blob_url(default_blob_endpoint(k.account), k)


def policy(
    *,
    min_age: timedelta = timedelta(hours=24),
    grace_period: timedelta = timedelta(days=7),
    min_sightings: int = 3,
    import_hold: timedelta = timedelta(days=7),
    delete_block_blob_vhds: bool = False,
    delete_non_vhd_page_blobs: bool = False,
    captured_image_max_age: timedelta | None = None,
    hold_kubernetes_volumes: bool = True,
) -> Policy:
    """The contract's example policy unless told otherwise."""
    return Policy(
        min_age=min_age,
        grace_period=grace_period,
        min_sightings=min_sightings,
        import_hold=import_hold,
        delete_block_blob_vhds=delete_block_blob_vhds,
        delete_non_vhd_page_blobs=delete_non_vhd_page_blobs,
        captured_image_max_age=captured_image_max_age,
        hold_kubernetes_volumes=hold_kubernetes_volumes,
    )


def seen(
    name: str = "disk.vhd",
    *,
    k: BlobKey | None = None,
    blob_type: str = "PageBlob",
    etag: str = '"0x8DC0000000000001"',
    now: datetime = NOW,
    age: timedelta = timedelta(days=30),
    last_modified: datetime | None = None,
    lease_state: str | None = "available",
    lease_status: str | None = "unlocked",
    snapshots: int = 0,
    keep_metadata: bool = False,
    keep_tag: bool = False,
    owner_hint: str | None = None,
    size: int = 30 * GIB,
    tier: str | None = None,
    image_type: str | None = None,
    created_by: str | None = None,
    owner_group: str | None = None,
    owner_disk: str | None = None,
) -> BlobSeen:
    """A blob as a listing saw it: by default an old, unleased page blob named .vhd."""
    k = k or key(name)
    return BlobSeen(
        key=k,
        url=url(k),
        blob_type=blob_type,
        size=size,
        etag=etag,
        last_modified=last_modified if last_modified is not None else now - age,
        lease_state=lease_state,
        lease_status=lease_status,
        snapshot_count=snapshots,
        keep_metadata=keep_metadata,
        keep_tag=keep_tag,
        owner_hint=owner_hint,
        tier=tier,
        image_type=image_type,
        created_by=created_by,
        owner_group=owner_group,
        owner_disk=owner_disk,
    )


def leased(name: str = "disk.vhd", **kw) -> BlobSeen:
    return seen(name, lease_state="leased", lease_status="locked", **kw)


def ref(
    kind: RefKind,
    target: BlobKey,
    *,
    holder: str = VM,
    time_created: datetime | None = None,
    provisioning_state: str | None = None,
) -> Reference:
    """A parsed reference to one blob."""
    return Reference(kind, holder, url(target), target, None, time_created, provisioning_state)


def container_ref(container: str = CONTAINER, *, account: str = ACCOUNT, holder: str = VM) -> Reference:
    """A scale set's vhdContainers entry: every blob of that container is protected."""
    uri = f"{default_blob_endpoint(account)}/{container}"
    return Reference(RefKind.VMSS_CONTAINER, holder, uri, None, ContainerKey(account, container))


def account_ref(account: str = ACCOUNT, *, kind: RefKind = RefKind.SITE_RECOVERY_ACCOUNT, holder: str = VM) -> Reference:
    """A staging/cache/log account a Site Recovery item names: every blob of the account is in use."""
    uri = f"/subscriptions/{SUB_ID}/resourceGroups/asr-rg/providers/Microsoft.Storage/storageAccounts/{account}"
    return Reference(kind, holder, uri, None, None)


def import_ref(
    target: BlobKey,
    *,
    created: datetime | None,
    provisioning_state: str | None = "Succeeded",
    kind: RefKind = RefKind.DISK_IMPORT,
    holder: str = DISK,
) -> Reference:
    return ref(kind, target, holder=holder, time_created=created, provisioning_state=provisioning_state)


def raw(
    kind: RefKind,
    uri: str,
    *,
    holder: str = VM,
    time_created: datetime | None = None,
    provisioning_state: str | None = None,
) -> RawReference:
    """A reference exactly as the compute adapter reads it, before its URI is parsed."""
    return RawReference(kind, holder, uri, time_created, provisioning_state)


def index(*refs: Reference) -> ReferenceIndex:
    built, errors = ReferenceIndex.build(
        RawReference(r.kind, r.holder, r.uri, r.time_created, r.provisioning_state, r.field) for r in refs
    )
    assert not errors, errors
    return built


def tracked(
    blob: BlobSeen,
    *,
    state: State = State.CANDIDATE,
    first_orphaned_at: datetime | None = None,
    grace_period: timedelta = timedelta(days=7),
    streak_start: int | None = 1,
    sightings_frozen: int | None = None,
    billed_bytes: int | None = 5 * GIB,
    hold: Hold | None = None,
    etag: str | None = None,
    last_owner: str | None = None,
) -> Tracked:
    """A stored row for ``blob``, as a previous pass would have written it."""
    first = first_orphaned_at or NOW - timedelta(days=1)
    return Tracked(
        key=blob.key,
        url=blob.url,
        state=state,
        blob_type=blob.blob_type,
        size_bytes=blob.size,
        etag=etag if etag is not None else blob.etag,
        last_modified=blob.last_modified,
        first_orphaned_at=first,
        delete_after=first + grace_period if state in (State.CANDIDATE, State.DUE) else None,
        streak_start=streak_start,
        sightings_frozen=sightings_frozen,
        billed_bytes=billed_bytes,
        hold=hold,
        last_owner=last_owner,
    )


def see(
    blob: BlobSeen,
    prev: Tracked | None = None,
    *,
    refs: ReferenceIndex | None = None,
    holds: Mapping[BlobKey, str] | None = None,
    pol: Policy | None = None,
    now: datetime = NOW,
    seq: int = 1,
) -> BlobDecision:
    """One complete pass over one blob: classify it, then decide its transition."""
    pol = pol or policy()
    c = classify(blob, refs or index(), holds or {}, pol, now)
    return decide_blob(blob, prev, c, pol, now, seq)
