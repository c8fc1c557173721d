"""Virtual machines: their OS and data VHDs, and the user images they were made from."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, attr, collect, holder_id, items, ref, required

READ = Read(
    "virtualMachines",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/virtualMachines",
    "Microsoft.Compute/virtualMachines/read",
    operation="virtual_machines.list_all",
)


def disk_references(
    storage_profile: Any, holder: str, os_kind: RefKind, data_kind: RefKind, image_kind: RefKind
) -> list[RawReference]:
    """The VHDs of a storage profile (a VM's or a scale-set instance's). The profile must be there:
    every VM has one, so a missing one is an item that could not be read in full."""
    required(storage_profile, holder, where="storageProfile")
    os_disk = required(storage_profile, holder, "os_disk", where="storageProfile.osDisk")
    refs = ref(os_kind, holder, attr(os_disk, "vhd", "uri"), "osDisk.vhd.uri")
    refs += ref(image_kind, holder, attr(os_disk, "image", "uri"), "osDisk.image.uri")
    for i, data_disk in enumerate(items(attr(storage_profile, "data_disks"), holder, "dataDisks")):
        refs += ref(data_kind, holder, attr(data_disk, "vhd", "uri"), f"dataDisks[{i}].vhd.uri")
        refs += ref(image_kind, holder, attr(data_disk, "image", "uri"), f"dataDisks[{i}].image.uri")
    return refs


def vm_references(vm: Any) -> list[RawReference]:
    """A VM's OS and data VHDs, and the user images they were made from."""
    holder = holder_id(vm)
    return disk_references(
        attr(vm, "storage_profile"), holder, RefKind.VM_OS_DISK, RefKind.VM_DATA_DISK, RefKind.VM_IMAGE
    )


def read(client: Any, pages: dict[str, Any]) -> Found:
    return collect(client.virtual_machines.list_all(**pages), vm_references)


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages()))]


SOURCE = Source(
    "virtual_machines", "Compute", (READ,), tasks,
    sees="VM OS and data disks (`vhd.uri`) and their source images (`image.uri`)",
)
