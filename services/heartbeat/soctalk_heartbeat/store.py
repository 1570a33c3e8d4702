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

Lock order of every state-changing transaction: the ``tenants`` row first, then ``heartbeat_state``
(``tx.tenant`` then :func:`load` / the ``claim_*`` UPDATEs; a purge deletes the tenant row and the
cascade the other). :func:`flush_last_seen` takes every row lock it needs with ``SKIP LOCKED`` and
writes only rows it holds, so it never waits on, and can be in no deadlock with, anything: see there.
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
# The UPDATEs below run with ``synchronize_session=False``: their callers never read an object the
# session holds after them (``load`` returns plain values; the tenant row is only locked and read for
# unchanged fields), and the ORM's default synchronisation evaluated every WHERE clause in Python
# against the identity map: a third of the service's CPU per activation.


@dataclass(frozen=True)
class StateRow:
    snapshot: Snapshot
    chart_correlation_id: uuid.UUID | None
    last_health: dict[str, Any] | None = None


async def load(tx: UnitOfWork, tenant_id: uuid.UUID, *, create: bool = True) -> StateRow:
    """The tenant's heartbeat row, locked for this transaction (created empty when ``create``)."""
    if create:
        await tx.session.execute(pg_insert(HS).values(tenant_id=tenant_id).on_conflict_do_nothing())
    # Columns, not the ORM entity: nothing here is written back through the session (every write is
    # a statement of its own), and loading an entity into the identity map costs several times more.
    stmt = select(HS.chart_applied_at, HS.activated_event_id, HS.degraded, HS.last_seen, HS.components,
                  HS.chart_correlation_id, HS.last_health).where(HS.tenant_id == tenant_id).with_for_update()
    row = (await tx.session.execute(stmt)).first()
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
        ).execution_options(synchronize_session=False)
    )
    tenant_newer = (m.Tenant.last_heartbeat_at.is_(None)) | (m.Tenant.last_heartbeat_at <= seen_at)
    await tx.session.execute(
        update(m.Tenant).where(m.Tenant.id == tenant_id, tenant_newer)
        .values(last_heartbeat_at=seen_at, last_health=health).execution_options(synchronize_session=False)
    )


async def mark_tenant_activated(tx: UnitOfWork, tenant_id: uuid.UUID, at: datetime) -> None:
    """``tenants.activated_at`` (a plain UPDATE: the row's version counter belongs to the provisioner)."""
    await tx.session.execute(update(m.Tenant).where(m.Tenant.id == tenant_id).values(activated_at=at)
                             .execution_options(synchronize_session=False))


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
        .execution_options(synchronize_session=False)
    )
    return res.first() is not None


async def claim_recovery(tx: UnitOfWork, tenant_id: uuid.UUID) -> bool:
    res = await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id, HS.degraded.is_(True))
        .values(degraded=False, degraded_at=None).returning(HS.tenant_id).execution_options(synchronize_session=False)
    )
    return res.first() is not None


async def claim_degraded(tx: UnitOfWork, tenant_id: uuid.UUID, cutoff: datetime,
                         at: datetime) -> tuple[datetime | None, dict[str, Any] | None] | None:
    """Mark a silent, activated tenant degraded; ``(last_seen, last_health)`` if this call did it."""
    res = await tx.session.execute(
        update(HS).where(HS.tenant_id == tenant_id, HS.degraded.is_(False),
                         HS.activated_event_id.is_not(None), HS.last_seen < cutoff)
        .values(degraded=True, degraded_at=at).returning(HS.last_seen, HS.last_health)
        .execution_options(synchronize_session=False)
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
    """Activated, not-degraded tenants in a liveness state whose last heartbeat is older than ``cutoff``.

    A sequential scan of heartbeat_state (no index on ``last_seen``: it would make every flushed
    update a non-HOT one, see migration 0007). EXPLAIN ANALYZE: ~2 ms at 10,000 rows, ~35-45 ms at
    100,000 (a parallel scan), once per liveness period (<= 10 s)."""
    stmt = (
        select(HS.tenant_id).join(m.Tenant, m.Tenant.id == HS.tenant_id)
        .where(HS.activated_event_id.is_not(None), HS.degraded.is_(False), HS.last_seen < cutoff,
               m.Tenant.state == any_(bindparam("states", list(states), type_=ARRAY(String))))
        .order_by(HS.last_seen).limit(limit)
    )
    async with sessionmaker() as s:
        return list((await s.execute(stmt)).scalars())


# The batched refresh (see flush_last_seen). Each step joins one table on its primary key, driven by
# the previous step, and no two CTEs are joined together: the plan stays linear in the batch whatever
# the estimates. (Before: ``IN (SELECT id FROM lk)`` on CTEs; once the plan cache switched to the
# generic plan — after 5 executions on a connection, unnest() estimated at 10 rows — that was a
# nested-loop semi join over the CTE, ~2,000² comparisons per 2,000-row statement: ~330 µs of
# Postgres CPU per row, against ~25 µs now.)
#   lt: touch entries whose tenant row we could lock (the tenant row first, as everywhere);
#   lh: heartbeat_state rows we could lock: every non-touch entry, and the touch entries of lt;
#       ``newer`` is evaluated on the row as locked (the latest version), and nobody can change it
#       before we commit;
#   tu/hu: the writes, only to rows lh holds, each only where strictly newer.
# Entries without a heartbeat_state row are not in lh (flush_last_seen finds them separately).
_FLUSH = text("""
WITH v AS (
    SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:seen AS timestamptz[]), CAST(:health AS text[]),
                         CAST(:comps AS text[]), CAST(:touch AS boolean[])) AS v(tenant_id, seen, health, comps, touch)
), lt AS (
    SELECT v.tenant_id, v.seen, v.health, v.comps FROM v JOIN tenants t ON t.id = v.tenant_id
    WHERE v.touch ORDER BY t.id FOR NO KEY UPDATE OF t SKIP LOCKED
), lh AS (
    SELECT hs.tenant_id, x.seen, x.health, x.comps, x.touch,
           hs.last_seen IS NULL OR hs.last_seen < x.seen AS newer
    FROM (SELECT tenant_id, seen, health, comps, false AS touch FROM v WHERE NOT v.touch
          UNION ALL SELECT tenant_id, seen, health, comps, true FROM lt) x
    JOIN heartbeat_state hs ON hs.tenant_id = x.tenant_id
    ORDER BY hs.tenant_id FOR NO KEY UPDATE OF hs SKIP LOCKED
), tu AS (
    UPDATE tenants t SET last_heartbeat_at = lh.seen, last_health = CAST(lh.health AS jsonb)
    FROM lh WHERE t.id = lh.tenant_id AND lh.touch
      AND (t.last_heartbeat_at IS NULL OR t.last_heartbeat_at < lh.seen)
), hu AS (
    UPDATE heartbeat_state hs SET last_seen = lh.seen, last_health = CAST(lh.health AS jsonb)
    FROM lh WHERE hs.tenant_id = lh.tenant_id AND lh.newer
      AND (hs.last_seen IS NULL OR hs.last_seen < lh.seen)
    RETURNING hs.tenant_id, hs.degraded, hs.activated_event_id IS NOT NULL AS activated,
              hs.components IS DISTINCT FROM CAST(lh.comps AS jsonb) AS changed
)
SELECT tenant_id, degraded, activated, changed FROM hu
UNION ALL SELECT tenant_id, NULL, NULL, NULL FROM lh WHERE NOT newer
""")

#: Which of the entries the flush did not return have a heartbeat_state row (a plain read: no lock).
_PRESENT = text("SELECT tenant_id FROM heartbeat_state WHERE tenant_id = ANY(CAST(:ids AS uuid[]))")

#: Compact JSON (Postgres parses it into jsonb: the spacing never reaches a row).
_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(frozen=True)
class Flushed:
    """Per tenant the flush is done with: its durable flags (None when a newer write won or no row).

    ``components_changed``: the component statuses differ from the recorded baseline — another
    replica's view was stale; the caller runs the transactional path to record the change.
    """

    degraded: bool | None
    activated: bool | None
    components_changed: bool | None


_NO_ROW = Flushed(None, None, None)

#: ``(tenant, seen_at, health, touch)``: ``touch`` — also refresh ``tenants.last_heartbeat_at``/``last_health``.
FlushEntry = tuple[uuid.UUID, datetime, dict[str, Any], bool]


async def flush_last_seen(sessionmaker: async_sessionmaker[AsyncSession],
                          entries: Iterable[FlushEntry]) -> dict[uuid.UUID, Flushed]:
    """One statement, one transaction: refresh ``last_seen``/``last_health`` (and, for the entries
    marked ``touch``, the tenant's ``last_heartbeat_at``/``last_health``) for many tenants, only where
    strictly newer than what is recorded (a transactional write of a later heartbeat always wins over
    a buffered older one).

    Returns the tenants done: the ones it locked (flags None where a newer write won) and the ones
    that have no ``heartbeat_state`` row (purged: flags None, so the caller does not retry them
    forever). The caller keeps the others for the next flush: rows held by a state change right now.

    Locks. A non-touch entry locks only its ``heartbeat_state`` row; a touch entry its ``tenants`` row
    and then its ``heartbeat_state`` row, and is left for the next flush (nothing written) unless it
    got both. Every row lock is taken with ``SKIP LOCKED`` and every write goes to a row already held
    and changes no key (so no foreign-key check locks another row): the flush never waits for a row
    lock, and a deadlock needs every transaction of its cycle to be waiting. Others may wait on it,
    for the milliseconds until it commits.

    Why a non-touch entry need not lock the tenant row (it used to: a WAL record and a dirtied page
    of the wide ``tenants`` row per heartbeat, for nothing written there): the tenant row serialises
    the state-changing transactions with each other, and the flush writes nothing of it for these
    entries. What it writes, ``last_seen``/``last_health``, every transactional path reads or rewrites
    only under the heartbeat_state row lock it takes after the tenant's (:func:`load` is ``FOR
    UPDATE``; the ``claim_*`` functions and :func:`record_chart_applied` are UPDATEs/an upsert of that
    row). So when ``observe``, ``degrade_silent`` or ``on_chart_applied`` holds the tenant row, either

    * the flush locked the heartbeat_state row first: they wait for its commit and then read or
      recheck the fresh ``last_seen`` (``claim_degraded`` re-evaluates ``last_seen < cutoff`` on it: a
      tenant that just heartbeated is not marked silent; :func:`touch` keeps the greatest
      ``last_seen`` and takes ``last_health`` only from a heartbeat at least as new); or
    * they hold it: the flush skips the entry, the caller retries it next flush, and the flags it
      then gets reflect their decision (``degraded`` → the caller runs ``observe``).

    The strictly-newer rule holds in both orders: ``newer`` and the UPDATEs' conditions are evaluated
    on the latest committed version of the row the flush holds. A touch entry without a
    heartbeat_state row writes nothing. An entry whose row is being inserted right now (not yet
    committed) may be reported done without a write, as before: the next heartbeat refreshes it.
    """
    ids: list[uuid.UUID] = []
    seen: list[datetime] = []
    health: list[str] = []
    comps: list[str] = []
    touch: list[bool] = []
    for tenant_id, seen_at, h, t in entries:  # one pass: each health dict is serialised and dropped
        ids.append(tenant_id)
        seen.append(seen_at)
        health.append(_json(h))
        comps.append(_json(component_statuses(h)))
        touch.append(t)
    if not ids:
        return {}
    params = {"ids": ids, "seen": seen, "health": health, "comps": comps, "touch": touch}
    async with sessionmaker() as s:
        async with s.begin():
            rows = (await s.execute(_FLUSH, params)).all()
        out = {r[0]: Flushed(r[1], r[2], r[3]) for r in rows}
        if len(out) < len(ids):  # held by someone (keep) or without a heartbeat_state row (done)
            rest = [t for t in ids if t not in out]
            present = set((await s.execute(_PRESENT, {"ids": rest})).scalars())
            out.update((t, _NO_ROW) for t in rest if t not in present)
    return out
