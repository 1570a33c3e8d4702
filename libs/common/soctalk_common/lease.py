"""Per-tenant lease: one operation per tenant at a time, across every replica of every service.

``acquire`` is one atomic upsert: it succeeds when no lease exists, the lease expired, or we already
hold it (re-entrant for the same holder). Holders renew long operations; a crashed holder's lease
simply expires after ``ttl`` and the next one takes over.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert

from soctalk_common.clock import Clock
from soctalk_common.db import models as m
from soctalk_common.errors import OperationInProgress
from soctalk_common.uow import UnitOfWorkFactory


async def acquire(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str, operation: str, *,
                  ttl_s: float, clock: Clock) -> bool:
    now = clock.now()
    stmt = pg_insert(m.TenantLease).values(tenant_id=tenant_id, holder=holder, operation=operation,
                                           expires_at=now + timedelta(seconds=ttl_s))
    stmt = stmt.on_conflict_do_update(
        index_elements=[m.TenantLease.tenant_id],
        set_={"holder": stmt.excluded.holder, "operation": stmt.excluded.operation,
              "expires_at": stmt.excluded.expires_at},
        where=(m.TenantLease.expires_at < now) | (m.TenantLease.holder == holder),
    ).returning(m.TenantLease.holder)
    async with uow.sessionmaker() as s, s.begin():
        got = (await s.execute(stmt)).scalar_one_or_none()
    return got == holder


async def release(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str) -> None:
    async with uow.sessionmaker() as s, s.begin():
        await s.execute(delete(m.TenantLease).where(m.TenantLease.tenant_id == tenant_id,
                                                    m.TenantLease.holder == holder))


@contextlib.asynccontextmanager
async def held(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str, operation: str, *, ttl_s: float,
               clock: Clock) -> AsyncIterator[None]:
    """Hold the tenant's lease for the block or raise ``OperationInProgress`` (a TemporaryError: the
    runtime naks the message and it comes back after the current operation)."""
    if not await acquire(uow, tenant_id, holder, operation, ttl_s=ttl_s, clock=clock):
        raise OperationInProgress(f"tenant {tenant_id}: another operation holds the lease", delay=1.0)
    try:
        yield
    finally:
        await release(uow, tenant_id, holder)
