"""The pure decision: every rule of the contract, one scenario each, then lifecycle properties."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gc_daemon.state.store import StoredRow
from gc_daemon.decide import ReferenceIndex, classify, decide, decide_stream, is_tracked_kind
from gc_daemon.domain import (
    BlobKey,
    Change,
    ContainerKey,
    Forget,
    Hold,
    RefKind,
    State,
    Verdict,
)
from tests.builders import (
    ACCOUNT,
    CONTAINER,
    GIB,
    DISK,
    NOW,
    account_ref,
    container_ref,
    import_ref,
    index,
    key,
    leased,
    policy,
    raw,
    ref,
    see,
    seen,
    tracked,
)

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

BLOB_REFERENCE_KINDS = [k for k in RefKind if k.scope == "blob" and not k.is_import]
ACCOUNT_REFERENCE_KINDS = [k for k in RefKind if k.scope == "account"]


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BLOB_REFERENCE_KINDS, ids=lambda k: k.value)
def test_referenced_blob_is_in_use_and_not_tracked(kind):
    blob = seen()
    r = ref(kind, blob.key)
    d = see(blob, refs=index(r))
    assert d.classification.verdict is Verdict.REFERENCED
    assert d.classification.references == (r,)
    assert d.change is None and d.due is None


@pytest.mark.parametrize("kind", ACCOUNT_REFERENCE_KINDS, ids=lambda k: k.value)
def test_an_account_reference_holds_every_blob_of_that_account_and_no_other(kind):
    inside, other = seen(), seen(k=BlobKey("gcacct2", CONTAINER, "other.vhd"))
    r = account_ref(kind=kind)
    refs = index(r)
    d = see(inside, refs=refs)
    assert d.classification.verdict is Verdict.REFERENCED
    assert d.classification.references[0].kind is kind
    assert see(other, refs=refs).classification.verdict is Verdict.ORPHAN
    # The streaming decision's fast paths agree: an untracked blob of the account is quiet.
    out = list(decide_stream([inside, other], {}, refs, {}, policy(), NOW, 1))
    assert [d.key for d in out] == [other.key]


def test_references_to_hosts_that_can_be_no_collected_account_are_counted_and_ignored():
    raws = [
        raw(RefKind.DISK_IMPORT, "https://md-lsz1xpr4bz3d.z23.blob.storage.azure.net/pbvdmpqhfbsd/abcd?sv=2018-03-28&sig=S3CR3T"),
        raw(RefKind.VM_OS_DISK, "https://othertenant.blob.core.windows.net/vhds/theirs.vhd"),
        raw(RefKind.SITE_RECOVERY, "https://kv1.vault.azure.net/secrets/x"),
        raw(RefKind.VM_DATA_DISK, "https://othertenant.blob.core.windows.net/a--b/bad-container.vhd"),
        raw(RefKind.SITE_RECOVERY_ACCOUNT,
            "/subscriptions/x/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/elsewhere1"),
    ]
    idx, errors = ReferenceIndex.build(raws, {ACCOUNT})
    assert errors == []
    assert len(idx) == 0 and idx.foreign == 5
    assert all("S3CR3T" not in e for e in idx.foreign_sample)


def test_a_private_endpoint_host_is_the_account_itself():
    blob = seen()
    r = raw(RefKind.VM_OS_DISK, f"https://{ACCOUNT}.privatelink.blob.core.windows.net/{CONTAINER}/{blob.key.blob}")
    idx, errors = ReferenceIndex.build([r], {ACCOUNT})
    assert errors == [] and idx.foreign == 0
    assert classify(blob, idx, {}, policy(), NOW).verdict is Verdict.REFERENCED


@pytest.mark.parametrize("uri", [
    "not a url", "ftp://gcacct1.blob.core.windows.net/vhds/a.vhd", "https:///vhds/a.vhd",
    "https://gcacct1.blob.core.windows.net/vhds/sub/../a.vhd", "https://gcacct1.blob.core.windows.net/A--B/a.vhd",
])
def test_a_reference_that_cannot_be_placed_on_a_collected_account_still_fails(uri):
    idx, errors = ReferenceIndex.build([raw(RefKind.VM_OS_DISK, uri)], {ACCOUNT})
    assert len(errors) == 1 and len(idx) == 0 and idx.foreign == 0


def test_a_malformed_account_id_fails():
    idx, errors = ReferenceIndex.build([raw(RefKind.SITE_RECOVERY_ACCOUNT, "/subscriptions/x/storageAccounts")], {ACCOUNT})
    assert len(errors) == 1


def test_reference_outlives_any_age_and_grace():
    blob = seen(age=timedelta(days=3650))
    d = see(blob, refs=index(ref(RefKind.VM_OS_DISK, blob.key)), pol=policy(grace_period=timedelta(0), min_sightings=1))
    assert d.classification.verdict is Verdict.REFERENCED and d.due is None


def test_reference_beats_holds_and_leases():
    blob = leased(snapshots=2, keep_metadata=True)
    c = classify(blob, index(ref(RefKind.VM_DATA_DISK, blob.key)), {blob.key: "ops"}, policy(), NOW)
    assert c.verdict is Verdict.REFERENCED and c.hold is None


def test_raw_reference_matches_blob_despite_host_case_container_case_and_encoding():
    blob = seen("Sub Dir/My Disk.vhd")
    idx, errors = ReferenceIndex.build(
        [raw(RefKind.VM_OS_DISK, f"https://{ACCOUNT.upper()}.blob.core.windows.net/VHDS/Sub%20Dir/My%20Disk.vhd?sig=x")]
    )
    assert errors == []
    assert classify(blob, idx, {}, policy(), NOW).verdict is Verdict.REFERENCED


def test_reference_with_other_blob_name_case_does_not_protect():
    blob = seen("disk.vhd")
    idx, _ = ReferenceIndex.build([raw(RefKind.VM_OS_DISK, f"https://{ACCOUNT}.blob.core.windows.net/vhds/DISK.vhd")])
    assert classify(blob, idx, {}, policy(), NOW).verdict is Verdict.ORPHAN


def test_reference_to_same_name_in_another_account_does_not_protect():
    blob = seen("disk.vhd")
    other = key("disk.vhd", account="otheracct")
    assert classify(blob, index(ref(RefKind.VM_OS_DISK, other)), {}, policy(), NOW).verdict is Verdict.ORPHAN


def test_scale_set_vhd_container_protects_every_blob_of_that_container():
    refs = index(container_ref("vmss"))
    for name in ("os-0.vhd", "deep/nested/os-1.vhd", "whatever.vhd"):
        blob = seen(k=key(name, container="vmss"))
        c = classify(blob, refs, {}, policy(), NOW)
        assert c.verdict is Verdict.REFERENCED
        assert c.references[0].kind is RefKind.VMSS_CONTAINER


def test_scale_set_vhd_container_does_not_protect_other_containers_or_accounts():
    refs = index(container_ref("vmss"))
    assert classify(seen(k=key("os.vhd", container="vmss2")), refs, {}, policy(), NOW).verdict is Verdict.ORPHAN
    assert classify(seen(k=key("os.vhd", container="vhds")), refs, {}, policy(), NOW).verdict is Verdict.ORPHAN
    other_account = seen(k=key("os.vhd", container="vmss", account="otheracct"))
    assert classify(other_account, refs, {}, policy(), NOW).verdict is Verdict.ORPHAN


def test_scale_set_vhd_container_url_is_indexed_as_a_container():
    idx, errors = ReferenceIndex.build([raw(RefKind.VMSS_CONTAINER, f"https://{ACCOUNT}.blob.core.windows.net/VMSS/")])
    assert errors == []
    assert idx.lookup(key("any.vhd", container="vmss"))[0].container == ContainerKey(ACCOUNT, "vmss")


@pytest.mark.parametrize("kind", [RefKind.DISK_IMPORT, RefKind.SNAPSHOT_IMPORT], ids=lambda k: k.value)
@pytest.mark.parametrize("state", ["Creating", "Updating", "Failed", None])
def test_import_protects_its_source_while_not_provisioned_even_after_the_hold(kind, state):
    blob = seen()
    r = import_ref(blob.key, created=NOW - 30 * DAY, provisioning_state=state, kind=kind)
    assert classify(blob, index(r), {}, policy(), NOW).verdict is Verdict.REFERENCED


@pytest.mark.parametrize("kind", [RefKind.DISK_IMPORT, RefKind.SNAPSHOT_IMPORT], ids=lambda k: k.value)
def test_import_protects_its_source_within_import_hold_of_time_created(kind):
    blob = seen()
    r = import_ref(blob.key, created=NOW - 7 * DAY + timedelta(seconds=1), kind=kind)
    assert classify(blob, index(r), {}, policy(import_hold=7 * DAY), NOW).verdict is Verdict.REFERENCED


def test_import_without_time_created_keeps_its_source():
    blob = seen()
    r = import_ref(blob.key, created=None)
    assert classify(blob, index(r), {}, policy(), NOW).verdict is Verdict.REFERENCED


@pytest.mark.parametrize("kind", [RefKind.DISK_IMPORT, RefKind.SNAPSHOT_IMPORT], ids=lambda k: k.value)
def test_finished_import_leaves_a_leftover_naming_the_disk_as_last_owner(kind):
    blob = seen()
    r = import_ref(blob.key, created=NOW - 7 * DAY, kind=kind, holder=DISK)
    d = see(blob, refs=index(r), pol=policy(import_hold=7 * DAY))
    assert d.classification.verdict is Verdict.ORPHAN and d.classification.deletable
    assert d.classification.references == (r,)
    assert d.change is not None and d.change.row.state is State.CANDIDATE
    assert d.change.row.last_owner == DISK
    assert "import finished" in d.change.row.reason


def test_import_hold_of_zero_releases_the_source_once_provisioned():
    blob = seen()
    r = import_ref(blob.key, created=NOW)
    assert classify(blob, index(r), {}, policy(import_hold=timedelta(0)), NOW).verdict is Verdict.ORPHAN


def test_finished_import_next_to_a_live_reference_still_protects():
    blob = seen()
    refs = index(import_ref(blob.key, created=NOW - 30 * DAY), ref(RefKind.IMAGE_BLOB, blob.key))
    c = classify(blob, refs, {}, policy(), NOW)
    assert c.verdict is Verdict.REFERENCED
    assert [r.kind for r in c.references] == [RefKind.IMAGE_BLOB]


def test_reference_index_build_reports_unparseable_uris_and_keeps_the_rest():
    good = raw(RefKind.VM_OS_DISK, f"https://{ACCOUNT}.blob.core.windows.net/vhds/ok.vhd")
    bad_blob = raw(RefKind.VM_DATA_DISK, f"https://{ACCOUNT}.blob.core.windows.net/vhds/../data.vhd", holder="/vm/bad")
    bad_container = raw(RefKind.VMSS_CONTAINER, f"https://{ACCOUNT}.blob.core.windows.net/a--b", holder="/vmss/bad")
    idx, errors = ReferenceIndex.build([good, bad_blob, bad_container])
    assert len(idx) == 1
    assert idx.lookup(key("ok.vhd"))[0].uri == good.uri
    assert len(errors) == 2
    assert "vm_data_disk of /vm/bad" in errors[0] and "/vhds/../data.vhd" in errors[0]
    assert "vmss_vhd_container of /vmss/bad" in errors[1]


def test_reference_index_build_keeps_import_facts():
    created = NOW - DAY
    r = raw(
        RefKind.DISK_IMPORT,
        f"https://{ACCOUNT}.blob.core.windows.net/vhds/src.vhd",
        holder=DISK,
        time_created=created,
        provisioning_state="Succeeded",
    )
    idx, _ = ReferenceIndex.build([r])
    (found,) = idx.lookup(key("src.vhd"))
    assert (found.time_created, found.provisioning_state) == (created, "Succeeded")


@pytest.mark.parametrize("order", ["import_first", "live_first", "import_only", "two_imports", "container"])
def test_reference_index_permanently_referenced_and_mentions(order):
    k, other = key("a.vhd"), key("b.vhd")
    imp, live = import_ref(k, created=NOW - 30 * DAY), ref(RefKind.VM_DATA_DISK, k)
    refs = {
        "import_first": [imp, live], "live_first": [live, imp], "import_only": [imp],
        "two_imports": [imp, import_ref(k, created=NOW, kind=RefKind.SNAPSHOT_IMPORT)],
        "container": [imp, container_ref()],
    }[order]
    idx = index(*refs)
    assert idx.mentions(k) and len(idx.lookup(k)) == len(refs)
    assert idx.permanently_referenced(k) is (order in ("import_first", "live_first", "container"))
    assert idx.mentions(other) is idx.permanently_referenced(other) is (order == "container")


def test_reference_index_union_holds_both_sides():
    a = index(ref(RefKind.VM_OS_DISK, key("a.vhd")))
    b = index(container_ref("vmss"))
    merged = a.union(b)
    assert len(merged) == 2
    assert merged.lookup(key("a.vhd")) and merged.lookup(key("x.vhd", container="vmss"))
    assert not merged.lookup(key("b.vhd"))


# --- leases and age ------------------------------------------------------------------------------


@pytest.mark.parametrize("state, status", [("leased", "locked"), ("breaking", "locked"), ("Leased", "Locked"), (None, "locked")])
def test_leased_or_breaking_blob_is_in_use(state, status):
    blob = seen(lease_state=state, lease_status=status)
    d = see(blob, pol=policy(grace_period=timedelta(0), min_sightings=1))
    assert d.classification.verdict is Verdict.LEASED
    assert d.change is None and d.due is None


@pytest.mark.parametrize("state", ["broken", "expired", "available"])
def test_broken_expired_or_available_lease_is_not_in_use(state):
    blob = seen(lease_state=state, lease_status="unlocked")
    assert classify(blob, index(), {}, policy(), NOW).verdict is Verdict.ORPHAN


def test_unknown_lease_counts_as_leased():
    assert seen(lease_state=None, lease_status=None).leased is True


def test_blob_modified_within_min_age_is_too_young():
    blob = seen(age=24 * HOUR - timedelta(seconds=1))
    d = see(blob, pol=policy(min_age=24 * HOUR, grace_period=timedelta(0), min_sightings=1))
    assert d.classification.verdict is Verdict.TOO_YOUNG
    assert d.change is None and d.due is None


def test_blob_modified_exactly_min_age_ago_is_an_orphan():
    blob = seen(age=24 * HOUR)
    assert classify(blob, index(), {}, policy(min_age=24 * HOUR), NOW).verdict is Verdict.ORPHAN


@pytest.mark.parametrize("min_age", [timedelta(0), 24 * HOUR])
def test_clock_before_last_modified_makes_the_blob_too_young(min_age):
    blob = seen(last_modified=NOW + HOUR)
    assert classify(blob, index(), {}, policy(min_age=min_age), NOW).verdict is Verdict.TOO_YOUNG


def test_age_is_counted_on_the_service_time_when_the_listing_gave_one():
    blob = seen(age=2 * HOUR)  # two hours old on the pass clock
    pol = policy(min_age=HOUR)
    assert classify(blob, index(), {}, pol, NOW).verdict is Verdict.ORPHAN
    # the service's clock 90 minutes behind ours: on it the blob is 30 minutes old
    assert classify(blob, index(), {}, pol, NOW, NOW - 90 * timedelta(minutes=1)).verdict is Verdict.TOO_YOUNG
    young = seen(age=30 * timedelta(minutes=1))
    assert classify(young, index(), {}, pol, NOW).verdict is Verdict.TOO_YOUNG
    assert classify(young, index(), {}, pol, NOW, NOW + 90 * timedelta(minutes=1)).verdict is Verdict.ORPHAN


def test_the_service_time_moves_min_age_only():
    """Grace period, sightings and import_hold stay on the pass clock."""
    blob = seen(age=3 * DAY)
    service_now = NOW - 2 * DAY  # far behind; the blob is still a day old on it
    pol = policy(min_age=HOUR, grace_period=DAY, min_sightings=1, import_hold=7 * DAY)
    (d,) = list(decide_stream([blob], {}, index(), {}, pol, NOW, 5, service_now=service_now))
    assert d.change.row.first_orphaned_at == NOW and d.change.row.delete_after == NOW + DAY
    r = import_ref(blob.key, created=NOW - 8 * DAY)  # its hold is over on the pass clock, not on the service's
    assert classify(blob, index(r), {}, pol, NOW, service_now).verdict is Verdict.ORPHAN
    out = decide([blob], {}, index(), {}, pol, NOW, 5, service_now=NOW - 3 * DAY + timedelta(seconds=1))
    assert out.classifications[blob.key].verdict is Verdict.TOO_YOUNG and not out.changes


def test_lease_beats_age_and_holds():
    blob = leased(age=HOUR, snapshots=1)
    assert classify(blob, index(), {}, policy(), NOW).verdict is Verdict.LEASED


# --- holds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob, holds, expected",
    [
        (seen(snapshots=1), {}, Hold.SNAPSHOTS),
        (seen(keep_metadata=True), {}, Hold.METADATA),
        (seen(keep_tag=True), {}, Hold.TAG),
        (seen(), {key(): "ticket 42"}, Hold.OPERATOR),
        (seen("disk.vhd", blob_type="BlockBlob"), {}, Hold.BLOCK_BLOB),
        (seen("disk.bin"), {}, Hold.NOT_VHD),
    ],
    ids=["snapshots", "metadata", "tag", "operator", "block-blob-vhd", "page-blob-not-vhd"],
)
def test_held_orphan_is_kept_and_never_due(blob, holds, expected):
    d = see(blob, holds=holds, pol=policy(grace_period=timedelta(0), min_sightings=1))
    assert d.classification.verdict is Verdict.ORPHAN
    assert d.classification.hold is expected and not d.classification.deletable
    assert d.change is not None
    assert d.change.row.state is State.KEPT and d.change.row.hold is expected
    assert d.change.row.delete_after is None
    assert d.due is None


def test_operator_hold_reason_carries_the_operator_note():
    c = classify(seen(), index(), {key(): "ticket 42"}, policy(), NOW)
    assert c.hold is Hold.OPERATOR and "ticket 42" in c.reason


def test_policy_opt_in_lets_block_blob_vhds_become_candidates():
    blob = seen("disk.vhd", blob_type="BlockBlob")
    d = see(blob, pol=policy(delete_block_blob_vhds=True))
    assert d.classification.deletable
    assert d.change.row.state is State.CANDIDATE
    assert d.change.measure is False  # a block blob bills its size: nothing to measure
    assert d.change.row.billed_bytes == blob.size


def test_policy_opt_in_lets_non_vhd_page_blobs_become_candidates():
    d = see(seen("disk.bin"), pol=policy(delete_non_vhd_page_blobs=True))
    assert d.classification.deletable and d.change.row.state is State.CANDIDATE


def test_policy_opt_in_does_not_lift_other_holds():
    c = classify(seen("disk.bin", snapshots=1), index(), {}, policy(delete_non_vhd_page_blobs=True), NOW)
    assert c.hold is Hold.SNAPSHOTS


def test_vhd_suffix_matches_in_any_case():
    assert classify(seen("DISK.VHD"), index(), {}, policy(), NOW).deletable


def test_non_vhd_block_blobs_are_not_tracked_at_all():
    blob = seen("data.bin", blob_type="BlockBlob")
    assert not is_tracked_kind(blob)
    out = decide([blob], {}, index(), {}, policy(grace_period=timedelta(0), min_sightings=1), NOW, 1)
    assert out.changes == [] and out.due == [] and out.classifications == {}


def test_tracked_row_of_a_blob_that_is_no_longer_a_vhd_is_forgotten():
    # Once a page blob not named .vhd (kept, reported); now a block blob of the same name: plain data.
    was = seen("disk.bin")
    now_data = seen("disk.bin", blob_type="BlockBlob", etag='"new"')
    row = tracked(was, state=State.KEPT, hold=Hold.NOT_VHD)
    out = decide([now_data], {was.key: row}, index(), {}, policy(), NOW, 2)
    assert out.changes == [Forget(was.key, reason="no longer a VHD")]
    assert out.classifications == {} and out.due == []


# --- lifecycle -----------------------------------------------------------------------------------


def test_first_sighting_marks_a_candidate_with_one_sighting():
    blob = seen()
    d = see(blob, seq=5)
    row = d.change.row
    assert d.change.event == "marked" and d.change.measure is True
    assert row.state is State.CANDIDATE
    assert row.sightings(5) == 1
    assert row.first_orphaned_at == NOW
    assert row.delete_after == NOW + 7 * DAY
    assert row.etag == blob.etag and row.size_bytes == blob.size
    assert row.billed_bytes is None  # to be measured
    assert d.due is None


def test_grace_elapsed_but_too_few_sightings_is_not_due():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - 30 * DAY, streak_start=9)
    d = see(blob, prev, seq=10, pol=policy(grace_period=7 * DAY, min_sightings=3))
    assert prev.sightings(10) == 2
    assert d.due is None and d.change is None


def test_enough_sightings_but_grace_not_elapsed_is_not_due():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - 6 * DAY, streak_start=1)
    d = see(blob, prev, seq=100, pol=policy(grace_period=7 * DAY, min_sightings=3))
    assert prev.sightings(100) == 100
    assert d.due is None and d.change is None


def test_grace_elapsed_and_enough_sightings_is_due():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - 7 * DAY, streak_start=8)
    d = see(blob, prev, seq=10, pol=policy(grace_period=7 * DAY, min_sightings=3))
    assert d.due is not None and d.due.state is State.DUE and d.due.etag == blob.etag
    assert d.change.event == "due" and d.change.row.state is State.DUE
    assert d.change.measure is False


def test_due_row_seen_again_unchanged_stays_due_without_a_write():
    blob = seen()
    prev = tracked(blob, state=State.DUE, first_orphaned_at=NOW - 8 * DAY, streak_start=1)
    d = see(blob, prev, seq=10)
    assert d.change is None
    assert d.due is prev


def test_zero_grace_and_one_sighting_is_due_at_first_sighting():
    blob = seen()
    d = see(blob, pol=policy(grace_period=timedelta(0), min_sightings=1), seq=3)
    assert d.due is not None and d.due.state is State.DUE
    assert d.change.event == "due" and d.change.measure is True
    assert d.change.row.sightings(3) == 1


def test_zero_grace_still_waits_for_min_sightings():
    blob = seen()
    pol = policy(grace_period=timedelta(0), min_sightings=2)
    first = see(blob, pol=pol, seq=1)
    assert first.due is None and first.change.row.state is State.CANDIDATE
    second = see(blob, first.change.row, pol=pol, seq=2, now=NOW + HOUR)
    assert second.due is not None and second.change.row.state is State.DUE


@pytest.mark.parametrize("prev_state", [State.CANDIDATE, State.DUE])
def test_etag_change_restarts_the_candidate(prev_state):
    old = seen(etag='"old"')
    prev = tracked(old, state=prev_state, first_orphaned_at=NOW - 30 * DAY, streak_start=1)
    new = seen(etag='"new"')
    d = see(new, prev, seq=20, pol=policy(grace_period=7 * DAY, min_sightings=3))
    row = d.change.row
    assert d.change.event == "restarted" and d.change.measure is True
    assert row.state is State.CANDIDATE and row.etag == '"new"'
    assert row.sightings(20) == 1
    assert row.first_orphaned_at == NOW and row.delete_after == NOW + 7 * DAY
    assert row.billed_bytes is None
    assert d.due is None


@pytest.mark.parametrize("prev_state", [State.CANDIDATE, State.DUE])
def test_candidate_referenced_again_is_released_and_its_run_of_sightings_ends(prev_state):
    blob = seen()
    prev = tracked(blob, state=prev_state, streak_start=3)
    d = see(blob, prev, refs=index(ref(RefKind.VM_DATA_DISK, blob.key)), seq=7)
    row = d.change.row
    assert d.change.event == "released" and d.due is None
    assert row.state is State.RELEASED
    assert row.sightings(7) == 0  # pass 7 saw it in use: no consecutive orphan sightings now
    assert row.sightings(1000) == 0
    assert row.delete_after is None and row.streak_start is None


def test_candidate_leased_again_is_released():
    blob = seen()
    prev = tracked(blob, streak_start=1)
    d = see(leased(), prev, seq=2)
    assert d.change.row.state is State.RELEASED and d.change.row.sightings(2) == 0


def test_released_blob_still_in_use_is_not_written_again():
    blob = seen()
    prev = tracked(blob, state=State.RELEASED, streak_start=None, sightings_frozen=4)
    assert see(leased(), prev, seq=9).change is None


def test_released_blob_orphaned_again_is_a_new_candidate():
    blob = seen()
    prev = tracked(blob, state=State.RELEASED, first_orphaned_at=NOW - 30 * DAY, streak_start=None, sightings_frozen=5)
    d = see(blob, prev, seq=9)
    assert d.change.event == "marked"
    assert d.change.row.state is State.CANDIDATE and d.change.row.sightings(9) == 1
    assert d.change.row.first_orphaned_at == NOW
    assert d.due is None


def test_kept_blob_whose_hold_is_lifted_becomes_a_new_candidate():
    blob = seen()
    prev = tracked(blob, state=State.KEPT, hold=Hold.SNAPSHOTS, first_orphaned_at=NOW - 30 * DAY, streak_start=1)
    d = see(blob, prev, seq=50, pol=policy(grace_period=7 * DAY, min_sightings=3))
    row = d.change.row
    assert row.state is State.CANDIDATE and row.hold is None
    assert row.sightings(50) == 1 and row.first_orphaned_at == NOW
    assert row.delete_after == NOW + 7 * DAY
    assert d.due is None


def test_candidate_that_gains_a_hold_is_kept():
    blob = seen()
    prev = tracked(blob, streak_start=1, first_orphaned_at=NOW - 30 * DAY)
    d = see(seen(keep_tag=True), prev, seq=10, pol=policy(grace_period=timedelta(0), min_sightings=1))
    assert d.change.row.state is State.KEPT and d.change.row.hold is Hold.TAG
    assert d.change.row.delete_after is None
    assert d.due is None


def test_unchanged_kept_blob_costs_no_write_but_keeps_counting():
    blob = seen(snapshots=1)
    prev = tracked(blob, state=State.KEPT, hold=Hold.SNAPSHOTS, streak_start=2)
    d = see(blob, prev, seq=6)
    assert d.change is None and d.due is None
    assert prev.sightings(6) == 5


def test_kept_blob_with_unknown_billed_bytes_is_measured():
    blob = seen(snapshots=1)
    prev = tracked(blob, state=State.KEPT, hold=Hold.SNAPSHOTS, billed_bytes=None)
    d = see(blob, prev, seq=2)
    assert d.change is not None and d.change.measure is True and d.change.row.state is State.KEPT


def test_unchanged_candidate_seen_again_is_not_written_but_counts():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - DAY, streak_start=4)
    d = see(blob, prev, seq=6)
    assert d.change is None and d.due is None
    assert prev.sightings(6) == 3


def test_shorter_grace_period_reschedules_a_candidate():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - 2 * DAY, grace_period=7 * DAY, streak_start=1)
    d = see(blob, prev, seq=2, pol=policy(grace_period=3 * DAY, min_sightings=3))
    assert d.change.event == "rescheduled" and d.change.measure is False
    assert d.change.row.delete_after == NOW + DAY
    assert d.change.row.first_orphaned_at == NOW - 2 * DAY
    assert d.due is None


def test_shorter_grace_period_can_make_a_candidate_due():
    blob = seen()
    prev = tracked(blob, first_orphaned_at=NOW - 2 * DAY, grace_period=7 * DAY, streak_start=1)
    d = see(blob, prev, seq=3, pol=policy(grace_period=DAY, min_sightings=3))
    assert d.due is not None and d.change.row.delete_after == NOW - DAY


def test_longer_grace_period_puts_a_due_blob_back_to_candidate():
    blob = seen()
    prev = tracked(blob, state=State.DUE, first_orphaned_at=NOW - 8 * DAY, grace_period=7 * DAY, streak_start=1)
    d = see(blob, prev, seq=5, pol=policy(grace_period=30 * DAY))
    assert d.due is None
    assert d.change.row.state is State.CANDIDATE and d.change.row.delete_after == NOW + 22 * DAY


def test_candidate_with_unknown_billed_bytes_is_measured_again():
    blob = seen()
    prev = tracked(blob, streak_start=1, billed_bytes=None)
    d = see(blob, prev, seq=2)
    assert d.change is not None and d.change.measure is True


def test_measure_is_not_requested_for_blobs_in_use_or_unchanged():
    blob = seen()
    assert see(blob, refs=index(ref(RefKind.VM_OS_DISK, blob.key))).change is None
    prev = tracked(blob, streak_start=1)
    released = see(leased(), prev, seq=2).change
    assert released.measure is False


def test_owner_hint_of_an_attached_vm_becomes_last_owner():
    d = see(seen(owner_hint="vm7"))
    assert d.change.row.last_owner == "vm:vm7"


def test_vanished_rows_are_forgotten_except_deleted_ones():
    rows = {
        key("cand.vhd"): tracked(seen("cand.vhd")),
        key("kept.vhd"): tracked(seen("kept.vhd"), state=State.KEPT, hold=Hold.TAG),
        key("rel.vhd"): tracked(seen("rel.vhd"), state=State.RELEASED, streak_start=None, sightings_frozen=2),
        key("due.vhd"): tracked(seen("due.vhd"), state=State.DUE),
        key("gone.vhd"): tracked(seen("gone.vhd"), state=State.DELETED, streak_start=None),
    }
    out = decide([], rows, index(), {}, policy(), NOW, 3)
    assert sorted(f.key.blob for f in out.changes) == ["cand.vhd", "due.vhd", "kept.vhd", "rel.vhd"]
    assert all(isinstance(f, Forget) and f.reason == "vanished" for f in out.changes)
    assert len(rows) == 5  # decide() does not consume the caller's mapping


def test_decide_stream_consumes_the_tracked_mapping():
    rows = {key("a.vhd"): tracked(seen("a.vhd"))}
    list(decide_stream([seen("a.vhd")], rows, index(), {}, policy(), NOW, 2))
    assert rows == {}


def test_decide_collects_changes_due_rows_and_classifications_for_a_listing():
    pol = policy(grace_period=7 * DAY, min_sightings=2)
    new = seen("new.vhd")
    in_use = seen("used.vhd")
    ripe = seen("ripe.vhd")
    young = seen("young.vhd", age=HOUR)
    rows = {ripe.key: tracked(ripe, first_orphaned_at=NOW - 8 * DAY, streak_start=1)}
    refs = index(ref(RefKind.VM_OS_DISK, in_use.key))
    out = decide([new, in_use, ripe, young], rows, refs, {}, pol, NOW, 2)
    assert {k.blob: c.verdict for k, c in out.classifications.items()} == {
        "new.vhd": Verdict.ORPHAN,
        "used.vhd": Verdict.REFERENCED,
        "ripe.vhd": Verdict.ORPHAN,
        "young.vhd": Verdict.TOO_YOUNG,
    }
    assert [r.key.blob for r in out.due] == ["ripe.vhd"]
    assert {(c.row.key.blob, c.event) for c in out.changes if isinstance(c, Change)} == {
        ("new.vhd", "marked"),
        ("ripe.vhd", "due"),
    }


# --- lifecycle properties ------------------------------------------------------------------------

COUNTING = {State.CANDIDATE, State.DUE, State.KEPT}
CONTRACT_STATES = {State.CANDIDATE, State.DUE, State.DELETED, State.KEPT, State.RELEASED}

steps = st.fixed_dictionaries(
    {
        "referenced": st.booleans(),
        "leased": st.booleans(),
        "etag": st.sampled_from(['"a"', '"a"', '"a"', '"b"', '"c"']),
        "hold": st.sampled_from([None, None, None, "snapshots", "metadata", "tag", "operator", "captured_image",
                                 "kubernetes"]),
        "advance": st.sampled_from([timedelta(0), timedelta(minutes=1), HOUR, DAY, 3 * DAY]),
        "touched": st.booleans(),  # modified just before this pass (too young)
    }
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(steps, min_size=1, max_size=25),
    st.sampled_from([timedelta(0), HOUR, 2 * DAY, 7 * DAY]),
    st.integers(1, 4),
    st.sampled_from([timedelta(0), HOUR]),
)
def test_lifecycle_invariants_over_random_passes(passes, grace, min_sightings, min_age):
    pol = policy(grace_period=grace, min_sightings=min_sightings, min_age=min_age)
    now = NOW
    prev = None
    streak_etag = None  # the ETag seen by every pass of the current orphan streak
    streak_len = 0
    streak_since = None
    last_modified = NOW - 30 * DAY
    for seq, step in enumerate(passes, start=1):
        now = now + step["advance"]
        if step["touched"]:
            last_modified = now - timedelta(seconds=1)
        blob = seen(
            etag=step["etag"],
            last_modified=last_modified,
            lease_state="leased" if step["leased"] else "available",
            lease_status="locked" if step["leased"] else "unlocked",
            snapshots=1 if step["hold"] == "snapshots" else 0,
            keep_metadata=step["hold"] == "metadata",
            keep_tag=step["hold"] == "tag",
            image_type="Generalized" if step["hold"] == "captured_image" else None,
            created_by="k8sAzureDataDisk" if step["hold"] == "kubernetes" else None,
        )
        refs = index(ref(RefKind.VM_OS_DISK, blob.key)) if step["referenced"] else index()
        holds = {blob.key: "ops"} if step["hold"] == "operator" else {}
        d = see(blob, prev, refs=refs, holds=holds, pol=pol, now=now, seq=seq)
        row = d.change.row if d.change is not None else prev

        too_young = min_age > timedelta(0) and now - last_modified < min_age
        in_use = step["referenced"] or step["leased"]
        held = step["hold"] is not None
        orphan_free = not in_use and not too_young and not held

        # Reference model of the streak of unheld orphan sightings with one ETag.
        if orphan_free:
            if streak_etag == step["etag"]:
                streak_len += 1
            else:
                streak_etag, streak_len, streak_since = step["etag"], 1, now
        else:
            streak_etag, streak_len, streak_since = None, 0, None

        if d.due is not None:
            assert orphan_free, "due while referenced, leased, held or too young"
            assert d.due.etag == blob.etag
            assert now >= d.due.first_orphaned_at + grace
            assert d.due.sightings(seq) >= min_sightings
            assert streak_len >= min_sightings and now >= streak_since + grace
        if orphan_free and streak_len >= min_sightings and now >= streak_since + grace:
            assert d.due is not None, "an orphan that met grace and min_sightings is not due"

        if row is not None:
            assert row.state in CONTRACT_STATES
            assert 0 <= row.sightings(seq) <= seq
            if orphan_free:
                assert row.state in (State.CANDIDATE, State.DUE)
                assert row.sightings(seq) == streak_len
                assert row.etag == blob.etag
            if held and not in_use and not too_young:
                assert row.state is State.KEPT
            if (in_use or too_young) and prev is not None and prev.state in COUNTING:
                assert row.state is State.RELEASED
        else:
            assert not orphan_free and not (held and not in_use and not too_young)

        if prev is not None and prev.state in (State.CANDIDATE, State.DUE) and orphan_free and prev.etag != blob.etag:
            assert row.sightings(seq) == 1 and d.change.measure is True and row.first_orphaned_at == now
        prev = row


# -- the streaming fast paths agree with classify + decide_blob ---------------------------------

DISTURBANCES = {
    # each thing that takes a candidate off the quiet path, as (parameter, value)
    "not_vhd": ("name", "disk.bin"), "upper_case_name": ("name", "DISK.VHD"), "block_blob": ("blob_type", "BlockBlob"),
    "leased": ("lease", "leased"), "breaking": ("lease", "breaking"), "lease_unknown": ("lease", None),
    "lease_broken": ("lease", "broken"), "snapshots": ("snapshots", 1), "keep_metadata": ("keep_md", True),
    "keep_tag": ("keep_tag", True), "young": ("age_h", 23), "referenced": ("ref_kind", RefKind.VM_OS_DISK),
    "imported": ("ref_kind", RefKind.DISK_IMPORT), "operator_hold": ("operator", True),
    "untracked": ("prev_state", None), "kept": ("prev_state", State.KEPT), "released": ("prev_state", State.RELEASED),
    "deleted": ("prev_state", State.DELETED), "etag_changed": ("same_etag", False), "billed_unknown": ("billed_known", False),
    "grace_changed": ("stale_delete_after", True), "container_referenced": ("ref_kind", RefKind.VMSS_CONTAINER),
    "owner_hint": ("owner", "vm-7"), "owner_hint_empty": ("owner", ""), "premium": ("tier", "P10"),
    "owner_group": ("owner_group", "rg-web"), "owner_disk": ("owner_disk", "web-os"),
    "account_referenced": ("ref_kind", RefKind.SITE_RECOVERY_ACCOUNT),
    "captured_path": ("container", "system"), "captured_name": ("name", "Microsoft.Compute/Images/vhds/x-osDisk.1.vhd"),
    "captured_metadata": ("image_type", "Generalized"),
    "kubernetes_name": ("name", "kubernetes-dynamic-pvc-0f6c1e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6.vhd"),
    "kubernetes_name_upper": ("name", "KUBERNETES-DYNAMIC-PVC-0F6C1E2A-1B2C-4D5E-8F90-A1B2C3D4E5F6.VHD"),
    "kubernetes_metadata": ("created_by", "k8sAzureDataDisk"), "other_creator": ("created_by", "someone"),
    "kubernetes_not_held": ("hold_k8s", False), "captured_ages_out": ("captured_max_age", timedelta(days=1)),
}


@settings(max_examples=600, deadline=None)
@given(
    disturbances=st.sets(st.sampled_from(sorted(DISTURBANCES)), max_size=2),
    prev_state=st.sampled_from([State.CANDIDATE, State.DUE, None]),  # None: a new orphan, first sighting
    orphaned_days=st.integers(0, 20),
    streak_start=st.integers(1, 13),
    grace_days=st.integers(0, 10),
    min_sightings=st.integers(1, 5),
    age_h=st.sampled_from([24, 72]),
    # the storage service's time against the pass clock (None: the source gave none); it decides age only
    service_shift_h=st.sampled_from([None, 0, -49, -30, -1, 1, 30]),
)
def test_fast_paths_agree_with_the_full_decision(disturbances, prev_state, orphaned_days, streak_start, grace_days,
                                                   min_sightings, age_h, service_shift_h):
    """Quiet blobs (untracked in-use ones, unchanged candidates) skip classify/decide_blob, and new
    plain orphans are marked without them; for each of these cases and each disturbance of it (one
    or two at a time), and whatever the service's time, the outcome is the same."""
    p = dict(name="disk.vhd", blob_type="PageBlob", lease="available", snapshots=0, keep_md=False, keep_tag=False,
             age_h=age_h, ref_kind=None, operator=False, prev_state=prev_state, same_etag=True, billed_known=True,
             stale_delete_after=False, owner=None, tier=None, owner_group=None, owner_disk=None, container="vhds",
             image_type=None, created_by=None, hold_k8s=True, captured_max_age=None)
    for d in sorted(disturbances):
        param, value = DISTURBANCES[d]
        p[param] = value
    name, blob_type, lease, snapshots, keep_md, keep_tag, age_h, ref_kind, operator, prev_state, same_etag, \
        billed_known, stale_delete_after = (p[k] for k in ("name", "blob_type", "lease", "snapshots", "keep_md",
                                                          "keep_tag", "age_h", "ref_kind", "operator", "prev_state",
                                                          "same_etag", "billed_known", "stale_delete_after"))
    blob = seen(name, k=BlobKey(ACCOUNT, p["container"], name), blob_type=blob_type, lease_state=lease,
                lease_status=None if lease is None else "unlocked", snapshots=snapshots, keep_metadata=keep_md,
                keep_tag=keep_tag, age=timedelta(hours=age_h), owner_hint=p["owner"], tier=p["tier"],
                owner_group=p["owner_group"], owner_disk=p["owner_disk"], image_type=p["image_type"],
                created_by=p["created_by"])
    pol = policy(min_age=timedelta(hours=24), grace_period=timedelta(days=grace_days), min_sightings=min_sightings,
                 hold_kubernetes_volumes=p["hold_k8s"], captured_image_max_age=p["captured_max_age"])
    if ref_kind is None:
        refs = index()
    elif ref_kind is RefKind.VMSS_CONTAINER:
        refs = index(container_ref(blob.key.container, account=blob.key.account))
    elif ref_kind.scope == "account":
        refs = index(account_ref(blob.key.account, kind=ref_kind))
    else:
        refs = index(ref(ref_kind, blob.key, time_created=NOW - timedelta(days=30), provisioning_state="Succeeded"))
    holds = {blob.key: "legal"} if operator else {}
    prev = None
    if prev_state is not None:
        prev = tracked(blob, state=prev_state, first_orphaned_at=NOW - timedelta(days=orphaned_days),
                       grace_period=timedelta(days=grace_days + (1 if stale_delete_after else 0)),
                       streak_start=streak_start, billed_bytes=GIB if billed_known else None,
                       etag=None if same_etag else '"other"')
    seq = 12
    service_now = None if service_shift_h is None else NOW + timedelta(hours=service_shift_h)

    def outcome(skip_quiet, stored=False):
        row = StoredRow.stored(prev) if stored and prev is not None else prev
        tracked_rows = {blob.key: row} if row is not None else {}
        out = list(decide_stream([blob], tracked_rows, refs, holds, pol, NOW, seq, skip_quiet=skip_quiet,
                                 service_now=service_now))
        changes = [d.change for d in out if not isinstance(d, Forget) and d.change is not None]
        forgets = [d for d in out if isinstance(d, Forget)]
        dues = [d.due for d in out if not isinstance(d, Forget) and d.due is not None]
        return changes, forgets, dues

    slow = outcome(False)
    for fast in (outcome(True), outcome(True, stored=True)):  # rows as Tracked, and as the store hands them
        assert fast[1] == slow[1]
        assert fast[2] == slow[2]
        assert [(c.row, c.measure, c.event) for c in fast[0]] == [(c.row, c.measure, c.event) for c in slow[0]]
