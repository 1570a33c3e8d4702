"""Everything the helm-runner reads from and writes to Postgres.

The helm-runner owns ``release_operations`` (one row per Helm operation whose outcome is awaited) and
reads the tenant record, its secret references and the lifecycle history. Result events are always
written with their lifecycle events in one transaction (outbox), and an operation is finished with a
conditional ``UPDATE ... WHERE status = 'waiting'``, so two watchers never report the same operation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert

from soctalk_helm_runner.domain import (
    RELEASE,
    Applied,
    DriftKey,
    Failure,
    OpView,
    Waiting,
    last_applied,
    namespace_for,
    pick_edge_ports,
)

#: States in which the tenant's release must not be (re)created.
TORN_DOWN = ("decommissioning", "decommissioned", "purged")
#: States in which a release is expected to run (drift and namespace checks).
LIVE = ("provisioning", "active", "degraded", "suspended")
EDGE_PORTS_LOCK = 0x50C7A1C0  # advisory lock serialising edge port allocation across replicas


@dataclass(frozen=True)
class TenantView:
    id: uuid.UUID
    slug: str
    mssp_id: uuid.UUID
    install_id: uuid.UUID
    display_name: str
    profile: str
    secrets_backend: str
    config: dict[str, Any]
    edge_ports: dict[str, Any] | None
    state: str
    chart_version: str
    deleted: bool = False

    @classmethod
    def of(cls, t: m.Tenant) -> TenantView:
        return cls(id=t.id, slug=t.slug, mssp_id=t.mssp_id, install_id=t.install_id,
                   display_name=t.display_name, profile=t.profile, secrets_backend=t.secrets_backend,
                   config=dict(t.config or {}),
                   edge_ports=dict(t.edge_ports) if t.edge_ports else None, state=t.state,
                   chart_version=t.chart_version, deleted=t.deleted_at is not None)

    @property
    def namespace(self) -> str:
        return namespace_for(self.slug)

    @property
    def torn_down(self) -> bool:
        return self.deleted or self.state in TORN_DOWN


@dataclass(frozen=True)
class RefView:
    purpose: str
    backend: str
    namespace: str | None
    name: str
    key: str
    status: str = "active"


async def tenant_view(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> TenantView | None:
    async with uow.sessionmaker() as s:
        t = await s.get(m.Tenant, tenant_id)
        return None if t is None else TenantView.of(t)


async def secret_refs(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[RefView]:
    """Active references of the tenant, oldest first (references only: names, never material)."""
    async with uow.sessionmaker() as s:
        rows = (await s.execute(select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant_id,
                                                             m.TenantSecret.status == "active")
                                .order_by(m.TenantSecret.id))).scalars().all()
    return [RefView(r.purpose, r.backend, r.namespace, r.name, r.key, r.status) for r in rows]


# --- release operations -----------------------------------------------------------------------------


def op_view(row: m.ReleaseOperation, timeout_s: float | None = None) -> OpView:
    return OpView(operation=row.operation, chart_version=row.chart_version, deadline=row.deadline,
                  revision=row.revision, previous_revision=row.previous_revision,
                  failure=Failure.decode(row.reason), timeout_s=timeout_s)


def waiting_state(row: m.ReleaseOperation | None) -> Waiting | None:
    if row is None:
        return None
    return Waiting(row.operation, row.chart_version, failing=row.reason is not None)


async def waiting_op(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> m.ReleaseOperation | None:
    async with uow.sessionmaker() as s:
        return (await s.execute(select(m.ReleaseOperation)
                                .where(m.ReleaseOperation.tenant_id == tenant_id,
                                       m.ReleaseOperation.status == "waiting")
                                .order_by(m.ReleaseOperation.id.desc()).limit(1))).scalar_one_or_none()


async def waiting_ops(uow: UnitOfWorkFactory, limit: int = 500) -> list[m.ReleaseOperation]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.ReleaseOperation).where(m.ReleaseOperation.status == "waiting")
                                     .order_by(m.ReleaseOperation.id).limit(limit))).scalars().all())


async def operation(uow: UnitOfWorkFactory, op_id: int) -> m.ReleaseOperation | None:
    async with uow.sessionmaker() as s:
        return await s.get(m.ReleaseOperation, op_id)


def new_operation(tx: UnitOfWork, cause: ev.Event, tenant: TenantView, operation: str, *, chart_version: str,
                  deadline: datetime, revision: int | None = None, previous_revision: int | None = None,
                  failure: Failure | None = None, expected: list[str] | None = None) -> m.ReleaseOperation:
    row = m.ReleaseOperation(tenant_id=tenant.id, operation=operation, release=RELEASE,
                             namespace=tenant.namespace, chart_version=chart_version, revision=revision,
                             previous_revision=previous_revision, status="waiting", deadline=deadline,
                             correlation_id=cause.correlation_id,
                             causation_id=cause.event_id, reason=failure.encode() if failure else None,
                             expected_workloads=expected)
    tx.session.add(row)
    return row


async def supersede(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, cause: ev.Event, now: datetime) -> int:
    """Close the tenant's waiting operations without a report (an uninstall replaces them)."""
    async with uow() as tx:
        res = await tx.session.execute(
            update(m.ReleaseOperation)
            .where(m.ReleaseOperation.tenant_id == tenant_id, m.ReleaseOperation.status == "waiting",
                   m.ReleaseOperation.operation != "uninstall")
            .values(status="failed", finished_at=now,
                    reason=f"superseded: replaced by {cause.event_type} {cause.event_id}")
            .returning(m.ReleaseOperation.id))
        ids = [r[0] for r in res.all()]
        if ids:
            tx.lifecycle(cause, "ReleaseWaitSuperseded", step="uninstall",
                         message=f"{len(ids)} waiting operation(s) closed by {cause.event_type}",
                         details={"operations": ids})
        await tx.commit()
    return len(ids)


async def decide_failure(uow: UnitOfWorkFactory, op_id: int, failure: Failure, *, deadline: datetime,
                         cause: ev.Event, slug: str) -> m.ReleaseOperation | None:
    """Record that the operation failed (the failure path runs next); None if it is no longer waiting."""
    async with uow() as tx:
        row = (await tx.session.execute(
            update(m.ReleaseOperation)
            .where(m.ReleaseOperation.id == op_id, m.ReleaseOperation.status == "waiting",
                   m.ReleaseOperation.reason.is_(None))
            .values(reason=failure.encode(), deadline=deadline)
            .returning(m.ReleaseOperation))).scalar_one_or_none()
        if row is None:
            return None
        tx.lifecycle(cause, "ReleaseFailing", slug=slug, step=failure.step, message=failure.reason[:2000],
                     details={"operation": row.operation, "revision": row.revision})
        await tx.commit()
    return await operation(uow, op_id)


async def finish(tx: UnitOfWork, op_id: int, status: str, now: datetime) -> bool:
    """Close a waiting operation; False if another watcher already did (then report nothing)."""
    res = await tx.session.execute(
        update(m.ReleaseOperation)
        .where(m.ReleaseOperation.id == op_id, m.ReleaseOperation.status == "waiting")
        .values(status=status, finished_at=now).returning(m.ReleaseOperation.id)
        .execution_options(synchronize_session=False))  # callers hold no ORM copy of the row in this session
    return res.first() is not None


def cause_of(row: m.ReleaseOperation) -> dict[str, Any]:
    """Envelope fields of a result event for ``row``: same tenant and correlation as its trigger."""
    return {"tenant_id": row.tenant_id, "correlation_id": row.correlation_id,
            "causation_id": row.causation_id}


async def recent_ops(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[m.ReleaseOperation]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.ReleaseOperation)
                                     .where(m.ReleaseOperation.tenant_id == tenant_id)
                                     .order_by(m.ReleaseOperation.id))).scalars().all())


# --- edge ports --------------------------------------------------------------------------------------


async def assign_edge_ports(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, cause: ev.Event, *, base: int,
                            limit: int) -> dict[str, int]:
    """The tenant's edge port pair, picked once (lowest free pair) and written to the tenant record."""
    async with uow() as tx:
        await tx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EDGE_PORTS_LOCK})
        tenant = await tx.tenant(tenant_id)
        assert tenant is not None
        if tenant.edge_ports:
            return {k: int(v) for k, v in tenant.edge_ports.items()}
        used = (await tx.session.execute(select(m.Tenant.edge_ports).where(
            m.Tenant.edge_ports.is_not(None), m.Tenant.id != tenant_id))).scalars().all()
        ports = pick_edge_ports([u for u in used if isinstance(u, dict)], base=base, limit=limit)
        tenant.edge_ports = ports
        tx.lifecycle(cause, "EdgePortsAssigned", slug=tenant.slug, step="install",
                     message=f"edge ports {ports['events']}/{ports['enrollment']} (events/enrollment)",
                     details=ports)
        await tx.commit()
    return ports


# --- retention -------------------------------------------------------------------------------------


async def prune_operations(uow: UnitOfWorkFactory, *, before: datetime, batch: int = 1000) -> int:
    """Delete finished operations that finished before ``before``, at most ``batch`` rows.

    Kept whatever their age: waiting ones, and each tenant's newest succeeded install/upgrade/suspend/
    resume (what the drift check takes as last applied, see :func:`monitored_ids`). The lifecycle
    stream keeps the history; this table only has to answer "what is in flight, what was applied"."""
    op = m.ReleaseOperation
    newest = (select(op.id).where(op.status == "succeeded",
                                  op.operation.in_(("install", "upgrade", "suspend", "resume")))
              .order_by(op.tenant_id, op.id.desc()).ext(distinct_on(op.tenant_id)))
    doomed = (select(op.id).where(op.status != "waiting", op.finished_at < before, op.id.not_in(newest))
              .order_by(op.id).limit(batch))
    async with uow() as tx:
        res = await tx.session.execute(delete(op).where(op.id.in_(doomed)).returning(op.id))
        count = len(res.all())
        await tx.commit()
    return count


# --- what to monitor ----------------------------------------------------------------------------------


MONITOR_PAGE = 500  # tenants per query of a drift round: all of its rows that are held at once


async def monitored_ids(uow: UnitOfWorkFactory, *, page: int = MONITOR_PAGE, due_before: datetime | None = None,
                        ) -> AsyncIterator[tuple[uuid.UUID, Applied]]:
    """Ids of the live tenants with no operation in flight, with what the helm-runner last applied
    to them. Ids only, a page of ``page`` tenants per query (keyset on the tenant id, each page in its
    own session): a round over 10,000 tenants must hold neither 10,000 configs nor 10,000 rows
    (materialising all rows at once was +7 MB of peak RSS; bench/README.md).

    ``due_before``: only the tenants whose last drift check and last successful write (the newest
    succeeded install/upgrade/suspend/resume) both happened before it: a release written a minute ago
    was just rendered and applied from the record, so checking it again before the interval is up
    finds nothing a check at the due time would not (the schedule Flux keeps per HelmRelease)."""
    op, dc = m.ReleaseOperation, m.DriftCheck
    busy = select(op.tenant_id).where(op.status == "waiting")
    latest = (select(op.tenant_id, op.operation, op.chart_version, op.finished_at)
              .join(m.Tenant, m.Tenant.id == op.tenant_id)
              .where(m.Tenant.deleted_at.is_(None), m.Tenant.state.in_(LIVE), op.tenant_id.not_in(busy),
                     op.status == "succeeded", op.operation.in_(("install", "upgrade", "suspend", "resume")))
              .order_by(op.tenant_id, op.id.desc()).ext(distinct_on(op.tenant_id)).limit(page))
    after: uuid.UUID | None = None
    while True:
        inner = (latest if after is None else latest.where(op.tenant_id > after)).subquery()
        stmt = (select(inner, dc.checked_at).outerjoin(dc, dc.tenant_id == inner.c.tenant_id)
                .order_by(inner.c.tenant_id))
        async with uow.sessionmaker() as s:
            rows = (await s.execute(stmt)).all()
        for row in rows:
            if due_before is not None and not _due(row.finished_at, row.checked_at, due_before):
                continue
            applied = last_applied([(row.operation, row.chart_version)])
            if applied is not None:
                yield row.tenant_id, applied
        if len(rows) < page:
            return
        after = rows[-1].tenant_id


def _due(written: datetime | None, checked: datetime | None, before: datetime) -> bool:
    return all(t is None or t < before for t in (written, checked))


async def mark_drift_checked(tx: UnitOfWork, tenant_id: uuid.UUID, at: datetime) -> None:
    """Record a finished drift check (in the transaction that records its outcome)."""
    dc = m.DriftCheck
    await tx.session.execute(pg_insert(dc).values(tenant_id=tenant_id, checked_at=at).on_conflict_do_update(
        index_elements=[dc.tenant_id], set_={"checked_at": at}))


async def monitored(uow: UnitOfWorkFactory) -> list[tuple[TenantView, Applied]]:
    """Live tenants with no operation in flight, with what the helm-runner last applied to them."""
    out = []
    async for tenant_id, applied in monitored_ids(uow):
        view = await tenant_view(uow, tenant_id)
        if view is not None and view.state in LIVE and not view.deleted:
            out.append((view, applied))
    return out


async def latest_lifecycle(tx: UnitOfWork, tenant_id: uuid.UUID, types: Sequence[str]
                           ) -> m.TenantLifecycleEvent | None:
    return (await tx.session.execute(
        select(m.TenantLifecycleEvent)
        .where(m.TenantLifecycleEvent.tenant_id == tenant_id, m.TenantLifecycleEvent.type.in_(list(types)))
        .order_by(m.TenantLifecycleEvent.id.desc()).limit(1))).scalar_one_or_none()


#: Lifecycle types that record a Helm write producing a revision (``details.revision``).
WRITE_TYPES = ("HelmInstalled", "HelmUpgraded", "HelmRolledBack", "DriftCorrected")


async def write_recorded(tx: UnitOfWork, tenant_id: uuid.UUID, revision: int) -> bool:
    """Whether the write that produced ``revision`` of the current release is in the lifecycle (a
    process that died between ``helm install`` and its commit leaves it out)."""
    le = m.TenantLifecycleEvent
    since = select(func.coalesce(func.max(le.id), 0)).where(le.tenant_id == tenant_id,
                                                            le.type == "HelmUninstalled").scalar_subquery()
    found = await tx.session.execute(select(le.id).where(
        le.tenant_id == tenant_id, le.type.in_(WRITE_TYPES), le.details["revision"].as_integer() == revision,
        le.id > since).limit(1))
    return found.first() is not None


def drift_keys(row: m.TenantLifecycleEvent | None) -> list[DriftKey]:
    if row is None or row.type != "DriftDetected":
        return []
    return [DriftKey(d["object"], d["field"], d["source"], d.get("actual"))
            for d in (row.details or {}).get("drift", [])]


def with_edge_ports(tenant: TenantView, ports: dict[str, int]) -> TenantView:
    return replace(tenant, edge_ports=dict(ports))
