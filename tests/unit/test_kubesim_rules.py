"""The simulated kubelet's statuses read back through the gateway's readiness rules.

What the kubelet writes for a healthy or failing workload must be classified the way a real
controller's status is: ready, not yet ready, or failed.
"""

from __future__ import annotations

import pytest
from soctalk_common.gateways.kube import build_report, workload_status
from soctalk_kubesim.kubelet import desired_status, in_desired_state

pytestmark = pytest.mark.unit


def workload(kind: str, replicas: int = 2, generation: int = 3, status: dict | None = None,
             **spec: object) -> dict:
    spec = {"replicas": replicas, **spec} if kind != "Job" else {"completions": 1, "backoffLimit": 2}
    meta = {"name": kind.lower(), "namespace": "tenant-a", "generation": generation}
    return {"kind": kind, "metadata": meta, "spec": spec, "status": status or {}}


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "Job"])
def test_healthy_status_reads_as_ready(kind: str) -> None:
    obj = workload(kind)
    assert not workload_status(obj)[0].ready
    assert not in_desired_state(obj, failing=False)
    obj["status"] = desired_status(obj, failing=False)
    status, failed = workload_status(obj)
    assert status.ready and not failed
    assert in_desired_state(obj, failing=False)


@pytest.mark.parametrize(("kind", "failed"), [("Deployment", True), ("StatefulSet", False), ("Job", True)])
def test_failing_status_reads_as_failed_where_kubernetes_can_tell(kind: str, failed: bool) -> None:
    obj = workload(kind)
    obj["status"] = desired_status(obj, failing=True)
    status, is_failed = workload_status(obj)
    assert not status.ready and is_failed is failed
    assert in_desired_state(obj, failing=True)
    if kind != "Job":
        assert not in_desired_state(obj, failing=False)  # heal() rewrites it


def test_a_new_generation_is_not_ready_until_observed() -> None:
    obj = workload("Deployment")
    obj["status"] = desired_status(obj, failing=False)
    obj["metadata"]["generation"] += 1
    status, failed = workload_status(obj)
    assert (status.ready, failed, status.reason) == (False, False, "spec change not yet observed")
    assert not in_desired_state(obj, failing=False)


@pytest.mark.parametrize(("status", "reason"), [
    ({"observedGeneration": 3, "updatedReplicas": 1, "availableReplicas": 1}, "1/2 replicas updated"),
    ({"observedGeneration": 3, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2},
     "1 old replicas pending termination"),
    ({"observedGeneration": 3, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1},
     "1/2 replicas available"),
])
def test_deployment_rollout_stages(status: dict, reason: str) -> None:
    result, failed = workload_status(workload("Deployment", status=status))
    assert (result.ready, failed, result.reason) == (False, False, reason)


def test_zero_replicas_is_ready_and_deleting_is_not() -> None:
    assert workload_status(workload("Deployment", replicas=0, status={"observedGeneration": 3}))[0].ready
    obj = workload("Deployment", replicas=0, status={"observedGeneration": 3})
    obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert not workload_status(obj)[0].ready


def test_report_explains_unready_pods() -> None:
    deploy = workload("Deployment", selector={"matchLabels": {"app": "web"}})
    pod = {"metadata": {"name": "web-1", "labels": {"app": "web"}},
           "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}
    stranger = {"metadata": {"name": "db-1", "labels": {"app": "db"}},
                "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    report = build_report([deploy], [pod, stranger])
    assert not report.ready and report.failing == []
    assert report.workloads[0].reason.endswith("pod web-1: ImagePullBackOff")
    assert build_report([]).ready
