"""The ARM stand-in's virtual machines and scale sets: their builders and the route of a scale set's
instances (``.../virtualMachineScaleSets/{name}/virtualMachines[/{instanceId}]``).

VMs and scale sets themselves are top-level Compute lists, served by :mod:`sandbox.arm_http`.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

from sandbox.arm_estate import COMPUTE, DEFAULT_LOCATION, _by_name, _lookup, _not_found, compute_id, rg_id


def _disk_entry(spec: str | dict[str, Any], lun: int, owner: str) -> dict[str, Any]:
    """A dataDisks[] element: ``spec`` is a VHD URL, or ``{"vhd": URL, "image": URL}``."""
    if isinstance(spec, str):
        spec = {"vhd": spec}
    entry: dict[str, Any] = {
        "lun": lun,
        "name": f"{owner}-data{lun}",
        "createOption": "FromImage" if spec.get("image") else "Empty",
        "caching": "None",
        "diskSizeGB": spec.get("size_gb", 32),
        "toBeDetached": False,
    }
    if spec.get("vhd"):
        entry["vhd"] = {"uri": spec["vhd"]}
    else:
        entry["managedDisk"] = {"storageAccountType": "Premium_LRS"}
    if spec.get("image"):
        entry["image"] = {"uri": spec["image"]}
    return entry


def _storage_profile(
    owner: str,
    sub: str,
    rg: str,
    os_vhd: str | None,
    data_vhds: Iterable[str | dict[str, Any]],
    os_image: str | None,
) -> dict[str, Any]:
    os_disk: dict[str, Any] = {
        "osType": "Linux",
        "name": f"{owner}-osdisk",
        "createOption": "FromImage",
        "caching": "ReadWrite",
        "diskSizeGB": 30,
    }
    if os_vhd:
        os_disk["vhd"] = {"uri": os_vhd}
    else:
        os_disk["managedDisk"] = {
            "id": compute_id(sub, rg, "disks", f"{owner}-osdisk"),
            "storageAccountType": "Premium_LRS",
        }
    if os_image:
        os_disk["image"] = {"uri": os_image}
    profile: dict[str, Any] = {
        "osDisk": os_disk,
        "dataDisks": [_disk_entry(spec, lun, owner) for lun, spec in enumerate(data_vhds)],
    }
    if not os_image and not os_vhd:
        profile["imageReference"] = {
            "publisher": "Canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        }
    return profile


def vm(
    sub: str,
    rg: str,
    name: str,
    *,
    os_vhd: str | None = None,
    data_vhds: Iterable[str | dict[str, Any]] = (),
    os_image: str | None = None,
    boot_diagnostics: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A virtual machine. Without ``os_vhd`` its OS disk is managed (no blob reference).

    ``data_vhds`` elements are VHD URLs or ``{"vhd": URL, "image": URL}``.
    ``boot_diagnostics`` is a storage URI that is NOT a VHD reference.
    """
    props: dict[str, Any] = {
        "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, compute_id(sub, rg, "virtualMachines", name))),
        "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
        "storageProfile": _storage_profile(name, sub, rg, os_vhd, data_vhds, os_image),
        "osProfile": {"computerName": name, "adminUsername": "azureuser"},
        "networkProfile": {
            "networkInterfaces": [
                {"id": f"{rg_id(sub, rg)}/providers/Microsoft.Network/networkInterfaces/{name}-nic"}
            ]
        },
        "provisioningState": "Succeeded",
    }
    if boot_diagnostics:
        props["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True, "storageUri": boot_diagnostics}}
    return {
        "id": compute_id(sub, rg, "virtualMachines", name),
        "name": name,
        "type": f"{COMPUTE}/virtualMachines",
        "location": location,
        "properties": props,
    }


def vmss(
    sub: str,
    rg: str,
    name: str,
    *,
    vhd_containers: Iterable[str] = (),
    os_image: str | None = None,
    capacity: int = 2,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A scale set. ``vhd_containers`` are container URLs (every blob in them is in use)."""
    os_disk: dict[str, Any] = {"createOption": "FromImage", "caching": "ReadWrite", "osType": "Linux"}
    containers = list(vhd_containers)
    if containers or os_image:
        os_disk["name"] = f"{name}-osdisk"
    if containers:
        os_disk["vhdContainers"] = containers
    if os_image:
        os_disk["image"] = {"uri": os_image}
    if not containers and not os_image:
        os_disk["managedDisk"] = {"storageAccountType": "Premium_LRS"}
    return {
        "id": compute_id(sub, rg, "virtualMachineScaleSets", name),
        "name": name,
        "type": f"{COMPUTE}/virtualMachineScaleSets",
        "location": location,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": name[:9], "adminUsername": "azureuser"},
                "storageProfile": {"osDisk": os_disk},
            },
            "provisioningState": "Succeeded",
            "overprovision": False,
            "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, compute_id(sub, rg, "virtualMachineScaleSets", name))),
        },
    }


def vmss_vm(
    sub: str,
    rg: str,
    vmss_name: str,
    instance_id: str | int,
    *,
    os_vhd: str | None = None,
    data_vhds: Iterable[str | dict[str, Any]] = (),
    os_image: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A scale-set instance (``virtual_machine_scale_set_vms.list(rg, vmss_name)``)."""
    iid = str(instance_id)
    name = f"{vmss_name}_{iid}"
    rid = compute_id(sub, rg, "virtualMachineScaleSets", vmss_name, "virtualMachines", iid)
    return {
        "id": rid,
        "name": name,
        "type": f"{COMPUTE}/virtualMachineScaleSets/virtualMachines",
        "location": location,
        "instanceId": iid,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard"},
        "properties": {
            "latestModelApplied": True,
            "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, rid)),
            "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
            "storageProfile": _storage_profile(name, sub, rg, os_vhd, data_vhds, os_image),
            "provisioningState": "Succeeded",
        },
    }


def scale_set_vms(sub: dict[str, Any], rg: str, tail: list[str], type_name: str) -> list[Any] | dict[str, Any]:
    """``.../virtualMachineScaleSets/{name}/virtualMachines[/{instanceId}]`` (``tail`` from the scale
    set's type segment on): the instances of a scale set that exists, or one of them."""
    members = _lookup(sub.get("virtualMachineScaleSetVMs", {}), f"{rg}/{tail[1]}") or []
    if len(tail) == 3:
        return list(members)
    found = _by_name(members, f"{tail[1]}_{tail[3]}") or next(
        (m for m in members if isinstance(m, dict) and str(m.get("instanceId")) == tail[3]), None
    )
    if found is None:
        raise _not_found(f"{type_name}/{tail[1]}/virtualMachines/{tail[3]}", rg)
    return found
