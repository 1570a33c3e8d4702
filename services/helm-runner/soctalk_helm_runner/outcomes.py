"""Recording what a handler's reconcile ended with — one transaction each, bound to the message.

* ``Watch`` → a ``release_operations`` row (``waiting``, deadline = now + the profile's readiness
  timeout); the watcher reports ``ChartApplied``/``ChartFailed`` later. The message is acked now.
* ``Done`` for an uninstall → ``ChartRemoved`` at once if the namespace is already gone, else an
  ``uninstall`` row the watcher closes when the namespace has disappeared.
* ``Wait`` → nothing (the same operation is already being watched); ``Defer`` → retry the message.
* a failure after a Helm write → a row with the failure recorded (the watcher undoes the install or
  rolls the upgrade back, then reports ``ChartFailed``); a failure before any write → ``ChartFailed``.

The Helm writes done on the way (``Converged.steps``) become lifecycle events in the same transaction.
"""

from __future__ import annotations

from soctalk_common import events as ev
from soctalk_common.errors import TemporaryError
from soctalk_common.runtime import Ctx
from soctalk_common.settings import profile_value
from soctalk_common.timers import after
from soctalk_common.uow import UnitOfWork

from soctalk_helm_runner import records
from soctalk_helm_runner.deps import Deps
from soctalk_helm_runner.domain import RELEASE, Absent, Defer, Desired, Done, Present, Wait, Watch
from soctalk_helm_runner.records import TenantView
from soctalk_helm_runner.release import Converged, Step, StepFailed


def _steps(tx: UnitOfWork, event: ev.Event, tenant: TenantView, operation: str, steps: list[Step]) -> None:
    for step in steps:
        tx.lifecycle(event, step.type, slug=tenant.slug, step=operation, message=step.message,
                     details=step.details)


async def converged(event: ev.Event, ctx: Ctx[Deps], tenant: TenantView, desired: Desired,
                    done: Converged) -> None:
    d, action = ctx.deps, done.action
    if isinstance(action, Defer):
        raise TemporaryError(action.reason, delay=5.0)
    if isinstance(action, Wait):
        return
    gone = isinstance(action, Done) and not await d.kube.namespace_exists(tenant.namespace)
    async with ctx.uow() as tx:
        await tx.tenant(tenant.id)
        _steps(tx, event, tenant, desired_operation(desired), done.steps)
        if isinstance(action, Watch) and isinstance(desired, Present):
            if not done.steps and not await records.write_recorded(tx, tenant.id, action.revision):
                _steps(tx, event, tenant, desired.operation, [lost_write(desired, action)])
            timeout = profile_value(d.settings, tenant.profile, "readiness_timeout_s")
            records.new_operation(tx, event, tenant, desired.operation, chart_version=desired.chart_version,
                                  deadline=after(d.clock, timeout), revision=action.revision,
                                  previous_revision=action.previous, expected=done.expected)
            tx.lifecycle(event, "ReadinessWaitStarted", slug=tenant.slug, step=desired.operation,
                         message=f"revision {action.revision} applied; waiting up to {timeout:g}s for every "
                                 "workload to be ready",
                         details={"revision": action.revision, "chart_version": desired.chart_version,
                                  "timeout_s": timeout})
        elif gone:
            removed(tx, event, tenant)
        else:
            records.new_operation(tx, event, tenant, "uninstall", chart_version=tenant.chart_version,
                                  deadline=after(d.clock, d.own.uninstall_timeout_s))
            tx.lifecycle(event, "NamespaceDeletionStarted", slug=tenant.slug, step="uninstall",
                         message=f"release removed; waiting for namespace {tenant.namespace} to be gone")
        await tx.commit()
    d.wake.set()


def lost_write(desired: Present, action: Watch) -> Step:
    """The record of a write an earlier attempt made and could not commit (it died in between)."""
    kind = "HelmInstalled" if action.previous is None else "HelmUpgraded"
    return Step(kind, f"found revision {action.revision} (chart {desired.chart_version}) deployed: the "
                f"attempt that wrote it stopped before recording it", {
                    "revision": action.revision, "chart_version": desired.chart_version, "recovered": True})


def removed(tx: UnitOfWork, cause: ev.Event, tenant: TenantView) -> None:
    out = cause.caused(ev.ChartRemoved, release=RELEASE, namespace=tenant.namespace)
    tx.emit(out)
    tx.lifecycle(out, "ChartRemoved", slug=tenant.slug, step="uninstall",
                 message=f"release {RELEASE} and namespace {tenant.namespace} are gone")


async def failed(event: ev.Event, ctx: Ctx[Deps], tenant: TenantView, desired: Desired,
                 exc: StepFailed) -> None:
    d, operation = ctx.deps, desired_operation(desired)
    async with ctx.uow() as tx:
        await tx.tenant(tenant.id)
        _steps(tx, event, tenant, operation, exc.steps)
        if exc.wrote and isinstance(desired, Present):
            records.new_operation(tx, event, tenant, operation, chart_version=desired.chart_version,
                                  deadline=after(d.clock, d.own.undo_timeout_s),
                                  previous_revision=exc.previous, failure=exc.failure)
            tx.lifecycle(event, "ReleaseFailing", slug=tenant.slug, step=exc.failure.step,
                         message=exc.failure.reason, details={"operation": operation})
        else:
            out = event.caused(ev.ChartFailed, operation=operation, step=exc.failure.step,
                               reason=exc.failure.reason)
            tx.emit(out)
            tx.lifecycle(out, "ReleaseFailed", slug=tenant.slug, step=exc.failure.step,
                         message=exc.failure.reason, details={"operation": operation, "undone": False})
        await tx.commit()
    d.wake.set()


async def namespace_gone(event: ev.Event, ctx: Ctx[Deps], tenant: TenantView, desired: Desired) -> None:
    async with ctx.uow() as tx:
        await tx.tenant(tenant.id)
        out = event.caused(ev.NamespaceMissing, namespace=tenant.namespace)
        tx.emit(out)
        tx.lifecycle(out, "NamespaceMissing", slug=tenant.slug, step=desired_operation(desired),
                     message=f"namespace {tenant.namespace} does not exist; nothing was installed")
        await tx.commit()


def desired_operation(desired: Desired) -> str:
    return "uninstall" if isinstance(desired, Absent) else desired.operation if isinstance(desired, Present) \
        else "rollback"
