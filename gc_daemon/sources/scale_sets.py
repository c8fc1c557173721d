"""Scale sets (their OS-disk containers and user image) and the instances of each scale set."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import (
    keep_tags,
    Found,
    IncompleteItem,
    Read,
    Source,
    SubscriptionContext,
    attr,
    collect,
    holder_id,
    items,
    name_of,
    ref,
    required,
    resource_group_of,
)
from .virtual_machines import disk_references

SCALE_SETS = Read(
    "virtualMachineScaleSets",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/virtualMachineScaleSets",
    "Microsoft.Compute/virtualMachineScaleSets/read",
    operation="virtual_machine_scale_sets.list_all",
)
INSTANCES = Read(
    "virtualMachineScaleSetVMs",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
    "virtualMachineScaleSets/{virtualMachineScaleSetName}/virtualMachines",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    operation="virtual_machine_scale_set_vms.list",
)


def is_flexible(scale_set: Any) -> bool:
    mode = attr(scale_set, "orchestration_mode")
    return str(getattr(mode, "value", mode) or "").lower() == "flexible"


def scale_set_references(scale_set: Any) -> list[RawReference]:
    """A scale set's OS-disk containers (each protects a whole container) and user image.

    A Uniform scale set always has a VM profile with a storage profile: without one it could not
    be read in full. A Flexible one may have no profile at all (its VMs are plain VMs, read as
    such): then it names no VHD."""
    holder = holder_id(scale_set)
    profile = attr(scale_set, "virtual_machine_profile")
    if profile is None:
        if is_flexible(scale_set):
            return []
        raise IncompleteItem(f"virtualMachineProfile missing or null in {holder}")
    storage_profile = required(profile, holder, "storage_profile", where="virtualMachineProfile.storageProfile")
    os_disk = required(storage_profile, holder, "os_disk", where="virtualMachineProfile.storageProfile.osDisk")
    refs: list[RawReference] = []
    for i, container in enumerate(items(attr(os_disk, "vhd_containers"), holder, "osDisk.vhdContainers")):
        refs += ref(RefKind.VMSS_CONTAINER, holder, container, f"osDisk.vhdContainers[{i}]")
    refs += ref(RefKind.VMSS_IMAGE, holder, attr(os_disk, "image", "uri"), "osDisk.image.uri")
    return refs


def scale_set_vm_references(instance: Any) -> list[RawReference]:
    """A scale-set instance's OS and data VHDs and its user image."""
    holder = holder_id(instance)
    return disk_references(
        attr(instance, "storage_profile"), holder, RefKind.VMSS_VM_DISK, RefKind.VMSS_VM_DISK, RefKind.VMSS_VM_IMAGE
    )


def read_scale_sets(
    client: Any, pages: dict[str, Any], out: Found | None = None
) -> tuple[list[RawReference], list[tuple[str, str]]]:
    """References held by scale-set models, and the (resource group, name) of every Uniform scale set
    (the instances of a Flexible one are VMs, read by the VM source); ``out`` receives their tags."""
    refs: list[RawReference] = []
    uniform: list[tuple[str, str]] = []
    for scale_set in client.virtual_machine_scale_sets.list_all(**pages):
        refs += scale_set_references(scale_set)
        if out is not None:
            keep_tags(out, scale_set)
        name = name_of(scale_set)
        if not is_flexible(scale_set):
            uniform.append((resource_group_of(scale_set.id), name))
    return refs, uniform


def read_instances(client: Any, resource_group: str, scale_set: str, pages: dict[str, Any]) -> Found:
    return collect(client.virtual_machine_scale_set_vms.list(resource_group, scale_set, **pages), scale_set_vm_references)


def tasks(ctx: SubscriptionContext) -> list:
    def scale_sets() -> Found:
        out = Found()
        refs, found = read_scale_sets(ctx.compute(), ctx.pages(), out)
        follow = [
            ctx.task(INSTANCES, f"scale set {rg}/{name}",
                     lambda rg=rg, name=name: read_instances(ctx.compute(), rg, name, ctx.pages()))
            for rg, name in found
        ]
        out.references, out.follow = refs, follow
        return out

    return [ctx.task(SCALE_SETS, "", scale_sets)]


SOURCE = Source(
    "scale_sets", "Compute", (SCALE_SETS, INSTANCES), tasks,
    sees="scale-set `vhdContainers` (whole containers), scale-set images, scale-set instances' disks",
)
