"""The helm-runner's handlers: one small function per message, all built on one reconcile.

=================  ========================================================================
consumes           desired release (reconciled under the tenant lease; see ``domain``)
=================  ========================================================================
SecretsReady       present at the tenant's chart version → wait for readiness → ChartApplied(install)
UpgradeApproved    present at ``to_version`` → wait → ChartApplied(upgrade) | rollback + ChartFailed
SuspendApproved    present with ``suspended: true`` (every workload at 0) → ChartApplied(suspend)
ResumeApproved     present with ``suspended: false`` → ChartApplied(resume)
DecommissionDue    absent, namespace deleted → ChartRemoved once the namespace is really gone
=================  ========================================================================

What a caller can rely on: a handler never waits for readiness — it records the wait
(``release_operations``) with the message's inbox row and acks; the watcher reports the result. A
redelivered or repeated message observes the release first, so an installed release is never
installed again (it is only watched). Temporary failures are retried by the runtime (lease contention
with growing delays); a permanent failure, or a temporary one on the next-to-last delivery, is
reported: after a Helm write through the watcher's undo/rollback, otherwise as ``ChartFailed`` at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from soctalk_common import events as ev
from soctalk_common.errors import OperationInProgress, PermanentError, TemporaryError
from soctalk_common.runtime import Ctx

from soctalk_helm_runner import domain, leasing, outcomes, records, release
from soctalk_helm_runner.deps import Deps
from soctalk_helm_runner.domain import Absent, Desired, Done, Failure, Present
from soctalk_helm_runner.records import TenantView

log = structlog.get_logger(__name__)

Want = Callable[[TenantView], Desired]


async def _reconcile(event: ev.Event, ctx: Ctx[Deps], want: Want) -> None:
    d = ctx.deps
    tenant = await records.tenant_view(d.uow, event.tenant_id)
    if tenant is None:
        raise PermanentError(f"tenant {event.tenant_id} does not exist")
    desired = want(tenant)
    if tenant.torn_down and isinstance(desired, Present):
        log.warning("helm.ignored", reason=f"tenant is {tenant.state}", event_type=event.event_type)
        return
    try:
        async with leasing.holding(d.uow, tenant.id, f"{d.holder}:{event.event_id}",
                                   outcomes.desired_operation(desired), ttl_s=d.settings.lease_ttl_s, clock=d.clock):
            await _locked(event, ctx, tenant, desired)  # observe → act → record, all under the lease
    except OperationInProgress as exc:
        if not domain.gives_up(permanent=False, attempt=ctx.attempt, max_deliver=d.max_deliver):
            raise TemporaryError(str(exc), delay=min(30.0, 2.0 ** ctx.attempt)) from exc
        await outcomes.failed(event, ctx, tenant, desired, release.StepFailed(Failure("lease", str(exc)),
                                                                              wrote=False))


async def _locked(event: ev.Event, ctx: Ctx[Deps], tenant: TenantView, desired: Desired) -> None:
    d = ctx.deps
    waiting = records.waiting_state(await records.waiting_op(d.uow, tenant.id))
    try:
        done = await release.converge(d, tenant, desired, event, waiting=waiting, attempt=ctx.attempt)
        if isinstance(desired, Absent) and isinstance(done.action, Done):
            await d.kube.delete_namespace(tenant.namespace)
    except release.StepFailed as exc:
        return await outcomes.failed(event, ctx, tenant, desired, exc)
    except release.NamespaceGone:
        return await outcomes.namespace_gone(event, ctx, tenant, desired)
    await outcomes.converged(event, ctx, tenant, desired, done)


async def on_secrets_ready(event: ev.SecretsReady, ctx: Ctx[Deps]) -> None:
    """Install at the tenant's chart version (an existing release at that version is only watched)."""
    await _reconcile(event, ctx, lambda t: Present("install", t.chart_version))


async def on_upgrade_approved(event: ev.UpgradeApproved, ctx: Ctx[Deps]) -> None:
    """Upgrade to the approved version; a failure is rolled back to the previous revision."""
    await _reconcile(event, ctx, lambda t: Present("upgrade", event.to_version))


async def on_suspend_approved(event: ev.SuspendApproved, ctx: Ctx[Deps]) -> None:
    """Scale every workload to zero through the chart (``suspended: true``)."""
    await _reconcile(event, ctx, lambda t: Present("suspend", t.chart_version, suspended=True))


async def on_resume_approved(event: ev.ResumeApproved, ctx: Ctx[Deps]) -> None:
    """Scale the workloads back (``suspended: false``)."""
    await _reconcile(event, ctx, lambda t: Present("resume", t.chart_version, suspended=False))


async def on_decommission_due(event: ev.DecommissionDue, ctx: Ctx[Deps]) -> None:
    """Uninstall and delete the namespace; ``ChartRemoved`` once the namespace is really gone."""
    await _reconcile(event, ctx, lambda t: Absent())


Handler = Callable[[Any, Ctx[Deps]], Awaitable[None]]

#: The routing table (matches ``schemagen.CONSUMES["helm-runner"]``).
ROUTES: dict[str, Handler] = {
    "SecretsReady": on_secrets_ready,
    "UpgradeApproved": on_upgrade_approved,
    "SuspendApproved": on_suspend_approved,
    "ResumeApproved": on_resume_approved,
    "DecommissionDue": on_decommission_due,
}
