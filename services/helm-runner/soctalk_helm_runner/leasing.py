"""The per-tenant lease around every Helm write, renewed while the operation runs.

``soctalk_common.lease`` gives the atomic acquire/release; Helm calls may outlast the lease TTL, so
:func:`holding` renews it every third of the TTL until the block ends (a crashed holder stops renewing
and its lease expires, so nobody is blocked for longer than one TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import structlog
from soctalk_common import lease
from soctalk_common.clock import Clock
from soctalk_common.errors import OperationInProgress
from soctalk_common.uow import UnitOfWorkFactory

log = structlog.get_logger(__name__)


async def _renew(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str, operation: str, ttl_s: float,
                 clock: Clock) -> None:
    while True:
        await asyncio.sleep(max(ttl_s / 3, 0.05))
        try:
            if not await lease.acquire(uow, tenant_id, holder, operation, ttl_s=ttl_s, clock=clock):
                log.error("lease.lost", tenant_id=str(tenant_id), holder=holder, operation=operation)
                return
        except Exception as exc:  # noqa: BLE001 - a missed renewal is retried on the next tick
            log.warning("lease.renew_failed", tenant_id=str(tenant_id), error=type(exc).__name__)


@contextlib.asynccontextmanager
async def trying(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str, operation: str, *, ttl_s: float,
                 clock: Clock) -> AsyncIterator[bool]:
    """Hold the tenant's lease for the block (renewed) if it is free; yields whether we got it."""
    if not await lease.acquire(uow, tenant_id, holder, operation, ttl_s=ttl_s, clock=clock):
        yield False
        return
    renewer = asyncio.create_task(_renew(uow, tenant_id, holder, operation, ttl_s, clock))
    try:
        yield True
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await lease.release(uow, tenant_id, holder)


@contextlib.asynccontextmanager
async def holding(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, holder: str, operation: str, *, ttl_s: float,
                  clock: Clock) -> AsyncIterator[None]:
    """Hold the tenant's lease for the block (renewed) or raise ``OperationInProgress`` (temporary:
    the runtime redelivers the message after the current operation)."""
    async with trying(uow, tenant_id, holder, operation, ttl_s=ttl_s, clock=clock) as got:
        if not got:
            raise OperationInProgress(f"tenant {tenant_id}: another operation holds the lease", delay=1.0)
        yield
