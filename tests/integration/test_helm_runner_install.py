"""Install on SecretsReady: the wait is recorded (never held in a handler), readiness is reported by the
watcher, failures are undone, crashes resume without a second install, stuck releases are recovered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import InvalidObject, TemporaryError, Unavailable
from soctalk_helm_runner import drift
from soctalk_kubesim import SimulatedKubelet
from sqlalchemy import select

from tests.integration import test_helm_runner_harness as h
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

kube, kubelet, runner, helm_gateway = h.kube, h.kubelet, h.runner, h.helm_gateway
charts_dir, compat_file = h.charts_dir, h.compat_file


async def test_install_waits_for_readiness_then_reports_chart_applied(runner: h.Runner,
                                                                      kubelet: SimulatedKubelet) -> None:
    t = await runner.add_tenant()
    cause = h.secrets_ready(t)
    await runner.handle(cause)

    (op,) = await h.ops(runner.uow, t.id)  # the handler recorded the wait and returned
    assert (op.operation, op.status, op.revision, op.chart_version) == ("install", "waiting", 1, "v1.1.0")
    assert op.deadline == runner.clock.now() + __import__("datetime").timedelta(seconds=h.READINESS_S)
    assert await h.emitted(runner.uow, "ChartApplied", t.id) == []
    # What to wait for was taken from the install's own manifest: the same as the stored release says.
    stored = await runner.deps.helm.manifest("soctalk-tenant", t.namespace)
    assert op.expected_workloads == drift.workload_names(drift.parse_manifest(stored))
    assert "Deployment/thehive" in op.expected_workloads

    (op,) = await runner.settle(t.id)
    assert op.status == "succeeded"
    (applied,) = await h.emitted(runner.uow, "ChartApplied", t.id)
    assert (applied.operation, applied.release, applied.namespace, applied.revision, applied.chart_version) == (
        "install", "soctalk-tenant", t.namespace, 1, "v1.1.0")
    assert (applied.correlation_id, applied.causation_id) == (cause.correlation_id, cause.event_id)
    types = [row.type for row in await h.lifecycle(runner.uow, t.id)]
    assert types == ["HelmInstalled", "ReadinessWaitStarted", "ReleaseReady"]
    found = await h.workloads(runner.kube, t.namespace)
    assert {"StatefulSet/wazuh-manager", "StatefulSet/wazuh-indexer", "StatefulSet/cassandra", "Deployment/thehive",
            "Deployment/cortex", "Deployment/soctalk-adapter"} <= set(found)
    assert [r.revision for r in await h.history(runner.deps.helm, t.namespace)] == [1]


async def test_slow_workload_within_the_timeout_is_still_applied(runner: h.Runner) -> None:
    slow = h.shared_cluster().kubelet(delay=1.0)
    await slow.start()
    try:
        t = await runner.add_tenant()
        await runner.handle(h.secrets_ready(t))
        assert await runner.watcher.tick() == 0  # not ready yet
        runner.clock.advance(h.READINESS_S - 1)  # most of the timeout passes: still waiting, not failed
        assert await runner.watcher.tick() == 0
        (op,) = await runner.settle(t.id)
    finally:
        await slow.stop()
    assert op.status == "succeeded"
    assert [e.operation for e in await h.emitted(runner.uow, "ChartApplied", t.id)] == ["install"]


async def test_failing_workload_is_uninstalled_and_the_namespace_deleted(runner: h.Runner,
                                                                         kubelet: SimulatedKubelet) -> None:
    t = await runner.add_tenant()
    kubelet.fail(f"{t.namespace}/thehive")
    await runner.handle(h.secrets_ready(t))
    (op,) = await runner.settle(t.id)

    assert op.status == "failed" and op.reason.startswith("readiness: Deployment/thehive: ProgressDeadlineExceeded")
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.operation, failed.step, failed.undone, failed.rolled_back_to) == ("install", "readiness", True,
                                                                                     None)
    assert "thehive" in failed.reason
    assert await h.history(runner.deps.helm, t.namespace) == []
    assert not await runner.kube.namespace_exists(t.namespace)
    types = [row.type for row in await h.lifecycle(runner.uow, t.id)]
    assert types[-5:] == ["ReleaseFailing", "HelmUninstalled", "NamespaceDeletionRequested", "ChartRemoved",
                          "ReleaseFailed"]
    assert await h.emitted(runner.uow, "ChartApplied", t.id) == []
    (removed,) = await h.emitted(runner.uow, "ChartRemoved", t.id)
    assert (removed.namespace, removed.correlation_id) == (t.namespace, failed.correlation_id)


async def test_readiness_timeout_undoes_the_install(runner: h.Runner) -> None:
    t = await runner.add_tenant()  # no kubelet: nothing ever becomes ready
    await runner.handle(h.secrets_ready(t))
    assert await runner.watcher.tick() == 0
    runner.clock.advance(h.READINESS_S + 1)
    (op,) = await runner.settle(t.id)
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.step, failed.undone) == ("readiness-timeout", True)
    assert failed.reason.startswith(f"not ready within {h.READINESS_S:g}s: ")
    assert "StatefulSet/cassandra" in failed.reason
    assert not await runner.kube.namespace_exists(t.namespace)


async def test_crash_between_install_and_wait_resumes_without_a_second_install(runner: h.Runner,
                                                                                kubelet: SimulatedKubelet) -> None:
    crashing = h.CrashAfterInstall(runner.deps.helm)
    deps = h.make_deps(runner.uow, runner.kube, crashing, runner.clock, runner.deps.settings.charts_dir,
                       runner.deps.settings.compatibility_file)
    t = await runner.add_tenant()
    cause = h.secrets_ready(t)
    with pytest.raises(ConnectionResetError):
        await runner.handle(cause, deps=deps)  # installed, then died: nothing recorded, message not acked
    assert await h.ops(runner.uow, t.id) == []

    await runner.handle(cause, attempt=2, deps=deps)  # the redelivery observes the release and only watches
    (waiting,) = await h.ops(runner.uow, t.id)
    assert waiting.expected_workloads is None  # nothing written this time: the watcher reads the release
    (op,) = await runner.settle(t.id)
    assert op.status == "succeeded" and op.revision == 1
    assert crashing.installs == 1
    assert [r.revision for r in await h.history(runner.deps.helm, t.namespace)] == [1]  # exactly one revision
    assert len(await h.emitted(runner.uow, "ChartApplied", t.id)) == 1
    installed = [r for r in await h.lifecycle(runner.uow, t.id) if r.type == "HelmInstalled"]
    assert len(installed) == 1 and installed[0].details["recovered"] is True  # the lost record, written once


async def test_repeated_secrets_ready_never_installs_twice(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await runner.add_tenant()
    first = h.secrets_ready(t)
    await runner.handle(first)
    await runner.handle(first)  # the same message again: already in the inbox, nothing happens
    again = h.secrets_ready(t)  # a retry's re-emitted SecretsReady while the wait is on: nothing new
    await runner.handle(again)
    assert len(await h.ops(runner.uow, t.id)) == 1
    await runner.settle(t.id)
    await runner.handle(h.secrets_ready(t))  # after success: watched again, reported again, not installed
    ops = await runner.settle(t.id)
    assert [(o.operation, o.status, o.revision) for o in ops] == [("install", "succeeded", 1)] * 2
    assert [r.revision for r in await h.history(runner.deps.helm, t.namespace)] == [1]
    async with runner.uow.sessionmaker() as s:
        inbox = (await s.execute(select(m.Inbox).where(m.Inbox.event_id == first.event_id))).scalars().all()
    assert len(inbox) == 1


async def test_pending_install_left_by_a_crash_is_recovered(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    t = await runner.add_tenant()
    await runner.handle(h.secrets_ready(t))
    await runner.settle(t.id)
    await h.force_status(runner.kube, t.namespace, 1, "pending-install")  # a writer killed mid-install

    await runner.handle(h.secrets_ready(t))
    ops = await runner.settle(t.id)
    assert ops[-1].status == "succeeded"
    (last,) = [r for r in await h.history(runner.deps.helm, t.namespace)]
    assert (last.revision, last.status) == (1, "deployed")  # uninstalled, then installed afresh
    types = [row.type for row in await h.lifecycle(runner.uow, t.id)]
    assert types[-4:] == ["PendingReleaseRecovered", "HelmInstalled", "ReadinessWaitStarted", "ReleaseReady"]


async def test_too_recent_pending_release_is_left_alone_and_retried(runner: h.Runner,
                                                                   kubelet: SimulatedKubelet) -> None:
    deps = h.make_deps(runner.uow, runner.kube, runner.deps.helm, runner.clock, runner.deps.settings.charts_dir,
                       runner.deps.settings.compatibility_file, own=h.own_settings(pending_min_age_s=3600))
    t = await runner.add_tenant()
    await runner.handle(h.secrets_ready(t))
    await runner.settle(t.id)
    await h.force_status(runner.kube, t.namespace, 1, "pending-install")
    with pytest.raises(TemporaryError, match="younger than 3600s"):
        await runner.handle(h.secrets_ready(t), deps=deps)


async def test_invalid_values_fail_before_any_helm_write_with_json_paths(runner: h.Runner) -> None:
    t = await runner.add_tenant()
    bad = dict(t.config)
    bad["llm"] = {**bad["llm"], "model": "gpt 4o"}  # the chart's schema refuses whitespace in a model name
    bad["allowedLlmHosts"] = ["API.example"]
    await runner.set_tenant(t.id, config=bad)
    await runner.handle(h.secrets_ready(t))
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.operation, failed.step, failed.undone) == ("install", "values", False)
    assert "$.llm.model:" in failed.reason and "$.allowedLlmHosts[0]:" in failed.reason
    assert await h.ops(runner.uow, t.id) == [] and await h.history(runner.deps.helm, t.namespace) == []
    assert await runner.kube.namespace_exists(t.namespace)  # nothing was installed: nothing to undo


async def test_compatibility_and_unknown_versions_are_refused(runner: h.Runner) -> None:
    blocked = await runner.add_tenant(chart_version="v1.3.0")
    await runner.handle(h.secrets_ready(blocked))
    (failed,) = await h.emitted(runner.uow, "ChartFailed", blocked.id)
    assert failed.step == "compatibility" and "v1.3.0 is blocked" in failed.reason
    unknown = await runner.add_tenant(chart_version="v1.9.0")
    await runner.handle(h.secrets_ready(unknown))
    (failed,) = await h.emitted(runner.uow, "ChartFailed", unknown.id)
    assert failed.step == "chart" and "v1.9.0 is not available" in failed.reason
    assert await h.history(runner.deps.helm, blocked.namespace) == []


async def test_missing_namespace_is_reported_not_installed(runner: h.Runner) -> None:
    t = await runner.add_tenant(namespace=False)
    await runner.handle(h.secrets_ready(t))
    (missing,) = await h.emitted(runner.uow, "NamespaceMissing", t.id)
    assert missing.namespace == t.namespace
    assert await h.ops(runner.uow, t.id) == []


async def test_edge_haproxy_tenants_get_a_port_pair_once(runner: h.Runner, kubelet: SimulatedKubelet) -> None:
    edge = {"mode": "edge-haproxy", "hostname": "edge.soc.mssp.example.com"}
    a = await runner.add_tenant(wazuhIngress=edge)
    b = await runner.add_tenant(wazuhIngress=edge)
    await asyncio.gather(runner.handle(h.secrets_ready(a)), runner.handle(h.secrets_ready(b)))
    await runner.settle(a.id)
    await runner.settle(b.id)
    ports = []
    for t in (a, b):
        values = await runner.deps.helm.values("soctalk-tenant", t.namespace)
        ports.append(values["wazuhIngress"]["edgePorts"])
        async with runner.uow.sessionmaker() as s:
            assert (await s.get(m.Tenant, t.id)).edge_ports == values["wazuhIngress"]["edgePorts"]
    assert ports[0] != ports[1]
    assert sorted(p["events"] for p in ports) == [15140, 15142]


async def test_torn_down_tenants_are_not_installed(runner: h.Runner) -> None:
    t = await runner.add_tenant(state="decommissioning")
    await runner.handle(ev.SecretsReady(tenant_id=t.id, namespace=t.namespace, references=[]))
    assert await h.ops(runner.uow, t.id) == [] and await h.history(runner.deps.helm, t.namespace) == []


async def test_watcher_reports_each_operation_once_across_replicas(runner: h.Runner,
                                                                   kubelet: SimulatedKubelet) -> None:
    t = await runner.add_tenant()
    await runner.handle(h.secrets_ready(t))

    async def ready() -> bool:
        report = await runner.kube.readiness(t.namespace)
        return report.ready and len(report.workloads) >= 7
    await eventually(ready, what="workloads ready")
    other = h.Watcher(runner.deps)
    closed = await asyncio.gather(runner.watcher.tick(), other.tick(), h.Watcher(runner.deps).tick())
    assert sum(closed) == 1
    assert len(await h.emitted(runner.uow, "ChartApplied", t.id)) == 1


class BrokenDiscovery(h.Wrapper):
    async def list(self, *args: object, **kwargs: object) -> object:
        raise InvalidObject("API discovery answered nonsense (injected)")


class UnreachableHelm(h.Wrapper):
    async def install(self, *args: object, **kwargs: object) -> object:
        raise Unavailable("helm install: Kubernetes cluster unreachable (injected)")


async def test_a_failing_check_before_any_write_never_undoes(runner: h.Runner) -> None:
    deps = h.make_deps(runner.uow, BrokenDiscovery(runner.kube), runner.deps.helm, runner.clock,
                       runner.deps.settings.charts_dir, runner.deps.settings.compatibility_file)
    t = await runner.add_tenant()
    await runner.handle(h.secrets_ready(t), deps=deps)
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.step, failed.undone) == ("prepare", False) and "nonsense" in failed.reason
    assert await runner.kube.namespace_exists(t.namespace) and await h.ops(runner.uow, t.id) == []


async def test_temporary_helm_errors_are_retried_then_undone_on_the_last_delivery(runner: h.Runner) -> None:
    deps = h.make_deps(runner.uow, runner.kube, UnreachableHelm(runner.deps.helm), runner.clock,
                       runner.deps.settings.charts_dir, runner.deps.settings.compatibility_file)
    t = await runner.add_tenant()
    cause = h.secrets_ready(t)
    with pytest.raises(Unavailable):
        await runner.handle(cause, attempt=1, deps=deps)  # the runtime redelivers with backoff
    assert await h.ops(runner.uow, t.id) == []
    await runner.handle(cause, attempt=deps.max_deliver - 1, deps=deps)  # next-to-last: give up, report
    (op,) = await runner.settle(t.id)
    (failed,) = await h.emitted(runner.uow, "ChartFailed", t.id)
    assert (failed.step, failed.undone) == ("install", True) and "unreachable" in failed.reason
    assert op.reason.startswith("install: Unavailable")
    assert not await runner.kube.namespace_exists(t.namespace)


def crd(group: str, version: str, kind: str, plural: str) -> dict[str, object]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True, "schema": schema}]}}


async def test_cilium_and_cert_manager_objects_are_rendered_when_the_cluster_serves_them(
        uow: h.UnitOfWorkFactory, charts_dir: h.Path, compat_file: h.Path) -> None:
    """A private emulator with the two CRDs (a shared or real cluster is left alone)."""
    from soctalk_kubesim import start_cluster

    private = start_cluster()
    gw = await h.KubeGateway.from_kubeconfig(private.kubeconfig_path)
    helm = h.HelmGateway(private.kubeconfig_path, default_timeout=60)
    try:
        await gw.apply(crd("cilium.io", "v2", "CiliumNetworkPolicy", "ciliumnetworkpolicies"))
        await gw.apply(crd("cert-manager.io", "v1", "Certificate", "certificates"))
        clock = h.FakeClock()
        r = h.Runner(uow, gw, h.make_deps(uow, gw, helm, clock, charts_dir, compat_file), clock)
        t = await r.add_tenant()
        await r.handle(h.secrets_ready(t))
        assert await gw.get("cilium.io/v2", "CiliumNetworkPolicy", "allow-llm-egress", t.namespace) is not None
        assert await gw.get("cert-manager.io/v1", "Certificate", "wazuh-agent-tls", t.namespace) is not None
        values = await helm.values("soctalk-tenant", t.namespace)
        assert values["networkPolicies"]["fqdnEngine"] == "cilium"
        assert values["wazuhIngress"]["tls"]["issuerRef"] == "letsencrypt-prod"
    finally:
        helm.close()
        await gw.close()
        private.stop()


async def test_finished_operations_past_the_retention_are_pruned(runner: h.Runner) -> None:
    """Old finished rows go; in-flight rows and each tenant's newest applied operation stay."""
    from datetime import timedelta

    from soctalk_helm_runner.bootstrap import prune

    a, b = await runner.add_tenant(), await runner.add_tenant()
    now = runner.clock.now()
    old, recent = now - timedelta(days=40), now - timedelta(days=1)

    def row(t: Any, operation: str, status: str, finished: object) -> m.ReleaseOperation:
        return m.ReleaseOperation(tenant_id=t.id, operation=operation, release="soctalk-tenant",
                                  namespace=t.namespace, chart_version="v1.1.0", status=status,
                                  deadline=now, correlation_id=a.id, finished_at=finished)

    async with runner.uow() as tx:
        rows = [row(a, "install", "succeeded", old), row(a, "suspend", "succeeded", old),
                row(a, "resume", "failed", old), row(a, "upgrade", "waiting", None),
                row(b, "install", "succeeded", old), row(b, "upgrade", "failed", recent),
                row(b, "uninstall", "succeeded", old)]
        tx.session.add_all(rows)
        await tx.commit()
    ids = [r.id for r in rows]

    assert await prune(runner.deps) == 3  # retention is 30 days by default
    left = {(o.operation, o.status) for t in (a, b) for o in await h.ops(runner.uow, t.id)}
    assert left == {("suspend", "succeeded"), ("upgrade", "waiting"),  # a: newest applied, in flight
                    ("install", "succeeded"), ("upgrade", "failed")}  # b: newest applied, recent
    assert await prune(runner.deps) == 0
    assert ids[1] in {o.id for o in await h.ops(runner.uow, a.id)}
