"""pytest plugin: the ARM stand-in (sandbox.arm) over HTTPS with a throwaway certificate.

``arm_server`` is started once per session; ``arm`` hands it to a test with an empty estate, no
faults, an empty request log and page size 2. Clients trust it with ``connection_verify=arm.cert_path``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.arm import ArmStandIn

DEFAULT_PAGE_SIZE = 2


@pytest.fixture(scope="session")
def arm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmStandIn]:
    server = ArmStandIn(page_size=DEFAULT_PAGE_SIZE, cert_dir=str(tmp_path_factory.mktemp("arm-cert")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def arm(arm_server: ArmStandIn) -> Iterator[ArmStandIn]:
    arm_server.page_size = DEFAULT_PAGE_SIZE
    arm_server.reset()
    try:
        yield arm_server
    finally:
        arm_server.reset()
        arm_server.page_size = DEFAULT_PAGE_SIZE


@pytest.fixture
def compute_inventory(arm: ArmStandIn) -> Iterator[Callable[..., Any]]:
    """Factory: ``compute_inventory([SUB, ...], **overrides)`` -> a ReferenceInventory (every
    registered source) on the stand-in,
    with short retries and timeouts so fault tests stay fast. Closed at the end of the test."""
    from gc_daemon.sources.inventory import ReferenceInventory
    from gc_daemon.azure.credentials import EmulatorCredential

    made: list[ReferenceInventory] = []

    def make(subscriptions: list[str], **overrides: Any) -> ReferenceInventory:
        options: dict[str, Any] = {
            "connection_verify": arm.cert_path,
            "retry_total": 2,
            "retry_backoff": 0.05,
            "timeout": 10,
            "max_workers": 4,
        }
        options.update(overrides)
        inventory = ReferenceInventory(EmulatorCredential(), arm.url, subscriptions, **options)
        made.append(inventory)
        return inventory

    try:
        yield make
    finally:
        for inventory in made:
            inventory.close()
