"""Outbox relay against real Postgres and NATS JetStream."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from soctalk_common import events as ev
from soctalk_common.bus import EVENTS_STREAM, Bus
from soctalk_common.db import models as m
from soctalk_common.relay import OutboxRelay
from sqlalchemy import func, select

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def _emit(uow, n: int, tenant_id: uuid.UUID | None = None, *, commit: bool = True) -> list[ev.Event]:
    tenant_id = tenant_id or uuid.uuid4()
    out = []
    async with uow() as tx:
        for _ in range(n):
            e = ev.TenantRetryRequested(tenant_id=tenant_id)
            tx.emit(e)
            out.append(e)
        if commit:
            await tx.commit()
    return out


async def _stream_event_ids(bus: Bus, stream: str = EVENTS_STREAM) -> list[str]:
    info = await bus.js.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await bus.js.get_msg(stream, seq)
        ids.append(ev.parse_event(msg.data).event_id.hex)
    return ids


async def _stream_count(bus: Bus, stream: str = EVENTS_STREAM) -> int:
    return int((await bus.js.stream_info(stream)).state.messages)


async def _unpublished(sessionmaker) -> int:
    async with sessionmaker() as s:
        return int((await s.execute(select(func.count()).select_from(m.Outbox)
                                    .where(m.Outbox.published_at.is_(None)))).scalar_one())


class CrashAfterPublish(OutboxRelay):
    """Fault injection: publishes (and gets PubAcks) but dies before marking the rows."""

    crashed = False

    async def _mark(self, conn, ids):  # type: ignore[no-untyped-def]
        self.crashed = True
        await conn.close()  # the process "dies": connection gone, lock released
        raise OSError("relay killed between publish and mark")


async def _run(relay: OutboxRelay) -> asyncio.Task[None]:
    return asyncio.create_task(relay.run())


async def _stop(relay: OutboxRelay, task: asyncio.Task[None]) -> None:
    relay.stop()
    await asyncio.wait_for(task, 10)


async def test_committed_rows_published_exactly_once_in_order(uow, sessionmaker, bus, database_url):
    emitted = await _emit(uow, 25)
    relay = OutboxRelay(database_url, bus)
    task = await _run(relay)
    try:
        await eventually(lambda: _stream_count_eq(bus, 25), what="25 messages on the stream")
        assert await _stream_event_ids(bus) == [e.event_id.hex for e in emitted]
        await eventually(lambda: _is_zero(_unpublished(sessionmaker)), what="all rows marked")
    finally:
        await _stop(relay, task)


async def test_rolled_back_transaction_publishes_nothing(uow, sessionmaker, bus, database_url):
    await _emit(uow, 3, commit=False)
    kept = await _emit(uow, 1)
    relay = OutboxRelay(database_url, bus)
    task = await _run(relay)
    try:
        await eventually(lambda: _stream_count_eq(bus, 1), what="the committed message")
        assert await _stream_event_ids(bus) == [kept[0].event_id.hex]
    finally:
        await _stop(relay, task)


async def test_crash_between_publish_and_mark_does_not_duplicate(uow, sessionmaker, bus, database_url):
    emitted = await _emit(uow, 10)
    crashing = CrashAfterPublish(database_url, bus)
    crashing.stop_after_crash = True
    t1 = await _run(crashing)
    await eventually(lambda: _flag(crashing), what="the injected crash")
    await _stop(crashing, t1)
    assert await _unpublished(sessionmaker) == 10  # published but never marked
    assert await _stream_count(bus) == 10

    relay = OutboxRelay(database_url, bus)
    t2 = await _run(relay)
    try:
        await eventually(lambda: _is_zero(_unpublished(sessionmaker)), what="rows marked after restart")
        assert relay.stats.published == 10  # it really did publish again ...
        assert await _stream_event_ids(bus) == [e.event_id.hex for e in emitted]  # ... and JetStream deduped
    finally:
        await _stop(relay, t2)


async def test_two_relays_never_both_publish_and_standby_takes_over(uow, sessionmaker, bus, database_url):
    a = OutboxRelay(database_url, bus, name="a")
    b = OutboxRelay(database_url, bus, name="b")
    ta, tb = await _run(a), await _run(b)
    try:
        await eventually(lambda: _one_leader(a, b), what="a leader")
        for _ in range(10):
            await _emit(uow, 20)
        await eventually(lambda: _stream_count_eq(bus, 200), what="200 messages")
        # The relay counts a batch after marking its rows, a round trip after the stream has it.
        await eventually(lambda: _published_eq(a, b, 200), what="200 rows marked published")
        assert {a.stats.published, b.stats.published} == {0, 200}
        assert not (a.stats.leader and b.stats.leader)

        leader, standby, leader_task = (a, b, ta) if a.stats.leader else (b, a, tb)
        killed_at = time.monotonic()
        leader_task.cancel()  # the leader process dies; its session (and advisory lock) goes with it
        await asyncio.gather(leader_task, return_exceptions=True)
        if leader._conn is not None:
            leader._conn.terminate()
        await _emit(uow, 1)
        await eventually(lambda: _stream_count_eq(bus, 201), what="publish after failover", timeout=10)
        failover_s = time.monotonic() - killed_at
        assert standby.stats.leader
        assert failover_s < 5.0, f"failover took {failover_s:.2f}s"
    finally:
        for r, t in ((a, ta), (b, tb)):
            r.stop()
            if not t.done():
                await asyncio.wait_for(t, 10)


async def _published_eq(a: OutboxRelay, b: OutboxRelay, n: int) -> bool:
    return a.stats.published + b.stats.published == n


async def _stream_count_eq(bus: Bus, n: int) -> bool:
    return await _stream_count(bus) == n


async def _is_zero(coro) -> bool:  # type: ignore[no-untyped-def]
    return (await coro) == 0


async def _flag(relay: CrashAfterPublish) -> bool:
    return relay.crashed


async def _one_leader(a: OutboxRelay, b: OutboxRelay) -> bool:
    return a.stats.leader != b.stats.leader
