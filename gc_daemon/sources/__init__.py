"""Reference sources: one module each (what it reads, the permission it needs, how its failure is
named), registered here in the order their failures are listed. Adding a service is one module
here, one route in the ARM stand-in (sandbox/arm_http.py, with the service's builders in a
resource family's module such as sandbox/arm_services.py) and one test."""

from __future__ import annotations

from . import (
    devtest_labs,
    disks,
    galleries,
    image_builder,
    images,
    locks,
    resource_groups,
    scale_sets,
    site_recovery,
    snapshots,
    storage_accounts,
    virtual_machines,
)
from .base import GroupSeen, LockAt, Read, ReferenceRead, Source, SourceError

REGISTRY: tuple[Source, ...] = (
    virtual_machines.SOURCE,
    scale_sets.SOURCE,
    images.SOURCE,
    disks.SOURCE,
    snapshots.SOURCE,
    galleries.SOURCE,
    site_recovery.SOURCE,
    image_builder.SOURCE,
    devtest_labs.SOURCE,
    resource_groups.SOURCE,
    locks.SOURCE,
    storage_accounts.SOURCE,
)

# What the managed-disk half of a pass joins: a read without any of these (or with one of them
# failed) hands the pass no disks or snapshots (ReferenceRead.disks is None: the disk half is skipped).
DISK_SOURCES = ("disks", "snapshots", "images", "galleries", "resource_groups", "locks")


def reads(sources: tuple[Source, ...] = REGISTRY) -> list[Read]:
    return [read for source in sources for read in source.reads]


def permissions(sources: tuple[Source, ...] = REGISTRY) -> list[str]:
    """Every Azure RBAC action the reference read needs (the roles in deploy/azure/ hold them)."""
    return sorted({read.permission for read in reads(sources)})


def without_placement(sources: tuple[Source, ...] = REGISTRY) -> tuple[Source, ...]:
    """The sources when accounts are discovered in the configured subscriptions (nothing to place)."""
    return tuple(s for s in sources if s is not storage_accounts.SOURCE)


__all__ = [
    "DISK_SOURCES", "REGISTRY", "GroupSeen", "LockAt", "Read", "ReferenceRead", "Source", "SourceError", "permissions",
    "reads", "without_placement",
]
