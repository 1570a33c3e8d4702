"""The watcher: closes every recorded Helm operation with ``ChartApplied``, ``ChartFailed`` or
``ChartRemoved`` — the messages that started them were acked long ago.

Each round (every ``watch_interval_s``, and at once when a handler records a new wait) takes the
``waiting`` rows of ``release_operations`` and, for each, observes only what the next decision
needs — the namespace, a readiness snapshot of the workloads the release's manifest declares, or the
release history — and applies :func:`domain.next_wait_step` until nothing is left to do this round:

* ``Succeed`` / ``Finish`` close the row with a conditional UPDATE in the same transaction as the
  result event, so with several replicas exactly one reports;
* ``Fail`` records the failure first (it survives a crash; the failure path resumes from it);
* ``Act`` (uninstall, rollback, pending recovery, namespace deletion) runs under the tenant's lease —
  a round that cannot get the lease leaves the row for the next round.

Deadlines are compared with the injected clock, so tests move time instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import NotFound
from soctalk_common.service import PeriodicTask
from soctalk_common.settings import profile_value
from soctalk_common.timers import after

from soctalk_helm_runner import domain, drift, leasing, records
from soctalk_helm_runner.deps import Deps
from soctalk_helm_runner.domain import (
    RELEASE,
    Act,
    DeleteNamespace,
    Fail,
    Finish,
    Keep,
    NamespaceState,
    RecoverPending,
    Revision,
    Rollback,
    Succeed,
    Uninstall,
)
from soctalk_helm_runner.outcomes import removed
from soctalk_helm_runner.records import TenantView

log = structlog.get_logger(__name__)

MAX_STEPS_PER_ROUND = 8


class Watcher:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._expected: dict[int, list[str]] = {}  # op id → workloads its release declares

    async def tick(self) -> int:
        """One round over every waiting operation; returns how many were closed."""
        rows = await records.waiting_ops(self.d.uow)
        live = {r.id for r in rows}
        for op_id in [k for k in self._expected if k not in live]:
            del self._expected[op_id]
        gate = asyncio.Semaphore(max(1, self.d.own.watch_concurrency))

        async def one(row: m.ReleaseOperation) -> bool:
            async with gate:
                try:
                    return await self.check(row)
                except Exception as exc:  # noqa: BLE001 - one operation must not stop the others
                    log.warning("watch.failed", operation_id=row.id, operation=row.operation,
                                error=type(exc).__name__, detail=str(exc)[:300])
                    return False

        return sum(await asyncio.gather(*(one(r) for r in rows)))

    async def check(self, row: m.ReleaseOperation) -> bool:
        """Advance one operation as far as possible this round; True once it is closed."""
        d = self.d
        tenant = await records.tenant_view(d.uow, row.tenant_id)
        if tenant is None:
            return False
        for _ in range(MAX_STEPS_PER_ROUND):
            op = records.op_view(row, profile_value(d.settings, tenant.profile, "readiness_timeout_s"))
            step = domain.next_wait_step(op, now=d.clock.now(), **await self._observe(row, op))
            if isinstance(step, Keep):
                return False
            if isinstance(step, Succeed):
                return await self._succeed(row, tenant)
            if isinstance(step, Finish):
                return await self._finish(row, tenant, op, step)
            if isinstance(step, Fail):
                cause = self._origin(row)
                updated = await records.decide_failure(d.uow, row.id, step.failure, cause=cause,
                                                       slug=tenant.slug,
                                                       deadline=after(d.clock, d.own.undo_timeout_s))
                if updated is None:
                    return False
                row = updated
                continue
            assert isinstance(step, Act)
            if not await self._act(row, tenant, op, step):
                return False
            fresh = await records.operation(d.uow, row.id)
            if fresh is None or fresh.status != "waiting":
                return False
            row = fresh
        return False

    # --- observing --------------------------------------------------------------------------------

    async def _observe(self, row: m.ReleaseOperation, op: domain.OpView) -> dict[str, Any]:
        ns = row.namespace
        obj = await self.d.kube.get("v1", "Namespace", ns)
        state: NamespaceState = "gone" if obj is None else (
            "terminating" if (obj.get("metadata") or {}).get("deletionTimestamp") else "present")
        out: dict[str, Any] = {"namespace": state}
        if op.failure is not None or op.operation == "uninstall":
            history = await self.d.helm.history(row.release, ns)
            out["release"] = domain.classify([Revision(h.revision, h.status, h.chart_version)
                                              for h in history])
        elif state == "present":
            expected = await self._expected_workloads(row)
            report = await self.d.kube.readiness(ns)
            out["workloads"] = domain.summarize(
                expected, [(f"{w.kind}/{w.name}", w.ready, w.reason) for w in report.workloads],
                [(f"{w.kind}/{w.name}", w.reason) for w in report.failing])
        return out

    async def _expected_workloads(self, row: m.ReleaseOperation) -> list[str]:
        if row.expected_workloads is not None:  # recorded from the write's own manifest
            return [str(w) for w in row.expected_workloads]
        if row.id not in self._expected:
            try:
                text = await self.d.helm.manifest(row.release, row.namespace, row.revision)
            except NotFound:
                return []
            self._expected[row.id] = await asyncio.to_thread(drift.manifest_workloads, text)
        return self._expected[row.id]

    # --- acting -----------------------------------------------------------------------------------

    async def _act(self, row: m.ReleaseOperation, tenant: TenantView, op: domain.OpView, step: Act) -> bool:
        d, action = self.d, step.action
        async with leasing.trying(d.uow, row.tenant_id, f"{d.holder}:watch:{row.id}", f"{row.operation}-wait",
                                  ttl_s=d.settings.lease_ttl_s, clock=d.clock) as got:
            if not got:
                return False
            try:
                message = await self._run(row, action)
            except Exception as exc:
                if op.failure is None or d.clock.now() < op.deadline:
                    raise
                # The failure path ran out of time: report with what could not be done.
                return await self._finish(row, tenant, op, Finish(
                    note=f"could not {type(action).__name__.lower()}: {type(exc).__name__}: {exc}"[:500]))
        if message is None:
            return False
        async with d.uow() as tx:
            tx.lifecycle(self._origin(row), _ACTION_TYPES[type(action)], slug=tenant.slug, step=row.operation,
                         message=message, details={"operation_id": row.id})
            await tx.commit()
        return True

    async def _run(self, row: m.ReleaseOperation, action: Any) -> str | None:
        d, ns = self.d, row.namespace
        if isinstance(action, Uninstall):
            await d.helm.uninstall(RELEASE, ns, timeout=d.settings.helm_timeout_s)
            return f"uninstalled {RELEASE} from {ns}"
        if isinstance(action, Rollback):
            info = await d.helm.rollback(RELEASE, ns, action.revision)
            return f"rolled back to revision {action.revision} (now revision {info.revision})"
        if isinstance(action, RecoverPending):
            return await d.helm.recover_pending(RELEASE, ns, min_age=d.pending_min_age_s)
        if isinstance(action, DeleteNamespace):
            await d.kube.delete_namespace(ns)
            return f"deletion of namespace {ns} requested"
        raise AssertionError(f"unknown action {action!r}")

    # --- reporting --------------------------------------------------------------------------------

    def _origin(self, row: m.ReleaseOperation) -> ev.Event:
        """The operation's trigger as an envelope (its id, tenant, correlation): what the watcher's
        lifecycle records and result events are caused by."""
        return ev.TenantLifecycleEvent(event_id=row.causation_id or uuid.uuid4(), type="ReleaseOperation",
                                       tenant_id=row.tenant_id, correlation_id=row.correlation_id)

    async def _succeed(self, row: m.ReleaseOperation, tenant: TenantView) -> bool:
        d = self.d
        async with d.uow() as tx:
            await tx.tenant(row.tenant_id)
            if not await records.finish(tx, row.id, "succeeded", d.clock.now()):
                return False
            if row.operation == "uninstall":
                removed(tx, self._origin(row), tenant)
            else:
                out = ev.ChartApplied(operation=row.operation, release=row.release, namespace=row.namespace,
                                      revision=row.revision or 0, chart_version=row.chart_version,
                                      **records.cause_of(row))
                tx.emit(out)
                tx.lifecycle(out, "ReleaseReady", slug=tenant.slug, step=row.operation,
                             message=f"{row.operation}: every workload is ready at revision {row.revision}",
                             details={"revision": row.revision, "chart_version": row.chart_version})
            await tx.commit()
        log.info("release.done", operation=row.operation, slug=tenant.slug, revision=row.revision)
        return True

    async def _finish(self, row: m.ReleaseOperation, tenant: TenantView, op: domain.OpView,
                      step: Finish) -> bool:
        d = self.d
        failure = op.failure or domain.Failure("unknown", "failed")
        reason = failure.reason + (f"; {step.note}" if step.note else "")
        async with d.uow() as tx:
            await tx.tenant(row.tenant_id)
            if not await records.finish(tx, row.id, "failed", d.clock.now()):
                return False
            if step.undone:  # the failed install is gone with its namespace
                removed(tx, self._origin(row), tenant)
            out = ev.ChartFailed(operation=row.operation, step=failure.step,
                                 reason=reason[:4000], rolled_back_to=step.rolled_back_to, undone=step.undone,
                                 **records.cause_of(row))
            tx.emit(out)
            tx.lifecycle(out, "ReleaseFailed", slug=tenant.slug, step=failure.step, message=reason[:2000],
                         details={"operation": row.operation, "undone": step.undone,
                                  "rolled_back_to": step.rolled_back_to})
            await tx.commit()
        log.warning("release.failed", operation=row.operation, slug=tenant.slug, step=failure.step,
                    reason=reason[:300], undone=step.undone, rolled_back_to=step.rolled_back_to)
        return True


_ACTION_TYPES = {Uninstall: "HelmUninstalled", Rollback: "HelmRolledBack",
                 RecoverPending: "PendingReleaseRecovered", DeleteNamespace: "NamespaceDeletionRequested"}


@dataclass
class WakeableTask(PeriodicTask):
    """A periodic task that also runs as soon as ``wake`` is set (a new wait was just recorded)."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.fn()
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - a round must not kill the service
                self.failures += 1
                log.warning("periodic.failed", task=self.name, error=type(exc).__name__,
                            detail=str(exc)[:300])
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await w
