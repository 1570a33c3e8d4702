"""Durable timers in Postgres: grace periods, retention, retries, readiness deadlines, liveness.

A timer is a row ``(tenant_id, kind, due_at, payload)``; at most one open timer per (tenant, kind).
``fire_due`` claims due rows with ``FOR UPDATE SKIP LOCKED`` (replicas share the work, none fires a
timer twice) and marks each fired in the same transaction as whatever the callback records, so a crash
before commit leaves the timer due and a restart fires it again — timers survive restarts by design.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from soctalk_common.clock import Clock
from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory


async def schedule(tx: UnitOfWork, tenant_id: uuid.UUID, kind: str, due_at: datetime,
                   payload: dict[str, Any] | None = None) -> None:
    """(Re)arm the tenant's ``kind`` timer inside the caller's transaction."""
    await cancel(tx, tenant_id, kind, at=None)
    await tx.session.flush()
    tx.session.add(m.Timer(tenant_id=tenant_id, kind=kind, due_at=due_at, payload=payload or {}))


async def cancel(tx: UnitOfWork, tenant_id: uuid.UUID, kind: str, *, at: datetime | None) -> bool:
    res = await tx.session.execute(
        update(m.Timer)
        .where(m.Timer.tenant_id == tenant_id, m.Timer.kind == kind, m.Timer.fired_at.is_(None),
               m.Timer.cancelled_at.is_(None))
        .values(cancelled_at=at if at is not None else func.now())
        .returning(m.Timer.id)
        .execution_options(synchronize_session=False)  # no Timer object is read after this in a session
    )
    return res.first() is not None


async def pending(tx: UnitOfWork, tenant_id: uuid.UUID, kind: str) -> m.Timer | None:
    res = await tx.session.execute(
        select(m.Timer).where(m.Timer.tenant_id == tenant_id, m.Timer.kind == kind, m.Timer.fired_at.is_(None),
                              m.Timer.cancelled_at.is_(None))
    )
    return res.scalar_one_or_none()


TimerCallback = Callable[[UnitOfWork, m.Timer], Awaitable[None]]


async def fire_due(uow: UnitOfWorkFactory, clock: Clock, kinds: dict[str, TimerCallback], *,
                   limit: int = 100) -> int:
    """Fire every due timer of the given kinds; returns how many fired. One transaction per timer."""
    fired = 0
    while True:
        async with uow() as tx:
            row = (await tx.session.execute(
                select(m.Timer)
                .where(m.Timer.kind.in_(list(kinds)), m.Timer.due_at <= clock.now(), m.Timer.fired_at.is_(None),
                       m.Timer.cancelled_at.is_(None))
                .order_by(m.Timer.due_at).limit(1).with_for_update(skip_locked=True)
            )).scalar_one_or_none()
            if row is None:
                return fired
            row.fired_at = clock.now()
            await kinds[row.kind](tx, row)
            await tx.commit()
            fired += 1
            if fired >= limit:
                return fired


def after(clock: Clock, seconds: float) -> datetime:
    return clock.now() + timedelta(seconds=seconds)
