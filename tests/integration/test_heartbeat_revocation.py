"""Revocation is instant: a NOTIFY from Postgres drops the token (or tenant) from the heartbeat
service's cache, so the next heartbeat re-reads it — no waiting for the periodic refresh."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from soctalk_common.db import models as m
from soctalk_common.notify import PgListener
from soctalk_heartbeat.tokens import TokenCache
from soctalk_secrets.domain import hash_token, mint_adapter_token
from sqlalchemy import update

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_revocation_and_tenant_changes_evict_the_cache_at_once(uow, sessionmaker, database_url):
    tid = uuid.uuid4()
    token, prefix = mint_adapter_token()
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug="acme", request_id="r",
                                display_name="Acme", state="active", profile="small-dev", chart_version="v1.1.0",
                                config={}))
        tx.session.add(m.AdapterToken(prefix=prefix, tenant_id=tid, token_hash=hash_token(b"k" * 32, token),
                                      version_label="v1"))
        await tx.commit()
    cache = TokenCache(sessionmaker, max_age_s=3600)  # the periodic refresh would take an hour
    await cache.ensure([prefix], [str(tid)])
    assert cache.record(prefix) is not None and cache.tenant(str(tid)) == (True, "active")

    listener = PgListener(database_url, {"soctalk_token_changed": cache.invalidate_token,
                                         "soctalk_tenant_changed": cache.invalidate_tenant})
    await listener.tick()
    try:
        async with uow() as tx:
            await tx.session.execute(update(m.AdapterToken).where(m.AdapterToken.prefix == prefix)
                                     .values(revoked_at=datetime.now(UTC)))
            await tx.commit()
        await eventually(lambda: _gone(cache.record(prefix)), what="the revoked token evicted", timeout=5)
        loads = cache.loads
        await cache.ensure([prefix])
        assert cache.loads == loads + 1 and cache.record(prefix).revoked_at is not None

        async with uow() as tx:
            await tx.session.execute(update(m.Tenant).where(m.Tenant.id == tid).values(state="decommissioning"))
            await tx.commit()
        await eventually(lambda: _gone(cache.tenant(str(tid))[1]), what="the tenant state evicted", timeout=5)
        await cache.ensure([], [str(tid)])
        assert cache.tenant(str(tid)) == (True, "decommissioning")

        # A lost LISTEN connection is re-established on the next tick.
        assert listener._conn is not None
        listener._conn.terminate()
        await eventually(lambda: _not(listener.connected), what="the loss noticed", timeout=5)
        await listener.tick()
        assert listener.connected and listener.connects == 2
    finally:
        await listener.close()


async def _gone(value) -> bool:  # type: ignore[no-untyped-def]
    await asyncio.sleep(0)
    return value is None


async def _not(flag: bool) -> bool:
    return not flag
