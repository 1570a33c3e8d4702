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


# ------------------------------------------------------------------------------------------------
# confirmation pings: the refresh re-reads only what the listener cannot vouch for
# ------------------------------------------------------------------------------------------------


async def _tenant_with_token(uow):  # type: ignore[no-untyped-def]
    tid = uuid.uuid4()
    token, prefix = mint_adapter_token()
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug=f"t{tid.hex[:8]}",
                                request_id="r", display_name="T", state="active", profile="small-dev",
                                chart_version="v1.1.0", config={}))
        tx.session.add(m.AdapterToken(prefix=prefix, tenant_id=tid, token_hash=hash_token(b"k" * 32, token),
                                      version_label="v1"))
        await tx.commit()
    return tid, prefix


async def _confirmed_after(listener: PgListener, t: float) -> None:
    """Tick (one ping each) until a ping sent at or after ``t`` (listener clock) has come back."""
    async def probe() -> bool:
        await listener.tick()
        cov = listener.coverage()
        return cov is not None and cov[1] >= t

    await eventually(probe, what="a ping confirmed", timeout=5)


class _Clock:
    """A monotonic clock the test moves: entries age without waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_working_listener_vouches_for_the_cache_and_a_lost_one_does_not(uow, sessionmaker, database_url):
    clock = _Clock()
    tid, prefix = await _tenant_with_token(uow)
    cache = TokenCache(sessionmaker, max_age_s=3.0, refresh_s=1.0, clock=clock)
    listener = PgListener(database_url, {"soctalk_token_changed": cache.invalidate_token,
                                         "soctalk_tenant_changed": cache.invalidate_tenant}, clock=clock)
    cache.coverage = listener.coverage
    try:
        await listener.tick()  # connects and LISTENs
        assert listener.connected
        assert listener.fresh_as_of(clock.now - 1) == clock.now - 1  # loaded before LISTEN: not covered
        clock.now += 1
        await cache.ensure([prefix], [str(tid)])
        loads = cache.loads
        clock.now += 10  # far older than 2 × refresh_s (and max_age_s): without the listener, re-read
        await _confirmed_after(listener, clock.now)
        await cache.refresh()
        assert cache.loads == loads  # vouched for: nothing re-read
        await cache.ensure([prefix], [str(tid)])
        assert cache.loads == loads

        # Pings that stopped coming back vouch for nothing once they are old.
        clock.now += 2.5
        await cache.refresh()
        assert cache.loads == loads + 2  # tokens and tenants
        loads = cache.loads
        await _confirmed_after(listener, clock.now)

        # A change still arrives as an invalidation, and only that entry is read again.
        async with uow() as tx:
            await tx.session.execute(update(m.AdapterToken).where(m.AdapterToken.prefix == prefix)
                                     .values(revoked_at=datetime.now(UTC)))
            await tx.commit()
        await eventually(lambda: _gone(cache.record(prefix)), what="the revoked token evicted", timeout=5)
        await cache.ensure([prefix])
        assert cache.loads == loads + 1 and cache.record(prefix).revoked_at is not None

        # The connection dies: nothing is vouched for any more, the refresh re-reads everything.
        assert listener._conn is not None
        listener._conn.terminate()
        await eventually(lambda: _not(listener.connected), what="the loss noticed", timeout=5)
        clock.now += 10
        loads = cache.loads
        await cache.refresh()
        assert cache.loads == loads + 2  # tokens and tenants

        # Reconnected and confirmed: entries loaded before the reconnect are still not covered (a
        # change in the gap was never notified) until they are read once more.
        clock.now += 1
        await listener.tick()
        assert listener.connected and listener.connects == 2
        clock.now += 10
        await _confirmed_after(listener, clock.now)
        loads = cache.loads
        await cache.refresh()
        assert cache.loads == loads + 2
        clock.now += 10
        await _confirmed_after(listener, clock.now)
        loads = cache.loads
        await cache.refresh()
        assert cache.loads == loads  # read while listening, confirmed since: vouched for again
    finally:
        await listener.close()


async def test_an_invalidation_during_a_load_leaves_that_row_stale(uow, sessionmaker, database_url):
    """The load's snapshot may predate the change whose notification arrives while it is in flight:
    what it returns must not be trusted (nor vouched for by a later ping)."""
    import contextlib

    tid, prefix = await _tenant_with_token(uow)
    hook: list = []

    @contextlib.asynccontextmanager
    async def gated():  # type: ignore[no-untyped-def]
        async with sessionmaker() as s:
            real = s.execute

            async def execute(stmt, *a, **k):  # type: ignore[no-untyped-def]
                result = await real(stmt, *a, **k)  # rows as of this snapshot
                if hook:
                    await hook.pop()()
                return result

            s.execute = execute  # type: ignore[method-assign]
            yield s

    cache = TokenCache(gated, max_age_s=3600.0, refresh_s=3600.0)  # type: ignore[arg-type]
    listener = PgListener(database_url, {"soctalk_token_changed": cache.invalidate_token,
                                         "soctalk_tenant_changed": cache.invalidate_tenant})
    cache.coverage = listener.coverage
    try:
        await listener.tick()

        async def revoke_meanwhile() -> None:
            n = cache.invalidations  # before the commit: the notification may arrive during its awaits
            async with uow() as tx:
                await tx.session.execute(update(m.AdapterToken).where(m.AdapterToken.prefix == prefix)
                                         .values(revoked_at=datetime.now(UTC)))
                await tx.commit()
            await eventually(lambda: _true(cache.invalidations > n), what="the notification", timeout=5)

        hook.append(revoke_meanwhile)
        await cache.ensure([prefix])
        assert cache.record(prefix) is not None and cache.record(prefix).revoked_at is None  # the old row
        loads = cache.loads
        await cache.ensure([prefix])  # not trusted: read again, despite max_age_s of an hour
        assert cache.loads == loads + 1 and cache.record(prefix).revoked_at is not None
        await cache.ensure([prefix])
        assert cache.loads == loads + 1  # and now trusted
    finally:
        await listener.close()


async def test_a_listener_whose_pings_stop_coming_back_reconnects(database_url):
    listener = PgListener(database_url, {})
    try:
        await listener.tick()
        await listener.tick()  # a ping
        await eventually(lambda: _true(listener.pings_confirmed >= 1), what="a ping back", timeout=5)
        assert listener.connects == 1
        listener._pings["999999"] = -1e9  # a ping sent long ago that never came back
        await listener.tick()
        assert listener.connects == 2 and listener.connected and not listener._pings
    finally:
        await listener.close()


async def _true(flag: bool) -> bool:
    return flag
