"""SimulatedKubelet against the suite's cluster (emulator, or a real API server).

Written for clusters where nothing else runs pods (the emulator, an API server alone, a control
plane without nodes). Workloads meant to fail also use an image that cannot be pulled and a 1 s
progress deadline, so a cluster with real nodes reaches the same verdicts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.config import new_client_from_config
from soctalk_common.gateways.kube import KubeGateway
from soctalk_kubesim import SimulatedKubelet

from tests.contract.conftest import unique
from tests.contract.test_kube_gateway import NEVER_PULLS, PAUSE, deployment, job, statefulset
from tests.support.waiting import eventually


@pytest.fixture
async def apps(kubeconfig: str) -> AsyncIterator[client.AppsV1Api]:
    api_client = await new_client_from_config(kubeconfig)
    yield client.AppsV1Api(api_client)
    await api_client.close()


def make_kubelet(kubeconfig: str, **kw: object) -> SimulatedKubelet:
    return SimulatedKubelet(lambda: new_client_from_config(kubeconfig), **kw)


async def status_of(kube: KubeGateway, kind: str, name: str, namespace: str) -> dict:
    api = "batch/v1" if kind == "Job" else "apps/v1"
    obj = await kube.get(api, kind, name, namespace)
    assert obj is not None
    return obj.get("status") or {}


async def test_marks_workloads_ready_after_the_delay(
        kube: KubeGateway, namespace: str, kubeconfig: str) -> None:
    await kube.apply(deployment(namespace, "web", replicas=3))
    await kube.apply(statefulset(namespace, "db"))
    await kube.apply(job(namespace, "migrate"))
    async with make_kubelet(kubeconfig, delay=0.3):  # started after the objects: the initial list counts
        assert not (await kube.readiness(namespace)).ready  # nothing before the delay
        loop = asyncio.get_running_loop()
        assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready

    web = await status_of(kube, "Deployment", "web", namespace)
    counters = ("readyReplicas", "availableReplicas", "updatedReplicas", "observedGeneration")
    assert [web[k] for k in counters] == [3, 3, 3, 1]
    assert {c["type"]: c["status"] for c in web["conditions"]}["Available"] == "True"
    db = await status_of(kube, "StatefulSet", "db", namespace)
    assert db["readyReplicas"] == 1 and db["currentRevision"] == db["updateRevision"]
    migrate = await status_of(kube, "Job", "migrate", namespace)
    assert migrate["succeeded"] == 1
    assert {c["type"]: c["status"] for c in migrate["conditions"]}["Complete"] == "True"


async def test_leaves_other_namespaces_alone(kube: KubeGateway, kubelet: SimulatedKubelet) -> None:
    other = unique("ct-plain")  # not tenant-*
    await kube.ensure_namespace(other, {"soctalk.io/test": "contract"})
    try:
        await kube.apply(deployment(other, "web", image=NEVER_PULLS))
        tenant_ns = unique("tenant-ct")
        await kube.ensure_namespace(tenant_ns, {"soctalk.io/test": "contract"})
        try:
            await kube.apply(deployment(tenant_ns, "web"))
            loop = asyncio.get_running_loop()
            assert (await kube.wait_ready(tenant_ns, deadline=loop.time() + 20)).ready
        finally:
            await kube.delete_namespace(tenant_ns)
        # The kubelet handled the tenant's events after the other namespace's, so by now it has
        # decided about both: the plain namespace got nothing.
        assert "readyReplicas" not in await status_of(kube, "Deployment", "web", other)
    finally:
        await kube.delete_namespace(other)


async def test_failing_workloads_fail_the_way_real_ones_do(
        kube: KubeGateway, namespace: str, kubeconfig: str) -> None:
    failing = {f"{namespace}/web", f"{namespace}/migrate", f"{namespace}/db"}
    async with make_kubelet(kubeconfig, failing=failing) as sim:
        await kube.apply(deployment(namespace, "web", image=NEVER_PULLS, progressDeadlineSeconds=1))
        await kube.apply(job(namespace, "migrate", image=NEVER_PULLS))
        await kube.apply(statefulset(namespace, "db", image=NEVER_PULLS))
        loop = asyncio.get_running_loop()
        report = await kube.wait_ready(namespace, deadline=loop.time() + 20)  # returns at the first
        assert not report.ready and {w.name for w in report.failing} <= {"web", "migrate"}
        reasons = await eventually(lambda: _two_failed(kube, namespace), what="web and migrate failed")
        assert "ProgressDeadlineExceeded" in reasons["web"]
        assert "BackoffLimitExceeded" in reasons["migrate"]
        db = await status_of(kube, "StatefulSet", "db", namespace)
        assert db.get("readyReplicas", 0) == 0

        sim.heal(f"{namespace}/web")
        await kube.apply(deployment(namespace, "web"))  # fixed: an image that starts
        await kube.delete("batch/v1", "Job", "migrate", namespace)
        await kube.delete("apps/v1", "StatefulSet", "db", namespace)
        # wait_ready would return at once on the still-failing snapshot; the heal lands right after.
        await eventually(lambda: _ready(kube, namespace), what="healed workloads ready")


async def _ready(kube: KubeGateway, namespace: str) -> bool:
    return (await kube.readiness(namespace)).ready


async def _at_least(kubelet: SimulatedKubelet, writes: int) -> bool:
    return kubelet.patched >= writes


async def _two_failed(kube: KubeGateway, namespace: str) -> dict[str, str]:
    """Failure reasons by name once both web and migrate have failed; empty until then."""
    failed = {w.name: w.reason for w in (await kube.readiness(namespace)).failing}
    return failed if set(failed) == {"web", "migrate"} else {}


async def test_reasserts_status_someone_else_overwrote(
        kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet, apps: client.AppsV1Api) -> None:
    await kube.apply(deployment(namespace, "web"))
    loop = asyncio.get_running_loop()
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready
    before = kubelet.patched
    # What a deployment controller that sees no running pods would write:
    overwritten = await apps.patch_namespaced_deployment_status(
        "web", namespace, {"status": {"readyReplicas": 0, "availableReplicas": 0}})
    assert overwritten.status.ready_replicas in (0, None)
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready
    await eventually(lambda: _at_least(kubelet, before + 1), what="the kubelet's second write")


async def test_spec_changes_wait_for_the_delay_again(
        kube: KubeGateway, namespace: str, kubeconfig: str) -> None:
    async with make_kubelet(kubeconfig, delay=0.2) as sim:
        await kube.apply(deployment(namespace, "web"))
        loop = asyncio.get_running_loop()
        assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready
        before = sim.patched
        await kube.apply(deployment(namespace, "web", replicas=2))  # generation 2
        assert not (await kube.readiness(namespace)).ready
        report = await kube.wait_ready(namespace, deadline=loop.time() + 20)
        assert report.ready and report.workloads[0].reason == "2/2 replicas available"
        assert sim.patched == before + 1


async def _pod_ready(kube: KubeGateway, namespace: str, name: str) -> bool:
    pod = await kube.get("v1", "Pod", name, namespace)
    conditions = {c["type"]: c["status"] for c in ((pod or {}).get("status") or {}).get("conditions") or []}
    return bool(pod) and pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


async def test_marks_unscheduled_pods_of_its_workloads_ready(
        kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet) -> None:
    # A StatefulSet that manages nothing itself (0 replicas) owns, without controlling, one pod.
    owner = await kube.apply({**statefulset(namespace, "db"), "spec": {
        **statefulset(namespace, "db")["spec"], "replicas": 0}})
    ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": owner["metadata"]["uid"],
           "controller": False}

    def pod(name: str, **spec: object) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "ownerReferences": [ref],
                             "labels": {"app": "db-manual"}},
                "spec": {"containers": [{"name": "main", "image": PAUSE}], **spec}}

    await kube.apply(pod("bound", nodeName="soctalk-no-such-node"))  # a real kubelet's business
    await kube.apply(pod("unscheduled"))
    await eventually(lambda: _pod_ready(kube, namespace, "unscheduled"), what="pod marked ready")
    bound = await kube.get("v1", "Pod", "bound", namespace)
    assert bound is None or (bound.get("status") or {}).get("phase") != "Running"
