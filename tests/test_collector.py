"""Every rule of docs/contract.md's "What counts as a VHD, a reference and an orphan", end to end:
the real SDK clients against Azurite and the HTTPS ARM stand-in, checked in the report AND in
Azurite (does the blob still exist?)."""

from __future__ import annotations

import json

from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import BlobClient

from sandbox import arm as a
from sandbox import seed
from tests.support.estate import SUB, SUB2

RG = "rg1"


def test_referenced_vm_disks_survive_delete_mode_while_leftovers_go(gc):
    os_url = gc.page("vhds", "web-01-os.vhd")  # referenced, and no lease: the reference alone protects
    data_url = gc.page("vhds", "web-01-data.vhd", lease=True)
    left_url = gc.page("vhds", "old-app-os.vhd", metadata={"MicrosoftAzureCompute_VMName": "old-app"})
    gc.compute(a.vm(SUB, RG, "web-01", os_vhd=os_url, data_vhds=[data_url]))
    gc.configure(mode="delete")

    result = gc.scan()

    assert result.outcome == "complete"
    assert result.stats.deleted == 1
    assert gc.exists("vhds", "web-01-os.vhd") and gc.exists("vhds", "web-01-data.vhd")
    assert not gc.exists("vhds", "old-app-os.vhd")
    report = gc.report()
    assert report[left_url]["state"] == "deleted"
    assert report[left_url]["last_owner"] == "vm:old-app"
    assert os_url not in report and data_url not in report  # in use and never orphaned: untracked


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda u: a.vm(SUB, RG, "vm1", data_vhds=[{"vhd": "https://xacct.blob.core.windows.net/vhds/other.vhd", "image": u}]), id="vm-data-image"),
        pytest.param(lambda u: a.vm(SUB, RG, "vm1", os_vhd="https://xacct.blob.core.windows.net/vhds/os.vhd", os_image=u), id="vm-os-image"),
        pytest.param(lambda u: a.vmss(SUB, RG, "ss1", os_image=u), id="vmss-image"),
        pytest.param(lambda u: a.vmss_vm(SUB, RG, "ss1", 0, os_vhd=u), id="vmss-instance-os"),
        pytest.param(lambda u: a.vmss_vm(SUB, RG, "ss1", 3, data_vhds=[u]), id="vmss-instance-data"),
        pytest.param(lambda u: a.image(SUB, RG, "golden", os_blob=u), id="managed-image-os"),
        pytest.param(lambda u: a.image(SUB, RG, "golden", data_blobs=[u]), id="managed-image-data"),
        pytest.param(lambda u: a.disk(SUB, RG, "cvm", security_data_uri=u), id="disk-security-blob"),
    ],
)
def test_every_reference_kind_protects_its_blob(gc, make):
    url = gc.page("vhds", "target.vhd")
    resources = [make(url)]
    if "virtualMachines/" in resources[0]["id"] and "virtualMachineScaleSets" in resources[0]["id"]:
        resources.append(a.vmss(SUB, RG, "ss1"))
    gc.compute(*resources)
    gc.configure(mode="delete")

    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "target.vhd")
    assert gc.state(url) is None


def test_gallery_image_version_source_protects_its_blob(gc):
    os_url = gc.page("images", "os.vhd")
    data_url = gc.page("images", "data.vhd")
    gc.compute(
        a.gallery(SUB, RG, "gal"),
        a.gallery_image(SUB, RG, "gal", "ubuntu"),
        a.gallery_image_version(SUB, RG, "gal", "ubuntu", "1.0.0", os_source=os_url, data_sources=[data_url]),
    )
    gc.configure(mode="delete")
    assert gc.scan().outcome == "complete"
    assert gc.exists("images", "os.vhd") and gc.exists("images", "data.vhd")


def test_scale_set_vhd_containers_protect_every_blob_of_those_containers_only(gc):
    gc.page("ssdisks", "ss1-0-os.vhd")
    gc.page("ssdisks", "anything.vhd")
    gone = gc.page("elsewhere", "ss1-0-os.vhd")
    gc.compute(a.vmss(SUB, RG, "ss1", vhd_containers=[gc.url("SSDisks", "x").rsplit("/", 1)[0].replace("ssdisks", "SSDisks") + "/"]))
    gc.configure(mode="delete")

    assert gc.scan().outcome == "complete"
    assert gc.exists("ssdisks", "ss1-0-os.vhd") and gc.exists("ssdisks", "anything.vhd")
    assert not gc.exists("elsewhere", "ss1-0-os.vhd")
    assert gc.state(gone) == "deleted"


def test_reference_matches_across_host_case_and_percent_encoding(gc):
    gc.page("vhds", "my disk#1 é.vhd")
    endpoint = gc.azurite.blob_endpoint("gcacct1").replace("gcacct1", "GCACCT1")
    ref = f"{endpoint}/VHDS/my%20disk%231%20%C3%A9.vhd?sv=2024&sig=secret"
    gc.compute(a.vm(SUB, RG, "vm1", os_vhd=ref))
    gc.configure(mode="delete")
    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "my disk#1 é.vhd")


def test_blob_name_matches_exactly_so_a_case_twin_is_not_protected(gc):
    gc.page("vhds", "Disk.vhd")
    gc.page("vhds", "disk.vhd")
    gc.compute(a.vm(SUB, RG, "vm1", os_vhd=gc.url("vhds", "Disk.vhd")))
    gc.configure(mode="delete")
    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "Disk.vhd")
    assert not gc.exists("vhds", "disk.vhd")


def test_references_in_a_second_subscription_protect_blobs(gc):
    gc.page("vhds", "far.vhd")
    gc.configure(mode="delete", azure={"subscriptions": [SUB, SUB2]})
    gc.compute(a.vm(SUB2, RG, "far-vm", os_vhd=gc.url("vhds", "far.vhd")))
    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "far.vhd")


def test_leased_blob_is_in_use_and_never_a_candidate(gc):
    url = gc.page("vhds", "attached-elsewhere.vhd", lease=True)
    gc.configure(mode="delete")
    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "attached-elsewhere.vhd")
    assert gc.state(url) is None


def test_import_protects_its_source_until_provisioned_and_import_hold_has_passed(gc):
    now = datetime.now(UTC)
    done = gc.page("vhds", "converted-os.vhd")
    pending = gc.page("vhds", "importing.vhd")
    snap_src = gc.page("vhds", "snap-src.vhd")
    gc.compute(
        a.disk(SUB, RG, "converted-os", source_uri=done, time_created=now - timedelta(days=1)),
        a.disk(SUB, RG, "importing", source_uri=pending, time_created=now - timedelta(days=30), provisioning_state="Creating"),
        a.snapshot(SUB, RG, "snap1", source_uri=snap_src, time_created=now - timedelta(days=1)),
    )
    gc.configure(mode="delete", import_hold="7d")

    assert gc.scan().outcome == "complete"  # within the hold: all three protected
    assert gc.exists("vhds", "converted-os.vhd") and gc.exists("vhds", "snap-src.vhd")
    assert gc.report() == {}

    result = gc.scan(advance=timedelta(days=7))  # the hold has passed for the provisioned ones
    assert result.outcome == "complete"
    assert not gc.exists("vhds", "converted-os.vhd") and not gc.exists("vhds", "snap-src.vhd")
    assert gc.exists("vhds", "importing.vhd")  # still not provisioned: protected whatever its age
    report = gc.report()
    assert report[done]["state"] == "deleted"
    assert report[done]["last_owner"].endswith("/disks/converted-os")
    assert pending not in report


def test_too_young_blobs_are_never_candidates(gc):
    url = gc.page("uploads", "fresh.vhd")
    gc.configure(mode="delete", min_age="1h")
    assert gc.scan().outcome == "complete"
    assert gc.exists("uploads", "fresh.vhd")
    assert gc.state(url) is None
    # The collector's clock moving on does not age it: age is counted on the storage service's clock.
    assert gc.scan(advance=timedelta(hours=2)).outcome == "complete"
    assert gc.exists("uploads", "fresh.vhd") and gc.state(url) is None
    # Once old enough on the service's clock, it is an orphan like any other.
    modified = gc.svc().get_blob_client("uploads", "fresh.vhd").get_blob_properties().last_modified
    gc.configure(mode="delete", min_age="1s")
    gc.wait_for_service_time(modified + timedelta(seconds=1))
    assert gc.scan().outcome == "complete"
    assert not gc.exists("uploads", "fresh.vhd")


@pytest.mark.parametrize(
    "kwargs, hold",
    [
        ({"snapshots": 1}, "snapshots"),
        ({"metadata": {"vhdgc_keep": "ticket-42"}}, "metadata"),
        ({"metadata": {"VHDGC_KEEP": ""}}, "metadata"),
        ({"tags": {"vhdgc-keep": "yes"}}, "tag"),
    ],
)
def test_held_orphans_are_kept_and_never_deleted(gc, kwargs, hold):
    url = gc.page("vhds", "held.vhd", **kwargs)
    gc.configure(mode="delete")
    for _ in range(3):
        assert gc.scan(advance=timedelta(days=30)).outcome == "complete"
    assert gc.exists("vhds", "held.vhd")
    if "snapshots" in kwargs:
        assert len(seed.snapshots(gc.svc(), "vhds", "held.vhd")) == 1
    rec = gc.report()[url]
    assert rec["state"] == "kept" and rec["hold"] == hold
    assert rec["delete_after"] is None


def test_operator_keep_holds_and_unkeep_releases_it(gc):
    url = gc.page("vhds", "precious.vhd")
    gc.configure(mode="delete")
    run = gc.cli("keep", url, "--reason", "legal hold 7")
    assert run.code == 0, run.err
    assert gc.scan().outcome == "complete"
    assert gc.exists("vhds", "precious.vhd")
    assert gc.report()[url]["hold"] == "operator"

    assert gc.cli("unkeep", url).code == 0
    assert gc.scan().outcome == "complete"
    assert not gc.exists("vhds", "precious.vhd")
    actions = [r["action"] for r in gc.cli("audit", "--format", "json").json()]
    assert actions == ["keep", "unkeep", "delete-intent", "deleted"]


def test_block_blob_vhd_and_non_vhd_page_blob_are_reported_never_deleted(gc):
    seed.block_blob(gc.svc(), "uploads", "failed-upload.vhd", data=b"x" * 1000)
    seed.block_blob(gc.svc(), "uploads", "notes.txt", data=b"hello")
    page_other = gc.page("uploads", "scratch.bin")
    gc.configure(mode="delete")
    for _ in range(2):
        assert gc.scan(advance=timedelta(days=30)).outcome == "complete"
    assert gc.exists("uploads", "failed-upload.vhd") and gc.exists("uploads", "scratch.bin")
    report = gc.report()
    block = report[gc.url("uploads", "failed-upload.vhd")]
    assert (block["state"], block["hold"], block["billed_bytes"]) == ("kept", "block_blob", 1000)
    assert (report[page_other]["state"], report[page_other]["hold"]) == ("kept", "not_vhd")
    assert gc.url("uploads", "notes.txt") not in report


def test_policy_opt_in_deletes_block_blob_vhds(gc):
    seed.block_blob(gc.svc(), "uploads", "failed-upload.vhd")
    gc.configure(mode="delete", policy={"delete_block_blob_vhds": True})
    assert gc.scan().outcome == "complete"
    assert not gc.exists("uploads", "failed-upload.vhd")


def test_candidate_is_due_only_after_grace_period_and_min_sightings(gc):
    url = gc.page("vhds", "leftover.vhd", written=[(0, 8192), (1 << 20 - 1, 0)] if False else [(0, 8192), (65536, 4096)])
    gc.configure(mode="delete", grace_period="7d", min_sightings=3)
    t0 = datetime.now(UTC)

    gc.scan(at=t0)
    rec = gc.report()[url]
    assert (rec["state"], rec["sightings"], rec["billed_bytes"], rec["size_bytes"]) == ("candidate", 1, 12288, 1 << 20)
    assert rec["delete_after"].startswith((t0 + timedelta(days=7)).strftime("%Y-%m-%dT%H"))

    for i in range(2, 6):  # many sightings, but the grace period has not passed
        gc.scan(at=t0 + timedelta(hours=i))
    rec = gc.report()[url]
    assert (rec["state"], rec["sightings"]) == ("candidate", 5)
    assert gc.exists("vhds", "leftover.vhd")

    gc.scan(at=t0 + timedelta(days=8))  # grace passed and 6 sightings: due, deleted
    assert not gc.exists("vhds", "leftover.vhd")
    assert gc.report()[url]["state"] == "deleted"


def test_grace_period_alone_is_not_enough(gc):
    url = gc.page("vhds", "leftover.vhd")
    gc.configure(mode="delete", grace_period="1d", min_sightings=3)
    t0 = datetime.now(UTC)
    gc.scan(at=t0)
    gc.scan(at=t0 + timedelta(days=10))
    rec = gc.report()[url]
    assert (rec["state"], rec["sightings"]) == ("candidate", 2)
    assert gc.exists("vhds", "leftover.vhd")
    gc.scan(at=t0 + timedelta(days=10, hours=1))
    assert not gc.exists("vhds", "leftover.vhd")


def test_dry_run_marks_due_and_deletes_nothing(gc):
    urls = [gc.page("vhds", f"left-{i}.vhd") for i in range(3)]
    gc.configure(mode="dry-run")
    for _ in range(3):
        assert gc.scan().outcome == "complete"
    assert all(gc.exists("vhds", f"left-{i}.vhd") for i in range(3))
    assert {gc.report()[u]["state"] for u in urls} == {"due"}
    assert gc.cli("audit", "--format", "json").json() == []


def test_max_deletes_per_pass_caps_deletions(gc):
    for i in range(5):
        gc.page("vhds", f"left-{i}.vhd")
    gc.configure(mode="delete", max_deletes_per_pass=2)
    first = gc.scan()
    assert first.stats.deleted == 2
    assert len(seed.names(gc.svc())) == 3
    states = sorted(r["state"] for r in gc.report().values())
    assert states == ["deleted", "deleted", "due", "due", "due"]


def test_etag_change_restarts_the_candidate(gc):
    url = gc.page("vhds", "leftover.vhd")
    gc.configure(mode="delete", grace_period="1d", min_sightings=2)
    t0 = datetime.now(UTC)
    gc.scan(at=t0)
    gc.scan(at=t0 + timedelta(hours=1))
    assert gc.report()[url]["sightings"] == 2
    BlobClient.from_blob_url(url, credential={"account_name": "gcacct1", "account_key": gc.azurite.key("gcacct1")}).set_blob_metadata({"touched": "1"})

    gc.scan(at=t0 + timedelta(days=2))
    rec = gc.report()[url]
    assert (rec["state"], rec["sightings"]) == ("candidate", 1)
    assert rec["first_orphaned_at"].startswith((t0 + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M"))
    assert gc.exists("vhds", "leftover.vhd")


def test_candidate_back_in_use_is_released(gc):
    url = gc.page("vhds", "revived.vhd")
    gc.configure(mode="dry-run", grace_period="1d")
    gc.scan()
    assert gc.state(url) == "candidate"
    gc.compute(a.vm(SUB, RG, "revived", os_vhd=url))
    gc.scan()
    rec = gc.report()[url]
    assert rec["state"] == "released" and rec["sightings"] == 0
    gc.compute()
    gc.scan()
    assert gc.report()[url]["sightings"] == 1  # orphaned again: a new run of sightings


def test_deleted_rows_stay_and_vanished_candidates_are_forgotten(gc):
    url = gc.page("vhds", "someone-else-deletes.vhd")
    gc.configure(mode="dry-run", grace_period="1d")
    gc.scan()
    assert gc.state(url) == "candidate"
    gc.svc().get_blob_client("vhds", "someone-else-deletes.vhd").delete_blob()
    gc.scan()
    assert url not in gc.report()


# -- fail closed -------------------------------------------------------------------------------


def _due_estate(gc):
    """Two blobs: one due now (second sighting), one being watched. Returns their URLs."""
    due = gc.page("vhds", "due.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=2)
    gc.scan()
    return due


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(dict(path="/virtualMachines$", status=500), id="vms-500"),
        pytest.param(dict(path="/disks$", status=403, code="AuthorizationFailed"), id="disks-403"),
        pytest.param(dict(path="/images$", kind="malformed"), id="images-malformed"),
        pytest.param(dict(path="/snapshots$", kind="body", body={"nextLink": None}), id="snapshots-no-value"),
        pytest.param(dict(path="/galleries$", status=429, retry_after=0), id="galleries-429-forever"),
        pytest.param(dict(path="/virtualMachineScaleSets$", kind="truncate"), id="vmss-truncated"),
        pytest.param(dict(path="/virtualMachines$", status=500, on_next_link=True), id="vms-nextlink-500"),
    ],
)
def test_a_failing_reference_source_fails_the_pass_closed(gc, fault):
    due = _due_estate(gc)
    # Enough VMs for a second page, so that a nextLink exists.
    gc.compute(*[a.vm(SUB, RG, f"managed-{i}") for i in range(5)])
    before = gc.report()
    gc.arm.add_fault(**fault)

    run = gc.cli("scan")

    assert run.code == 3, (run.out, run.err)
    assert "incomplete" in run.err and SUB in run.err
    assert gc.exists("vhds", "due.vhd")  # it was due: a complete pass would have deleted it
    assert gc.report() == before  # no new candidate, no sighting counted
    gc.arm.clear_faults()
    assert gc.cli("scan").code == 0  # the next healthy pass converges: this is sighting 2
    assert not gc.exists("vhds", "due.vhd")
    assert gc.report()[due]["state"] == "deleted"


def test_an_unknown_subscription_fails_the_pass_closed(gc):
    gc.page("vhds", "due.vhd")
    gc.configure(mode="delete", azure={"subscriptions": [SUB, "00000000-0000-0000-0000-00000000dead"]})
    run = gc.cli("scan")
    assert run.code == 3
    assert "00000000-0000-0000-0000-00000000dead" in run.err
    assert gc.exists("vhds", "due.vhd")
    assert gc.report() == {}


def test_an_unparseable_reference_fails_the_pass_closed(gc):
    gc.page("vhds", "disk.vhd")
    # On a collected account, but not on one blob: a dot segment (clients resolve it, we refuse to guess).
    gc.compute(a.vm(SUB, RG, "cdn", os_vhd=gc.url("vhds", "sub/../disk.vhd").replace("%2E", ".")))
    gc.configure(mode="delete")
    run = gc.cli("scan")
    assert run.code == 3
    assert "vm_os_disk of" in run.err and "cdn" in run.err
    assert gc.exists("vhds", "disk.vhd")


def test_a_reference_on_a_host_that_can_be_no_collected_account_is_ignored_and_counted(gc):
    """Issue 11: a managed disk's export URL (md-*.blob.storage.azure.net), another tenant's account or
    a host that is no blob endpoint at all must not stop every pass forever: counted, logged once, ignored."""
    gc.page("vhds", "leftover.vhd")
    gc.compute(
        a.disk(SUB, RG, "from-export",
               source_uri="https://md-lsz1xpr4bz3d.z23.blob.storage.azure.net/pbvdmpqhfbsd/abcd?sv=2018-03-28&sig=S3CR3T"),
        a.vm(SUB, RG, "other-tenant", os_vhd="https://othertenant.blob.core.windows.net/vhds/theirs.vhd"),
        a.vm(SUB, RG, "cdn", os_vhd="https://disks.example.com/vhds/disk.vhd"),
    )
    gc.configure(mode="delete")
    run = gc.cli("scan")
    assert run.code == 0, run.err
    events = [json.loads(line) for line in run.err.splitlines() if line.startswith("{")]
    foreign = [e for e in events if e.get("event") == "references_foreign"]
    assert len(foreign) == 1 and foreign[0]["count"] == 3
    assert "S3CR3T" not in run.out + run.err
    assert [e for e in events if e.get("event") == "pass_complete"][0]["references_foreign"] == 3
    assert not gc.exists("vhds", "leftover.vhd")  # the pass went on and collected what it should


def test_an_unreachable_storage_account_fails_the_pass_closed(gc):
    due = _due_estate(gc)
    before = gc.report()
    accounts = gc.settings["azure"]["storage_accounts"]
    accounts.append({"name": "gcacct3", "blob_endpoint": "http://127.0.0.1:9/gcacct3", "key_env": "GCACCT1_KEY"})
    gc.configure(mode="delete", grace_period="0s", min_sightings=2, azure={"storage_accounts": accounts})
    run = gc.cli("scan")
    assert run.code == 3 and "storage/gcacct3" in run.err
    assert gc.exists("vhds", "due.vhd")
    assert gc.report() == before
    assert due in before


def test_throttling_with_retry_after_is_retried_not_failed(gc):
    url = gc.page("vhds", "left.vhd")
    gc.arm.add_fault(path="/virtualMachines$", status=429, retry_after=1, times=1)
    gc.configure(mode="dry-run", azure={"retry_total": 2})
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert gc.state(url) == "due"


# -- the executor's own re-verification ----------------------------------------------------


def test_executor_refuses_a_blob_leased_after_the_decision(gc):
    from gc_daemon.config import load_config
    from gc_daemon.decide import ReferenceIndex
    from gc_daemon.execute import Executor
    from gc_daemon.wiring import build_accounts, open_store

    url = gc.page("vhds", "grabbed.vhd")
    gc.configure(mode="dry-run")
    gc.scan()
    config = load_config(gc.config_path)
    store = open_store(config)
    row = next(r for r in store.rows() if r.url == url)
    assert row.state.value == "due"
    gc.svc().get_blob_client("vhds", "grabbed.vhd").acquire_lease(-1)  # a VM attached it meanwhile

    ex = Executor(mode="delete", max_deletes=10, storage=build_accounts(config), audit=store, policy=config.policy_rules)
    out = ex.execute([row], ReferenceIndex(), {}, datetime.now(UTC), store.last_complete_seq())

    assert out.deleted == [] and out.refused["leased"] == 1
    assert gc.exists("vhds", "grabbed.vhd")
    assert [r.action for r in store.audit_log()] == ["delete-refused"]


# -- the same lifecycle on PostgreSQL --------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("gc", ["postgres"], indirect=True)
def test_lifecycle_on_postgresql(gc):
    url = gc.page("vhds", "leftover.vhd")
    keep = gc.page("vhds", "kept.vhd", snapshots=1)
    gc.configure(mode="delete", grace_period="1d", min_sightings=2)
    t0 = datetime.now(UTC)
    gc.scan(at=t0)
    assert gc.state(url) == "candidate"
    gc.scan(at=t0 + timedelta(days=2))
    assert not gc.exists("vhds", "leftover.vhd") and gc.exists("vhds", "kept.vhd")
    report = gc.report()
    assert report[url]["state"] == "deleted" and report[keep]["state"] == "kept"


@pytest.mark.parametrize(
    "gc", [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_passes_over_an_unchanged_estate_write_no_rows(gc):
    """The steady state costs the database nothing: once every blob is recorded, a pass over the
    same estate writes no row, whatever the mix of states (and reads every stored row back right)."""
    used = gc.page("vhds", "in-use.vhd")
    gc.page("vhds", "leased.vhd", lease=True)
    orphans = [gc.page("vhds", f"leftover-{i}.vhd") for i in range(3)]
    held = gc.page("vhds", "held.vhd", snapshots=1)
    gc.page("vhds", "notes.txt")
    other = gc.page("vhds", "leftover.vhd", account="gcacct2")
    gc.compute(a.vm(SUB, RG, "vm1", os_vhd=used))
    gc.configure(grace_period="7d", min_sightings=3)
    t0 = datetime.now(UTC)

    first = gc.scan(at=t0)
    assert first.outcome == "complete" and first.stats.changes >= 5
    before = gc.report()
    for hours in (1, 2):
        again = gc.scan(at=t0 + timedelta(hours=hours))
        assert again.outcome == "complete"
        assert again.stats.changes == 0
    after = gc.report()
    assert {u: r["state"] for u, r in after.items()} == {u: r["state"] for u, r in before.items()}
    assert all(after[u]["state"] == "candidate" for u in [*orphans, other])
    assert after[held]["state"] == "kept" and used not in after


def test_intents_left_by_a_crash_are_settled_by_looking_at_the_blob(gc):
    from gc_daemon.config import load_config
    from gc_daemon.wiring import open_store

    gone_url = gc.page("vhds", "went.vhd")
    kept_url = gc.page("vhds", "stayed.vhd")
    gc.configure(mode="dry-run", grace_period="1d")
    gc.scan()
    store = open_store(load_config(gc.config_path))
    rows = {r.url: r for r in store.rows()}
    now = datetime.now(UTC)
    for url in (gone_url, kept_url):  # a process wrote its intents, then died
        row = rows[url]
        store.audit(action="delete-intent", key=row.key, url=url, at=now, actor="crashed", etag=row.etag,
                    size_bytes=row.size_bytes)
    gc.svc().get_blob_client("vhds", "went.vhd").delete_blob()  # ...after one delete went through

    assert gc.scan().outcome == "complete"

    assert store.unresolved_intents() == []
    outcomes = {r.url: r.action for r in store.audit_log() if r.intent_id is not None}
    assert outcomes == {gone_url: "deleted", kept_url: "delete-failed"}
    report = gc.report()
    assert report[gone_url]["state"] == "deleted"
    assert report[kept_url]["state"] == "candidate" and gc.exists("vhds", "stayed.vhd")


# -- the blast-radius guard ------------------------------------------------------------------


def test_blast_radius_guard_catches_a_missing_subscription(gc):
    """The classic disaster: a subscription missing from the configuration makes its disks look
    orphaned. 15 of 20 VHDs would be newly marked: the pass marks nothing and waits."""
    ours = [gc.page("vhds", f"web-{i}.vhd") for i in range(5)]
    theirs = [gc.page("vhds", f"db-{i}.vhd") for i in range(15)]
    gc.compute(
        *[a.vm(SUB, RG, f"web-{i}", os_vhd=u) for i, u in enumerate(ours)],
        *[a.vm(SUB2, RG, f"db-{i}", os_vhd=u) for i, u in enumerate(theirs)],
    )
    gc.configure(mode="delete", blast_radius={"max_new_share": 0.2, "min_new": 10})  # SUB2 forgotten

    run = gc.cli("scan")

    assert run.code == 3 and "blast radius" in run.err and "15 of 20" in run.err
    assert gc.report() == {}
    assert len(seed.names(gc.svc())) == 20
    assert gc.cli("passes").out.count("incomplete") == 1
    # The operator adds the subscription: the next pass is complete and marks nothing.
    gc.configure(mode="delete", blast_radius={"max_new_share": 0.2, "min_new": 10}, azure={"subscriptions": [SUB, SUB2]})
    assert gc.cli("scan").code == 0
    assert gc.report() == {} and len(seed.names(gc.svc())) == 20


def test_blast_radius_confirm_pass_lets_one_pass_through(gc):
    for i in range(15):
        gc.page("vhds", f"leftover-{i}.vhd")
    gc.page("vhds", "web.vhd", lease=True)
    gc.configure(mode="delete", blast_radius={"max_new_share": 0.2, "min_new": 10})
    assert gc.cli("scan").code == 3
    assert gc.cli("confirm-pass").code == 0
    assert gc.cli("scan").code == 0  # confirmed: the 15 are marked (and, grace 0s, deleted)
    assert seed.names(gc.svc()) == {("vhds", "web.vhd")}
    assert gc.cli("confirm-pass").code == 2  # nothing waits for a confirmation now


def test_blast_radius_bytes_limit_and_a_configuration_change_lets_it_through(gc):
    for i in range(3):
        gc.page("vhds", f"big-{i}.vhd", size=8 << 20)
    gc.configure(mode="dry-run", blast_radius={"max_new_bytes": 16 << 20})
    run = gc.cli("scan")
    assert run.code == 3 and "max_new_bytes" in run.err
    assert gc.report() == {}
    gc.configure(mode="dry-run", blast_radius={"max_new_bytes": 32 << 20})
    assert gc.cli("scan").code == 0
    assert len(gc.report()) == 3


# -- the listing's service time, from sources that give one and sources that do not ---------------


def _listed(source, name="acct"):
    from gc_daemon.domain import PassStats
    from gc_daemon.passes import Listing

    listing = Listing({name: source}, 1, 1000)
    listing.start()
    try:
        first = listing.service_time(name)
        return first, [b.key.blob for b in listing.blobs(name, PassStats(), lambda: False)]
    finally:
        listing.stop()


def test_a_source_without_a_service_time_is_listed_as_before():
    from tests.builders import seen

    class InProcess:  # the bench's sources: no reports_service_time, list_blobs() takes nothing
        def list_blobs(self):
            yield from (seen("a.vhd"), seen("b.vhd"))

    assert _listed(InProcess()) == (None, ["a.vhd", "b.vhd"])


def test_a_source_with_a_service_time_gives_it_before_its_blobs():
    from gc_daemon.domain import ServiceTime
    from tests.builders import NOW, seen

    class Timed:
        reports_service_time = True

        def list_blobs(self, on_service_time=None):
            on_service_time(ServiceTime(NOW, 12.5))
            yield from (seen("a.vhd"), seen("b.vhd"))

    assert _listed(Timed()) == (ServiceTime(NOW, 12.5), ["a.vhd", "b.vhd"])


def test_a_listing_that_fails_before_its_first_answer_fails_after_the_service_time():
    from gc_daemon.passes import ListingFailed

    class Broken:
        reports_service_time = True

        def list_blobs(self, on_service_time=None):
            raise RuntimeError("refused")
            yield  # a generator, like the real one

    with pytest.raises(ListingFailed, match="refused"):
        _listed(Broken())
