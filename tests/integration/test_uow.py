"""Unit of work and engine against real Postgres: what the one-statement commit writes, the inbox
gate, the autocommit helpers, and the pool (no connection churn, stale connections replaced)."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.db.session import install_idle_ping, make_engine, make_sessionmaker
from soctalk_common.uow import AlreadyProcessed, UnitOfWorkFactory
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _rows(sessionmaker, model, *order):  # type: ignore[no-untyped-def]
    async with sessionmaker() as s:
        return (await s.execute(select(model).order_by(*order))).scalars().all()


async def test_commit_writes_lifecycle_and_outbox_rows_in_emit_order(uow, sessionmaker):
    cause = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    async with uow.bind("test-consumer", cause.event_id)() as tx:
        le1 = tx.lifecycle(cause, "First", slug="acme", state_from="pending", state_to="provisioning",
                           step="secrets", message="it's \"quoted\"", details={"n": 1, "nested": {"a": [1, None]}})
        tx.emit(cause.caused(ev.TenantRetryRequested), headers={"X-Test": "1"})
        le2 = tx.lifecycle(cause, "Second")  # every optional field empty
        other = uuid.uuid4()
        le3 = tx.lifecycle(cause, "Third", tenant_id=other)
        await tx.commit()

    rows = await _rows(sessionmaker, m.TenantLifecycleEvent, m.TenantLifecycleEvent.id)
    assert [r.event_id for r in rows] == [le1.event_id, le2.event_id, le3.event_id]
    first, second, third = rows
    assert (first.tenant_id, first.slug, first.type, first.state_from, first.state_to, first.step,
            first.message, first.details) == (cause.tenant_id, "acme", "First", "pending", "provisioning",
                                              "secrets", 'it\'s "quoted"', {"n": 1, "nested": {"a": [1, None]}})
    assert first.correlation_id == cause.correlation_id and first.causation_id == cause.event_id
    assert first.occurred_at == le1.occurred_at
    assert (second.slug, second.state_from, second.state_to, second.step, second.message, second.details) == (
        None, None, None, None, "", {})
    assert third.tenant_id == other

    outbox = await _rows(sessionmaker, m.Outbox, m.Outbox.id)
    types = [json.loads(o.payload)["event_type"] for o in outbox]
    assert types == ["TenantLifecycleEvent", "TenantRetryRequested", "TenantLifecycleEvent", "TenantLifecycleEvent"]
    assert [o.headers for o in outbox] == [None, {"X-Test": "1"}, None, None]
    assert [ev.parse_event(o.payload).event_id for o in outbox][0] == le1.event_id
    assert all(o.published_at is None and o.txid for o in outbox)
    assert await uow.seen("test-consumer", cause.event_id)


async def test_second_delivery_writes_nothing_and_raises_already_processed(uow, sessionmaker):
    cause = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    async with uow.bind("c", cause.event_id)() as tx:
        tx.lifecycle(cause, "Once")
        await tx.commit()
    again = UnitOfWorkFactory(sessionmaker).bind("c", cause.event_id)  # another replica, same message
    with pytest.raises(AlreadyProcessed):
        async with again() as tx:
            tx.session.add(m.Inbox(consumer="marker", event_id=uuid.uuid4()))  # an ORM change: rolled back
            tx.lifecycle(cause, "Twice")
            tx.emit(cause.caused(ev.TenantRetryRequested))
            await tx.commit()
    assert [r.type for r in await _rows(sessionmaker, m.TenantLifecycleEvent, m.TenantLifecycleEvent.id)] == ["Once"]
    assert len(await _rows(sessionmaker, m.Outbox, m.Outbox.id)) == 1
    assert [r.consumer for r in await _rows(sessionmaker, m.Inbox, m.Inbox.consumer)] == ["c"]


async def test_only_the_first_committed_transaction_of_a_message_records_its_inbox_row(uow, sessionmaker):
    cause = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    bound = uow.bind("c", cause.event_id)
    for n in range(2):
        async with bound() as tx:
            tx.lifecycle(cause, f"Step{n}")
            await tx.commit()
    assert bound.inbox_recorded
    assert len(await _rows(sessionmaker, m.TenantLifecycleEvent, m.TenantLifecycleEvent.id)) == 2


async def test_unbound_and_empty_commits(uow, sessionmaker):
    async with uow() as tx:  # nothing queued, no inbox: a plain commit
        await tx.commit()
    cause = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    async with uow() as tx:  # outbox only
        tx.emit(cause)
        await tx.commit()
    async with uow.bind("c", cause.event_id)() as tx:  # inbox only
        await tx.commit()
    assert len(await _rows(sessionmaker, m.Outbox, m.Outbox.id)) == 1
    assert await uow.seen("c", cause.event_id)


async def test_seen_and_record_inbox_in_autocommit(uow):
    eid = uuid.uuid4()
    assert not await uow.seen("c", eid)
    await uow.record_inbox("c", eid)
    await uow.record_inbox("c", eid)  # a second time is a no-op
    assert await uow.seen("c", eid)
    assert not await uow.seen("other", eid)


async def test_pool_keeps_its_connections_instead_of_reopening_them(database_url):
    engine = make_engine(database_url, pool_size=2)  # up to 4 connections
    opened = 0

    @event.listens_for(engine.sync_engine.pool, "connect")
    def _count(*_a):  # type: ignore[no-untyped-def]
        nonlocal opened
        opened += 1

    sm = make_sessionmaker(engine)

    async def one() -> None:
        async with sm() as s:
            await s.execute(text("SELECT pg_sleep(0.01)"))

    try:
        for _ in range(10):
            await asyncio.gather(*(one() for _ in range(8)))  # more callers than connections: they wait
        assert opened == 4
    finally:
        await engine.dispose()


async def test_a_connection_that_sat_idle_is_checked_and_replaced_when_dead(database_url):
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    install_idle_ping(engine, idle_s=0.0)  # every reuse counts as idle here
    try:
        async with engine.connect() as c:
            pid = (await c.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        admin = await asyncpg.connect(_dsn(database_url))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)

            async def gone() -> bool:
                return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

            await eventually(gone, what="the backend to exit")
        finally:
            await admin.close()
        async with engine.connect() as c:  # the ping fails, the pool opens a new connection
            assert (await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await engine.dispose()
