"""KubeGateway against the emulator or, with SOCTALK_TEST_KUBECONFIG, a real cluster."""

from __future__ import annotations

import asyncio

import pytest
from soctalk_common.errors import Conflict, InvalidObject, NotFound
from soctalk_common.gateways.kube import RESTARTED_AT_ANNOTATION, VERSION_LABEL_ANNOTATION, KubeGateway
from soctalk_kubesim import SimulatedKubelet

from tests.contract.conftest import unique
from tests.support.waiting import eventually

# Workloads meant to become ready run images that really start on clusters with nodes (elsewhere
# the simulated kubelet makes them ready); workloads meant to stay unready use an image no
# registry serves.
PAUSE = "registry.k8s.io/pause:3.10"
JOB_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
NEVER_PULLS = "registry.invalid/soctalk/none:0"


def deployment(namespace: str, name: str, replicas: int = 1, image: str = PAUSE, **spec: object) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"soctalk.io/test": "contract"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, **spec,
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "main", "image": image}]}}},
    }


def statefulset(namespace: str, name: str, image: str = PAUSE) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"soctalk.io/test": "contract"}},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "main", "image": image}]}}},
    }


def job(namespace: str, name: str, image: str = JOB_IMAGE) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {"soctalk.io/test": "contract"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "command": ["true"]}]}}},
    }


def configmap(namespace: str, name: str, data: dict[str, str], labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "data": data}


# --- namespaces ---------------------------------------------------------------------------------


async def test_ensure_namespace_is_idempotent_and_merges_labels(kube: KubeGateway) -> None:
    name = unique("tenant-ct")
    try:
        await kube.ensure_namespace(name, {"soctalk.io/tenant": "acme"})
        await kube.ensure_namespace(name, {"soctalk.io/tenant": "acme"})
        await kube.ensure_namespace(name, {"soctalk.io/tier": "gold"})
        assert await kube.namespace_exists(name)
        ns = await kube.get("v1", "Namespace", name)
        assert ns is not None
        labels = ns["metadata"]["labels"]
        assert labels["soctalk.io/tenant"] == "acme"
        assert labels["soctalk.io/tier"] == "gold"
    finally:
        await kube.delete_namespace(name, wait=True)


async def test_deleted_namespace_goes_away_with_its_contents(kube: KubeGateway) -> None:
    name = unique("tenant-ct")
    await kube.ensure_namespace(name, {})
    await kube.create_secret(name, "inside", {"k": "v"})
    await kube.apply(configmap(name, "inside", {"a": "b"}))

    await kube.delete_namespace(name, wait=True, timeout=60)

    assert not await kube.namespace_exists(name)
    assert await kube.read_secret(name, "inside") is None
    assert await kube.get("v1", "ConfigMap", "inside", name) is None
    await kube.delete_namespace(name)  # idempotent
    await kube.delete_namespace(name, wait=True)


# --- secrets ------------------------------------------------------------------------------------


async def test_secret_create_read_patch_list_delete(kube: KubeGateway, namespace: str) -> None:
    await kube.create_secret(namespace, "wazuh-bootstrap", {"password": "s3cret", "user": "admin"},
                             labels={"soctalk.io/tenant": "acme"}, annotations={"team": "soc"})
    record = await kube.read_secret(namespace, "wazuh-bootstrap")
    assert record is not None
    assert record.data == {"password": "s3cret", "user": "admin"}
    assert record.version_label == "v1"
    assert record.annotations[VERSION_LABEL_ANNOTATION] == "v1"
    assert record.annotations["team"] == "soc"
    assert record.labels == {"soctalk.io/tenant": "acme"}
    assert record.type == "Opaque"
    assert record.resource_version

    await kube.patch_secret(namespace, "wazuh-bootstrap", {"password": "n3w"}, version_label="v2")
    patched = await kube.read_secret(namespace, "wazuh-bootstrap")
    assert patched is not None
    assert patched.data == {"password": "n3w", "user": "admin"}  # other keys stay
    assert patched.version_label == "v2"
    assert patched.resource_version != record.resource_version

    await kube.create_secret(namespace, "unrelated", {"x": "y"}, labels={"soctalk.io/tenant": "other"})
    listed = await kube.list_secrets(namespace, "soctalk.io/tenant=acme")
    assert [s.name for s in listed] == ["wazuh-bootstrap"]

    await kube.delete_secret(namespace, "wazuh-bootstrap")
    await kube.delete_secret(namespace, "wazuh-bootstrap")  # idempotent
    assert await kube.read_secret(namespace, "wazuh-bootstrap") is None


async def test_secret_errors_name_the_object(kube: KubeGateway, namespace: str) -> None:
    await kube.create_secret(namespace, "adapter-token", {"token": "canary-do-not-leak"})
    with pytest.raises(Conflict) as conflict:
        await kube.create_secret(namespace, "adapter-token", {"token": "canary-do-not-leak"})
    assert f"secret {namespace}/adapter-token" in str(conflict.value)
    assert "canary" not in str(conflict.value)

    with pytest.raises(NotFound) as missing:
        await kube.patch_secret(namespace, "absent", {"k": "canary-do-not-leak"}, version_label="v2")
    assert f"secret {namespace}/absent" in str(missing.value)
    assert "canary" not in str(missing.value)

    with pytest.raises(InvalidObject) as invalid:
        await kube.create_secret(namespace, "Not_A_Valid_Name", {"k": "canary-do-not-leak"})
    assert "Not_A_Valid_Name" in str(invalid.value)
    assert "canary" not in str(invalid.value)

    assert await kube.read_secret(unique("tenant-ct-absent"), "x") is None


# --- any kind: apply / get / list / delete --------------------------------------------------------


async def test_apply_creates_updates_and_prunes_fields(kube: KubeGateway, namespace: str) -> None:
    created = await kube.apply(configmap(namespace, "settings", {"a": "1", "b": "2"}, {"tier": "x"}))
    assert created["metadata"]["uid"]
    assert created["data"] == {"a": "1", "b": "2"}

    updated = await kube.apply(configmap(namespace, "settings", {"a": "10"}, {"tier": "x"}))
    assert updated["data"] == {"a": "10"}  # b was ours and is no longer applied
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    got = await kube.get("v1", "ConfigMap", "settings", namespace)
    assert got is not None and got["data"] == {"a": "10"}
    await kube.apply(configmap(namespace, "other", {"c": "3"}, {"tier": "y"}))
    names = [o["metadata"]["name"] for o in await kube.list("v1", "ConfigMap", namespace, "tier=x")]
    assert names == ["settings"]

    await kube.delete("v1", "ConfigMap", "settings", namespace)
    await kube.delete("v1", "ConfigMap", "settings", namespace)  # idempotent
    assert await kube.get("v1", "ConfigMap", "settings", namespace) is None


async def test_apply_conflict_between_managers_unless_forced(kube: KubeGateway, namespace: str) -> None:
    await kube.apply(configmap(namespace, "shared", {"owner": "one"}), field_manager="manager-one")
    with pytest.raises(Conflict) as conflict:
        await kube.apply(configmap(namespace, "shared", {"owner": "two"}), field_manager="manager-two",
                         force=False)
    assert f"ConfigMap {namespace}/shared" in str(conflict.value)
    forced = await kube.apply(configmap(namespace, "shared", {"owner": "two"}), field_manager="manager-two")
    assert forced["data"] == {"owner": "two"}


async def test_apply_and_get_reject_bad_input(kube: KubeGateway, namespace: str) -> None:
    with pytest.raises(InvalidObject, match="namespace is required"):
        await kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(NotFound, match="NoSuchKind"):
        await kube.get("v1", "NoSuchKind", "x", namespace)
    with pytest.raises(NotFound, match="example.invalid/v1"):
        await kube.get("example.invalid/v1", "Widget", "x", namespace)
    cluster_scoped = await kube.list("rbac.authorization.k8s.io/v1", "ClusterRole")
    assert isinstance(cluster_scoped, list)


# --- readiness --------------------------------------------------------------------------------


async def test_wait_ready_follows_the_kubelet(kube: KubeGateway, namespace: str, kubeconfig: str) -> None:
    from kubernetes_asyncio.config import new_client_from_config

    sim = SimulatedKubelet(lambda: new_client_from_config(kubeconfig), delay=0.3)
    await sim.start()
    try:
        await kube.apply(deployment(namespace, "web", replicas=2))
        await kube.apply(statefulset(namespace, "db"))
        await kube.apply(job(namespace, "migrate"))

        snapshot = await kube.readiness(namespace)
        assert not snapshot.ready
        assert {(w.kind, w.name) for w in snapshot.workloads} == {
            ("Deployment", "web"), ("StatefulSet", "db"), ("Job", "migrate")}
        assert snapshot.failing == []

        loop = asyncio.get_running_loop()
        report = await kube.wait_ready(namespace, deadline=loop.time() + 20)
        assert report.ready, report
        assert all(w.ready for w in report.workloads)
        assert (await kube.readiness(namespace, "soctalk.io/test=contract")).ready
    finally:
        await sim.stop()


async def test_wait_ready_stops_at_the_deadline(kube: KubeGateway, namespace: str) -> None:
    await kube.apply(deployment(namespace, "stuck", image=NEVER_PULLS))
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await kube.wait_ready(namespace, deadline=started + 0.5)
    elapsed = loop.time() - started
    assert not report.ready
    assert [(w.kind, w.name) for w in report.failing] == [("Deployment", "stuck")]
    assert "not ready by the deadline" in report.failing[0].reason
    assert 0.4 < elapsed < 5


async def test_wait_ready_returns_early_when_a_workload_fails(
        kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet) -> None:
    kubelet.fail(f"{namespace}/broken")
    # progressDeadlineSeconds: 1 lets a real deployment controller reach the same verdict.
    await kube.apply(deployment(namespace, "broken", image=NEVER_PULLS, progressDeadlineSeconds=1))
    await kube.apply(deployment(namespace, "fine"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await kube.wait_ready(namespace, deadline=started + 60)
    assert loop.time() - started < 30
    assert not report.ready
    assert [w.name for w in report.failing] == ["broken"]
    assert "ProgressDeadlineExceeded" in report.failing[0].reason


async def test_empty_namespace_is_ready(kube: KubeGateway, namespace: str) -> None:
    loop = asyncio.get_running_loop()
    report = await kube.wait_ready(namespace, deadline=loop.time() + 5)
    assert report.ready and report.workloads == []


async def test_restart_workloads_rolls_the_pod_template(
        kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet) -> None:
    await kube.apply(deployment(namespace, "adapter"))
    await kube.apply(statefulset(namespace, "indexer"))
    loop = asyncio.get_running_loop()
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready
    before = await kube.get("apps/v1", "Deployment", "adapter", namespace)
    assert before is not None

    await kube.restart_workloads(namespace, [("Deployment", "adapter"), ("StatefulSet", "indexer")])

    for kind, name in (("Deployment", "adapter"), ("StatefulSet", "indexer")):
        obj = await kube.get("apps/v1", kind, name, namespace)
        assert obj is not None
        assert RESTARTED_AT_ANNOTATION in obj["spec"]["template"]["metadata"]["annotations"]
    after = await kube.get("apps/v1", "Deployment", "adapter", namespace)
    assert after is not None
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 20)).ready
    with pytest.raises(InvalidObject):
        await kube.restart_workloads(namespace, [("Job", "x")])
    with pytest.raises(NotFound, match=f"Deployment {namespace}/absent"):
        await kube.restart_workloads(namespace, [("Deployment", "absent")])


# --- access reviews -------------------------------------------------------------------------------


async def test_can_i_answers_a_subject_access_review(kube: KubeGateway, namespace: str) -> None:
    allowed = await kube.can_i(service_account="default", namespace=namespace, verb="create",
                               resource="namespaces", resource_namespace="")
    assert isinstance(allowed, bool)


async def test_tenant_role_reads_only_its_own_secrets(
        kube: KubeGateway, namespace: str, emulated: bool) -> None:
    if emulated:
        pytest.skip("kubesim does not enforce RBAC (every access review is allowed); "
                    "run with SOCTALK_TEST_KUBECONFIG to check a real cluster")
    other = unique("tenant-ct")
    await kube.ensure_namespace(other, {"soctalk.io/test": "contract"})
    try:
        await kube.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": {"name": "adapter", "namespace": namespace}})
        await kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                          "metadata": {"name": "adapter-secrets", "namespace": namespace},
                          "rules": [{"apiGroups": [""], "resources": ["secrets"],
                                     "verbs": ["get", "list", "watch"]}]})
        await kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                          "metadata": {"name": "adapter-secrets", "namespace": namespace},
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "adapter-secrets"},
                          "subjects": [{"kind": "ServiceAccount", "name": "adapter",
                                        "namespace": namespace}]})

        async def can(verb: str, where: str) -> bool:
            return await kube.can_i(service_account="adapter", namespace=namespace, verb=verb,
                                    resource="secrets", resource_namespace=where)

        assert await eventually(lambda: can("get", namespace), what="RoleBinding to take effect")
        assert await can("list", namespace)
        assert not await can("get", other)
        assert not await can("delete", namespace)
        assert not await kube.can_i(service_account="adapter", namespace=namespace, verb="get",
                                    resource="secrets", resource_namespace="soctalk-system")
    finally:
        await kube.delete_namespace(other)


# --- the gateway as services load it ------------------------------------------------------------


def test_the_gateway_works_with_kubernetes_asyncio_deferred(kubeconfig: str) -> None:
    """In this test process kubernetes_asyncio is fully imported (fixtures use its typed clients);
    a service process imports only the gateway, which defers the package's API and model modules
    (soctalk_common.gateways._kube_client). The same calls, in a fresh interpreter, on this cluster."""
    import json
    import subprocess
    import sys
    import textwrap
    import uuid

    namespace = f"tenant-ct-{uuid.uuid4().hex[:8]}"
    code = textwrap.dedent(f"""
        import asyncio, json, sys
        from soctalk_common.gateways.kube import KubeGateway
        from soctalk_common.gateways._kube_client import deferred_packages

        async def main():
            kube = await KubeGateway.from_kubeconfig({kubeconfig!r})
            try:
                await kube.ensure_namespace({namespace!r}, {{"soctalk.io/test": "contract"}})
                await kube.create_secret({namespace!r}, "s", {{"k": "v"}}, version_label="v1")
                secret = await kube.read_secret({namespace!r}, "s")
                listed = [s.name for s in await kube.list_secrets({namespace!r})]
                loop = asyncio.get_running_loop()
                report = await kube.wait_ready({namespace!r}, deadline=loop.time() + 5)  # list + watch
                await kube.delete_namespace({namespace!r})
                return secret.data, secret.version_label, listed, report.ready
            finally:
                await kube.close()

        data, label, listed, ready = asyncio.run(main())
        heavy = [m for m in sys.modules if m.startswith(("kubernetes_asyncio.client.models.",
                                                         "kubernetes_asyncio.client.api."))]
        print(json.dumps({{"data": data, "label": label, "listed": listed, "ready": ready,
                          "heavy": heavy, "deferred": deferred_packages()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["data"] == {"k": "v"} and got["label"] == "v1" and "s" in got["listed"]
    assert got["ready"] is True
    assert got["heavy"] == [] and "kubernetes_asyncio.client.models" in got["deferred"]


async def test_the_proxy_is_resolved_once_from_the_environment(kubeconfig: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp would re-read the proxy variables and ~/.netrc on every request; the gateway resolves
    them once, with the same rules, and the session stops looking."""
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.invalid:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = await KubeGateway.from_kubeconfig(kubeconfig)
    try:
        rest = proxied._api.rest_client
        assert rest.proxy == "http://user:pw@proxy.invalid:3128"
        assert rest.pool_manager.trust_env is False
    finally:
        await proxied.close()
    host = __import__("yarl").URL(proxied._server).host
    monkeypatch.setenv("NO_PROXY", host)
    direct = await KubeGateway.from_kubeconfig(kubeconfig)
    try:
        assert direct._api.rest_client.proxy is None
        monkeypatch.setenv("HTTPS_PROXY", "http://elsewhere.invalid:1")  # too late: already resolved
        monkeypatch.setenv("HTTP_PROXY", "http://elsewhere.invalid:1")
        assert await direct.namespace_exists("default")
    finally:
        await direct.close()
