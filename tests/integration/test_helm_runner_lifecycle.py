"""Upgrade (and rollback on failure), suspend / resume through the chart, decommission, one Helm
operation per tenant at a time, and ``soctalk tenants diff``."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import InvalidObject, PermanentError, TemporaryError
from soctalk_helm_runner.diff import diff_tenant
from soctalk_helm_runner.records import TenantView
from soctalk_kubesim import SimulatedKubelet

from tests.integration import test_helm_runner_harness as h

pytestmark = pytest.mark.integration

kube, kubelet, runner, helm_gateway = h.kube, h.kubelet, h.runner, h.helm_gateway
charts_dir, compat_file = h.charts_dir, h.compat_file


async def installed(runner: h.Runner, **kwargs: Any) -> TenantView:
    t = await runner.add_tenant(**kwargs)
    await runner.handle(h.secrets_ready(t))
    (op,) = await runner.settle(t.id)
    assert op.status == "succeeded"
    await runner.set_tenant(t.id, state="active")
    return t


def approved(t: TenantView, to: str = "v1.2.0") -> ev.UpgradeApproved:
    return ev.UpgradeApproved(tenant_id=t.id, from_version="v1.1.0", to_version=to, verdict="supported")


async def test_upgrade_waits_for_readiness_then_reports(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await runner.handle(approved(t))
    ops = await runner.settle(t.id)
    assert [(o.operation, o.status, o.revision, o.previous_revision) for o in ops] == [
        ("install", "succeeded", 1, None), ("upgrade", "succeeded", 2, 1)]
    (_, upgraded) = await h.emitted(runner.uow, "ChartApplied", t.id)
    assert (upgraded.operation, upgraded.revision, upgraded.chart_version) == ("upgrade", 2, "v1.2.0")
    status = await runner.deps.helm.status("soctalk-tenant", t.namespace)
    assert (status.revision, status.chart_version) == (2, "1.2.0")


async def test_failed_upgrade_is_rolled_back_to_the_previous_revision(runner: h.Runner,
                                                                      kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    kubelet.fail(f"{t.namespace}/thehive")  # from now on thehive never becomes ready
    await runner.handle(approved(t))
    ops = await runner.settle(t.id)
    assert (ops[-1].operation, ops[-1].status) == ("upgrade", "failed")
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.operation, failed.step, failed.rolled_back_to, failed.undone) == ("upgrade", "readiness", 1,
                                                                                    False)
    revisions = await h.history(runner.deps.helm, t.namespace)
    assert [(r.revision, r.chart_version) for r in revisions] == [(1, "1.1.0"), (2, "1.2.0"), (3, "1.1.0")]
    assert revisions[-1].status == "deployed"
    assert await runner.kube.namespace_exists(t.namespace)  # an upgrade is never undone by deletion
    types = [row.type for row in await h.lifecycle(runner.uow, t.id)]
    assert types[-3:] == ["ReleaseFailing", "HelmRolledBack", "ReleaseFailed"]


async def test_upgrade_that_helm_refuses_is_rolled_back(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    refused = h.make_deps(runner.uow, runner.kube, RefusingUpgrade(runner.deps.helm, runner.kube), runner.clock,
                          runner.deps.settings.charts_dir, runner.deps.settings.compatibility_file)
    await runner.handle(approved(t), deps=refused)
    ops = await runner.settle(t.id)
    assert ops[-1].reason.startswith("upgrade: InvalidObject")
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.step, failed.rolled_back_to) == ("upgrade", 1)
    status = await runner.deps.helm.status("soctalk-tenant", t.namespace)
    assert status.chart_version == "1.1.0" and status.status == "deployed"


class RefusingUpgrade(h.Wrapper):
    """The upgrade leaves a failed revision (the API server rejected a manifest), as Helm does."""

    def __init__(self, inner: Any, kube: Any) -> None:
        super().__init__(inner)
        self.kube = kube

    async def upgrade(self, release: str, chart: str, namespace: str, values: dict, **kw: Any) -> Any:
        info = await self.inner.upgrade(release, chart, namespace, values, **kw)
        await h.force_status(self.kube, namespace, info.revision, "failed")
        raise InvalidObject(f"helm upgrade of release {namespace}/{release}: rejected (injected)")


async def test_suspend_scales_to_zero_and_resume_scales_back(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    await runner.handle(ev.SuspendApproved(tenant_id=t.id))
    await runner.settle(t.id)
    found = await h.workloads(runner.kube, t.namespace)
    assert len(found) >= 7 and all(o["spec"]["replicas"] == 0 for o in found.values())
    assert (await runner.deps.helm.values("soctalk-tenant", t.namespace))["suspended"] is True

    await runner.handle(ev.ResumeApproved(tenant_id=t.id))
    await runner.settle(t.id)
    found = await h.workloads(runner.kube, t.namespace)
    assert all(o["spec"]["replicas"] == 1 for o in found.values())
    applied = await h.emitted(runner.uow, "ChartApplied", t.id)
    assert [(a.operation, a.revision) for a in applied] == [("install", 1), ("suspend", 2), ("resume", 3)]
    await runner.handle(ev.ResumeApproved(tenant_id=t.id))  # already resumed: watched, not upgraded again
    await runner.settle(t.id)
    assert [r.revision for r in await h.history(runner.deps.helm, t.namespace)] == [1, 2, 3]


async def test_decommission_uninstalls_and_waits_for_the_namespace_to_be_gone(runner: h.Runner,
                                                                               kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    # Something outside the release holds the namespace in Terminating for a while (a finalizer).
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": t.namespace, "finalizers": ["soctalk.io/test-hold"]}}
    await runner.kube.apply(held, field_manager="test")
    due = ev.DecommissionDue(tenant_id=t.id, slug=t.slug)
    await runner.handle(due)
    assert await h.history(runner.deps.helm, t.namespace) == []
    assert await runner.watcher.tick() == 0  # the namespace is terminating: not removed yet
    assert await h.emitted(runner.uow, "ChartRemoved", t.id) == []

    await runner.kube.apply({**held, "metadata": {**held["metadata"], "finalizers": []}}, field_manager="test")
    ops = await runner.settle(t.id)
    assert (ops[-1].operation, ops[-1].status) == ("uninstall", "succeeded")
    (removed,) = await h.emitted(runner.uow, "ChartRemoved", t.id)
    assert (removed.release, removed.namespace, removed.causation_id) == ("soctalk-tenant", t.namespace, due.event_id)
    assert not await runner.kube.namespace_exists(t.namespace)

    await runner.handle(ev.DecommissionDue(tenant_id=t.id, slug=t.slug))  # again: nothing left, reported at once
    assert len(await h.emitted(runner.uow, "ChartRemoved", t.id)) == 2
    assert len(await h.ops(runner.uow, t.id)) == 2


async def test_decommission_past_its_deadline_is_reported_failed(runner: h.Runner,
                                                                kubelet: SimulatedKubelet) -> None:
    t = await installed(runner)
    held = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "held", "namespace": t.namespace, "finalizers": ["soctalk.io/test-hold"]}}
    await runner.kube.apply(held, field_manager="test")
    await runner.handle(ev.DecommissionDue(tenant_id=t.id, slug=t.slug))
    runner.clock.advance(runner.deps.own.uninstall_timeout_s + 1)
    ops = await runner.settle(t.id)
    assert (ops[-1].operation, ops[-1].status) == ("uninstall", "failed")
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.operation, failed.step) == ("uninstall", "namespace-deletion")
    await runner.kube.apply({**held, "metadata": {**held["metadata"], "finalizers": []}}, field_manager="test")


async def test_decommission_supersedes_a_wait_in_progress(runner: h.Runner) -> None:
    t = await runner.add_tenant()  # no kubelet: the install wait never ends on its own
    await runner.handle(h.secrets_ready(t))
    await runner.handle(ev.DecommissionDue(tenant_id=t.id, slug=t.slug))
    async def removed() -> list[Any]:
        await runner.watcher.tick()
        return await h.emitted(runner.uow, "ChartRemoved", t.id)
    assert len(await h.eventually(removed, what="ChartRemoved")) == 1
    ops = await h.ops(runner.uow, t.id)
    assert [(o.operation, o.status) for o in ops][:1] == [("install", "failed")]
    assert all(o.status != "waiting" for o in ops)
    assert ops[0].reason.startswith("superseded: replaced by DecommissionDue")
    assert await h.emitted(runner.uow, "ChartFailed", t.id) == []  # the superseded wait is not reported
    assert len(await h.emitted(runner.uow, "ChartRemoved", t.id)) == 1


async def test_concurrent_events_for_one_tenant_never_run_two_helm_operations(
        runner: h.Runner, kubelet: SimulatedKubelet, helm_gateway: Any) -> None:
    """Two replicas (each its own HelmGateway) get events for the same tenant at the same moment."""
    stats = h.Concurrency()
    replicas = [h.make_deps(runner.uow, runner.kube, h.CountingHelm(h.SlowHelm(type(helm_gateway)(
        h.shared_cluster().kubeconfig_path, default_timeout=60)), stats), runner.clock,
        runner.deps.settings.charts_dir, runner.deps.settings.compatibility_file, holder=f"replica-{i}")
        for i in range(2)]
    t = await runner.add_tenant()
    events = [h.secrets_ready(t), h.secrets_ready(t)]

    async def deliver(event: ev.Event, deps: Any) -> None:
        """What the runtime does with a TemporaryError (lease taken): deliver again a little later."""
        async def delivered() -> bool:
            try:
                await runner.handle(event, attempt=2, deps=deps)
            except TemporaryError as exc:
                assert "another operation holds the lease" in str(exc)
                return False
            return True
        await h.eventually(delivered, timeout=20, what=f"{event.event_type} handled")

    await asyncio.gather(*(deliver(e, d) for e, d in zip(events, replicas, strict=True)))
    await runner.settle(t.id)
    await asyncio.gather(deliver(ev.SuspendApproved(tenant_id=t.id), replicas[0]),
                         deliver(ev.DecommissionDue(tenant_id=t.id, slug=t.slug), replicas[1]))
    await runner.settle(t.id)
    assert stats.calls and stats.peak[(t.namespace, "soctalk-tenant")] == 1
    assert [c for c in stats.calls if c[0] == "install"] == [("install", t.namespace)]  # installed once
    for d in replicas:
        d.helm.inner.inner.close()


async def test_diff_shows_the_manifest_change_before_an_upgrade(runner: h.Runner, uow: Any) -> None:
    t = await runner.add_tenant()
    async with uow.sessionmaker() as s:
        row = await s.get(m.Tenant, t.id)
    lines: list[str] = []
    settings = runner.deps.settings
    assert await diff_tenant(settings, uow.sessionmaker, row, "v1.2.0", print_fn=lines.append) == 0
    assert lines[0].startswith(f"tenant {t.slug}: soctalk-tenant v1.1.0 → v1.2.0 (soctalk-system v1.1.0: supported")
    assert any(line.startswith("changed (") and "Deployment/soctalk-adapter" in line for line in lines)
    assert "-    helm.sh/chart: soctalk-tenant-1.1.0" in lines and "+    helm.sh/chart: soctalk-tenant-1.2.0" in lines

    lines.clear()
    assert await diff_tenant(settings, uow.sessionmaker, row, "v1.1.0", print_fn=lines.append) == 0
    assert lines[1:] == ["no manifest changes"]

    lines.clear()
    assert await diff_tenant(settings, uow.sessionmaker, row, "v7.0.0", print_fn=lines.append) == 3
    assert lines == [f"error: soctalk-tenant chart v7.0.0 is not available under {settings.charts_dir} "
                     "(available: v1.1.0, v1.2.0, v1.3.0)"]
    assert await diff_tenant(settings, uow.sessionmaker, row, "nonsense", print_fn=lines.append) == 3

    lines.clear()
    assert await diff_tenant(settings, uow.sessionmaker, row, "v1.3.0", print_fn=lines.append) == 1  # blocked
    assert "blocked — test: never this one" in lines[0]


async def test_diff_through_a_rich_console_prints_manifests_verbatim(runner: h.Runner, uow: Any) -> None:
    from rich.console import Console

    t = await runner.add_tenant()
    async with uow.sessionmaker() as s:
        row = await s.get(m.Tenant, t.id)
    console = Console(record=True, width=200, color_system=None)
    assert await diff_tenant(runner.deps.settings, uow.sessionmaker, row, "v1.2.0", print_fn=console.print) == 0
    assert "+    helm.sh/chart: soctalk-tenant-1.2.0" in console.export_text()
    from soctalk_helm_runner.diff import _printer
    _printer(console.print)('drop: ["ALL"] [bold]not markup[/bold]')
    assert 'drop: ["ALL"] [bold]not markup[/bold]' in console.export_text()


async def test_unknown_tenant_events_go_to_the_dlq(runner: h.Runner) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        await runner.handle(ev.SuspendApproved(tenant_id=uuid.uuid4()))
