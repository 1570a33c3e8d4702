"""SQL on ``heartbeat_state`` (and the heartbeat columns of ``tenants``): the durable facts.

Every decision that emits an event is *claimed* with a conditional UPDATE ... RETURNING inside the
caller's transaction, so two replicas (or a redelivery) deciding the same thing produce one effect:

* :func:`claim_activation` sets ``activated_event_id`` only while it is NULL;
* :func:`claim_degraded` flips ``degraded`` only while the tenant is still silent and not degraded;
* :func:`claim_recovery` flips it back only while it is set.

``tenants.last_heartbeat_at``/``last_health`` (what the API and CLI show) follow ``heartbeat_state``
at a coarser grain: :func:`touch` (the transactional path: activation, recovery, component changes)
writes them always; :func:`flush_last_seen` only for the entries its caller marks (at most once per
``heartbeat_tenant_touch_s`` per tenant, 30 s by default). ``heartbeat_state.last_seen`` is written for
every heartbeat and is the only one liveness reads.

Lock order, everywhere: the ``tenants`` row first, then ``heartbeat_state``. :func:`flush_last_seen`
skips tenant rows someone else holds (``SKIP LOCKED``) and the caller keeps those for the next flush,
so the batched refresh never waits on, or deadlocks with, a state-changing transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWork
from sqlalchemy import String, any_, bindparam, case, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_heartbeat.domain import Snapshot, component_statuses

HS = m.HeartbeatState


@dataclass(frozen=True)
class StateRow:
    snapshot: Snapshot
    chart_correlation_id: uuid.UUID | None
    last_health: dict[str, Any] | None = None


async def load(tx: UnitOfWork, tenant_id: uuid.UUID, *, create: bool = True) -> StateRow:
    """The tenant's heartbeat row, locked for this transaction (created empty when ``create``)."""
    if create:
        await tx.session.execute(pg_insert(HS).values(tenant_id=tenant_id).on_conflict_do_nothing())
    stmt = select(HS).where(HS.tenant_id == tenant_id).with_for_update()
    row = (await tx.session.execute(stmt)).scalar_one_or_none()
    if row is None:
        return StateRow(Snapshot(), None, None)
    snap = Snapshot(chart_applied=row.chart_applied_at is not None,
                    activated=row.activated_event_id is not None, degraded=row.degraded,
                    last_seen=row.last_seen, components=row.components)
    return StateRow(snap, row.chart_correlation_id, row.last_health)


async def touch(tx: UnitOfWork, tenant_id: uuid.UUID, seen_at: datetime, health: dict[str, Any]) -> None:
    """Record a valid heartbeat: first sighting (kept), last seen, health and the component baseline
    (health only if this heartbeat is the newest seen; the baseline always, as it was just compared)."""
    newer = (HS.last_seen.is_(None)) | (HS.last_seen <= seen_at)
    await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id).values(
            first_heartbeat_at=func.coalesce(HS.first_heartbeat_at, seen_at),
            last_seen=func.greatest(func.coalesce(HS.last_seen, seen_at), seen_at),
            last_health=case((newer, literal(health, JSONB)), else_=HS.last_health),
            components=component_statuses(health),
        )
    )
    tenant_newer = (m.Tenant.last_heartbeat_at.is_(None)) | (m.Tenant.last_heartbeat_at <= seen_at)
    await tx.session.execute(
        update(m.Tenant).where(m.Tenant.id == tenant_id, tenant_newer)
        .values(last_heartbeat_at=seen_at, last_health=health)
    )


async def mark_tenant_activated(tx: UnitOfWork, tenant_id: uuid.UUID, at: datetime) -> None:
    """``tenants.activated_at`` (a plain UPDATE: the row's version counter belongs to the provisioner)."""
    await tx.session.execute(update(m.Tenant).where(m.Tenant.id == tenant_id).values(activated_at=at))


async def record_chart_applied(tx: UnitOfWork, tenant_id: uuid.UUID, at: datetime,
                               correlation_id: uuid.UUID) -> None:
    """Remember the first ChartApplied(install) (a redelivery or a later re-install keeps the first)."""
    stmt = pg_insert(HS).values(tenant_id=tenant_id, chart_applied_at=at, chart_correlation_id=correlation_id)
    await tx.session.execute(stmt.on_conflict_do_update(
        index_elements=[HS.tenant_id],
        set_={
            "chart_applied_at": func.coalesce(HS.chart_applied_at, stmt.excluded.chart_applied_at),
            "chart_correlation_id": func.coalesce(HS.chart_correlation_id,
                                                  stmt.excluded.chart_correlation_id),
        },
    ))


async def claim_activation(tx: UnitOfWork, tenant_id: uuid.UUID, event_id: uuid.UUID, at: datetime) -> bool:
    res = await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id, HS.activated_event_id.is_(None),
                         HS.chart_applied_at.is_not(None), HS.first_heartbeat_at.is_not(None))
        .values(activated_event_id=event_id, activated_at=at).returning(HS.tenant_id)
    )
    return res.first() is not None


async def claim_recovery(tx: UnitOfWork, tenant_id: uuid.UUID) -> bool:
    res = await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id, HS.degraded.is_(True))
        .values(degraded=False, degraded_at=None).returning(HS.tenant_id)
    )
    return res.first() is not None


async def claim_degraded(tx: UnitOfWork, tenant_id: uuid.UUID, cutoff: datetime,
                         at: datetime) -> tuple[datetime | None, dict[str, Any] | None] | None:
    """Mark a silent, activated tenant degraded; ``(last_seen, last_health)`` if this call did it."""
    res = await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id, HS.degraded.is_(False),
                         HS.activated_event_id.is_not(None), HS.last_seen < cutoff)
        .values(degraded=True, degraded_at=at).returning(HS.last_seen, HS.last_health)
    )
    row = res.first()
    return None if row is None else (row.last_seen, row.last_health)


async def view_flags(sessionmaker: async_sessionmaker[AsyncSession], tenant_ids: Sequence[uuid.UUID]
                     ) -> list[tuple[uuid.UUID, bool, bool, dict[str, str]]]:
    """``(tenant, activated, degraded, component statuses)`` of the tenants that have a heartbeat row,
    in one query: what a view needs (tenants without a row are left out: their first heartbeat takes
    the transactional path)."""
    stmt = select(HS.tenant_id, HS.activated_event_id.is_not(None), HS.degraded, HS.components).where(
        HS.tenant_id == any_(bindparam("t", list(tenant_ids), type_=ARRAY(PG_UUID(as_uuid=True)))))
    async with sessionmaker() as s:
        rows = (await s.execute(stmt)).all()
    return [(r[0], bool(r[1]), bool(r[2]), dict(r[3] or {})) for r in rows]


async def silent_candidates(sessionmaker: async_sessionmaker[AsyncSession], cutoff: datetime,
                            states: Sequence[str], limit: int) -> list[uuid.UUID]:
    """Activated, not-degraded tenants in a liveness state whose last heartbeat is older than ``cutoff``."""
    stmt = (
        select(HS.tenant_id).join(m.Tenant, m.Tenant.id == HS.tenant_id)
        .where(HS.activated_event_id.is_not(None), HS.degraded.is_(False), HS.last_seen < cutoff,
               m.Tenant.state == any_(bindparam("states", list(states), type_=ARRAY(String))))
        .order_by(HS.last_seen).limit(limit)
    )
    async with sessionmaker() as s:
        return list((await s.execute(stmt)).scalars())


_FLUSH = text("""
WITH v AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:seen AS timestamptz[]), CAST(:health AS text[]),
                         CAST(:comps AS text[]), CAST(:touch AS boolean[])) AS v(tenant_id, seen, health, comps, touch)
), lk AS (
    SELECT t.id FROM tenants t WHERE t.id IN (SELECT tenant_id FROM v) ORDER BY t.id FOR UPDATE SKIP LOCKED
), tu AS (
    UPDATE tenants t SET last_heartbeat_at = v.seen, last_health = CAST(v.health AS jsonb)
    FROM v WHERE t.id = v.tenant_id AND v.touch AND t.id IN (SELECT id FROM lk)
      AND (t.last_heartbeat_at IS NULL OR t.last_heartbeat_at < v.seen)
    RETURNING t.id
), hu AS (
    UPDATE heartbeat_state hs SET last_seen = v.seen, last_health = CAST(v.health AS jsonb)
    FROM v WHERE hs.tenant_id = v.tenant_id AND hs.tenant_id IN (SELECT id FROM lk)
      AND (hs.last_seen IS NULL OR hs.last_seen < v.seen)
    RETURNING hs.tenant_id, hs.degraded, hs.activated_event_id IS NOT NULL AS activated,
              hs.components IS DISTINCT FROM CAST(v.comps AS jsonb) AS changed
)
SELECT lk.id, hu.degraded, hu.activated, hu.changed FROM lk LEFT JOIN hu ON hu.tenant_id = lk.id
""")


@dataclass(frozen=True)
class Flushed:
    """Per tenant the flush could lock: its durable flags (None when a newer write won or no row).

    ``components_changed``: the component statuses differ from the recorded baseline — another
    replica's view was stale; the caller runs the transactional path to record the change.
    """

    degraded: bool | None
    activated: bool | None
    components_changed: bool | None


#: ``(tenant, seen_at, health, touch)``: ``touch`` — also refresh ``tenants.last_heartbeat_at``/``last_health``.
FlushEntry = tuple[uuid.UUID, datetime, dict[str, Any], bool]


async def flush_last_seen(sessionmaker: async_sessionmaker[AsyncSession],
                          entries: Iterable[FlushEntry]) -> dict[uuid.UUID, Flushed]:
    """One statement, one transaction: refresh ``last_seen``/``last_health`` (and, for the entries
    marked ``touch``, the tenant's ``last_heartbeat_at``/``last_health``) for many tenants, only where
    strictly newer than what is recorded (a transactional write of a later heartbeat always wins over
    a buffered older one).
    Returns the tenants it locked; the caller keeps the others (locked by a state change right now)
    for the next flush."""
    ids: list[uuid.UUID] = []
    seen: list[datetime] = []
    health: list[str] = []
    comps: list[str] = []
    touch: list[bool] = []
    for tenant_id, seen_at, h, t in entries:  # one pass: each health dict is serialised and dropped
        ids.append(tenant_id)
        seen.append(seen_at)
        health.append(json.dumps(h))
        comps.append(json.dumps(component_statuses(h)))
        touch.append(t)
    if not ids:
        return {}
    params = {"ids": ids, "seen": seen, "health": health, "comps": comps, "touch": touch}
    async with sessionmaker() as s, s.begin():
        rows = (await s.execute(_FLUSH, params)).all()
    return {r.id: Flushed(r.degraded, r.activated, r.changed) for r in rows}

