"""The heartbeat service's steps: small async functions, each one transaction, each decision claimed.

* :func:`on_chart_applied` — ServiceRuntime route (inbox row, retries, DLQ as for every service).
* :func:`observe` — the state-changing path for one valid heartbeat: activation, recovery,
  component changes. Called only when the in-memory view says something may change.
* :func:`flush` — the batched ``last_seen`` refresh; hands tenants whose durable flags disagree with
  the view back to :func:`observe`. It refreshes ``tenants.last_heartbeat_at``/``last_health`` (what
  the API shows) only when this process last wrote them ``tenant_touch_s`` (30 s) or more before;
  :func:`observe` (every state change a heartbeat causes) writes them always, in its transaction.
* :func:`degrade_silent` — the liveness sweep.

What callers can rely on: TenantActivated is emitted once per tenant (conditional UPDATE on
``activated_event_id``), TenantDegraded once per silence and TenantRecovered once per degradation
(conditional UPDATEs on ``degraded``), each in the same transaction as its outbox row — a crash loses
no decision and a retry, a redelivery or a second replica repeats none.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from soctalk_common import events as ev
from soctalk_common.clock import Clock
from soctalk_common.errors import PermanentError
from soctalk_common.runtime import Ctx
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory

from soctalk_heartbeat import domain, store
from soctalk_heartbeat.memory import LastSeenBuffer, Pending, TenantTouches, View, Views
from soctalk_heartbeat.metrics import HeartbeatMetrics
from soctalk_heartbeat.tokens import TokenCache

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HeartbeatConfig:
    key: bytes  # the adapter signing key (HMAC); never logged
    interval_s: float = 30.0
    missed_intervals: int = 3
    flush_s: float = 1.0

    @property
    def window(self) -> timedelta:
        return domain.liveness_window(self.interval_s, self.missed_intervals)


@dataclass
class HeartbeatDeps:
    """The service's ports (``ctx.deps`` of its routes, and what its loops share)."""

    config: HeartbeatConfig
    clock: Clock
    uow: UnitOfWorkFactory
    tokens: TokenCache
    metrics: HeartbeatMetrics
    views: Views = field(default_factory=Views)
    buffer: LastSeenBuffer = field(default_factory=LastSeenBuffer)
    #: tenants.last_heartbeat_at written at most once per ``touches.every_s`` (heartbeat_tenant_touch_s)
    touches: TenantTouches = field(default_factory=TenantTouches)


async def on_chart_applied(event: ev.ChartApplied, ctx: Ctx[HeartbeatDeps]) -> None:
    """Record that the tenant's chart is installed; activate if its adapter is already heartbeating."""
    if event.operation != "install":
        return
    deps = ctx.deps
    now = deps.clock.now()
    async with ctx.uow() as tx:
        if await tx.tenant(event.tenant_id) is None:
            raise PermanentError(f"ChartApplied for unknown tenant {event.tenant_id}")
        await store.record_chart_applied(tx, event.tenant_id, now, event.correlation_id)
        row = await store.load(tx, event.tenant_id, create=False)
        activated = False
        if domain.on_chart_applied(row.snapshot, now, deps.config.window):
            version = str((row.last_health or {}).get("adapter_version", ""))
            activated = await _activate(tx, event, row, version, now)
        await tx.commit()
    if activated:
        deps.metrics.transitions.labels("activated").inc()
        deps.views.forget(event.tenant_id)  # the next heartbeat re-reads the durable flags


async def observe(hb: ev.AdapterHeartbeat, seen_at: datetime, deps: HeartbeatDeps) -> None:
    """Record one valid heartbeat transactionally and claim whatever it decides."""
    health = domain.health_of(hb)
    now = deps.clock.now()
    async with deps.uow() as tx:
        tenant = await tx.tenant(hb.tenant_id)
        if tenant is None:  # purged since its token was checked
            return
        row = await store.load(tx, hb.tenant_id)
        out = domain.on_heartbeat(row.snapshot, health)
        await store.touch(tx, hb.tenant_id, seen_at, health)
        newly_activated = out.activate and await _activate(tx, hb, row, hb.adapter_version, now)
        activated = row.snapshot.activated or newly_activated
        recovered = out.recover and await store.claim_recovery(tx, hb.tenant_id)
        if recovered:
            tx.emit(hb.caused(ev.TenantRecovered))
        for c in out.changes:
            tx.lifecycle(hb, c.lifecycle_type, slug=tenant.slug, step="heartbeat",
                         message=f"{c.component}: {c.before or 'unknown'} -> {c.after}",
                         details={"component": c.component, "from": c.before, "to": c.after,
                                  "message": c.message})
        await tx.commit()
    deps.metrics.transactions.inc()
    deps.touches.wrote(hb.tenant_id, seen_at)  # store.touch wrote the tenant row too
    deps.buffer.drop_not_newer(hb.tenant_id, seen_at)
    for kind, happened in (("activated", newly_activated), ("recovered", recovered)):
        if happened:
            deps.metrics.transitions.labels(kind).inc()
    if out.changes:
        deps.metrics.transitions.labels("component").inc(len(out.changes))
    deps.views.set(hb.tenant_id, View(activated=activated, degraded=False,
                                      components=domain.component_statuses(health)))


async def _activate(tx: UnitOfWork, cause: ev.Event, row: store.StateRow, adapter_version: str,
                    now: datetime) -> bool:
    """Claim activation; on success emit TenantActivated (continuing the provisioning correlation)."""
    event_id = uuid.uuid4()
    if not await store.claim_activation(tx, cause.tenant_id, event_id, now):
        return False
    tx.emit(ev.TenantActivated(event_id=event_id, tenant_id=cause.tenant_id, causation_id=cause.event_id,
                               correlation_id=row.chart_correlation_id or cause.correlation_id,
                               adapter_version=adapter_version))
    await store.mark_tenant_activated(tx, cause.tenant_id, now)
    log.info("tenant.activated", tenant_id=str(cause.tenant_id), adapter_version=adapter_version)
    return True


#: Rows per flush statement: after a burst (every tenant at once) the buffer holds one entry per
#: tenant; writing them in slices bounds the memory a flush needs (parameters, results) however
#: many tenants there are.
FLUSH_ROWS = 2_000


async def flush(deps: HeartbeatDeps) -> int:
    """Write buffered ``last_seen`` refreshes, ``FLUSH_ROWS`` per statement; returns rows written."""
    entries = deps.buffer.take()
    if not entries:
        return 0
    items = list(entries.items())
    touches = deps.touches
    written = 0
    for i in range(0, len(items), FLUSH_ROWS):
        chunk = dict(items[i:i + FLUSH_ROWS])
        try:
            # Each buffered body is read here once (it was validated when verified), not kept as a model.
            # The tenant row (last_heartbeat_at, read by the API) only when ours is tenant_touch_s old.
            touch = {t: touches.due(t, p.seen_at) for t, p in chunk.items()}
            rows = ((t, p.seen_at, domain.health_of_body(p.body), touch[t]) for t, p in chunk.items())
            result = await store.flush_last_seen(deps.uow.sessionmaker, rows)
        except BaseException:
            deps.buffer.restore(dict(items[i:]))  # this slice and the rest: next time
            raise
        deps.buffer.restore({t: p for t, p in chunk.items() if t not in result})  # locked: next time
        deps.metrics.flushes.inc()
        deps.metrics.flushed.inc(len(result))
        written += len(result)
        for tenant_id in result:
            if touch[tenant_id]:
                touches.wrote(tenant_id, chunk[tenant_id].seen_at)
        for tenant_id, f in result.items():
            if f.degraded or f.components_changed or f.activated is False:
                deps.views.forget(tenant_id)  # another replica decided something: take the slow path
                await _observe_logged(chunk[tenant_id], deps)
    return written


def _heartbeat(p: Pending) -> ev.AdapterHeartbeat:
    return ev.AdapterHeartbeat.model_validate_json(p.body)


async def _observe_logged(p: Pending, deps: HeartbeatDeps) -> None:
    hb = _heartbeat(p)
    try:
        await observe(hb, p.seen_at, deps)
    except Exception as exc:  # noqa: BLE001 - the view is forgotten, so the next heartbeat retries
        log.warning("heartbeat.observe_failed", tenant_id=str(hb.tenant_id), error=type(exc).__name__)


async def degrade_silent(deps: HeartbeatDeps, *, limit: int = 500) -> int:
    """Mark degraded every active tenant silent for N intervals; returns how many this call marked."""
    await flush(deps)  # our own freshest sightings first
    now = deps.clock.now()
    cutoff = domain.silence_cutoff(now, deps.config.interval_s, deps.config.missed_intervals)
    candidates = await store.silent_candidates(deps.uow.sessionmaker, cutoff, sorted(domain.LIVENESS_STATES),
                                               limit)
    marked = 0
    for tenant_id in candidates:
        if await _degrade_one(tenant_id, now, cutoff, deps):
            marked += 1
        await asyncio.sleep(0)
    return marked


async def _degrade_one(tenant_id: uuid.UUID, now: datetime, cutoff: datetime, deps: HeartbeatDeps) -> bool:
    async with deps.uow() as tx:
        tenant = await tx.tenant(tenant_id)
        if tenant is None or tenant.state not in domain.LIVENESS_STATES:
            return False
        claimed = await store.claim_degraded(tx, tenant_id, cutoff, now)
        if claimed is None:
            return False
        last_seen, last_health = claimed
        cfg = deps.config
        reason = domain.silence_reason(last_seen, now, cfg.interval_s, cfg.missed_intervals)
        seen = last_seen.isoformat() if last_seen else None
        health: dict[str, Any] = {**(last_health or {}), "last_seen": seen}
        tx.emit(ev.TenantDegraded(tenant_id=tenant_id, reason=reason, last_health=health))
        await tx.commit()
    log.warning("tenant.adapter_silent", tenant_id=str(tenant_id), reason=reason)
    deps.views.update(tenant_id, degraded=True)
    deps.metrics.transitions.labels("degraded").inc()
    return True
