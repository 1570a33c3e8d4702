"""Outbox relay vs raw JetStream publishing, and commit→publish latency at a steady rate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid

import asyncpg
from nats.js.api import DeliverPolicy
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.relay import OutboxRelay, asyncpg_dsn
from soctalk_common.uow import UnitOfWorkFactory

from bench.common import FULL, servers, summary


def _payload() -> tuple[str, bytes]:
    e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
    return e.subject, e.model_dump_json().encode()


async def raw_jetstream(bus: Bus, n: int) -> float:
    """Baseline: nats-py JetStream async publish (pipelined, all PubAcks awaited)."""
    _, payload = _payload()
    # Same shape as ours: one subject per tenant, a dedupe id per message.
    subjects = [_payload()[0] for _ in range(n)]
    t = time.perf_counter()
    futs = [await bus.js.publish_async(subjects[i], payload, headers={"Nats-Msg-Id": f"raw-{i}"})
            for i in range(n)]
    await asyncio.gather(*futs)
    return n / (time.perf_counter() - t)


async def commit_rows(database_url: str, n: int, writers: int = 8) -> float:
    """Handlers commit outbox rows (one event per transaction, as a step does); returns commits/s."""
    engine = make_engine(database_url, pool_size=writers)
    uow = UnitOfWorkFactory(make_sessionmaker(engine))

    async def writer(count: int) -> None:
        for _ in range(count):
            async with uow() as tx:
                tx.emit(ev.TenantRetryRequested(tenant_id=uuid.uuid4()))
                await tx.commit()

    t = time.perf_counter()
    await asyncio.gather(*(writer(n // writers) for _ in range(writers)))
    rate = n / (time.perf_counter() - t)
    await engine.dispose()
    return rate


async def relay_drain(bus: Bus, database_url: str, n: int) -> float:
    """Ours: committed rows → PubAck'd and marked, by the relay (leader already elected)."""
    relay = OutboxRelay(database_url, bus)
    done = asyncio.Event()
    relay.on_published = lambda _ids: done.set() if relay.stats.published >= n else None
    gate = asyncio.Event()
    original = relay._drain

    async def gated(conn):  # type: ignore[no-untyped-def]
        await gate.wait()  # hold the first drain until timing starts
        await original(conn)

    relay._drain = gated  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run())
    while not relay.stats.leader:  # noqa: ASYNC110 - the relay exposes a flag, not an event
        await asyncio.sleep(0.01)
    t = time.perf_counter()
    gate.set()
    await asyncio.wait_for(done.wait(), 120)
    rate = n / (time.perf_counter() - t)
    relay.stop()
    await task
    return rate


async def latency_at_rate(nats_url: str, database_url: str, rate: int, seconds: float) -> tuple[list[float], float]:
    """The relay runs as its own process (as deployed); one event is committed every 1/rate s and
    latency = arrival on the stream (ordered consumer) − commit time, in ms. Returns the latencies and
    the commit rate achieved."""
    env = dict(os.environ, NATS_URL=nats_url, DATABASE_URL=database_url, SOCTALK_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "soctalk_common.relay"], env=env)  # noqa: ASYNC220
    try:
        return await _measure(nats_url, database_url, rate, seconds)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def _measure(nats_url: str, database_url: str, rate: int, seconds: float) -> tuple[list[float], float]:
    """The writers insert the outbox row a handler's commit inserts (same columns, one transaction per
    event) with plain asyncpg, so the bench's own CPU does not limit the rate or delay the stamps."""
    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=16, max_size=16)
    committed: dict[str, float] = {}
    lat: list[float] = []
    bus = await Bus.connect(nats_url)
    await bus.ensure_streams()
    drained = asyncio.Event()

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        eid = msg.data[13:49].decode()  # {"event_id":"<uuid>" — cheap, avoids parsing in the hot path
        t0 = committed.pop(eid, None)
        if t0 is not None:
            lat.append((time.perf_counter() - t0) * 1000)
        if not committed:
            drained.set()

    sub = await bus.js.subscribe("soctalk.tenant.>", ordered_consumer=True, cb=on_msg,
                                 deliver_policy=DeliverPolicy.NEW)

    async def one() -> None:
        e = ev.TenantRetryRequested(tenant_id=uuid.uuid4())
        payload = e.model_dump_json().encode()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(INSERT, e.subject, e.event_type, payload)
            committed[str(e.event_id)] = time.perf_counter()  # stamped as the commit starts

    async def until_drained(timeout: float) -> None:
        drained.clear()
        if committed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), timeout)

    # warm-up: the relay process is up and leading once the first events arrive
    for _ in range(20):
        await one()
    await until_drained(30)
    lat.clear()
    n = int(rate * seconds)
    start = time.perf_counter()
    pending = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one()))
    await asyncio.gather(*pending)
    achieved = n / (time.perf_counter() - start)
    await until_drained(30)
    await sub.unsubscribe()
    await bus.close()
    await pool.close()
    return lat, achieved


INSERT = "INSERT INTO outbox (subject, event_type, payload) VALUES ($1, $2, $3)"


async def run() -> dict[str, float]:
    n = 20000 if FULL else 5000
    async with servers() as (nats_url, database_url):
        bus = await Bus.connect(nats_url)
        await bus.ensure_streams()
        raw = await raw_jetstream(bus, n)
        commits = await commit_rows(database_url, n)
        our = await relay_drain(bus, database_url, n)
        await bus.close()
    async with servers() as (nats_url, database_url):
        lat, achieved = await latency_at_rate(nats_url, database_url, 1000, 30 if FULL else 8)
    s = summary(lat)
    return {"relay.raw_per_s": round(raw), "relay.ours_per_s": round(our), "relay.ratio": round(our / raw, 3),
            "relay.handler_commits_per_s": round(commits),
            "relay.commit_to_publish_p50_ms": s["p50"], "relay.commit_to_publish_p99_ms": s["p99"],
            "relay.latency_samples": len(lat), "relay.latency_commits_per_s": round(achieved)}
