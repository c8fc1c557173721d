"""DevTest Labs: the uploaded VHDs its custom images are built from.

A custom image names its VHD by blob name only (``vhd.imageName``): the VHD is in the ``uploads``
container of the lab's storage account. Every account the lab names (default, default premium,
premium data disk, artifacts) is taken as a place the VHD may be; a name that is a full URL is taken
as it is."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from gc_daemon.domain import RawReference, RefKind

from .base import Found, IncompleteItem, Read, Source, SubscriptionContext, holder_id, jget, name_of, resource_group_of

LABS = Read(
    "labs",
    "/subscriptions/{subscriptionId}/providers/Microsoft.DevTestLab/labs",
    "Microsoft.DevTestLab/labs/read",
    api_version="2018-09-15",
)
CUSTOM_IMAGES = Read(
    "customImages",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.DevTestLab/"
    "labs/{labName}/customimages",
    "Microsoft.DevTestLab/labs/customImages/read",
    api_version="2018-09-15",
)
UPLOADS = "uploads"
# The lab's storage accounts (Labs_ListBySubscription.json names these four).
_LAB_ACCOUNTS = ("defaultStorageAccount", "defaultPremiumStorageAccount", "premiumDataDiskStorageAccount",
                 "artifactsStorageAccount")
_ACCOUNT_NAME = re.compile(r"/providers/Microsoft\.Storage/storageAccounts/([^/]+)/?$", re.IGNORECASE)


def lab_accounts(lab: dict[str, Any]) -> list[str]:
    """The storage account names a lab names."""
    holder = holder_id(lab)
    names = []
    for key in _LAB_ACCOUNTS:
        value = jget(lab, "properties", key)
        if value is None or value == "":
            continue  # a lab without that account (premium storage off)
        m = _ACCOUNT_NAME.search(value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"{holder}: properties.{key} is not a storage account id")
        names.append(m.group(1).lower())
    return list(dict.fromkeys(names))


def custom_image_references(image: dict[str, Any], accounts: list[str]) -> list[RawReference]:
    holder = holder_id(image)
    name = jget(image, "properties", "vhd", "imageName")
    if name is None:
        return []  # a custom image from a VM or a managed image: no VHD of its own
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{holder}: properties.vhd.imageName is not a blob name")
    where = "properties.vhd.imageName"
    if name.lower().startswith(("http://", "https://")):
        return [RawReference(kind=RefKind.DEVTEST_LAB_IMAGE, holder=holder, uri=name, field=where)]
    if not accounts:
        raise IncompleteItem(f"a storage account for {name!r} missing in the lab of {holder}")
    return [
        RawReference(
            kind=RefKind.DEVTEST_LAB_IMAGE, holder=holder, field=where,
            uri=f"https://{account}.blob.core.windows.net/{UPLOADS}/{quote(name, safe='/')}",
        )
        for account in accounts
    ]


def read_images(ctx: SubscriptionContext, rg: str, lab: str, accounts: list[str]) -> Found:
    out = Found()
    for image in ctx.rest_list(CUSTOM_IMAGES, resourceGroupName=rg, labName=lab):
        out.references += custom_image_references(image, accounts)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    def labs() -> Found:
        follow = []
        for lab in ctx.rest_list(LABS):
            rg, name, accounts = resource_group_of(holder_id(lab)), name_of(lab), lab_accounts(lab)
            follow.append(ctx.task(CUSTOM_IMAGES, f"lab {rg}/{name}",
                                   lambda rg=rg, name=name, accounts=accounts: read_images(ctx, rg, name, accounts)))
        return Found(follow=follow)

    return [ctx.task(LABS, "", labs)]


SOURCE = Source(
    "devtest_labs", "DevTest Labs", (LABS, CUSTOM_IMAGES), tasks,
    sees="uploaded VHDs of DevTest Labs custom images (`vhd.imageName` in the lab account's `uploads`)",
)
