"""The ARM stand-in's managed images and compute galleries (images, image versions, applications):
their builders and the route of a gallery's images and their versions
(``.../galleries/{name}/images[/{image}[/versions[/{version}]]]``).

Managed images and galleries themselves are top-level Compute lists, served by :mod:`sandbox.arm_http`;
gallery applications by the generic route of :mod:`sandbox.arm_services`.
"""

from __future__ import annotations

from typing import Any, Iterable

from sandbox.arm_estate import COMPUTE, DEFAULT_LOCATION, _by_name, _iso, _lookup, _not_found, compute_id
from sandbox.arm_services import example


def image(
    sub: str,
    rg: str,
    name: str,
    *,
    os_blob: str | None = None,
    data_blobs: Iterable[str] = (),
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A managed image made from VHDs (``storageProfile.osDisk.blobUri``, ``dataDisks[].blobUri``)."""
    os_disk: dict[str, Any] = {
        "osType": "Linux",
        "osState": "Generalized",
        "caching": "ReadWrite",
        "storageAccountType": "Standard_LRS",
    }
    if os_blob:
        os_disk["blobUri"] = os_blob
    else:
        os_disk["managedDisk"] = {"id": compute_id(sub, rg, "disks", f"{name}-src")}
    return {
        "id": compute_id(sub, rg, "images", name),
        "name": name,
        "type": f"{COMPUTE}/images",
        "location": location,
        "properties": {
            "storageProfile": {
                "osDisk": os_disk,
                "dataDisks": [
                    {"lun": lun, "blobUri": uri, "caching": "None", "storageAccountType": "Standard_LRS"}
                    for lun, uri in enumerate(data_blobs)
                ],
                "zoneResilient": False,
            },
            "provisioningState": "Succeeded",
            "hyperVGeneration": "V1",
        },
    }

def gallery(sub: str, rg: str, name: str, *, location: str = DEFAULT_LOCATION) -> dict[str, Any]:
    return {
        "id": compute_id(sub, rg, "galleries", name),
        "name": name,
        "type": f"{COMPUTE}/galleries",
        "location": location,
        "properties": {
            "description": "",
            "identifier": {"uniqueName": f"{sub}-{name.upper()}"},
            "provisioningState": "Succeeded",
        },
    }


def gallery_image(
    sub: str, rg: str, gallery_name: str, name: str, *, location: str = DEFAULT_LOCATION
) -> dict[str, Any]:
    return {
        "id": compute_id(sub, rg, "galleries", gallery_name, "images", name),
        "name": name,
        "type": f"{COMPUTE}/galleries/images",
        "location": location,
        "properties": {
            "osType": "Linux",
            "osState": "Generalized",
            "hyperVGeneration": "V1",
            "identifier": {"publisher": "vhdgc", "offer": gallery_name, "sku": name},
            "provisioningState": "Succeeded",
        },
    }


def gallery_image_version(
    sub: str,
    rg: str,
    gallery_name: str,
    image_name: str,
    name: str,
    *,
    os_source: str | None = None,
    data_sources: Iterable[str] = (),
    storage_account: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A gallery image version made from VHDs (``osDiskImage.source.uri``, ``dataDiskImages[].source.uri``)."""

    def source(uri: str) -> dict[str, Any]:
        src: dict[str, Any] = {"uri": uri}
        if storage_account:
            src["storageAccountId"] = storage_account
        return src

    storage_profile: dict[str, Any] = {
        "dataDiskImages": [
            {"lun": lun, "hostCaching": "None", "sizeInGB": 32, "source": source(uri)}
            for lun, uri in enumerate(data_sources)
        ]
    }
    if os_source:
        storage_profile["osDiskImage"] = {"hostCaching": "ReadWrite", "sizeInGB": 30, "source": source(os_source)}
    else:
        storage_profile["source"] = {"id": compute_id(sub, rg, "images", f"{image_name}-src")}
        storage_profile["osDiskImage"] = {"hostCaching": "ReadWrite", "sizeInGB": 30}
    return {
        "id": compute_id(sub, rg, "galleries", gallery_name, "images", image_name, "versions", name),
        "name": name,
        "type": f"{COMPUTE}/galleries/images/versions",
        "location": location,
        "properties": {
            "publishingProfile": {
                "targetRegions": [{"name": location, "regionalReplicaCount": 1}],
                "replicaCount": 1,
                "excludeFromLatest": False,
                "publishedDate": _iso(None),
                "storageAccountType": "Standard_LRS",
            },
            "storageProfile": storage_profile,
            "provisioningState": "Succeeded",
        },
    }

def gallery_application(sub: str, rg: str, gallery_name: str, name: str) -> dict[str, Any]:
    """A gallery application (GalleryApplication_ListByGallery.json, value[0]: it carries no ``type``)."""
    item = example("compute-gallery__GalleryApplication_ListByGallery")
    item["id"] = compute_id(sub, rg, "galleries", gallery_name, "applications", name)
    item["name"] = name
    return item


def gallery_application_version(
    sub: str, rg: str, gallery_name: str, app: str, name: str, *, media_link: str, config_link: str | None = None
) -> dict[str, Any]:
    """An application version (GalleryApplicationVersion_ListByGalleryApplication.json, value[0])."""
    item = example("compute-gallery__GalleryApplicationVersion_ListByGalleryApplication")
    item["id"] = compute_id(sub, rg, "galleries", gallery_name, "applications", app, "versions", name)
    item["name"] = name
    source = item["properties"]["publishingProfile"]["source"]
    source["mediaLink"] = media_link
    if config_link is not None:
        source["defaultConfigurationLink"] = config_link
    return item


def gallery_images(
    sub: dict[str, Any], segs: list[str], rg: str, tail: list[str], tail_low: list[str], type_name: str
) -> list[Any] | dict[str, Any]:
    """``.../galleries/{name}/images[/{image}[/versions[/{version}]]]`` (``tail`` from the gallery's
    type segment on): the images of a gallery that exists, one of them, its versions or one of those."""
    images = _lookup(sub.get("galleryImages", {}), f"{rg}/{tail[1]}") or []
    if len(tail) == 3:
        return list(images)
    img = _by_name(images, tail[3])
    if img is None:
        raise _not_found(f"{type_name}/{tail[1]}/images/{tail[3]}", rg)
    if len(tail) == 4:
        return img
    if tail_low[4] != "versions":
        raise _not_found("/" + "/".join(segs), rg)
    versions = _lookup(sub.get("galleryImageVersions", {}), f"{rg}/{tail[1]}/{tail[3]}") or []
    if len(tail) == 5:
        return list(versions)
    ver = _by_name(versions, tail[5])
    if ver is None:
        raise _not_found(f"{type_name}/{tail[1]}/images/{tail[3]}/versions/{tail[5]}", rg)
    return ver
