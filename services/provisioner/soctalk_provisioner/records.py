"""Recording in the unit of work: state changes, step progress, failures, resumes, purge.

Every function takes the caller's open unit of work (``tx``) and the tenant row the caller locked with
``tx.tenant(id)``; nothing here commits. All state changes go through :func:`move`, so every change is
checked against the state machine table and leaves a lifecycle event behind.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from soctalk_common import events as ev
from soctalk_common import timers
from soctalk_common.db import models as m
from soctalk_common.errors import PermanentError, TemporaryError
from soctalk_common.settings import profile_value
from soctalk_common.uow import UnitOfWork
from sqlalchemy import DateTime, cast, delete, func, select, text

from soctalk_provisioner import domain
from soctalk_provisioner.deps import GRACE_TIMER, RETENTION_TIMER, RETRY_TIMER, Deps
from soctalk_provisioner.domain import Defer, GiveUp, IllegalTransition, State, Step, Trigger

_DECOMMISSION_GUARD_LOCK = 0x50C7DEC0  # serialises the decommissions-per-hour guard across replicas


async def locked(tx: UnitOfWork, tenant_id: uuid.UUID) -> m.Tenant:
    """The tenant row, locked for this transaction. An event for a tenant that does not exist (never
    accepted, or purged) can never apply: ``PermanentError`` (DLQ + lifecycle event)."""
    tenant = await tx.tenant(tenant_id)
    if tenant is None:
        raise PermanentError(f"no tenant {tenant_id} (never accepted or already purged)")
    return tenant


def move(tx: UnitOfWork, tenant: m.Tenant, cause: ev.Event, trigger: Trigger, deps: Deps, *,
         type_: str | None = None, step: str | None = None, message: str = "",
         details: dict[str, Any] | None = None, previous: str | None = None) -> bool:
    """Apply ``trigger`` if the table allows it and record the lifecycle event; return whether it moved.

    Illegal: an ``IllegalTransition`` lifecycle event, the tenant untouched, ``False``.
    Ahead of the recorded steps: ``TemporaryError`` (the message comes back after the earlier result).
    """
    result = domain.decide(tenant.state, trigger, tenant.completed_steps, previous=previous)
    if isinstance(result, Defer):
        raise TemporaryError(f"{cause.event_type} arrived before step {result.waiting_for} was recorded",
                             delay=1.0)
    if isinstance(result, IllegalTransition):
        tx.lifecycle(cause, "IllegalTransition", slug=tenant.slug, state_from=tenant.state, step=step,
                     message=f"{cause.event_type}: {result.reason}",
                     details={"trigger": str(trigger), "event_type": cause.event_type,
                              "event_id": str(cause.event_id)})
        return False
    before, tenant.state = tenant.state, str(result)
    tenant.updated_at = deps.clock.now()
    tx.lifecycle(cause, type_ or cause.event_type, slug=tenant.slug, state_from=before, state_to=tenant.state,
                 step=step, message=message, details=details or {})
    return True


def allowed(tenant: m.Tenant, trigger: Trigger) -> bool:
    return not isinstance(domain.transition(tenant.state, trigger), IllegalTransition)


def complete(tenant: m.Tenant, step: str) -> None:
    """Record ``step`` as done. Only progress resets the failure count: a step reported done again
    (our own re-sent trigger, a redelivery) changes nothing."""
    if step in tenant.completed_steps:
        return
    tenant.completed_steps = domain.complete(tenant.completed_steps, step)
    tenant.attempts, tenant.failed_step, tenant.last_error = 0, None, None


async def recorded(tx: UnitOfWork, tenant_id: uuid.UUID, step: str) -> dict[str, Any] | None:
    """Details of the latest ``StepCompleted`` lifecycle event for ``step`` (what a resume re-sends)."""
    row = (await tx.session.execute(
        select(m.TenantLifecycleEvent.details)
        .where(m.TenantLifecycleEvent.tenant_id == tenant_id, m.TenantLifecycleEvent.type == "StepCompleted",
               m.TenantLifecycleEvent.step == step)
        .order_by(m.TenantLifecycleEvent.id.desc()).limit(1))).scalar_one_or_none()
    return row


async def resume_event(tx: UnitOfWork, tenant: m.Tenant, step: str, *, correlation_id: uuid.UUID,
                       causation_id: uuid.UUID | None) -> ev.Event | None:
    """The event that (re-)starts ``step`` for ``tenant``, rebuilt from what was recorded: the tenant row
    for the secrets step, the recorded ``SecretsReady`` references for the chart step."""
    env: dict[str, Any] = {"tenant_id": tenant.id, "correlation_id": correlation_id,
                           "causation_id": causation_id}
    if step == Step.SECRETS:
        return ev.TenantAccepted(**accepted_fields(tenant), resume=True, **env)
    if step == Step.CHART:
        done = await recorded(tx, tenant.id, Step.SECRETS)
        if done is None:
            return None
        return ev.SecretsReady(namespace=done["namespace"],
                               references=[ev.SecretRef.model_validate(r) for r in done["references"]], **env)
    if step == Step.UNINSTALL:
        return ev.DecommissionDue(slug=tenant.slug, **env)
    return None


def accepted_fields(tenant: m.Tenant) -> dict[str, Any]:
    """``TenantAccepted`` fields from the tenant row (the key only as a reference or ciphertext)."""
    key = ev.LlmKeySource.model_validate(tenant.llm_key_source) if tenant.llm_key_source else None
    return {"slug": tenant.slug, "namespace": domain.namespace_for(tenant.slug), "mssp_id": tenant.mssp_id,
            "install_id": tenant.install_id, "chart_version": tenant.chart_version, "profile": tenant.profile,
            "secrets_backend": tenant.secrets_backend, "llm_key": key}


async def step_failed(tx: UnitOfWork, tenant: m.Tenant, cause: ev.Event, step: Step, reason: str,
                      deps: Deps, *, undo: tuple[str, ...] = ()) -> None:
    """A step failed: schedule an automatic retry with backoff, or give up (``failed``; for the
    uninstall step the tenant stays ``decommissioning`` with the error) once retries are spent."""
    decommission = step == Step.UNINSTALL
    if not allowed(tenant, Trigger.UNINSTALL_FAILED if decommission else Trigger.STEP_FAILED):
        move(tx, tenant, cause, Trigger.STEP_FAILED, deps, step=step, message=reason)  # → IllegalTransition
        return
    tenant.completed_steps = domain.undo(tenant.completed_steps, *undo)
    tenant.attempts += 1
    tenant.failed_step, tenant.last_error = step, reason[:2000]
    plan = domain.after_failure(tenant.attempts, deps.retry)
    info = {"attempt": tenant.attempts, "max_retries": deps.retry.max_retries, "undone_steps": list(undo)}
    if isinstance(plan, GiveUp):
        trigger = Trigger.UNINSTALL_FAILED if decommission else Trigger.GIVE_UP
        kind = "DecommissionStalled" if decommission else "TenantFailed"
        move(tx, tenant, cause, trigger, deps, type_=kind, step=step, details=info,
             message=f"{reason} (gave up after {plan.attempts} attempts; resume with :retry)")
        await timers.cancel(tx, tenant.id, RETRY_TIMER, at=deps.clock.now())
        return
    due = timers.after(deps.clock, plan.delay_s)
    move(tx, tenant, cause, Trigger.UNINSTALL_FAILED if decommission else Trigger.STEP_FAILED, deps,
         type_="StepFailed", step=step, message=f"{reason} (retry {plan.attempt} in {plan.delay_s:g}s)",
         details=info | {"retry_at": due.isoformat()})
    resume_at = domain.next_action(tenant.state, tenant.completed_steps) or step
    await timers.schedule(tx, tenant.id, RETRY_TIMER, due, {
        "step": str(resume_at), "attempt": plan.attempt, "correlation_id": str(cause.correlation_id),
        "causation_id": str(cause.event_id)})


async def decommissions_last_hour(tx: UnitOfWork, deps: Deps) -> int:
    """Decommissions started in the hour before ``clock.now()`` (forced ones included), counted from
    the lifecycle history under an advisory lock so concurrent requests cannot both slip through."""
    await tx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DECOMMISSION_GUARD_LOCK})
    since = deps.clock.now() - timedelta(hours=1)
    at = cast(m.TenantLifecycleEvent.details["at"].astext, DateTime(timezone=True))
    return int((await tx.session.execute(
        select(func.count()).select_from(m.TenantLifecycleEvent)
        .where(m.TenantLifecycleEvent.type == "DecommissionStarted", at > since))).scalar_one())


async def start_decommission(tx: UnitOfWork, tenant: m.Tenant, event: ev.TenantDecommissionRequested,
                             deps: Deps) -> None:
    """``decommissioning`` + the grace timer, remembering the state to return to on cancel."""
    grace = event.grace_period_s if event.grace_period_s is not None else profile_value(
        deps.settings, tenant.profile, "decommission_grace_s")
    before, due = tenant.state, timers.after(deps.clock, grace)
    if move(tx, tenant, event, Trigger.DECOMMISSION, deps, type_="DecommissionStarted", step="decommission",
            message=event.reason or f"uninstall after a grace period of {grace:g}s",
            details={"at": deps.clock.now().isoformat(), "due_at": due.isoformat(), "grace_s": grace,
                     "forced": event.force, "reason": event.reason}):
        await timers.schedule(tx, tenant.id, GRACE_TIMER, due, {
            "state_before": before, "correlation_id": str(event.correlation_id),
            "causation_id": str(event.event_id)})


async def soft_delete_if_done(tx: UnitOfWork, tenant: m.Tenant, cause: ev.Event, deps: Deps) -> None:
    """After the grace period, once the chart and the secrets are both gone: ``decommissioned``
    (``deleted_at`` set) and the retention timer armed."""
    need = {Step.DECOMMISSION_DUE, Step.CHART_REMOVED, Step.SECRETS_REMOVED}
    if tenant.state != State.DECOMMISSIONING or not need <= set(tenant.completed_steps):
        return
    retention = profile_value(deps.settings, tenant.profile, "retention_s")
    purge_at = timers.after(deps.clock, retention)
    if move(tx, tenant, cause, Trigger.SOFT_DELETE, deps, type_="TenantDecommissioned", step="decommission",
            message=f"uninstalled and secrets removed; rows kept until {purge_at.isoformat()}",
            details={"purge_at": purge_at.isoformat(), "retention_s": retention}):
        tenant.deleted_at = deps.clock.now()
        await timers.schedule(tx, tenant.id, RETENTION_TIMER, purge_at, {
            "correlation_id": str(cause.correlation_id), "causation_id": str(cause.event_id)})


async def purge_rows(tx: UnitOfWork, tenant: m.Tenant) -> None:
    """Hard delete everything the install keeps about the tenant except its lifecycle history (kept for
    audit; see docs/operations-decommission.md)."""
    await tx.session.flush()  # the fired timer's own update goes out before its row is deleted
    tid = tenant.id
    for model in (m.TenantSecret, m.AdapterToken, m.Timer, m.TenantLease, m.ReleaseOperation):
        await tx.session.execute(delete(model).where(model.tenant_id == tid).execution_options(
            synchronize_session=False))
    await tx.session.delete(tenant)
