"""Compute galleries: image versions made from VHDs (galleries -> image definitions -> versions) and
application versions, whose package and configuration are page blobs (galleries -> applications ->
versions). One module for both: they hang off the same list of galleries, read once."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import (
    keep_tags,
    Found,
    Read,
    Source,
    SubscriptionContext,
    attr,
    collect,
    disk_or_snapshot_refs,
    holder_id,
    items,
    name_of,
    ref,
    required,
    resource_group_of,
)

GALLERIES = Read(
    "galleries",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/galleries",
    "Microsoft.Compute/galleries/read",
    operation="galleries.list",
)
IMAGES = Read(
    "galleryImages",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
    "galleries/{galleryName}/images",
    "Microsoft.Compute/galleries/images/read",
    operation="gallery_images.list_by_gallery",
)
VERSIONS = Read(
    "galleryImageVersions",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
    "galleries/{galleryName}/images/{galleryImageName}/versions",
    "Microsoft.Compute/galleries/images/versions/read",
    operation="gallery_image_versions.list_by_gallery_image",
)
APPLICATIONS = Read(
    "galleryApplications",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
    "galleries/{galleryName}/applications",
    "Microsoft.Compute/galleries/applications/read",
    operation="gallery_applications.list_by_gallery",
)
APPLICATION_VERSIONS = Read(
    "galleryApplicationVersions",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Compute/"
    "galleries/{galleryName}/applications/{galleryApplicationName}/versions",
    "Microsoft.Compute/galleries/applications/versions/read",
    operation="gallery_application_versions.list_by_gallery_application",
)


def gallery_image_version_references(version: Any) -> list[RawReference]:
    """A gallery image version's source VHDs. Every version has a storage profile."""
    holder = holder_id(version)
    profile = required(version, holder, "storage_profile", where="storageProfile")
    refs = ref(
        RefKind.GALLERY_SOURCE, holder, attr(profile, "os_disk_image", "source", "uri"), "osDiskImage.source.uri"
    )
    for i, data_image in enumerate(items(attr(profile, "data_disk_images"), holder, "dataDiskImages")):
        refs += ref(
            RefKind.GALLERY_SOURCE, holder, attr(data_image, "source", "uri"), f"dataDiskImages[{i}].source.uri"
        )
    return refs


def gallery_image_version_resource_refs(version: Any) -> list[tuple[str, str]]:
    """``(disk or snapshot key, version id)`` for the managed disks and snapshots a version is made
    from: ``storageProfile.source.id``, ``osDiskImage.source.id``, ``dataDiskImages[].source.id``."""
    holder = holder_id(version)
    profile = required(version, holder, "storage_profile", where="storageProfile")
    out = disk_or_snapshot_refs(holder, attr(profile, "source", "id"), attr(profile, "os_disk_image", "source", "id"),
                                where="storageProfile.source.id / osDiskImage.source.id")
    for i, data_image in enumerate(items(attr(profile, "data_disk_images"), holder, "dataDiskImages")):
        out += disk_or_snapshot_refs(holder, attr(data_image, "source", "id"), where=f"dataDiskImages[{i}].source.id")
    return out


def gallery_application_version_references(version: Any) -> list[RawReference]:
    """An application version's package (``mediaLink``: "must be a readable storage page blob") and
    default configuration. Every version has a publishing profile with a source."""
    holder = holder_id(version)
    source = required(version, holder, "publishing_profile", "source", where="publishingProfile.source")
    refs = ref(RefKind.GALLERY_APPLICATION, holder, attr(source, "media_link"), "publishingProfile.source.mediaLink")
    refs += ref(
        RefKind.GALLERY_APPLICATION,
        holder,
        attr(source, "default_configuration_link"),
        "publishingProfile.source.defaultConfigurationLink",
    )
    return refs


def read_galleries(client: Any, pages: dict[str, Any]) -> list[tuple[str, str]]:
    """(resource group, name) of every gallery."""
    return [(resource_group_of(holder_id(g)), name_of(g)) for g in client.galleries.list(**pages)]


def read_gallery_images(client: Any, resource_group: str, gallery: str, pages: dict[str, Any]) -> list[str]:
    return [name_of(image) for image in client.gallery_images.list_by_gallery(resource_group, gallery, **pages)]


def read_versions(client: Any, resource_group: str, gallery: str, image: str, pages: dict[str, Any]) -> Found:
    out = Found()
    for version in client.gallery_image_versions.list_by_gallery_image(resource_group, gallery, image, **pages):
        out.references += gallery_image_version_references(version)
        out.resource_refs += gallery_image_version_resource_refs(version)
        keep_tags(out, version)
    return out


def read_applications(client: Any, resource_group: str, gallery: str, pages: dict[str, Any]) -> list[str]:
    return [name_of(app) for app in client.gallery_applications.list_by_gallery(resource_group, gallery, **pages)]


def read_application_versions(client: Any, resource_group: str, gallery: str, app: str, pages: dict[str, Any]) -> Found:
    found = client.gallery_application_versions.list_by_gallery_application(resource_group, gallery, app, **pages)
    return collect(found, gallery_application_version_references)


def tasks(ctx: SubscriptionContext) -> list:
    def images(rg: str, gallery: str) -> Found:
        names = read_gallery_images(ctx.compute(), rg, gallery, ctx.pages())
        return Found(follow=[
            ctx.task(VERSIONS, f"gallery image {rg}/{gallery}/{image}",
                     lambda image=image: read_versions(ctx.compute(), rg, gallery, image, ctx.pages()))
            for image in names
        ])

    def applications(rg: str, gallery: str) -> Found:
        names = read_applications(ctx.compute(), rg, gallery, ctx.pages())
        return Found(follow=[
            ctx.task(APPLICATION_VERSIONS, f"gallery application {rg}/{gallery}/{app}",
                     lambda app=app: read_application_versions(ctx.compute(), rg, gallery, app, ctx.pages()))
            for app in names
        ])

    def galleries() -> Found:
        follow = []
        for rg, gallery in read_galleries(ctx.compute(), ctx.pages()):
            follow.append(ctx.task(IMAGES, f"gallery {rg}/{gallery}", lambda rg=rg, gallery=gallery: images(rg, gallery)))
            follow.append(ctx.task(APPLICATIONS, f"gallery {rg}/{gallery}",
                                   lambda rg=rg, gallery=gallery: applications(rg, gallery)))
        return Found(follow=follow)

    return [ctx.task(GALLERIES, "", galleries)]


SOURCE = Source(
    "galleries", "Compute", (GALLERIES, IMAGES, VERSIONS, APPLICATIONS, APPLICATION_VERSIONS), tasks,
    sees="gallery image versions' source VHDs (`osDiskImage.source.uri`, `dataDiskImages[].source.uri`) and the "
    "managed disks and snapshots they are made from (`source.id`), "
    "gallery application versions' packages (`publishingProfile.source.mediaLink`, `defaultConfigurationLink`)",
)
