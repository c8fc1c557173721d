"""Issue 11, sections 1 and 2: reads that today let a pass complete while it could not see
everything, each tried end to end (the CLI, Azurite, the HTTPS ARM stand-in) in delete mode with a
grace period of 0s, so a wrong verdict would delete the in-use VHD at once.

- a collected account whose own subscription is not configured (its VMs' VHDs would look orphaned);
- an item that lacks the fields that would hold its references (``storageProfile`` missing or null);
- a ``nextLink`` to another host (it must not get the bearer token), one that leads back to a page
  already read, and a list past ``max_pages``.
"""

from __future__ import annotations

import copy

import pytest

from sandbox import arm as a
from tests.support.estate import SUB, SUB2
from tests.support.faults import lost_records, snapshot_state

RG = "rg1"


def _scan_must_keep(gc, container: str, blob: str, *, words: tuple[str, ...], account: str = "gcacct1"):
    """A delete-mode pass that must fail closed (exit 3), name ``words``, change nothing and keep the blob."""
    assert gc.cli("db", "upgrade").code == 0
    before = snapshot_state(gc.db_url)
    run = gc.cli("scan")
    assert run.code == 3, run.out + run.err
    for word in words:
        assert word in run.err, (word, run.err[-2000:])
    assert gc.exists(container, blob, account), "the in-use VHD was deleted"
    assert lost_records(before, snapshot_state(gc.db_url)) == 0
    return run


# -- 1. a collected account whose subscription is not configured -----------------------------------


def test_an_account_of_an_unconfigured_subscription_fails_closed_and_config_check_says_so(gc):
    """gcacct2 belongs to SUB2, whose VM uses a VHD in it; only SUB is configured. On today's main
    the VHD has no reference and is deleted (and 1 new candidate is under blast_radius.min_new)."""
    used = gc.page("vhds", "sub2-vm-os.vhd", account="gcacct2")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, blast_radius={"max_new_share": 0.2})
    gc.compute(
        a.storage_account(SUB2, "rg-far", "gcacct2", blob_endpoint=gc.azurite.blob_endpoint("gcacct2")),
        a.vm(SUB2, "rg-far", "far-vm", os_vhd=used),
    )
    _scan_must_keep(gc, "vhds", "sub2-vm-os.vhd", words=("gcacct2", SUB2, "azure.subscriptions"), account="gcacct2")

    # The operator learns it before the first pass: `config check` (online) exits 2 naming both.
    check = gc.cli("config", "check")
    assert check.code == 2, check.err
    assert "gcacct2" in check.err and SUB2 in check.err
    assert gc.cli("config", "check", "--offline").code == 0  # offline, it cannot know

    # Configured, the pass completes and the VHD is in use.
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, azure={"subscriptions": [SUB, SUB2]})
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert gc.exists("vhds", "sub2-vm-os.vhd", "gcacct2")
    assert gc.cli("config", "check").code == 0


def test_an_account_arm_cannot_place_fails_closed(gc):
    gc.page("vhds", "orphan-looking.vhd", account="gcacct2")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.compute(place_accounts=False)  # neither account is registered anywhere ARM can see
    _scan_must_keep(gc, "vhds", "orphan-looking.vhd", words=("gcacct1", "gcacct2", "ARM cannot place"),
                    account="gcacct2")
    result = gc.scan()  # the same through the library: the failed source is labelled for the metric
    assert result.outcome == "incomplete" and result.sources_failed == ["storageAccounts"]


def test_a_failing_storage_accounts_list_fails_closed(gc):
    gc.page("vhds", "x.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.arm.add_fault(r"(?i)/providers/Microsoft\.Storage/storageAccounts$", status=403, code="AuthorizationFailed")
    _scan_must_keep(gc, "vhds", "x.vhd", words=(f"{SUB}/storageAccounts", "403"))


# -- 1. items that lack the fields that would hold references --------------------------------------


def _without(resource: dict, *path: str, null: bool) -> dict:
    resource = copy.deepcopy(resource)
    parent = resource
    for step in path[:-1]:
        parent = parent[step]
    if null:
        parent[path[-1]] = None
    else:
        del parent[path[-1]]
    return resource


CASES = {
    # kind: (builder of an item whose VHD is vhds/<kind>.vhd, the path to take away, words of the error)
    "vm": (lambda url: a.vm(SUB, RG, "web", os_vhd=url), ("properties", "storageProfile"), "virtualMachines/web"),
    "vmss": (lambda url: a.vmss(SUB, RG, "ss", vhd_containers=[url.rsplit("/", 1)[0]]),
             ("properties", "virtualMachineProfile", "storageProfile"), "virtualMachineScaleSets/ss"),
    "vmss_profile": (lambda url: a.vmss(SUB, RG, "ss", vhd_containers=[url.rsplit("/", 1)[0]]),
                     ("properties", "virtualMachineProfile"), "virtualMachineScaleSets/ss"),
    "vmss_vm": (lambda url: a.vmss_vm(SUB, RG, "ss", 0, os_vhd=url), ("properties", "storageProfile"),
                "virtualMachineScaleSets/ss/virtualMachines/0"),
    "image": (lambda url: a.image(SUB, RG, "img", os_blob=url), ("properties", "storageProfile"), "images/img"),
    "gallery_version": (lambda url: a.gallery_image_version(SUB, RG, "g", "i", "1.0.0", os_source=url),
                        ("properties", "storageProfile"), "versions/1.0.0"),
}


@pytest.mark.parametrize("null", [False, True], ids=["missing", "null"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_an_item_without_the_fields_that_hold_references_fails_the_pass_closed(gc, kind, null):
    build, path, words = CASES[kind]
    container = "ssdisks" if kind.startswith("vmss") and kind != "vmss_vm" else "vhds"
    url = gc.page(container, f"{kind}.vhd")
    item = _without(build(url), *path, null=null)
    extra = []
    if kind == "vmss_vm":
        extra = [a.vmss(SUB, RG, "ss")]
    if kind == "gallery_version":
        extra = [a.gallery(SUB, RG, "g"), a.gallery_image(SUB, RG, "g", "i")]
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.compute(item, *extra)
    _scan_must_keep(gc, container, f"{kind}.vhd", words=(words, "IncompleteItem", "missing or null"))


def test_a_flexible_scale_set_without_a_vm_profile_holds_nothing_and_the_pass_completes(gc):
    """Flexible scale sets may have no VM profile: their VMs are plain VMs, read by the VM source."""
    url = gc.page("vhds", "flex-member-os.vhd")
    flex = _without(a.vmss(SUB, RG, "flex"), "properties", "virtualMachineProfile", null=False)
    flex["properties"]["orchestrationMode"] = "Flexible"
    member = a.vm(SUB, RG, "flex_member", os_vhd=url)
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.compute(flex, member)
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert gc.exists("vhds", "flex-member-os.vhd")
    # And no instance list is asked of a Flexible scale set.
    assert not [p for _, p in gc.arm.requests if "/virtualMachineScaleSets/flex/virtualMachines" in p]


# -- 2. nextLinks ----------------------------------------------------------------------------------


def _vm_page(gc, url: str, next_link: str) -> dict:
    return {"value": [a.vm(SUB, RG, "web", os_vhd=url)], "nextLink": next_link}


def test_a_next_link_to_another_host_gets_no_token_and_fails_closed(gc):
    """The SDK follows nextLink verbatim with the bearer token; here it leads to `localhost` (the same
    stand-in under another name, so a request, had it been sent, would be in its log)."""
    used = gc.page("vhds", "page2-vm-os.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.compute(a.vm(SUB, RG, "web", os_vhd=gc.url("vhds", "page1.vhd")), a.vm(SUB, RG, "db", os_vhd=used))
    elsewhere = (f"https://localhost:{gc.arm.port}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"
                 "?api-version=2026-04-01&%24skiptoken=1&stolen=1")
    gc.arm.add_fault(r"(?i)/providers/Microsoft\.Compute/virtualMachines$", kind="body", nth=1,
                     body=_vm_page(gc, gc.url("vhds", "page1.vhd"), elsewhere))
    _scan_must_keep(gc, "vhds", "page2-vm-os.vhd", words=("virtualMachines", "another host", "localhost"))
    assert not [p for _, p in gc.arm.requests if "stolen=1" in p], "the nextLink to another host was followed"


def test_a_next_link_that_leads_back_fails_closed_instead_of_looping(gc):
    used = gc.page("vhds", "never-listed.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    gc.compute(*[a.vm(SUB, RG, f"vm{i}", os_vhd=gc.url("vhds", f"vm{i}.vhd")) for i in range(3)],
               a.vm(SUB, RG, "last", os_vhd=used))
    first = f"{gc.arm.url}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version=2026-04-01"
    # Page 2 (a real nextLink of the stand-in) leads back to page 1, forever.
    gc.arm.add_fault(r"(?i)/providers/Microsoft\.Compute/virtualMachines$", kind="body", on_next_link=True,
                     body=_vm_page(gc, gc.url("vhds", "vm2.vhd"), first))
    _scan_must_keep(gc, "vhds", "never-listed.vhd", words=("virtualMachines", "paging loop"))
    assert len([p for _, p in gc.arm.requests if "/virtualMachines?" in p]) <= 4


def test_a_list_past_max_pages_fails_the_source(arm, compute_inventory):
    arm.set_estate(a.build_estate(*[a.vm(SUB, RG, f"vm{i}", os_vhd=f"https://acct1.blob.core.windows.net/v/{i}.vhd")
                                    for i in range(5)]))  # 3 pages of 2
    read = compute_inventory([SUB], max_pages=2).read()
    assert [e.source for e in read.errors] == [f"{SUB}/virtualMachines"]
    assert "past 2 pages" in read.errors[0].message
    assert compute_inventory([SUB], max_pages=3).read().errors == []


def test_a_next_link_to_another_host_is_refused_before_any_token_is_sent(arm, compute_inventory):
    """The host pin is a second line: even a request built by hand for another host never leaves with
    the token (the page check would have stopped the pager first)."""
    from azure.core.rest import HttpRequest

    inventory = compute_inventory([SUB])
    client = inventory.context(SUB).compute()
    with pytest.raises(Exception) as caught:
        client.send_request(HttpRequest("GET", f"https://localhost:{arm.port}/subscriptions?api-version=2022-12-01&pin=1"))
    assert "not the ARM endpoint" in str(caught.value)
    assert not [p for _, p in arm.requests if "pin=1" in p]


def test_an_arm_list_past_azure_max_list_pages_fails_the_pass_closed(gc):
    used = gc.page("vhds", "third-page.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, azure={"max_list_pages": 2})
    gc.compute(*[a.vm(SUB, RG, f"vm{i}", os_vhd=gc.url("vhds", f"vm{i}.vhd")) for i in range(4)],
               a.vm(SUB, RG, "last", os_vhd=used))  # 5 VMs: 3 pages of 2
    _scan_must_keep(gc, "vhds", "third-page.vhd", words=(f"{SUB}/virtualMachines", "azure.max_list_pages"))
