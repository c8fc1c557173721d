"""The reference read's managed-disk half (gc_daemon/sources/: disks, snapshots, images, galleries,
resource_groups, locks) against the ARM stand-in, with the real SDK clients over HTTPS: every field
the disk decision reads, from the same listings the import references come from; paging; nulls and
odd casing; a failing or malformed groups or locks list fails the read; no disks at all (the pass's
disk half skipped) unless every source it is joined with was read completely.

The consumer is gc_daemon/disk_pass.py's ``DiskInventory.join(read)``: where it matters, the read is
handed to it and its answer checked too."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from azure.mgmt.compute import ComputeManagementClient

from gc_daemon.azure.credentials import EmulatorCredential
from gc_daemon.disk_pass import DiskInventory
from gc_daemon.disks import GIB, LockSeen
from gc_daemon.sources import DISK_SOURCES, REGISTRY, without_placement
from gc_daemon.sources.base import GroupSeen, LockAt
from gc_daemon.sources.disks import disk_seen
from sandbox import arm as sb
from sandbox import arm_disks as ad

S1 = "00000000-0000-0000-0000-000000000001"
S2 = "00000000-0000-0000-0000-000000000002"
RG = "rg-disks"
CREATED = "2025-11-02T03:04:05Z"
OWNED = "2026-02-01T10:00:00Z"
VM1 = sb.compute_id(S1, RG, "virtualMachines", "vm1")
VM2 = sb.compute_id(S1, RG, "virtualMachines", "vm2")
AKS = f"/subscriptions/{S1}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/k1"


def disk_id(name: str, rg: str = RG, sub: str = S1) -> str:
    return sb.compute_id(sub, rg, "disks", name)


def snap_id(name: str, rg: str = RG, sub: str = S1) -> str:
    return sb.compute_id(sub, rg, "snapshots", name)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _nulls(item: dict, *keys: str, props: tuple[str, ...] = ()) -> dict:
    item = copy.deepcopy(item)
    for key in keys:
        item[key] = None
    for key in props:
        item["properties"][key] = None
    return item


def _missing(item: dict, *keys: str, props: tuple[str, ...] = ()) -> dict:
    item = copy.deepcopy(item)
    for key in keys:
        item.pop(key, None)
    for key in props:
        item["properties"].pop(key, None)
    return item


def full_estate() -> dict:
    """Disks and snapshots of every shape the decision tells apart, their groups, locks, and the
    images and gallery versions made from some of them."""
    orphan = ad.managed_disk(S1, RG, "orphan", last_ownership_update_time=OWNED, time_created=CREATED,
                             tags={"team": "a", "vhdgc-keep": ""}, sku="StandardSSD_ZRS", size_gb=64, zones=["2"],
                             location="northeurope")
    attached = ad.managed_disk(S1, RG, "attached", disk_state="Attached", managed_by=VM1, time_created=CREATED)
    shared = ad.managed_disk(S1, RG, "shared", disk_state="Reserved", managed_by_extended=[VM1, VM2], max_shares=2,
                             time_created=CREATED)
    # Nulls where the service may send them, and keys left out.
    nulls = _nulls(ad.managed_disk(S1, RG, "nulls", time_created=CREATED), "tags", "managedBy", "managedByExtended",
                   "zones", "sku", props=("diskSizeBytes", "timeCreated", "diskState"))
    bare = _missing(ad.managed_disk(S1, RG, "bare", time_created=CREATED), "tags", "sku", "zones",
                    props=("diskSizeGB", "diskSizeBytes", "timeCreated", "diskState", "provisioningState"))
    # A disk in a group whose id ARM spells otherwise (odd casing), held by the group's lock.
    odd = ad.managed_disk(S1, "RG-Upper", "Odd", time_created=CREATED)
    odd["id"] = f"/subscriptions/{S1}/resourcegroups/RG-Upper/providers/microsoft.compute/disks/Odd"
    in_aks = ad.managed_disk(S1, "MC_rg-aks_k1_westeurope", "pvc-1", time_created=CREATED,
                             tags={"kubernetes.io-created-for-pvc-name": "data"})

    of_orphan = ad.incremental_snapshot(S1, RG, "of-orphan", source_disk_id=disk_id("orphan"), time_created=CREATED,
                                        tags={"vhdgc-quarantine-of": disk_id("orphan")}, size_gb=64)
    # Snapshot_Create_FromAnExistingSnapshot's sourceResourceId has no leading "/" (sic).
    of_gone = ad.incremental_snapshot(S1, RG, "of-gone", source_disk_id=disk_id("gone").lstrip("/").upper(),
                                      time_created=CREATED, incremental=False, sku="Standard_LRS")
    imported = sb.snapshot(S1, RG, "imported", source_uri="https://acct1.blob.core.windows.net/vhds/src.vhd",
                           time_created=CREATED)
    snap_nulls = _nulls(ad.incremental_snapshot(S1, RG, "snap-nulls", source_disk_id=disk_id("orphan"),
                                                time_created=CREATED), "tags", "sku",
                        props=("incremental", "timeCreated"))

    groups = [
        ad.resource_group(S1, RG, tags={"owner": "ops"}),
        ad.resource_group(S1, "MC_rg-aks_k1_westeurope", managed_by=AKS, tags={"aks-managed-cluster-name": "k1"}),
        _nulls(ad.resource_group(S1, "rg-nulls"), "tags", "managedBy"),
    ]
    upper = ad.resource_group(S1, "rg-upper")
    upper["id"] = f"/subscriptions/{S1}/resourceGroups/rg-upper"  # the group as its own list spells it
    groups.append(upper)
    locks = [
        ad.management_lock(f"/subscriptions/{S1}", "sub-lock", "ReadOnly", notes="frozen"),
        ad.management_lock(sb.rg_id(S1, "RG-UPPER"), "group-lock", "CanNotDelete"),
        ad.management_lock(disk_id("attached"), "disk-lock", "NotSpecified"),
    ]
    image = ad.image_of_disks(S1, "rg-img", "img-of-disks",
                              os_disk=disk_id("orphan").lstrip("/"),  # the example's ids have no leading "/"
                              data=[(None, snap_id("of-gone").upper()), (disk_id("bare"), None)])
    gallery = [
        sb.gallery(S1, "rg-gal", "gal"),
        sb.gallery_image(S1, "rg-gal", "gal", "def"),
        ad.gallery_version_of_disks(S1, "rg-gal", "gal", "def", "1.0.0", os_source=snap_id("of-orphan"),
                                    data_sources=[disk_id("orphan"), disk_id("shared")]),
        ad.gallery_version_of_disks(S1, "rg-gal", "gal", "def", "1.0.1",
                                    source=sb.compute_id(S1, "rg-img", "images", "img-of-disks")),
    ]
    return sb.build_estate(orphan, attached, shared, nulls, bare, odd, in_aks, of_orphan, of_gone, imported,
                           snap_nulls, *groups, *locks, image, *gallery, subscriptions=[S1])


IMAGE = sb.compute_id(S1, "rg-img", "images", "img-of-disks")
V100 = sb.compute_id(S1, "rg-gal", "galleries", "gal", "images", "def", "versions", "1.0.0")


def test_every_disk_field_the_decision_reads(arm, compute_inventory):
    arm.set_estate(full_estate())
    read = compute_inventory([S1]).read()
    assert read.errors == []
    disks = {d.name: d for d in read.disks}
    assert sorted(disks) == ["Odd", "attached", "bare", "nulls", "orphan", "pvc-1", "shared"]

    orphan = disks["orphan"]
    assert (orphan.id, orphan.subscription, orphan.resource_group) == (disk_id("orphan"), S1, RG)
    assert (orphan.sku, orphan.size_gb, orphan.size_bytes, orphan.provisioned_bytes) == (
        "StandardSSD_ZRS", 64, 64 * GIB, 64 * GIB)
    assert (orphan.disk_state, orphan.managed_by, orphan.managed_by_extended) == ("Unattached", None, ())
    assert orphan.time_created == when(CREATED) and orphan.time_created.tzinfo is timezone.utc
    assert orphan.tags == {"team": "a", "vhdgc-keep": ""}
    assert (orphan.location, orphan.zones, orphan.provisioning_state) == ("northeurope", ("2",), "Succeeded")
    # The list has no ownership time (the estate has one): the pass GETs it when it needs it.
    assert orphan.last_ownership_update is None and orphan.ownership_read is False
    # What the join fills is left to it.
    assert (orphan.group_tags, orphan.group_managed_by, orphan.locks, orphan.referenced_by) == ({}, None, (), ())

    assert (disks["attached"].disk_state, disks["attached"].managed_by) == ("Attached", VM1)
    assert (disks["shared"].disk_state, disks["shared"].managed_by_extended) == ("Reserved", (VM1, VM2))
    for name in ("nulls", "bare"):
        d = disks[name]
        assert (d.disk_state, d.managed_by, d.managed_by_extended, d.tags, d.sku, d.zones, d.time_created) == (
            None, None, (), {}, None, (), None), name
    assert disks["nulls"].size_gb == 32 and disks["nulls"].size_bytes is None  # diskSizeGB kept, bytes null
    assert disks["nulls"].provisioned_bytes == 32 * GIB
    assert (disks["bare"].size_gb, disks["bare"].size_bytes, disks["bare"].provisioning_state) == (0, None, None)
    assert disks["Odd"].id == f"/subscriptions/{S1}/resourcegroups/RG-Upper/providers/microsoft.compute/disks/Odd"
    assert disks["Odd"].resource_group == "RG-Upper"
    assert read.disks_read == {S1}
    # The import references of the same listing are still there, and no disk was read twice.
    assert {r.holder for r in read.references} == {snap_id("imported")}
    disk_lists = [p for m, p in arm.requests if "/providers/Microsoft.Compute/disks" in p]
    assert len(disk_lists) == 4 and all(p.startswith(f"/subscriptions/{S1}/providers/Microsoft.Compute/disks?")
                                        for p in disk_lists)  # 7 disks: 4 pages of 2, no GET of one


def test_every_snapshot_field_the_decision_reads(arm, compute_inventory):
    arm.set_estate(full_estate())
    read = compute_inventory([S1]).read()
    assert read.errors == []
    snaps = {s.name: s for s in read.snapshots}
    assert sorted(snaps) == ["imported", "of-gone", "of-orphan", "snap-nulls"]

    s = snaps["of-orphan"]
    assert (s.id, s.subscription, s.resource_group) == (snap_id("of-orphan"), S1, RG)
    assert (s.source_resource_id, s.source_exists, s.incremental) == (disk_id("orphan"), None, True)
    assert (s.sku, s.size_gb, s.provisioned_bytes, s.used_bytes) == ("Standard_ZRS", 64, 64 * GIB, None)
    assert s.tags == {"vhdgc-quarantine-of": disk_id("orphan")}
    assert s.time_created == when(CREATED) and s.time_created.tzinfo is timezone.utc
    assert (s.location, s.provisioning_state) == (sb.DEFAULT_LOCATION, "Succeeded")

    gone = snaps["of-gone"]
    assert gone.source_resource_id == "/" + disk_id("gone").lstrip("/").upper()  # the leading "/" restored
    assert (gone.incremental, gone.sku) == (False, "Standard_LRS")
    assert snaps["imported"].source_resource_id is None  # an import: no source disk
    n = snaps["snap-nulls"]
    assert (n.tags, n.sku, n.incremental, n.time_created) == ({}, None, False, None)


def test_groups_locks_and_the_images_made_from_disks(arm, compute_inventory):
    arm.set_estate(full_estate())
    read = compute_inventory([S1]).read()
    assert read.errors == []
    key = lambda rg: f"/subscriptions/{S1}/resourcegroups/{rg}".lower()  # noqa: E731
    assert read.groups[key(RG)] == GroupSeen(sb.rg_id(S1, RG), {"owner": "ops"}, None)
    assert read.groups[key("MC_rg-aks_k1_westeurope")] == GroupSeen(
        sb.rg_id(S1, "MC_rg-aks_k1_westeurope"), {"aks-managed-cluster-name": "k1"}, AKS)
    assert read.groups[key("rg-nulls")] == GroupSeen(sb.rg_id(S1, "rg-nulls"), {}, None)
    assert read.groups[key("rg-upper")].id == f"/subscriptions/{S1}/resourceGroups/rg-upper"
    assert all(k == k.lower() for k in read.groups)

    assert read.locks == sorted(read.locks, key=lambda lk: lk.id.lower())
    locks = {lk.id.rsplit("/", 1)[1]: lk for lk in read.locks}
    assert locks == {
        "sub-lock": LockAt(f"/subscriptions/{S1}/providers/Microsoft.Authorization/locks/sub-lock", f"/subscriptions/{S1}",
                           "ReadOnly"),
        "group-lock": LockAt(f"{sb.rg_id(S1, 'RG-UPPER')}/providers/Microsoft.Authorization/locks/group-lock",
                             sb.rg_id(S1, "RG-UPPER"), "CanNotDelete"),
        "disk-lock": LockAt(f"{disk_id('attached')}/providers/Microsoft.Authorization/locks/disk-lock",
                            disk_id("attached"), "NotSpecified"),
    }

    low = str.lower
    assert read.resource_refs == {
        low(disk_id("orphan")): tuple(sorted((IMAGE, V100))),
        low(disk_id("bare")): (IMAGE,),
        low(disk_id("shared")): (V100,),
        low(snap_id("of-gone")): (IMAGE,),
        low(snap_id("of-orphan")): (V100,),
    }  # 1.0.1 is made from the image: not a disk, not a key


def test_the_join_gives_each_disk_its_group_locks_and_images(arm, compute_inventory):
    arm.set_estate(full_estate())
    inv = DiskInventory.join(compute_inventory([S1]).read())
    orphan = inv.disks[disk_id("orphan").lower()]
    assert orphan.group_tags == {"owner": "ops"} and orphan.group_managed_by is None
    assert orphan.referenced_by == tuple(sorted((IMAGE, V100)))
    sub_lock = LockSeen(f"/subscriptions/{S1}/providers/Microsoft.Authorization/locks/sub-lock", "ReadOnly")
    assert orphan.locks == (sub_lock,)
    odd = inv.disks[disk_id("Odd", rg="RG-Upper").lower()]
    assert {lk.level for lk in odd.locks} == {"ReadOnly", "CanNotDelete"}  # its group's lock, spelt otherwise
    assert odd.group_tags == {} and odd.group_managed_by is None
    pvc = inv.disks[disk_id("pvc-1", rg="MC_rg-aks_k1_westeurope").lower()]
    assert pvc.group_managed_by == AKS and pvc.group_tags == {"aks-managed-cluster-name": "k1"}
    attached = inv.disks[disk_id("attached").lower()]
    assert {lk.level for lk in attached.locks} == {"ReadOnly", "NotSpecified"}

    snaps = {s.name: s for s in inv.snapshots.values()}
    assert snaps["of-orphan"].source_exists is True and snaps["of-orphan"].referenced_by == (V100,)
    assert snaps["of-gone"].source_exists is False and snaps["of-gone"].referenced_by == (IMAGE,)
    assert snaps["imported"].source_exists is None
    assert list(inv.quarantine) == [snap_id("of-orphan").lower()]


def test_every_page_of_every_list_is_read(arm, compute_inventory):
    resources = [ad.managed_disk(S1, RG, f"d{i}", time_created=CREATED) for i in range(5)]
    resources += [ad.incremental_snapshot(S1, RG, f"s{i}", source_disk_id=disk_id(f"d{i}"), time_created=CREATED)
                  for i in range(5)]
    resources += [ad.resource_group(S1, f"g{i}") for i in range(4)]  # and RG, named by the disks: 5
    resources += [ad.management_lock(disk_id(f"d{i}"), f"l{i}") for i in range(5)]
    resources += [ad.image_of_disks(S1, RG, f"img{i}", os_disk=disk_id(f"d{i}")) for i in range(5)]
    arm.set_estate(sb.build_estate(*resources, subscriptions=[S1]))
    read = compute_inventory([S1]).read()
    assert read.errors == []
    assert sorted(d.name for d in read.disks) == [f"d{i}" for i in range(5)]
    assert sorted(s.name for s in read.snapshots) == [f"s{i}" for i in range(5)]
    assert len(read.groups) == 5 and len(read.locks) == 5
    assert set(read.resource_refs) == {disk_id(f"d{i}").lower() for i in range(5)}
    for path in ("/providers/Microsoft.Compute/disks?", "/providers/Microsoft.Compute/snapshots?", "/resourcegroups?",
                 "/providers/Microsoft.Authorization/locks?", "/providers/Microsoft.Compute/images?"):
        pages = [p for m, p in arm.requests if m == "GET" and path in p]
        assert len(pages) == 3, (path, pages)  # 2 + 2 + 1
        assert sum("skiptoken" in p for p in pages) == 2
    assert all("api-version=2025-04-01" in p for _, p in arm.requests if "/resourcegroups?" in p)
    assert all("api-version=2020-05-01" in p for _, p in arm.requests if "/Microsoft.Authorization/locks?" in p)


def test_several_subscriptions(arm, compute_inventory):
    arm.set_estate(sb.build_estate(
        ad.managed_disk(S1, RG, "one", time_created=CREATED), ad.managed_disk(S2, RG, "two", time_created=CREATED),
        ad.management_lock(f"/subscriptions/{S2}", "s2-lock"), subscriptions=[S1, S2]))
    read = compute_inventory([S1, S2]).read()
    assert read.errors == []
    assert {(d.name, d.subscription) for d in read.disks} == {("one", S1), ("two", S2)}
    assert read.disks_read == {S1, S2}
    assert set(read.groups) == {f"/subscriptions/{s}/resourcegroups/{RG}".lower() for s in (S1, S2)}
    assert [lk.scope for lk in read.locks] == [f"/subscriptions/{S2}"]


# -- failing and malformed lists ------------------------------------------------------------------

GROUPS_PATH = r"(?i)/subscriptions/[^/]+/resourcegroups$"
LOCKS_PATH = r"(?i)/providers/Microsoft\.Authorization/locks$"
FAULTS = {
    "503": dict(kind="error", status=503),
    "403": dict(kind="error", status=403, code="AuthorizationFailed"),
    "malformed-json": dict(kind="malformed"),
    "no-value-list": dict(kind="body", body={"nextLink": None}),
    "item-without-id": dict(kind="body", body={"value": [{"name": "ghost"}]}),
    "nextlink-500": dict(kind="error", status=500, on_next_link=True),
}


def _paged_estate() -> dict:
    return sb.build_estate(ad.managed_disk(S1, RG, "d", time_created=CREATED),
                           *[ad.resource_group(S1, f"g{i}") for i in range(3)],
                           *[ad.management_lock(sb.rg_id(S1, f"g{i}"), f"l{i}") for i in range(3)],
                           subscriptions=[S1])


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("label, path", [("resourceGroups", GROUPS_PATH), ("locks", LOCKS_PATH)])
def test_a_failing_or_malformed_groups_or_locks_list_fails_the_read(arm, compute_inventory, label, path, fault):
    arm.set_estate(_paged_estate())
    arm.add_fault(path, **FAULTS[fault])
    read = compute_inventory([S1], retry_total=0).read()
    assert [e.source for e in read.errors] == [f"{S1}/{label}"], read.errors
    assert not read.complete
    assert read.disks is None and read.snapshots is None  # the disk half has nothing to go on
    assert sum(f.fired for f in arm.faults) >= 1


def test_a_lock_whose_id_names_no_scope_fails_the_read(arm, compute_inventory):
    arm.set_estate(_paged_estate())
    arm.add_fault(LOCKS_PATH, kind="body", body={"value": [
        {"id": "/providers/Microsoft.Authorization/locks/nowhere", "name": "nowhere", "properties": {"level": "CanNotDelete"}}]})
    read = compute_inventory([S1]).read()
    assert [e.source for e in read.errors] == [f"{S1}/locks"]
    assert "cannot tell the scope" in read.errors[0].message
    assert read.disks is None


def test_a_lock_without_a_level_still_holds(arm, compute_inventory):
    arm.set_estate(_paged_estate())
    arm.add_fault(LOCKS_PATH, kind="body", body={"value": [
        {"id": f"{disk_id('d')}/providers/Microsoft.Authorization/locks/bare", "name": "bare", "properties": {}}]})
    read = compute_inventory([S1]).read()
    assert read.errors == []
    assert read.locks == [LockAt(f"{disk_id('d')}/providers/Microsoft.Authorization/locks/bare", disk_id("d"),
                                 "NotSpecified")]
    assert DiskInventory.join(read).disks[disk_id("d").lower()].locks == (LockSeen(read.locks[0].id, "NotSpecified"),)


@pytest.mark.parametrize("field, value", [("diskSizeGB", "big"), ("diskState", 3), ("timeCreated", "yesterday")])
def test_a_disk_field_of_the_wrong_type_fails_the_disks_source(arm, compute_inventory, field, value):
    bad = ad.managed_disk(S1, RG, "bad", time_created=CREATED)
    bad["properties"][field] = value
    arm.set_estate(sb.build_estate(bad, ad.managed_disk(S1, RG, "good", time_created=CREATED), subscriptions=[S1]))
    read = compute_inventory([S1]).read()
    assert [e.source for e in read.errors] == [f"{S1}/disks"]
    assert "disks/bad" in read.errors[0].message
    assert read.disks is None and read.disks_read == set()


def test_a_tag_list_that_is_not_an_object_fails_the_groups_source(arm, compute_inventory):
    group = ad.resource_group(S1, RG)
    arm.set_estate(sb.build_estate(group, subscriptions=[S1]))
    arm.add_fault(GROUPS_PATH, kind="body", body={"value": [{**group, "tags": ["keep"]}]})
    read = compute_inventory([S1], retry_total=0).read()
    assert [e.source for e in read.errors] == [f"{S1}/resourceGroups"]
    assert read.disks is None


@pytest.mark.parametrize("path, label", [
    (r"/providers/Microsoft\.Compute/disks$", "disks"),
    (r"/providers/Microsoft\.Compute/snapshots$", "snapshots"),
    (r"/providers/Microsoft\.Compute/images$", "images"),
    (r"/providers/Microsoft\.Compute/galleries$", "galleries"),
    (r"/galleries/gal/images/def/versions$", "galleryImageVersions"),
])
def test_any_source_the_disks_are_joined_with_failing_leaves_no_disks(arm, compute_inventory, path, label):
    arm.set_estate(full_estate())
    arm.add_fault(path, status=503)
    read = compute_inventory([S1], retry_total=0).read()
    assert [e.source for e in read.errors] == [f"{S1}/{label}"]
    assert read.disks is None and read.snapshots is None
    assert read.disks_read == (set() if label == "disks" else {S1})


def test_a_failing_disks_list_of_one_subscription_leaves_it_out_of_disks_read(arm, compute_inventory):
    arm.set_estate(sb.build_estate(ad.managed_disk(S1, RG, "one"), ad.managed_disk(S2, RG, "two"),
                                   subscriptions=[S1, S2]))
    arm.add_fault(rf"^/subscriptions/{S2}/providers/Microsoft\.Compute/disks$", status=503)
    read = compute_inventory([S1, S2], retry_total=0).read()
    assert [e.source for e in read.errors] == [f"{S2}/disks"]
    assert read.disks_read == {S1} and read.disks is None


def test_a_failing_source_the_disks_do_not_need_leaves_them_listed(arm, compute_inventory):
    """The pass fails closed on any error anyway; the disks are not what made it fail."""
    arm.set_estate(full_estate())
    arm.add_fault(r"/providers/Microsoft\.Compute/virtualMachines$", status=503)
    read = compute_inventory([S1], retry_total=0).read()
    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    assert read.disks is not None and len(read.disks) == 7


# -- sources left out -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISK_SOURCES)
def test_disks_are_none_when_a_source_they_are_joined_with_is_not_read(arm, compute_inventory, name):
    arm.set_estate(full_estate())
    sources = tuple(s for s in REGISTRY if s.name != name)
    read = compute_inventory([S1], sources=sources).read()
    assert read.errors == []
    assert read.disks is None and read.snapshots is None
    if name == "disks":
        assert read.disks_read == set()


def test_without_placement_the_disks_are_still_read(arm, compute_inventory):
    arm.set_estate(full_estate())
    read = compute_inventory([S1], sources=without_placement()).read()
    assert read.errors == [] and read.accounts is None
    assert len(read.disks) == 7 and len(read.snapshots) == 4


def test_an_empty_subscription_reads_empty_lists(arm, compute_inventory):
    arm.set_estate(sb.empty_estate(S1))
    read = compute_inventory([S1]).read()
    assert read.errors == []
    assert read.disks == [] and read.snapshots == [] and read.disks_read == {S1}
    assert read.locks == [] and read.resource_refs == {}
    assert read.groups == {}


def test_the_same_conversion_reads_a_get_of_one_disk_with_its_ownership_time(arm):
    """For the gateway's GETs (the pass's ownership reads, the executor's re-check): the list's
    conversion, plus ``LastOwnershipUpdateTime`` (None for a disk never attached)."""
    arm.set_estate(full_estate())
    client = ComputeManagementClient(EmulatorCredential(), S1, base_url=arm.url, connection_verify=arm.cert_path)
    with client:
        got = disk_seen(S1, client.disks.get(RG, "orphan"), from_get=True)
        never = disk_seen(S1, client.disks.get(RG, "attached"), from_get=True)
        listed = next(d for d in client.disks.list_by_resource_group(RG) if d.name == "orphan")
    assert got.ownership_read is True and got.last_ownership_update == when(OWNED)
    assert got.last_ownership_update.tzinfo is timezone.utc
    assert (never.ownership_read, never.last_ownership_update) == (True, None)
    assert replace(got, last_ownership_update=None, ownership_read=False) == disk_seen(S1, listed)


def test_a_disk_whose_group_is_not_listed_fails_the_read(arm, compute_inventory):
    """An identity that may read a disk but not its group: the group's tags and managedBy, either of
    which may hold the disk, are unknown. The groups list is shorter than ARM holds: it fails."""
    arm.set_estate(sb.build_estate(ad.managed_disk(S1, RG, "d"), ad.managed_disk(S1, "hidden", "h1"),
                                   ad.incremental_snapshot(S1, "hidden", "s1", source_disk_id=disk_id("h1", "hidden")),
                                   subscriptions=[S1]))
    listed = ad.resource_group(S1, RG)
    arm.add_fault(GROUPS_PATH, kind="body", body={"value": [listed]})
    read = compute_inventory([S1]).read()
    assert [e.source for e in read.errors] == [f"{S1}/resourceGroups"]
    assert f"{disk_id('h1', 'hidden')} (and 1 more) is not in the resource groups list" in read.errors[0].message
    assert read.disks is None and read.snapshots is None
