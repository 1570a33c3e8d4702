"""The provisioner's handlers: one small async function per message (routes in :data:`ROUTES`).

Each handler decides with the pure rules (:mod:`~soctalk_provisioner.domain`,
:mod:`~soctalk_provisioner.validation`), then records everything — the tenant row (locked first), its
lifecycle events, the events it emits (outbox) and its timers — in ONE unit of work. The provisioner has
no side effects outside Postgres, so a redelivered message either finds its inbox row (no second effect)
or redoes the whole decision. An illegal transition is recorded as an ``IllegalTransition`` lifecycle
event and acknowledged; a result that arrives ahead of an earlier step's result is retried shortly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from soctalk_common import events as ev
from soctalk_common import timers
from soctalk_common.errors import TemporaryError
from soctalk_common.runtime import Ctx
from soctalk_common.uow import UnitOfWork
from sqlalchemy.exc import IntegrityError

from soctalk_provisioner import domain, intake, records
from soctalk_provisioner.compatibility import can_upgrade
from soctalk_provisioner.deps import GRACE_TIMER, RETRY_TIMER, Deps
from soctalk_provisioner.domain import State, Step, Trigger
from soctalk_provisioner.records import locked, move


async def _commit(tx: UnitOfWork) -> None:
    try:
        await tx.commit()
    except IntegrityError as exc:  # a concurrent request took the id, request id or slug: decide again
        raise TemporaryError(f"concurrent write: {type(exc.orig).__name__}", delay=0.5) from exc


# --- commands -------------------------------------------------------------------------------------


async def on_tenant_requested(event: ev.TenantRequested, ctx: Ctx[Deps]) -> None:
    """Validate before any side effect; accept (tenant ``pending`` + ``TenantAccepted``) or reject
    (``TenantRejected`` with JSON paths). Idempotent on ``request_id``: a repeat creates nothing."""
    async with ctx.uow() as tx:
        found = await intake.existing(tx, event, ctx.deps)
        if (same := found.by_request) is not None:
            tx.lifecycle(event, "DuplicateRequest", slug=same.slug, tenant_id=same.id, step=Step.VALIDATE,
                         message=f"request {event.request_id} was already accepted; nothing created",
                         details={"request_id": event.request_id, "state": same.state})
        else:
            errors, warning = await intake.check(tx, event, ctx.deps, found)
            if errors:
                intake.reject(tx, event, errors)
            else:
                intake.accept(tx, event, ctx.deps, warning=warning)
        await _commit(tx)


async def on_upgrade_requested(event: ev.TenantUpgradeRequested, ctx: Ctx[Deps]) -> None:
    """Gate the target chart version: ``UpgradeApproved`` (tenant ``upgrading``; deprecated adds a
    ``CompatibilityWarning``) or ``UpgradeRejected`` (blocked/unknown pair, or tenant not active)."""
    d = ctx.deps
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        v = await can_upgrade(tx.session, d.settings.system_version, event.target_chart_version)
        reject = None if records.allowed(tenant, Trigger.UPGRADE) else f"tenant is {tenant.state}, not active"
        if not reject and not v.allowed:
            reject = f"{v.system} × {v.tenant} is blocked: {v.notes or ''}".strip()
        if reject:
            tx.emit(event.caused(ev.UpgradeRejected, to_version=v.tenant, verdict=v.status, reason=reject))
            tx.lifecycle(event, "UpgradeRejected", slug=tenant.slug, state_from=tenant.state, step="upgrade",
                         message=reject, details={"verdict": v.status, "to_version": v.tenant})
        elif move(tx, tenant, event, Trigger.UPGRADE, d, type_="UpgradeApproved", step="upgrade",
                  message=f"{tenant.chart_version} → {v.tenant} ({v.status})", details={"verdict": v.status}):
            tx.emit(event.caused(ev.UpgradeApproved, from_version=tenant.chart_version, to_version=v.tenant,
                                 verdict=v.status, notes=v.notes or ""))
            tenant.target_chart_version = v.tenant
            if v.warn:
                tx.lifecycle(event, "CompatibilityWarning", slug=tenant.slug, step="upgrade",
                             message=f"{v.tenant} is deprecated on {v.system}: {v.notes or ''}".strip())
        await tx.commit()


async def on_retry_requested(event: ev.TenantRetryRequested, ctx: Ctx[Deps]) -> None:
    """Resume from the last completed step: re-emit the trigger of the first step not done (the tenant
    row for secrets, the recorded ``SecretsReady`` for the chart, ``DecommissionDue`` for the uninstall)."""
    d = ctx.deps
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        step = domain.next_action(tenant.state, tenant.completed_steps)
        if move(tx, tenant, event, Trigger.RETRY, d, type_="RetryRequested", step=step,
                message=f"resuming at step {step}" if step else "nothing to resend"):
            tenant.attempts = 0
            await timers.cancel(tx, tenant.id, RETRY_TIMER, at=d.clock.now())
            resumed = step and await records.resume_event(
                tx, tenant, step, correlation_id=event.correlation_id, causation_id=event.event_id)
            if resumed:
                tx.emit(resumed)
        await tx.commit()


async def on_suspend_requested(event: ev.TenantSuspendRequested, ctx: Ctx[Deps]) -> None:
    """Approve (``SuspendApproved``); the helm-runner's ``ChartApplied(suspend)`` completes it."""
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.SUSPEND, ctx.deps, type_="SuspendApproved", step="suspend",
                message=event.reason):
            tx.emit(event.caused(ev.SuspendApproved))
        await tx.commit()


async def on_resume_requested(event: ev.TenantResumeRequested, ctx: Ctx[Deps]) -> None:
    """Approve (``ResumeApproved``); the helm-runner's ``ChartApplied(resume)`` completes it."""
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.RESUME, ctx.deps, type_="ResumeApproved", step="resume"):
            tx.emit(event.caused(ev.ResumeApproved))
        await tx.commit()


async def on_decommission_requested(event: ev.TenantDecommissionRequested, ctx: Ctx[Deps]) -> None:
    """``decommissioning`` with a grace timer (profile default or ``grace_period_s``); refused beyond
    ``decommission_rate_limit_per_hour`` decommissions in the last hour unless ``force``."""
    d = ctx.deps
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        limit = d.settings.decommission_rate_limit_per_hour
        if (records.allowed(tenant, Trigger.DECOMMISSION) and not event.force
                and await records.decommissions_last_hour(tx, d) >= limit):
            tx.lifecycle(event, "DecommissionRefused", slug=tenant.slug, state_from=tenant.state,
                         step="decommission", details={"limit_per_hour": limit, "reason": event.reason},
                         message=f"{limit} decommissions in the last hour already; use force to override")
        else:
            await records.start_decommission(tx, tenant, event, d)
        await tx.commit()


async def on_decommission_cancel_requested(event: ev.TenantDecommissionCancelRequested,
                                           ctx: Ctx[Deps]) -> None:
    """During the grace period only: back to the state before decommissioning, grace timer cancelled."""
    d = ctx.deps
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        grace = await timers.pending(tx, tenant.id, GRACE_TIMER)
        previous = grace.payload.get("state_before") if grace is not None else None
        if move(tx, tenant, event, Trigger.CANCEL_DECOMMISSION, d, type_="DecommissionCancelled",
                step="decommission", previous=previous, message="cancelled during the grace period"):
            await timers.cancel(tx, tenant.id, GRACE_TIMER, at=d.clock.now())
        await tx.commit()


# --- step results ---------------------------------------------------------------------------------


async def on_secrets_ready(event: ev.SecretsReady, ctx: Ctx[Deps]) -> None:
    """Secrets step done: ``provisioning``; the references are recorded for a resume of the chart step."""
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.SECRETS_READY, ctx.deps, type_="StepCompleted", step=Step.SECRETS,
                details={"namespace": event.namespace,
                         "references": [r.model_dump(mode="json") for r in event.references]}):
            records.complete(tenant, Step.SECRETS)
        await tx.commit()


async def on_secrets_failed(event: ev.SecretsFailed, ctx: Ctx[Deps]) -> None:
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        await records.step_failed(tx, tenant, event, Step.SECRETS, f"{event.step}: {event.reason}", ctx.deps)
        await tx.commit()


async def on_chart_applied(event: ev.ChartApplied, ctx: Ctx[Deps]) -> None:
    """install → chart step done (waits for activation); upgrade → ``active`` on the new version;
    suspend → ``suspended``; resume → ``active``; rollback → ``degraded``."""
    trigger = domain.CHART_APPLIED.get(event.operation)
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        before = tenant.state
        details = {"operation": event.operation, "release": event.release, "namespace": event.namespace,
                   "revision": event.revision, "chart_version": event.chart_version}
        if trigger is None:  # uninstall is reported as ChartRemoved
            tx.lifecycle(event, "ChartApplied", slug=tenant.slug, step=event.operation, details=details)
        elif move(tx, tenant, event, trigger, ctx.deps, step=Step.CHART if trigger == Trigger.CHART_INSTALLED
                  else event.operation, type_="StepCompleted" if trigger == Trigger.CHART_INSTALLED else None,
                  details=details):
            _applied(tenant, event, before)
        await tx.commit()


def _applied(tenant: Any, event: ev.ChartApplied, before: str) -> None:
    tenant.release_revision = event.revision
    if event.operation == "install":
        records.complete(tenant, Step.CHART)
        tenant.chart_version = event.chart_version
    elif event.operation == "upgrade":
        tenant.chart_version, tenant.target_chart_version, tenant.last_error = event.chart_version, None, None
    elif event.operation == "suspend":
        tenant.suspended_from = before if before != State.SUSPENDED else tenant.suspended_from
    elif event.operation == "resume":
        tenant.suspended_from = None


async def on_chart_failed(event: ev.ChartFailed, ctx: Ctx[Deps]) -> None:
    """install/uninstall → retry with backoff, then give up; upgrade → ``degraded`` (rolled back);
    suspend/resume/rollback → recorded with the error (see the table)."""
    d = ctx.deps
    reason = f"{event.step}: {event.reason}" + (f" (rolled back to revision {event.rolled_back_to})"
                                                if event.rolled_back_to is not None else "")
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if event.operation in ("install", "uninstall"):
            step = Step.CHART if event.operation == "install" else Step.UNINSTALL
            # "undone" = the install was rolled back with the namespace: its secrets must be redone too.
            undo = (Step.SECRETS, Step.CHART) if event.undone else ()
            await records.step_failed(tx, tenant, event, step, reason, d, undo=undo)
        elif move(tx, tenant, event, domain.CHART_FAILED[event.operation], d, step=event.operation,
                  message=reason, details={"rolled_back_to": event.rolled_back_to}):
            tenant.last_error = reason[:2000]
            if event.operation == "upgrade":
                tenant.target_chart_version = None
                tenant.release_revision = event.rolled_back_to or tenant.release_revision
        await tx.commit()


async def on_chart_removed(event: ev.ChartRemoved, ctx: Ctx[Deps]) -> None:
    """Uninstalled: one of the two decommission prerequisites (or cleanup after a failed install)."""
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.CHART_REMOVED, ctx.deps, step=Step.CHART_REMOVED,
                details={"release": event.release, "namespace": event.namespace}):
            if tenant.state == State.DECOMMISSIONING:
                records.complete(tenant, Step.CHART_REMOVED)
                await records.soft_delete_if_done(tx, tenant, event, ctx.deps)
            else:
                tenant.completed_steps = domain.undo(tenant.completed_steps, Step.CHART)
        await tx.commit()


async def on_secrets_removed(event: ev.SecretsRemoved, ctx: Ctx[Deps]) -> None:
    """Secrets deleted after the uninstall: with the chart gone too, soft delete."""
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.SECRETS_REMOVED, ctx.deps, step=Step.SECRETS_REMOVED,
                details={"references": len(event.references)}):
            records.complete(tenant, Step.SECRETS_REMOVED)
            await records.soft_delete_if_done(tx, tenant, event, ctx.deps)
        await tx.commit()


async def on_tenant_activated(event: ev.TenantActivated, ctx: Ctx[Deps]) -> None:
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.ACTIVATED, ctx.deps, step=Step.ACTIVATE,
                details={"adapter_version": event.adapter_version}):
            records.complete(tenant, Step.ACTIVATE)
            tenant.activated_at = tenant.activated_at or ctx.deps.clock.now()
        await tx.commit()


async def on_tenant_degraded(event: ev.TenantDegraded, ctx: Ctx[Deps]) -> None:
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.DEGRADED, ctx.deps, step="health", message=event.reason,
                details={"last_health": event.last_health}):
            tenant.last_error, tenant.last_health = event.reason[:2000], event.last_health
        await tx.commit()


async def on_tenant_recovered(event: ev.TenantRecovered, ctx: Ctx[Deps]) -> None:
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if move(tx, tenant, event, Trigger.RECOVERED, ctx.deps, step="health"):
            tenant.last_error = None
        await tx.commit()


async def on_namespace_missing(event: ev.NamespaceMissing, ctx: Ctx[Deps]) -> None:
    """Onboarding: a chart-step failure whose retry redoes the secrets step (it creates the namespace).
    Live tenant: ``degraded``. Decommissioning: expected, recorded."""
    reason = f"namespace {event.namespace} is missing"
    async with ctx.uow() as tx:
        tenant = await locked(tx, event.tenant_id)
        if tenant.state in (State.PENDING, State.PROVISIONING):
            undo = (Step.SECRETS, Step.CHART)  # the secrets step creates the namespace: redo it
            await records.step_failed(tx, tenant, event, Step.CHART, reason, ctx.deps, undo=undo)
        elif (move(tx, tenant, event, Trigger.NAMESPACE_MISSING, ctx.deps, step="namespace", message=reason)
              and tenant.state == State.DEGRADED):
            tenant.last_error = reason
        await tx.commit()


Handler = Callable[[Any, Ctx[Deps]], Awaitable[None]]

#: The routing table: event type → handler (matches ``schemagen.CONSUMES["provisioner"]``).
ROUTES: dict[str, Handler] = {
    "TenantRequested": on_tenant_requested,
    "TenantUpgradeRequested": on_upgrade_requested,
    "TenantDecommissionRequested": on_decommission_requested,
    "TenantDecommissionCancelRequested": on_decommission_cancel_requested,
    "TenantRetryRequested": on_retry_requested,
    "TenantSuspendRequested": on_suspend_requested,
    "TenantResumeRequested": on_resume_requested,
    "SecretsReady": on_secrets_ready,
    "SecretsFailed": on_secrets_failed,
    "SecretsRemoved": on_secrets_removed,
    "ChartApplied": on_chart_applied,
    "ChartFailed": on_chart_failed,
    "ChartRemoved": on_chart_removed,
    "TenantActivated": on_tenant_activated,
    "TenantDegraded": on_tenant_degraded,
    "TenantRecovered": on_tenant_recovered,
    "NamespaceMissing": on_namespace_missing,
}
