"""Storage account discovery: with no `storage_accounts`, the accounts come from
azure-mgmt-storage through the ARM stand-in, filtered by name and resource group."""

from __future__ import annotations

import pytest

from sandbox import arm as a
from tests.support.estate import SUB


@pytest.fixture
def discovered(gc, monkeypatch):
    for acct in ("gcacct1", "gcacct2", "gcacct3"):
        monkeypatch.setenv(f"TESTKEY_{acct.upper()}", gc.azurite.key(acct))
        gc.page("vhds", "leftover.vhd", account=acct)

    def configure(**discovery):
        azure = {k: v for k, v in gc.settings["azure"].items() if k != "storage_accounts"}
        azure["discovery"] = {"key_env_prefix": "TESTKEY_", **discovery}
        path = gc.configure(mode="delete", azure=azure)
        # gc.configure merges azure keys: drop the explicit list for discovery to apply
        import yaml

        data = yaml.safe_load(path.read_text())
        data["azure"].pop("storage_accounts", None)
        path.write_text(yaml.safe_dump(data))
        return path

    accounts = [
        a.storage_account(SUB, "vhd-rg", "gcacct1", blob_endpoint=gc.azurite.blob_endpoint("gcacct1") + "/"),
        a.storage_account(SUB, "vhd-rg", "gcacct2", blob_endpoint=gc.azurite.blob_endpoint("gcacct2") + "/"),
        a.storage_account(SUB, "Prod-RG", "gcacct3", blob_endpoint=gc.azurite.blob_endpoint("gcacct3") + "/"),
        a.storage_account(SUB, "files-rg", "filesonly", kind="FileStorage", blob_endpoint=None),
    ]
    accounts[-1]["properties"]["primaryEndpoints"] = {"file": "https://filesonly.file.core.windows.net/"}
    return configure, accounts


def test_discovered_accounts_are_collected_minus_excluded_names(gc, discovered):
    configure, accounts = discovered
    gc.compute(*accounts)
    configure(exclude=["gcacct2"])
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert not gc.exists("vhds", "leftover.vhd", account="gcacct1")
    assert gc.exists("vhds", "leftover.vhd", account="gcacct2")  # excluded by name
    assert not gc.exists("vhds", "leftover.vhd", account="gcacct3")


def test_resource_group_patterns_filter_discovered_accounts(gc, discovered):
    configure, accounts = discovered
    gc.compute(*accounts)
    configure(resource_groups_exclude=["prod-*"])
    assert gc.cli("scan").code == 0
    assert gc.exists("vhds", "leftover.vhd", account="gcacct3")  # rg Prod-RG matched without case
    assert not gc.exists("vhds", "leftover.vhd", account="gcacct1")


def test_failed_discovery_fails_the_pass_closed(gc, discovered):
    configure, accounts = discovered
    gc.compute(*accounts)
    configure()
    gc.arm.add_fault(path="/storageAccounts$", status=500)
    run = gc.cli("scan")
    assert run.code == 3 and "storageAccounts" in run.err
    assert all(gc.exists("vhds", "leftover.vhd", account=x) for x in ("gcacct1", "gcacct2", "gcacct3"))


def test_emulator_credential_refuses_a_discovered_public_endpoint(gc, discovered):
    configure, accounts = discovered
    gc.compute(*accounts, a.storage_account(SUB, "vhd-rg", "realacct"))  # https://realacct.blob.core.windows.net/
    configure()
    run = gc.cli("scan")
    assert run.code == 3 and "realacct" in run.err
    assert gc.exists("vhds", "leftover.vhd", account="gcacct1")
