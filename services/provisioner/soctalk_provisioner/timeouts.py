"""What the provisioner's durable timers do when they fire (``soctalk_common.timers.fire_due``).

Each callback runs in the timer's own transaction — the row is marked fired in the same commit as
whatever the callback records — so a crash before commit leaves the timer due and the next poll (this
process after a restart, or another replica) fires it again; it never fires twice. Callbacks re-check
the tenant, so a timer whose reason went away (cancelled decommission, tenant moved on) does nothing
beyond a lifecycle note.

* ``retry``     → re-emit the trigger of the step the tenant resumes at (TenantAccepted(resume=True) for
                  secrets, the recorded SecretsReady for the chart, DecommissionDue for the uninstall).
* ``grace``     → ``DecommissionDue`` (the helm-runner uninstalls).
* ``retention`` → hard delete of the tenant's rows (lifecycle history kept) + ``PurgeDue``.
"""

from __future__ import annotations

import uuid
from typing import Any

from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.timers import TimerCallback, fire_due
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory

from soctalk_provisioner import domain, records
from soctalk_provisioner.deps import GRACE_TIMER, RETENTION_TIMER, RETRY_TIMER, Deps
from soctalk_provisioner.domain import State, Step, Trigger


def _envelope(tenant_id: uuid.UUID, payload: dict[str, Any]) -> dict[str, Any]:
    cause = payload.get("causation_id")
    return {"tenant_id": tenant_id, "correlation_id": uuid.UUID(payload["correlation_id"]),
            "causation_id": uuid.UUID(cause) if cause else None}


async def retry_due(tx: UnitOfWork, timer: m.Timer, deps: Deps) -> None:
    tenant = await tx.tenant(timer.tenant_id)
    if tenant is None:
        return
    env = _envelope(tenant.id, timer.payload)
    step = domain.next_action(tenant.state, tenant.completed_steps)
    resumed = await records.resume_event(tx, tenant, step, correlation_id=env["correlation_id"],
                                         causation_id=env["causation_id"]) if step else None
    if tenant.state not in (State.PENDING, State.PROVISIONING, State.DECOMMISSIONING) or resumed is None:
        note = ev.StepRetryDue(step=str(timer.payload.get("step")),
                               attempt=int(timer.payload.get("attempt", 0)), **env)
        tx.lifecycle(note, "RetrySkipped", slug=tenant.slug, state_from=tenant.state, step=step,
                     message=f"nothing to retry while {tenant.state}")
        return
    tx.emit(resumed)
    tx.lifecycle(resumed, "StepRetried", slug=tenant.slug, state_from=tenant.state, state_to=tenant.state,
                 step=step, message=f"retry {timer.payload.get('attempt')}: re-sent {resumed.event_type}",
                 details={"attempt": timer.payload.get("attempt"), "event_type": resumed.event_type})


async def grace_due(tx: UnitOfWork, timer: m.Timer, deps: Deps) -> None:
    tenant = await tx.tenant(timer.tenant_id)
    if tenant is None or tenant.state != State.DECOMMISSIONING:
        return
    due = ev.DecommissionDue(slug=tenant.slug, **_envelope(tenant.id, timer.payload))
    if records.move(tx, tenant, due, Trigger.DECOMMISSION_DUE, deps, step=Step.DECOMMISSION_DUE,
                    message="grace period over: uninstall requested"):
        records.complete(tenant, Step.DECOMMISSION_DUE)
        tx.emit(due)


async def retention_due(tx: UnitOfWork, timer: m.Timer, deps: Deps) -> None:
    tenant = await tx.tenant(timer.tenant_id)
    if tenant is None or tenant.state != State.DECOMMISSIONED:
        return
    purge = ev.PurgeDue(slug=tenant.slug, **_envelope(tenant.id, timer.payload))
    if records.move(tx, tenant, purge, Trigger.PURGE, deps, type_="TenantPurged", step="purge",
                    message="retention window over: tenant rows deleted; lifecycle history kept for audit"):
        tx.emit(purge)
        await records.purge_rows(tx, tenant)


def callbacks(deps: Deps) -> dict[str, TimerCallback]:
    def bind(fn: Any) -> TimerCallback:
        async def cb(tx: UnitOfWork, timer: m.Timer) -> None:
            await fn(tx, timer, deps)
        return cb

    return {RETRY_TIMER: bind(retry_due), GRACE_TIMER: bind(grace_due), RETENTION_TIMER: bind(retention_due)}


async def fire(uow: UnitOfWorkFactory, deps: Deps) -> int:
    """Fire every due provisioner timer (what the periodic task runs); returns how many fired."""
    return await fire_due(uow, deps.clock, callbacks(deps))
