"""The owner rules on their own (gc_daemon.owners): which tags are kept, the owner they name, the
metadata evidence read back, the configuration, and what OwnerPlan writes (only what changed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gc_daemon.config import ConfigError, parse_config
from gc_daemon.decide import ReferenceIndex
from gc_daemon.domain import BlobKey, RawReference, RefKind
from gc_daemon.owners import (
    DEFAULT_OWNER_TAGS,
    OwnerPlan,
    OwnerRecord,
    owner_of,
    owner_tag_names,
    owner_tags_of,
    parse_owner_evidence,
)
from gc_daemon.sources.base import GroupSeen, ReferenceRead

NAMES = owner_tag_names(DEFAULT_OWNER_TAGS)
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SUB = "00000000-0000-0000-0000-000000000001"
VM = f"/subscriptions/{SUB}/resourceGroups/RG1/providers/Microsoft.Compute/virtualMachines/vm1"
GROUP = f"/subscriptions/{SUB}/resourcegroups/rg1"
KEY = BlobKey("acct", "vhds", "a.vhd")


def test_owner_tags_are_matched_without_case_in_the_configured_order():
    assert NAMES == ("owner", "createdby", "contact")
    tags = {"Contact": "ops", "CREATEDBY": "bob", "env": "prod"}
    assert owner_tags_of(tags, NAMES) == (("CREATEDBY", "bob"), ("Contact", "ops"))
    assert owner_tags_of(None, NAMES) == () and owner_tags_of("not a mapping", NAMES) == ()
    assert owner_of((("CREATEDBY", "bob"),), {"owner": "team"}, NAMES) == "bob"
    assert owner_of((("owner", "  "),), {"Owner": "team"}, NAMES) == "team"  # a blank value names nobody
    assert owner_of((), {}, NAMES) is None


@pytest.mark.parametrize("text, parsed", [
    ("vm:web", ("web", None, None)),
    ("vm:web (resource group rg-web)", ("web", "rg-web", None)),
    ("vm:web (resource group rg(1).x, disk web-osdisk)", ("web", "rg(1).x", "web-osdisk")),
    ("vm:web (disk d1)", ("web", None, "d1")),
    (VM, None),
    (None, None),
])
def test_metadata_evidence_reads_back(text, parsed):
    assert parse_owner_evidence(text) == parsed


def test_owners_tags_is_configured_and_checked():
    base = {"azure": {"credential": "default", "subscriptions": [SUB]}}
    assert parse_config(base).owners.tags == list(DEFAULT_OWNER_TAGS)
    assert parse_config({**base, "owners": {"tags": ["CreatedBy", "createdby"]}}).owners.names == ("createdby",)
    with pytest.raises(ConfigError):
        parse_config({**base, "owners": {"tags": [""]}})
    with pytest.raises(ConfigError):
        parse_config({**base, "owners": {"tag": ["x"]}})


def plan(refs=(), tags=None, groups=None, stored=(), now=T0, last=None, evidence=None):
    read = ReferenceRead(references=list(refs), holder_tags=tags or {}, groups=groups or {})
    index, errors = ReferenceIndex.build(read.references)
    assert not errors
    return OwnerPlan(NAMES, index, read, now, last, evidence or {}).plan(stored)


def ref(holder=VM):
    return RawReference(RefKind.VM_OS_DISK, holder, "https://acct.blob.core.windows.net/vhds/a.vhd")


def test_the_plan_writes_new_changed_and_gone_records_only():
    tags = {VM.lower(): (("owner", "alice"),)}
    (new,) = plan([ref()], tags)
    assert (new.item_id, new.holder, new.owner, new.first_seen, new.last_seen) == (str(KEY), VM, "alice", T0, T0)
    assert plan([ref()]) == []  # no tag on the holder or its group: nothing to record

    later = T0 + timedelta(hours=1)
    assert plan([ref()], tags, stored=[(new, T0)], now=later, last=T0) == []  # unchanged: no write
    (changed,) = plan([ref()], {VM.lower(): (("owner", "erin"),)}, stored=[(new, T0)], now=later, last=T0)
    assert (changed.owner, changed.first_seen, changed.last_seen) == ("erin", T0, later)
    (cleared,) = plan([ref()], stored=[(new, T0)], now=later, last=T0)  # a record is kept up to date
    assert (cleared.owner, cleared.tags) == (None, {})

    # The reference goes: marked once (last_seen: the last pass that saw it held), then left alone.
    (gone,) = plan([], stored=[(new, T0)], now=later + timedelta(hours=1), last=later)
    assert (gone.owner, gone.holder, gone.last_seen) == ("alice", VM, later)
    assert plan([], stored=[(gone, later + timedelta(hours=1))], now=later + timedelta(hours=2), last=later) == []
    # Held again: written again, a new holder starts a new first_seen.
    other = VM.replace("vm1", "vm2")
    (back,) = plan([ref(other)], {other.lower(): (("owner", "alice"),)}, stored=[(gone, later + timedelta(hours=1))],
                   now=later + timedelta(hours=3), last=later + timedelta(hours=2))
    assert (back.holder, back.first_seen) == (other, later + timedelta(hours=3))


def test_group_tags_alone_make_a_record_and_name_the_owner():
    groups = {GROUP: GroupSeen(GROUP, tags={"Owner": "team-data", "cost": "1"})}
    (rec,) = plan([ref()], groups=groups)
    assert (rec.owner, rec.tags, rec.group_tags) == ("team-data", {}, {"Owner": "team-data", "cost": "1"})


def test_metadata_never_replaces_a_reference_record():
    held = OwnerRecord(str(KEY), VM, "alice", {"owner": "alice"}, {}, "reference", T0, T0)
    later = T0 + timedelta(hours=1)
    (gone,) = plan([], stored=[(held, T0)], now=later, last=T0, evidence={KEY: "vm:vm1 (resource group RG1)"})
    assert (gone.source, gone.owner) == ("reference", "alice")
    (meta,) = plan([], evidence={KEY: "vm:old (resource group rg9)"})
    assert (meta.source, meta.owner, meta.holder, meta.first_seen) == ("metadata", "old", "old", None)
