"""Pytest plugin: one real Azurite for the whole session, wiped clean for each test that asks.

``azurite_server`` (session) starts Azurite with the accounts in :data:`ACCOUNTS` and SIGKILLs it at
the end; ``azurite`` (function) deletes every container of every account first and yields the same
server object (:class:`sandbox.azurite.Azurite`: ``blob_endpoint``, ``key``, ``service_client``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import seed
from sandbox.azurite import Azurite

ACCOUNTS = ("gcacct1", "gcacct2", "gcacct3")


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(list(ACCOUNTS), tmp_path_factory.mktemp("azurite"))
    with server:
        yield server


@pytest.fixture
def azurite(azurite_server: Azurite) -> Iterator[Azurite]:
    for account in ACCOUNTS:
        with azurite_server.service_client(account) as service:
            seed.wipe(service)
    yield azurite_server
