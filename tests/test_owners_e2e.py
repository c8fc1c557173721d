"""Who owned it (issue 15), end to end: the real CLI and collector, the azure-mgmt-* clients over HTTPS
against the ARM stand-in, Azurite's blobs. While a blob or disk is held, a pass remembers its holder,
the holder's owner tags and its resource group's tags (from the lists it reads anyway: the stand-in's
request log shows no call more); when the holder goes, the leftover's report row and ``explain`` name
the last owner; a blob never seen held gets the owner its ``MicrosoftAzureCompute_*`` metadata names."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from gc_daemon.owners import blob_item_id, disk_item_id
from gc_daemon.state.db import make_engine
from gc_daemon.state.store import Store
from gc_daemon.urls import parse_blob_url
from sandbox import arm as a
from sandbox import arm_disks as ad
from tests.support import disks as d
from tests.support.estate import SUB

RG = "rg-app"
VM = a.compute_id(SUB, RG, "virtualMachines", "app-01")
GROUP_TAGS = {"costCenter": "4711", "team": "data"}
ALICE = "alice@example.com"
BOTH_DATABASES = pytest.mark.parametrize(
    "gc", [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def tagged(resource: dict, **tags: str) -> dict:
    resource["tags"] = dict(tags)
    return resource


def group(name: str = RG, **tags: str) -> dict:
    return ad.resource_group(SUB, name, tags=tags or None)


def records(gc) -> dict:
    engine = make_engine(gc.db_url)
    try:
        return Store(engine).all_owner_records()
    finally:
        engine.dispose()


def updated(gc) -> dict[str, object]:
    """Each owner record's updated_at: what a pass wrote."""
    engine = make_engine(gc.db_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(text("SELECT item_id, updated_at FROM owner_records")).all())
    finally:
        engine.dispose()


def blob_id(url: str) -> str:
    return blob_item_id(parse_blob_url(url))


@BOTH_DATABASES
def test_the_last_owner_of_a_vhd_stays_when_its_vm_goes_and_report_and_explain_name_it(gc):
    url = gc.page("vhds", "app-01-os.vhd")
    gc.compute(group(**GROUP_TAGS), tagged(a.vm(SUB, RG, "app-01", os_vhd=url), owner=ALICE, env="prod"))

    assert gc.scan().outcome == "complete"
    assert gc.state(url) is None  # in use: not tracked, but its owner is remembered
    (rec,) = records(gc).values()
    assert (rec.item_id, rec.holder, rec.owner, rec.source) == (blob_id(url), VM, ALICE, "reference")
    assert rec.tags == {"owner": ALICE}  # only the owner tags of the holder
    assert rec.group_tags == GROUP_TAGS  # every tag of its group
    assert rec.first_seen == rec.last_seen is not None

    gc.compute(group(**GROUP_TAGS))  # the VM is deleted; its VHD stays behind
    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"
    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"

    row = gc.report()[url]
    assert row["state"] in ("candidate", "due")
    assert (row["owner"], row["holder"], row["owner_source"]) == (ALICE, VM, "reference")
    (kept,) = records(gc).values()
    assert (kept.owner, kept.holder, kept.tags, kept.group_tags) == (ALICE, VM, {"owner": ALICE}, GROUP_TAGS)
    assert kept.first_seen == rec.first_seen and kept.last_seen == rec.last_seen  # the pass that saw it held

    csv_out = gc.cli("report", "--kind", "vhd", "--format", "csv")
    assert csv_out.code == 0 and ALICE in csv_out.out and VM in csv_out.out
    header = csv_out.out.splitlines()[0].split(",")
    assert {"owner", "holder", "owner_source"} <= set(header)
    table = gc.cli("report", "--kind", "vhd")
    assert table.code == 0 and "OWNER" in table.out and f"{ALICE} (virtualMachines/app-01)" in table.out

    page = gc.cli("report", "--kind", "vhd", "--format", "html")
    assert page.code == 0 and f'<td class="owner">{ALICE}</td>' in page.out

    explained = gc.cli("explain", url, "--format", "json")
    assert explained.code == 0, explained.err
    owner = explained.json()["owner"]
    assert (owner["owner"], owner["holder"], owner["owner_source"]) == (ALICE, VM, "reference")
    assert owner["tags"] == {"owner": ALICE} and owner["group_tags"] == GROUP_TAGS
    assert explained.json()["stored"]["owner"] == ALICE
    words = gc.cli("explain", url)
    assert words.code == 0
    assert f"owner:    {ALICE}" in words.out and f"holder {VM}" in words.out
    assert "owner tags of the holder: owner=alice@example.com" in words.out and "team=data" in words.out


def test_a_pass_with_owner_records_makes_exactly_the_requests_of_one_without(gc):
    """No call of its own: the same estate with and without tags, the same requests, page by page."""
    def estate(with_tags: bool) -> list[dict]:
        vm = a.vm(SUB, RG, "app-01", os_vhd=gc.url("vhds", "a.vhd"))
        vm2 = a.vm(SUB, RG, "app-02")
        disk = d.disk("app-02-data", rg=RG, disk_state="Attached", managed_by=a.compute_id(SUB, RG, "virtualMachines", "app-02"))
        image = a.image(SUB, RG, "golden", os_blob=gc.url("vhds", "img.vhd"))
        if with_tags:
            return [group(**GROUP_TAGS), tagged(vm, owner=ALICE), tagged(vm2, CreatedBy="bob"), tagged(disk, contact="carol"),
                    tagged(image, owner="team-images")]
        return [group(), vm, vm2, disk, image]

    gc.page("vhds", "a.vhd")
    gc.page("vhds", "img.vhd")
    d.configure(gc, mode="dry-run", disks="report")
    gc.compute(*estate(False))
    gc.arm.clear_requests()
    assert gc.scan().outcome == "complete"
    without = sorted(gc.arm.requests)
    assert records(gc) == {}

    gc.compute(*estate(True))
    gc.arm.clear_requests()
    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"
    assert sorted(gc.arm.requests) == without
    assert all(method == "GET" for method, _ in without)
    found = records(gc)
    assert {r.owner for r in found.values()} == {ALICE, "team-images", "bob"}
    disk_rec = found[disk_item_id(d.disk_id("app-02-data", rg=RG))]
    assert disk_rec.holder == a.compute_id(SUB, RG, "virtualMachines", "app-02")
    assert disk_rec.tags == {"contact": "carol", "CreatedBy": "bob"}  # the disk's own owner tags count too


@BOTH_DATABASES
def test_a_steady_pass_writes_no_owner_row_and_a_tag_change_on_the_holder_is_recorded(gc):
    url = gc.page("vhds", "app-01-os.vhd")
    gc.compute(group(**GROUP_TAGS), tagged(a.vm(SUB, RG, "app-01", os_vhd=url), owner=ALICE))
    assert gc.scan().outcome == "complete"
    first = updated(gc)
    assert list(first) == [blob_id(url)]

    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"
    assert gc.scan(advance=timedelta(hours=2)).outcome == "complete"
    assert updated(gc) == first  # nothing changed: no owner row written

    gc.compute(group(**GROUP_TAGS), tagged(a.vm(SUB, RG, "app-01", os_vhd=url), owner="erin@example.com"))
    assert gc.scan(advance=timedelta(hours=3)).outcome == "complete"
    (rec,) = records(gc).values()
    assert (rec.owner, rec.tags) == ("erin@example.com", {"owner": "erin@example.com"})
    assert updated(gc) != first
    assert rec.first_seen < rec.last_seen  # the same holder since the first pass

    gc.compute(group(**{"owner": "team-data"}), a.vm(SUB, RG, "app-01", os_vhd=url))  # the tag removed
    assert gc.scan(advance=timedelta(hours=4)).outcome == "complete"
    (rec,) = records(gc).values()
    assert (rec.owner, rec.tags, rec.group_tags) == ("team-data", {}, {"owner": "team-data"})  # from the group


def test_owner_tag_names_are_configurable_and_compared_without_case(gc):
    url = gc.page("vhds", "build-01-os.vhd")
    gc.configure(owners={"tags": ["CreatedBy"]})
    gc.compute(group(), tagged(a.vm(SUB, RG, "build-01", os_vhd=url), owner=ALICE, createdby="dave@example.com"))
    assert gc.scan().outcome == "complete"
    (rec,) = records(gc).values()
    assert (rec.owner, rec.tags) == ("dave@example.com", {"createdby": "dave@example.com"})
    run = gc.cli("config", "check")
    assert run.code == 0 and "CreatedBy" in run.out


def test_a_blob_never_seen_held_gets_the_owner_its_metadata_names(gc):
    named = gc.page("vhds", "old-app-os.vhd", metadata={
        "MicrosoftAzureCompute_VMName": "old-app", "MicrosoftAzureCompute_ResourceGroupName": "rg-old",
        "MicrosoftAzureCompute_DiskName": "old-app-os"})
    bare = gc.page("vhds", "lost.vhd", metadata={"MicrosoftAzureCompute_VMName": "lost-vm"})
    gc.page("vhds", "nobody.vhd")
    gc.compute(group("rg-old", owner="team-legacy"))
    assert gc.scan().outcome == "complete"

    rows = gc.report()
    old_vm = a.compute_id(SUB, "rg-old", "virtualMachines", "old-app")
    assert (rows[named]["owner"], rows[named]["holder"], rows[named]["owner_source"]) == ("team-legacy", old_vm, "metadata")
    assert (rows[bare]["owner"], rows[bare]["owner_source"]) == ("lost-vm", "metadata")
    assert rows[gc.url("vhds", "nobody.vhd")]["owner"] is None
    found = records(gc)
    assert found[blob_id(named)].first_seen is None and found[blob_id(named)].last_seen is None
    first = updated(gc)
    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"
    assert updated(gc) == first


def test_the_last_owner_of_a_managed_disk_whose_vm_is_gone(gc):
    rid = d.disk_id("app-01-data", rg=RG)
    d.configure(gc, mode="dry-run", disks="report")
    d.seed(gc, group(**GROUP_TAGS), tagged(a.vm(SUB, RG, "app-01"), owner=ALICE),
           d.disk("app-01-data", rg=RG, disk_state="Attached", managed_by=VM))
    assert d.scan(gc).outcome == "complete"
    (rec,) = records(gc).values()
    assert (rec.item_id, rec.holder, rec.owner, rec.source) == (disk_item_id(rid), VM, ALICE, "reference")

    # The VM is deleted: its data disk is left unattached (detached long ago, as far as the disk says).
    d.seed(gc, group(**GROUP_TAGS), d.disk("app-01-data", rg=RG))
    assert d.scan(gc, advance=timedelta(days=2)).outcome == "complete"
    assert d.scan(gc, advance=timedelta(days=2)).outcome == "complete"
    row = d.row(gc, rid)
    assert row["state"] in ("candidate", "due")
    assert (row["owner"], row["holder"], row["owner_source"]) == (ALICE, VM, "reference")
    explained = gc.cli("explain", rid, "--format", "json")
    assert explained.code == 0, explained.err
    assert explained.json()["owner"]["owner"] == ALICE and explained.json()["owner"]["holder"] == VM
    words = gc.cli("explain", rid)
    assert f"owner:    {ALICE}" in words.out


def test_an_unattached_disk_never_seen_held_is_owned_by_its_own_tags(gc):
    rid = d.disk_id("scratch", rg=RG)
    d.configure(gc, mode="dry-run", disks="report")
    d.seed(gc, group(), d.disk("scratch", rg=RG, tags={"Owner": "frank@example.com", "purpose": "tmp"}))
    assert d.scan(gc).outcome == "complete"
    row = d.row(gc, rid)
    assert (row["owner"], row["holder"], row["owner_source"]) == ("frank@example.com", None, "metadata")


@pytest.mark.parametrize("names", [[], ["missing"]])
def test_without_a_matching_owner_tag_the_holder_and_group_tags_are_still_remembered(gc, names):
    url = gc.page("vhds", "x.vhd")
    gc.configure(owners={"tags": names})
    gc.compute(group(**GROUP_TAGS), tagged(a.vm(SUB, RG, "app-01", os_vhd=url), owner=ALICE))
    assert gc.scan().outcome == "complete"
    (rec,) = records(gc).values()
    assert (rec.holder, rec.owner, rec.tags, rec.group_tags) == (VM, None, {}, GROUP_TAGS)
