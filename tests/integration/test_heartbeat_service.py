"""The heartbeat service on real NATS JetStream and Postgres, time driven by a FakeClock.

Each test runs the real process (``bootstrap`` → ``ServiceProcess.run``): the batched pull consumer,
the ChartApplied route, the flush, liveness and token-refresh loops and the HTTP endpoint. Adapters
are played by ``AdapterSimulator`` (or raw publishes for forged messages). Decisions are asserted on
the outbox — the durable record of what the service emitted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.clock import FakeClock
from soctalk_common.db import models as m
from soctalk_common.service import ServiceProcess
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_heartbeat import handlers
from soctalk_heartbeat.bootstrap import bootstrap
from soctalk_heartbeat.handlers import HeartbeatDeps
from soctalk_heartbeat.intake import Incoming, Intake
from soctalk_heartbeat.simulator import AdapterSimulator
from soctalk_secrets.domain import new_token_record
from sqlalchemy import select, update

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

KEY = "heartbeat-test-signing-key-0123456789"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def settings(nats_url: str, database_url: str) -> Settings:
    return Settings().model_copy(update={
        "nats_url": nats_url, "database_url": database_url, "token_hash_key": KEY,
        "heartbeat_interval_s": 30.0, "heartbeat_missed_intervals": 3, "heartbeat_flush_s": 0.05,
        "retry_base_delay_s": 0.02, "retry_max_delay_s": 0.1, "ack_wait_s": 5.0,
    })


@dataclass
class Running:
    process: ServiceProcess
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def deps(self) -> HeartbeatDeps:
        return self.process.runtime.deps  # type: ignore[no-any-return]

    def refused(self, reason: str) -> float:
        return self.deps.metrics.refused_count(reason)

    def accepted(self, transport: str) -> float:
        return self.deps.metrics.value("soctalk_heartbeat_accepted_total", transport=transport)

    def metric(self, name: str, **labels: str) -> float:
        return self.deps.metrics.value(name, **labels)

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start(settings: Settings, uow: UnitOfWorkFactory, clock: FakeClock
                ) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    running: list[Running] = []
    buses: list[Bus] = []

    async def _start(**kw: Any) -> Running:
        bus = await Bus.connect(settings.nats_url)
        await bus.ensure_streams()
        buses.append(bus)
        proc = bootstrap(settings, uow=uow, bus=bus, clock=clock, liveness_check_s=0.05, fetch_timeout_s=0.2, **kw)
        stop = asyncio.Event()
        r = Running(proc, stop, asyncio.create_task(proc.run(stop)))
        running.append(r)
        await eventually(_probe(lambda: proc.bound_port is not None), what="the service to listen")
        return r

    yield _start
    for r in running:
        if not r.task.done():
            await r.shutdown()
    for b in buses:
        await b.close()


def _probe(cond: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def probe() -> Any:
        return cond()

    return probe


async def make_tenant(sessionmaker: Any, state: str = "provisioning") -> tuple[uuid.UUID, str]:
    tid = uuid.uuid4()
    slug = f"t{tid.hex[:10]}"
    async with sessionmaker() as s, s.begin():
        s.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug=slug, request_id=str(tid),
                       display_name=slug, state=state, profile="small-dev", chart_version="v1.1.0", config={}))
    return tid, slug


async def make_token(sessionmaker: Any, tenant_id: uuid.UUID, clock: FakeClock, **fields: Any) -> tuple[str, str]:
    token, rec = new_token_record(tenant_id, KEY.encode(), clock.now() - timedelta(days=1))
    async with sessionmaker() as s, s.begin():
        s.add(m.AdapterToken(prefix=rec.prefix, tenant_id=tenant_id, token_hash=rec.token_hash,
                             version_label=rec.version_label, created_at=rec.created_at, **fields))
    return token, rec.prefix


async def set_state(sessionmaker: Any, tenant_id: uuid.UUID, state: str) -> None:
    async with sessionmaker() as s, s.begin():
        await s.execute(update(m.Tenant).where(m.Tenant.id == tenant_id).values(state=state))


async def chart_applied(bus: Bus, tenant_id: uuid.UUID, *, operation: str = "install",
                        msg_id: str | None = None, event: ev.ChartApplied | None = None) -> ev.ChartApplied:
    e = event or ev.ChartApplied(tenant_id=tenant_id, operation=operation, release="soctalk-tenant",  # type: ignore[arg-type]
                                 namespace="tenant-x", revision=1, chart_version="v1.1.0")
    await bus.publish(e.subject, e.model_dump_json().encode(), msg_id=msg_id or str(e.event_id))
    return e


async def emitted(sessionmaker: Any, event_type: str, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    async with sessionmaker() as s:
        rows = (await s.execute(select(m.Outbox.payload).where(
            m.Outbox.event_type == event_type, m.Outbox.subject.contains(str(tenant_id))).order_by(m.Outbox.id)
        )).scalars()
        return [json.loads(p) for p in rows]


async def lifecycle(sessionmaker: Any, tenant_id: uuid.UUID, type_: str) -> list[m.TenantLifecycleEvent]:
    async with sessionmaker() as s:
        return list((await s.execute(select(m.TenantLifecycleEvent).where(
            m.TenantLifecycleEvent.tenant_id == tenant_id, m.TenantLifecycleEvent.type == type_)
            .order_by(m.TenantLifecycleEvent.id))).scalars())


async def hb_state(sessionmaker: Any, tenant_id: uuid.UUID) -> m.HeartbeatState | None:
    async with sessionmaker() as s:
        return (await s.execute(select(m.HeartbeatState).where(m.HeartbeatState.tenant_id == tenant_id))
                ).scalar_one_or_none()


async def tenant_row(sessionmaker: Any, tenant_id: uuid.UUID) -> m.Tenant:
    async with sessionmaker() as s:
        return (await s.execute(select(m.Tenant).where(m.Tenant.id == tenant_id))).scalar_one()


def n_of(coro_fn: Callable[[], Awaitable[list[Any]]], n: int) -> Callable[[], Awaitable[Any]]:
    async def probe() -> Any:
        items = await coro_fn()
        return items if len(items) >= n else None

    return probe


async def activate(r: Running, bus: Bus, sessionmaker: Any, clock: FakeClock, nats_url: str,
                   **sim: Any) -> tuple[uuid.UUID, AdapterSimulator]:
    """A tenant whose chart is applied and whose adapter heartbeats; state set active as the
    provisioner would on TenantActivated."""
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    adapter = AdapterSimulator(nats_url, tid, token, bus=bus, **sim)
    await chart_applied(bus, tid)
    await eventually(lambda: _chart_recorded(sessionmaker, tid), what="ChartApplied recorded")
    await adapter.beat_once()
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantActivated", tid), 1), what="TenantActivated")
    await set_state(sessionmaker, tid, "active")
    return tid, adapter


async def _chart_recorded(sessionmaker: Any, tid: uuid.UUID) -> bool:
    row = await hb_state(sessionmaker, tid)
    return row is not None and row.chart_applied_at is not None


# ------------------------------------------------------------------------------------------------
# activation
# ------------------------------------------------------------------------------------------------


async def test_activation_when_the_heartbeat_follows_chart_applied(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    applied = await chart_applied(bus, tid)
    await eventually(lambda: _chart_recorded(sessionmaker, tid), what="ChartApplied recorded")
    assert await emitted(sessionmaker, "TenantActivated", tid) == []

    adapter = AdapterSimulator(nats_url, tid, token, bus=bus, adapter_version="2.4.1")
    beat = await adapter.beat_once()
    [activated] = await eventually(n_of(lambda: emitted(sessionmaker, "TenantActivated", tid), 1),
                                   what="TenantActivated")
    assert activated["adapter_version"] == "2.4.1"
    assert activated["correlation_id"] == str(applied.correlation_id)  # continues the provisioning story
    assert activated["causation_id"] == str(beat.event_id)
    row = await hb_state(sessionmaker, tid)
    assert row is not None and str(row.activated_event_id) == activated["event_id"]
    tenant = await tenant_row(sessionmaker, tid)
    assert tenant.activated_at == T0 and tenant.last_heartbeat_at is not None
    assert tenant.last_health is not None and tenant.last_health["adapter_version"] == "2.4.1"
    assert tenant.state == "provisioning"  # the state machine is the provisioner's

    for _ in range(3):
        await adapter.beat_once()
    await eventually(_probe(lambda: r.accepted("nats") >= 4), what="beats")
    assert len(await emitted(sessionmaker, "TenantActivated", tid)) == 1


async def test_activation_when_the_heartbeat_precedes_chart_applied(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    beat = await AdapterSimulator(nats_url, tid, token, bus=bus).beat_once()

    async def first_seen() -> bool:
        row = await hb_state(sessionmaker, tid)
        return row is not None and row.first_heartbeat_at is not None

    await eventually(first_seen, what="the first heartbeat recorded")
    assert await emitted(sessionmaker, "TenantActivated", tid) == []

    clock.advance(20)
    applied = await chart_applied(bus, tid)
    [activated] = await eventually(n_of(lambda: emitted(sessionmaker, "TenantActivated", tid), 1),
                                   what="TenantActivated on ChartApplied")
    assert activated["causation_id"] == str(applied.event_id)
    assert activated["adapter_version"] == beat.adapter_version
    # Not an install: ignored. A redelivered install: no second activation.
    await chart_applied(bus, tid, operation="upgrade")
    await chart_applied(bus, tid, event=applied, msg_id="redelivered-copy")
    await eventually(_probe(lambda: _counter(r, "processed") >= 2 and _counter(r, "duplicates") >= 1),
                     what="the upgrade handled and the copy skipped")
    assert len(await emitted(sessionmaker, "TenantActivated", tid)) == 1


async def test_a_heartbeat_older_than_the_liveness_window_does_not_activate_on_chart_applied(
        start, bus, sessionmaker, clock, nats_url):
    await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    adapter = AdapterSimulator(nats_url, tid, token, bus=bus)
    await adapter.beat_once()
    await eventually(lambda: _first_seen(sessionmaker, tid), what="first heartbeat")
    clock.advance(91)  # the adapter went quiet before the chart was reported applied
    await chart_applied(bus, tid)
    await eventually(lambda: _chart_recorded(sessionmaker, tid), what="ChartApplied recorded")
    assert await emitted(sessionmaker, "TenantActivated", tid) == []
    await adapter.beat_once()  # the next valid heartbeat activates
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantActivated", tid), 1), what="TenantActivated")


async def _first_seen(sessionmaker: Any, tid: uuid.UUID) -> bool:
    row = await hb_state(sessionmaker, tid)
    return row is not None and row.first_heartbeat_at is not None


def _counter(*replicas: Running | str) -> int:
    *rs, name = replicas
    return sum(r.process.runtime.counters[name] for r in rs if isinstance(r, Running))


async def test_exactly_one_activation_with_two_replicas_and_redeliveries(start, bus, sessionmaker, clock,
                                                                         nats_url):
    a, b = await start(), await start()
    tenants = []
    for _ in range(6):
        tid, _ = await make_tenant(sessionmaker)
        token, _ = await make_token(sessionmaker, tid, clock)
        tenants.append((tid, AdapterSimulator(nats_url, tid, token, bus=bus)))
    # Every tenant: ChartApplied twice (a duplicate past JetStream dedupe) and a burst of heartbeats,
    # each heartbeat also published twice, all interleaved: both replicas race for every decision.
    sends = []
    for tid, adapter in tenants:
        applied = await chart_applied(bus, tid)
        sends.append(chart_applied(bus, tid, event=applied, msg_id=f"dup-{applied.event_id}"))
        for _ in range(4):
            hb = adapter.heartbeat()
            for copy in range(2):
                sends.append(bus.publish(hb.subject, hb.model_dump_json().encode(), msg_id=f"{hb.event_id}-{copy}",
                                         headers={"Authorization": f"Bearer {adapter.token}"}))
    await asyncio.gather(*sends)
    for tid, _ in tenants:
        await eventually(n_of(lambda tid=tid: emitted(sessionmaker, "TenantActivated", tid), 1),
                         what="TenantActivated")
    await eventually(_probe(lambda: a.accepted("nats")
                            + b.accepted("nats") >= 48), what="all beats handled")
    await eventually(_probe(lambda: _counter(a, b, "processed") >= 6 and _counter(a, b, "duplicates") >= 6),
                     what="each ChartApplied handled once, its copy skipped")
    for tid, _ in tenants:
        assert len(await emitted(sessionmaker, "TenantActivated", tid)) == 1


async def test_concurrent_observations_claim_activation_once(start, bus, sessionmaker, clock, nats_url):
    """The conditional UPDATE, not scheduling luck, makes activation unique: 8 concurrent decisions."""
    a, b = await start(), await start()
    tid, _ = await make_tenant(sessionmaker)
    await chart_applied(bus, tid)
    await eventually(lambda: _chart_recorded(sessionmaker, tid), what="ChartApplied recorded")
    hb = ev.AdapterHeartbeat(tenant_id=tid, adapter_version="1", status="ok")
    await asyncio.gather(*(handlers.observe(hb, clock.now(), r.deps) for r in (a, b) * 4))
    assert len(await emitted(sessionmaker, "TenantActivated", tid)) == 1


# ------------------------------------------------------------------------------------------------
# liveness
# ------------------------------------------------------------------------------------------------


async def test_silence_degrades_and_the_next_heartbeat_recovers(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, adapter = await activate(r, bus, sessionmaker, clock, nats_url)
    adapter.set_component("wazuh", "degraded", "disk 91%")
    await adapter.beat_once()
    await eventually(n_of(lambda: lifecycle(sessionmaker, tid, "ComponentDegraded"), 1), what="component")

    clock.advance(89)  # within 3 × 30 s: nothing happens
    assert await handlers.degrade_silent(r.deps) == 0
    clock.advance(2)
    [degraded] = await eventually(n_of(lambda: emitted(sessionmaker, "TenantDegraded", tid), 1),
                                  what="TenantDegraded")
    assert "3 intervals of 30s" in degraded["reason"]
    assert degraded["last_health"]["components"]["wazuh"] == {"status": "degraded", "message": "disk 91%"}
    assert degraded["last_health"]["last_seen"] == T0.isoformat()
    clock.advance(300)  # still silent: degraded once
    assert await handlers.degrade_silent(r.deps) == 0

    await adapter.beat_once()
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantRecovered", tid), 1), what="TenantRecovered")
    row = await hb_state(sessionmaker, tid)
    assert row is not None and not row.degraded
    await adapter.beat_once()
    await eventually(_probe(lambda: r.accepted("nats") >= 4), what="beats")
    await eventually(lambda: _last_seen_is(sessionmaker, tid, clock.now()), what="flushed")
    assert len(await emitted(sessionmaker, "TenantRecovered", tid)) == 1
    assert len(await emitted(sessionmaker, "TenantDegraded", tid)) == 1


async def _last_seen_is(sessionmaker: Any, tid: uuid.UUID, when: datetime) -> bool:
    row = await hb_state(sessionmaker, tid)
    return row is not None and row.last_seen is not None and abs((row.last_seen - when).total_seconds()) < 1


async def test_silent_tenants_not_active_are_left_alone(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, _ = await activate(r, bus, sessionmaker, clock, nats_url)
    await set_state(sessionmaker, tid, "suspended")
    clock.advance(600)
    assert await handlers.degrade_silent(r.deps) == 0
    assert await emitted(sessionmaker, "TenantDegraded", tid) == []


async def test_decisions_survive_a_restart(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, adapter = await activate(r, bus, sessionmaker, clock, nats_url)
    clock.advance(91)
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantDegraded", tid), 1), what="TenantDegraded")
    await r.shutdown()

    r2 = await start()  # a new process: no views, no cache
    await adapter.beat_once()
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantRecovered", tid), 1), what="TenantRecovered")
    assert len(await emitted(sessionmaker, "TenantActivated", tid)) == 1
    assert r2.metric("soctalk_heartbeat_transitions_total", kind="activated") == 0


async def test_component_changes_reach_the_lifecycle_stream_once(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, adapter = await activate(r, bus, sessionmaker, clock, nats_url)
    adapter.set_component("cortex", "down", "analyzer queue stuck")
    for _ in range(3):
        await adapter.beat_once()
    [event] = await eventually(n_of(lambda: lifecycle(sessionmaker, tid, "ComponentDegraded"), 1),
                               what="ComponentDegraded")
    assert event.details == {"component": "cortex", "from": "ok", "to": "down", "message": "analyzer queue stuck"}
    assert event.step == "heartbeat" and event.slug is not None
    adapter.set_component("cortex", "ok")
    await adapter.beat_once()
    await eventually(n_of(lambda: lifecycle(sessionmaker, tid, "ComponentRecovered"), 1), what="recovered")
    await eventually(_probe(lambda: r.accepted("nats") >= 5), what="beats")
    assert len(await lifecycle(sessionmaker, tid, "ComponentDegraded")) == 1
    assert len(await emitted(sessionmaker, "TenantLifecycleEvent", tid)) == 2  # mirrored on the stream


async def test_steady_heartbeats_cost_no_transaction_and_are_flushed_in_batches(start, bus, sessionmaker, clock,
                                                                                nats_url):
    r = await start()
    tenants = [await activate(r, bus, sessionmaker, clock, nats_url) for _ in range(5)]
    tx_before = r.metric("soctalk_heartbeat_transactions_total")
    clock.advance(30)
    for _ in range(4):
        await asyncio.gather(*(adapter.beat_once() for _, adapter in tenants))
    await eventually(_probe(lambda: r.accepted("nats") >= 25), what="beats")
    for tid, _ in tenants:
        await eventually(lambda tid=tid: _last_seen_is(sessionmaker, tid, clock.now()), what="last_seen")
    assert r.metric("soctalk_heartbeat_transactions_total") == tx_before  # no per-heartbeat transaction
    # The flush counts its rows once its statement returned, just after the commit the probe above saw.
    await eventually(_probe(lambda: r.metric("soctalk_heartbeat_flushed_rows_total") >= 5), what="flushed rows")
    tenant = await tenant_row(sessionmaker, tenants[0][0])  # 30 s after activation: the tenant row is due
    assert tenant.last_heartbeat_at is not None and abs((tenant.last_heartbeat_at - clock.now()).total_seconds()) < 1


async def test_the_tenant_row_follows_at_most_once_per_touch_interval_and_at_every_state_change(
        start, bus, sessionmaker, clock, nats_url):
    """heartbeat_state.last_seen follows every heartbeat; tenants.last_heartbeat_at (the API's) only
    when the value this process last wrote is heartbeat_tenant_touch_s (30 s) old, or with a state
    change (its transaction writes both)."""
    r = await start()
    assert r.deps.touches.every_s == 30.0
    tid, adapter = await activate(r, bus, sessionmaker, clock, nats_url)  # activation at T0
    assert (await tenant_row(sessionmaker, tid)).last_heartbeat_at == T0
    tx_before = r.metric("soctalk_heartbeat_transactions_total")
    for advance in (10, 19):  # T0+10, T0+29: last_seen moves, the tenant row keeps T0
        clock.advance(advance)
        await adapter.beat_once()
        await eventually(lambda: _last_seen_exactly(sessionmaker, tid, clock.now()), what="last_seen")
        # One statement writes both rows: once last_seen is visible, a tenant write would be too.
        assert (await tenant_row(sessionmaker, tid)).last_heartbeat_at == T0
    clock.advance(1)  # T0+30: 30 s after the value written → the flush writes the tenant row too
    await adapter.beat_once()
    await eventually(lambda: _last_seen_exactly(sessionmaker, tid, clock.now()), what="last_seen")
    tenant = await tenant_row(sessionmaker, tid)
    assert tenant.last_heartbeat_at == T0 + timedelta(seconds=30)
    assert tenant.last_health is not None and tenant.last_health["status"] == "ok"
    assert r.metric("soctalk_heartbeat_transactions_total") == tx_before  # all of it on the flush
    clock.advance(5)  # a component change (a decision) writes the tenant row at once, in its transaction
    adapter.set_component("cortex", "down", "analyzer queue stuck")
    await adapter.beat_once()
    await eventually(n_of(lambda: lifecycle(sessionmaker, tid, "ComponentDegraded"), 1), what="ComponentDegraded")
    assert (await tenant_row(sessionmaker, tid)).last_heartbeat_at == T0 + timedelta(seconds=35)
    clock.advance(10)  # back to steady: the next refresh of the tenant row is due 30 s after T0+35
    adapter.set_component("cortex", "ok")
    await adapter.beat_once()
    await eventually(n_of(lambda: lifecycle(sessionmaker, tid, "ComponentRecovered"), 1), what="recovered")
    clock.advance(10)  # T0+55
    await adapter.beat_once()
    await eventually(lambda: _last_seen_exactly(sessionmaker, tid, clock.now()), what="last_seen")
    assert (await tenant_row(sessionmaker, tid)).last_heartbeat_at == T0 + timedelta(seconds=45)


async def _last_seen_exactly(sessionmaker: Any, tid: uuid.UUID, when: datetime) -> bool:
    row = await hb_state(sessionmaker, tid)
    return row is not None and row.last_seen == when


async def test_a_degradation_decided_by_another_replica_is_recovered_through_the_flush(
        start, bus, sessionmaker, clock, nats_url):
    a = await start()
    tid, adapter = await activate(a, bus, sessionmaker, clock, nats_url)
    await adapter.beat_once()
    await eventually(_probe(lambda: a.deps.views.fast_path(tid, {"wazuh": "ok", "thehive": "ok", "cortex": "ok"})),
                     what="a fast-path view")
    # Another replica marks the tenant degraded; this replica's view still says healthy.
    async with sessionmaker() as s, s.begin():
        await s.execute(update(m.HeartbeatState).where(m.HeartbeatState.tenant_id == tid).values(degraded=True))
    clock.advance(30)
    await adapter.beat_once()
    await eventually(n_of(lambda: emitted(sessionmaker, "TenantRecovered", tid), 1), what="TenantRecovered")


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------


async def _publish(bus: Bus, tenant_id: uuid.UUID, token: str | None, body: bytes | None = None) -> None:
    hb = ev.AdapterHeartbeat(tenant_id=tenant_id, adapter_version="1", status="ok")
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    await bus.publish(hb.subject, body if body is not None else hb.model_dump_json().encode(),
                      msg_id=str(uuid.uuid4()), headers=headers)


async def test_bad_heartbeats_are_refused_with_their_reason(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    with structlog.testing.capture_logs() as logs:
        tokens = await _refusals(r, bus, sessionmaker, clock)
    refusals = [e for e in logs if e["event"] == "heartbeat.refused"]
    assert {e["reason"] for e in refusals} >= {"bad_secret", "revoked", "expired", "wrong_tenant", "unknown_tenant"}
    assert all(e["token_prefix"] is None or len(e["token_prefix"]) == 12 for e in refusals)
    for t in tokens:  # logged by public prefix only, never the token
        assert t not in repr(logs)


async def _refusals(r: Running, bus: Bus, sessionmaker: Any, clock: FakeClock) -> list[str]:
    tid, _ = await make_tenant(sessionmaker)
    other, _ = await make_tenant(sessionmaker)
    gone, _ = await make_tenant(sessionmaker, state="decommissioned")
    good, prefix = await make_token(sessionmaker, tid, clock)
    expired, _ = await make_token(sessionmaker, tid, clock, expires_at=clock.now() - timedelta(seconds=1))
    revoked, _ = await make_token(sessionmaker, tid, clock, revoked_at=clock.now() - timedelta(seconds=1))
    gone_token, _ = await make_token(sessionmaker, gone, clock)
    ghost = uuid.uuid4()  # a token whose tenant row does not exist
    ghost_token, rec = new_token_record(ghost, KEY.encode(), clock.now())
    async with sessionmaker() as s, s.begin():
        s.add(m.AdapterToken(prefix=rec.prefix, tenant_id=ghost, token_hash=rec.token_hash, version_label="v1"))
    forged = good[:-6] + ("ZZZZZZ" if not good.endswith("ZZZZZZ") else "YYYYYY")
    unknown, _ = new_token_record(tid, KEY.encode(), clock.now())  # minted, never stored

    cases = [
        (tid, forged, "bad_secret"),
        (tid, unknown, "unknown_prefix"),
        (tid, "sta_not-a-token", "malformed"),
        (tid, None, "missing_token"),
        (tid, expired, "expired"),
        (tid, revoked, "revoked"),
        (other, good, "wrong_tenant"),  # tenant A's token on tenant B's subject
        (gone, gone_token, "tenant_inactive"),
        (ghost, ghost_token, "unknown_tenant"),
    ]
    for subject_tenant, token, _ in cases:
        await _publish(bus, subject_tenant, token)
    for _, _, reason in cases:
        await eventually(_probe(lambda reason=reason: r.refused(reason) >= 1), what=f"refused: {reason}")
    for t in (tid, other, gone):
        assert await hb_state(sessionmaker, t) is None
    assert r.accepted("nats") == 0
    # Payload tenant ≠ subject tenant, with a valid token for the subject: refused too.
    body = ev.AdapterHeartbeat(tenant_id=other, adapter_version="1", status="ok").model_dump_json().encode()
    await _publish(bus, tid, good, body)
    await eventually(_probe(lambda: r.refused("wrong_tenant") >= 2), what="payload tenant mismatch refused")

    metrics = await _get(r, "/metrics")
    assert 'soctalk_heartbeat_refused_total{reason="revoked"} 1.0' in metrics
    tokens = [good, forged, expired, revoked, gone_token, ghost_token]
    for t in tokens:
        assert t not in metrics
    return tokens


async def test_malformed_payloads_are_refused_and_the_consumer_goes_on(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    await _publish(bus, tid, token, b"{not json")
    await _publish(bus, tid, token, json.dumps({"event_type": "AdapterHeartbeat", "tenant_id": str(tid),
                                                "status": "exploded"}).encode())
    await _publish(bus, tid, token, json.dumps([1, 2, 3]).encode())
    await _publish(bus, tid, token, b"x" * (70 * 1024))
    await AdapterSimulator(nats_url, tid, token, bus=bus).beat_once()
    await eventually(_probe(lambda: r.refused("invalid_payload") >= 3), what="invalid payloads refused")
    await eventually(_probe(lambda: r.refused("too_large") >= 1), what="oversized payload refused")
    await eventually(lambda: _first_seen(sessionmaker, tid), what="the valid heartbeat after the poison")


async def test_revocation_takes_effect_within_a_refresh(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tid, adapter = await activate(r, bus, sessionmaker, clock, nats_url)
    prefix = adapter.token.split("_")[1]
    assert r.deps.tokens.record(prefix) is not None  # cached: no query per heartbeat
    async with sessionmaker() as s, s.begin():
        await s.execute(update(m.AdapterToken).where(m.AdapterToken.prefix == prefix)
                        .values(revoked_at=clock.now()))
    loop = asyncio.get_running_loop()
    t = loop.time()
    # Evicted by the NOTIFY at once (or, with the LISTEN connection down, reloaded by the refresh).
    await eventually(_probe(lambda: (rec := r.deps.tokens.record(prefix)) is None or rec.revoked_at is not None),
                     timeout=3, what="the cache to see the revocation")
    assert loop.time() - t < 2.0
    await adapter.beat_once()
    await eventually(_probe(lambda: r.refused("revoked") >= 1), what="revoked token refused")


async def test_a_heartbeat_that_waited_longer_than_the_window_proves_nothing(start, sessionmaker, clock):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    body = ev.AdapterHeartbeat(tenant_id=tid, adapter_version="1", status="ok").model_dump_json().encode()
    intake = Intake(r.deps)
    old, fresh = await intake.verify([Incoming(str(tid), f"Bearer {token}", body, age_s=95.0),
                                      Incoming(str(tid), f"Bearer {token}", body, age_s=2.0)])
    assert old.stale and not old.accepted and old.reason is None  # acked, ignored, not a refusal
    assert fresh.accepted and fresh.seen_at == clock.now()
    assert await intake.apply([old]) == set()
    assert await hb_state(sessionmaker, tid) is None


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------


async def _get(r: Running, path: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{r.process.bound_port}{path}") as resp:
        return await resp.text()


async def _post(r: Running, tenant: str, token: str | None, body: Any) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = f"http://127.0.0.1:{r.process.bound_port}/v1/heartbeat/{tenant}"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def test_http_endpoint_accepts_a_valid_heartbeat(start, bus, sessionmaker, clock):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    await chart_applied(bus, tid)
    await eventually(lambda: _chart_recorded(sessionmaker, tid), what="ChartApplied recorded")
    body = {"adapter_version": "3.0.0", "status": "ok", "components": {"wazuh": {"status": "ok"}}}
    status, text, _ = await _post(r, str(tid), token, body)
    assert status == 202, text
    [activated] = await emitted(sessionmaker, "TenantActivated", tid)
    assert activated["adapter_version"] == "3.0.0"
    assert r.accepted("http") == 1


async def test_http_endpoint_refuses_bad_tokens_without_echoing_them(start, sessionmaker, clock):
    r = await start()
    tid, _ = await make_tenant(sessionmaker)
    other, _ = await make_tenant(sessionmaker)
    token, _ = await make_token(sessionmaker, tid, clock)
    forged = token[:-6] + ("ZZZZZZ" if not token.endswith("ZZZZZZ") else "YYYYYY")
    body = {"adapter_version": "1", "status": "ok"}

    status, text, headers = await _post(r, str(tid), forged, body)
    assert status == 401 and forged not in text and "Bearer" in headers.get("WWW-Authenticate", "")
    assert json.loads(text) == {"error": "unauthorized"}
    status, text, _ = await _post(r, str(tid), None, body)
    assert status == 401
    status, text, _ = await _post(r, str(other), token, body)  # another tenant's URL
    assert status == 403 and token not in text
    status, text, _ = await _post(r, str(tid), token, {"adapter_version": "1", "status": "exploded"})
    assert status == 400 and "status" in json.loads(text)["fields"]
    status, text, _ = await _post(r, "not-a-uuid", token, body)
    assert status == 403
    assert r.refused("bad_secret") == 1 and r.refused("missing_token") == 1 and r.refused("wrong_tenant") == 2
    assert await hb_state(sessionmaker, tid) is None


# ------------------------------------------------------------------------------------------------
# token cache
# ------------------------------------------------------------------------------------------------


async def test_token_cache_loads_a_batch_in_one_query_and_bounds_forged_prefixes(sessionmaker, clock):
    from soctalk_heartbeat.tokens import TokenCache

    tenants = [(await make_tenant(sessionmaker))[0] for _ in range(3)]
    prefixes = [(await make_token(sessionmaker, t, clock))[1] for t in tenants]
    forged = [f"forged{i:06d}" for i in range(5)]
    cache = TokenCache(sessionmaker, max_age_s=60, max_unknown=3)

    await cache.ensure([*prefixes, *forged[:2]])
    assert cache.loads == 2  # one for the tokens, one for their tenants
    assert all(cache.record(p) is not None for p in prefixes)
    assert [cache.tenant(str(t)) for t in tenants] == [(True, "provisioning")] * 3
    await cache.ensure(forged[2:])
    assert cache.loads == 3
    assert cache.record(forged[0]) is None and set(cache._unknown) == set(forged[2:])  # oldest dropped

    await cache.ensure([*prefixes, *forged[2:]])  # all fresh: memory only
    assert cache.loads == 3
    await cache.refresh()  # reloads known tokens and tenants, never the forged prefixes
    assert cache.loads == 5
    await set_state(sessionmaker, tenants[0], "decommissioned")
    await cache.refresh()
    assert cache.tenant(str(tenants[0])) == (True, "decommissioned")


async def test_the_token_cache_keeps_unchanged_records_and_replaces_changed_ones(sessionmaker, clock):
    from soctalk_heartbeat.tokens import TokenCache

    tid, _ = await make_tenant(sessionmaker)
    _, prefix = await make_token(sessionmaker, tid, clock)
    cache = TokenCache(sessionmaker, max_age_s=60)
    await cache.ensure([prefix])
    rec = cache.record(prefix)
    await cache.refresh()
    assert cache.record(prefix) is rec  # same row: the same object, nothing allocated per refresh
    async with sessionmaker() as s, s.begin():
        await s.execute(update(m.AdapterToken).where(m.AdapterToken.prefix == prefix).values(revoked_at=clock.now()))
    await cache.refresh()
    fresh = cache.record(prefix)
    assert fresh is not rec and fresh is not None and fresh.revoked_at == clock.now()


# ------------------------------------------------------------------------------------------------
# restart and overload
# ------------------------------------------------------------------------------------------------


async def test_after_a_restart_healthy_tenants_take_no_transaction(start, bus, sessionmaker, clock, nats_url):
    r = await start()
    tenants = [await activate(r, bus, sessionmaker, clock, nats_url) for _ in range(3)]
    await r.shutdown()

    r2 = await start()  # no views: they come from the durable flags, one query for the batch
    clock.advance(30)
    await asyncio.gather(*(adapter.beat_once() for _, adapter in tenants))
    for tid, _ in tenants:
        await eventually(lambda tid=tid: _last_seen_is(sessionmaker, tid, clock.now()), what="last_seen")
    assert r2.metric("soctalk_heartbeat_transactions_total") == 0
    assert len(r2.deps.views) == 3


async def test_a_burst_beyond_the_pending_bound_is_dropped_and_counted(start, bus, sessionmaker, clock, nats_url):
    from soctalk_heartbeat.consumer import QUEUE, SUBJECT, _Batcher

    # The subscription alone (nothing takes from it), on the real server, with a small bound.
    drops: list[int] = []
    sub = await _Batcher(bus.nc, SUBJECT, QUEUE, max_msgs=20, max_bytes=1_000_000,
                         on_drop=lambda: drops.append(1)).start()
    try:
        tid = uuid.uuid4()
        body = ev.AdapterHeartbeat(tenant_id=tid, adapter_version="1", status="ok").model_dump_json().encode()
        publisher = await Bus.connect(nats_url)
        for _ in range(50):
            await publisher.nc.publish(f"soctalk.adapter.{tid}.heartbeat", body)
        await publisher.nc.flush()
        await eventually(_probe(lambda: len(sub) + sub.dropped == 50), what="every message received or dropped")
        assert len(sub) == 20 and sub.dropped == 30 == len(drops)
        assert len(await sub.fetch(100, 0.01)) == 20 and len(sub) == 0
        await publisher.close()
    finally:
        await sub.unsubscribe()


async def test_drops_are_counted_in_the_service_metrics_and_logged_once(start, bus, sessionmaker, clock, nats_url):
    r = await start(max_pending_msgs=5)
    consumer_task = next(t for t in r.process.tasks if t.name == "heartbeat-consumer")
    consumer = consumer_task.fn.__self__  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            consumer._dropped()
    assert r.metric("soctalk_heartbeat_dropped_total") == 3
    dropped_lines = [e for e in logs if e["event"] == "heartbeat.dropped"]
    assert len(dropped_lines) == 1 and dropped_lines[0]["max_pending_msgs"] == 5
