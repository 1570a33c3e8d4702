"""HelmGateway against the emulator or, with SOCTALK_TEST_KUBECONFIG, a real cluster.

Release lifecycles use the tiny ``charts/mini`` chart (Deployment + ConfigMap + Service) in a fresh
``tenant-ct-*`` namespace per test; the namespace fixture removes whatever a test leaves behind.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import gzip
import json

import pytest
from soctalk_common.errors import Conflict, InvalidObject, NotFound, OperationInProgress
from soctalk_common.gateways.helm import HelmGateway, parse_schema_errors
from soctalk_common.gateways.kube import KubeGateway
from soctalk_kubesim import SimulatedKubelet

from tests.contract.conftest import MINI_CHART, unique
from tests.contract.test_kube_gateway import NEVER_PULLS


async def release_records(kube: KubeGateway, namespace: str, release: str) -> list:
    return await kube.list_secrets(namespace, f"owner=helm,name={release}")


async def force_status(kube: KubeGateway, namespace: str, release: str, revision: int, status: str) -> None:
    """Rewrite a stored revision's status, as a process killed mid-operation leaves it."""
    name = f"sh.helm.release.v1.{release}.v{revision}"
    record = await kube.read_secret(namespace, name)
    assert record is not None
    doc = json.loads(gzip.decompress(base64.b64decode(record.data["release"])))
    doc["info"]["status"] = status
    encoded = base64.b64encode(gzip.compress(json.dumps(doc).encode())).decode()
    await kube.apply({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                      "metadata": {"name": name, "namespace": namespace, "labels": {"status": status}},
                      "data": {"release": base64.b64encode(encoded.encode()).decode()}},
                     field_manager="contract-test-crash")


# --- offline ------------------------------------------------------------------------------------


async def test_render_is_offline_and_complete(helm: HelmGateway) -> None:
    manifest = await helm.render(MINI_CHART, {"greeting": "bonjour"}, release="acme", namespace="tenant-acme")
    assert manifest.count("\n---\n") + manifest.startswith("---") == 3
    for expected in ("kind: Deployment", "kind: ConfigMap", "kind: Service", "name: acme-web",
                     'greeting: "bonjour"'):
        assert expected in manifest
    offline = HelmGateway("/nonexistent/kubeconfig")  # no cluster is needed
    try:
        assert "kind: Service" in await offline.render(MINI_CHART, {}, release="r", namespace="n")
    finally:
        offline.close()


async def test_render_rejects_bad_values_and_missing_charts(helm: HelmGateway) -> None:
    with pytest.raises(InvalidObject, match="replicas"):
        await helm.render(MINI_CHART, {"replicas": "three"}, release="r", namespace="n")
    with pytest.raises(InvalidObject, match="no-such-chart"):
        await helm.render("/nonexistent/no-such-chart", {}, release="r", namespace="n")


async def test_lint_reports_only_problems(helm: HelmGateway) -> None:
    assert await helm.lint(MINI_CHART) == []
    problems = await helm.lint(MINI_CHART, {"replicas": "three"})
    assert problems and all(p.startswith("[ERROR]") for p in problems)
    assert any("/replicas" in p for p in problems)


async def test_validate_values_gives_json_paths(helm: HelmGateway) -> None:
    assert await helm.validate_values(MINI_CHART, {"greeting": "hi"}) == []
    errors = await helm.validate_values(MINI_CHART, {"replicas": "three", "port": 0, "bogus": True})
    paths = dict(errors)
    assert paths["$.replicas"] == "got string, want integer"
    assert "minimum" in paths["$.port"]
    assert "bogus" in paths["$"]


def test_schema_errors_of_subcharts_are_prefixed() -> None:
    report = ("values don't meet the specifications of the schema(s) in the following chart(s):\n"
              "soctalk-tenant:\n- at '/sizing/tier': value must be one of 'small', 'large'\n"
              "wazuh:\n- at '/replicas/0': got string, want integer\n")
    assert parse_schema_errors(report, "soctalk-tenant") == [
        ("$.sizing.tier", "value must be one of 'small', 'large'"),
        ("$.wazuh.replicas[0]", "got string, want integer"),
    ]
    assert parse_schema_errors("something else", "x") == [("$", "something else")]


# --- releases -----------------------------------------------------------------------------------


async def test_release_lifecycle(helm: HelmGateway, kube: KubeGateway, namespace: str) -> None:
    release = unique("mini")
    assert await helm.status(release, namespace) is None
    assert await helm.history(release, namespace) == []

    installed = await helm.install(release, MINI_CHART, namespace, {"greeting": "one"})
    assert (installed.name, installed.namespace, installed.revision, installed.status) == (
        release, namespace, 1, "deployed")
    assert (installed.chart_version, installed.app_version) == ("0.1.0", "1.0.0")
    assert installed.chart_name == "mini"
    # The write returns what it applied: the same manifest the stored release holds.
    assert installed.manifest and installed.manifest == await helm.manifest(release, namespace)
    assert "manifest" not in repr(installed)
    assert all(not h.manifest for h in await helm.history(release, namespace))
    for kind, api, name in (("Deployment", "apps/v1", f"{release}-web"), ("Service", "v1", f"{release}-web"),
                            ("ConfigMap", "v1", f"{release}-config")):
        assert await kube.get(api, kind, name, namespace) is not None, kind

    with pytest.raises(Conflict, match=f"{namespace}/{release}"):
        await helm.install(release, MINI_CHART, namespace, {"greeting": "again"})

    upgraded = await helm.upgrade(release, MINI_CHART, namespace, {"greeting": "two"})
    assert (upgraded.revision, upgraded.status) == (2, "deployed")
    assert 'greeting: "two"' in upgraded.manifest
    assert await helm.values(release, namespace) == {"greeting": "two"}
    assert await helm.values(release, namespace, revision=1) == {"greeting": "one"}
    assert 'greeting: "two"' in await helm.manifest(release, namespace)
    assert 'greeting: "one"' in await helm.manifest(release, namespace, revision=1)
    cm = await kube.get("v1", "ConfigMap", f"{release}-config", namespace)
    assert cm is not None and cm["data"] == {"greeting": "two"}

    rolled = await helm.rollback(release, namespace, 1)
    assert (rolled.revision, rolled.status) == (3, "deployed")
    assert await helm.values(release, namespace) == {"greeting": "one"}
    assert [(r.revision, r.status) for r in await helm.history(release, namespace)] == [
        (1, "superseded"), (2, "superseded"), (3, "deployed")]
    status = await helm.status(release, namespace)
    assert status is not None and status.revision == 3 and status.updated
    stored = await helm.stored(release, namespace)  # the latest record in one read: info, manifest, values
    assert stored is not None
    info, values = stored
    assert (info.revision, info.status, info.chart_version) == (3, "deployed", status.chart_version)
    assert info.manifest == await helm.manifest(release, namespace) and values == {"greeting": "one"}

    await helm.uninstall(release, namespace)
    await helm.uninstall(release, namespace)  # idempotent
    assert await helm.status(release, namespace) is None
    assert await helm.stored(release, namespace) is None
    assert await release_records(kube, namespace, release) == []
    assert await kube.get("apps/v1", "Deployment", f"{release}-web", namespace) is None
    with pytest.raises(NotFound, match=release):
        await helm.manifest(release, namespace)


async def test_release_records_are_secrets_in_the_release_namespace(
        helm: HelmGateway, kube: KubeGateway, namespace: str) -> None:
    release = unique("mini")
    await helm.install(release, MINI_CHART, namespace, {"greeting": "stored"})
    await helm.upgrade(release, MINI_CHART, namespace, {"greeting": "stored-again"})
    records = await release_records(kube, namespace, release)
    assert sorted(r.name for r in records) == [f"sh.helm.release.v1.{release}.v1",
                                               f"sh.helm.release.v1.{release}.v2"]
    assert {r.type for r in records} == {"helm.sh/release.v1"}
    assert {r.labels["status"] for r in records} == {"superseded", "deployed"}
    assert all(r.namespace == namespace for r in records)


async def test_install_then_watch_readiness_ourselves(
        helm: HelmGateway, kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet) -> None:
    release = unique("mini")
    loop = asyncio.get_running_loop()
    await helm.install(release, MINI_CHART, namespace, {"replicas": 2}, timeout=30)
    report = await kube.wait_ready(namespace, deadline=loop.time() + 30,
                                   label_selector=f"app.kubernetes.io/instance={release}")
    assert report.ready, report
    assert [(w.kind, w.name) for w in report.workloads] == [("Deployment", f"{release}-web")]


async def test_failed_upgrade_is_rolled_back(
        helm: HelmGateway, kube: KubeGateway, namespace: str, kubelet: SimulatedKubelet) -> None:
    release = unique("mini")
    loop = asyncio.get_running_loop()
    await helm.install(release, MINI_CHART, namespace, {"greeting": "good"})
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 30)).ready

    kubelet.fail(f"{namespace}/{release}-web")  # and, for clusters with nodes, a real failure:
    await helm.upgrade(release, MINI_CHART, namespace,
                       {"greeting": "bad", "image": NEVER_PULLS, "progressDeadlineSeconds": 1})
    report = await kube.wait_ready(namespace, deadline=loop.time() + 30)
    assert [w.name for w in report.failing] == [f"{release}-web"]

    kubelet.heal(f"{namespace}/{release}-web")
    rolled = await helm.rollback(release, namespace)
    assert rolled.revision == 3
    assert await helm.values(release, namespace) == {"greeting": "good"}
    assert (await kube.wait_ready(namespace, deadline=loop.time() + 30)).ready


async def test_install_into_a_missing_namespace_is_not_found(helm: HelmGateway) -> None:
    namespace = unique("tenant-ct-absent")
    with pytest.raises(NotFound, match=namespace):
        await helm.install("mini", MINI_CHART, namespace, {})


async def test_upgrade_of_a_missing_release_is_not_found(helm: HelmGateway, namespace: str) -> None:
    with pytest.raises(NotFound, match="absent"):
        await helm.upgrade("absent", MINI_CHART, namespace, {})


async def test_rejected_values_do_not_create_a_release(helm: HelmGateway, namespace: str) -> None:
    with pytest.raises(InvalidObject, match="replicas"):
        await helm.install("mini", MINI_CHART, namespace, {"replicas": "three"})
    assert await helm.status("mini", namespace) is None


# --- stuck releases -----------------------------------------------------------------------------


async def test_pending_upgrade_blocks_and_is_recovered_by_rollback(
        helm: HelmGateway, kube: KubeGateway, namespace: str) -> None:
    release = unique("mini")
    await helm.install(release, MINI_CHART, namespace, {"greeting": "one"})
    await helm.upgrade(release, MINI_CHART, namespace, {"greeting": "two"})
    await force_status(kube, namespace, release, 2, "pending-upgrade")

    stuck = await helm.status(release, namespace)
    assert stuck is not None and stuck.pending and stuck.status == "pending-upgrade"
    with pytest.raises(OperationInProgress, match=release):
        await helm.upgrade(release, MINI_CHART, namespace, {"greeting": "three"})
    assert await helm.recover_pending(release, namespace, min_age=3600) is None  # too fresh to touch

    done = await helm.recover_pending(release, namespace)
    assert done == "rolled back pending-upgrade revision 2 to revision 1"
    status = await helm.status(release, namespace)
    assert status is not None and (status.revision, status.status) == (3, "deployed")
    assert await helm.values(release, namespace) == {"greeting": "one"}
    assert await helm.recover_pending(release, namespace) is None  # nothing left to do
    upgraded = await helm.upgrade(release, MINI_CHART, namespace, {"greeting": "three"})
    assert upgraded.status == "deployed"


async def test_pending_install_is_recovered_by_uninstall(
        helm: HelmGateway, kube: KubeGateway, namespace: str) -> None:
    release = unique("mini")
    await helm.install(release, MINI_CHART, namespace, {})
    await force_status(kube, namespace, release, 1, "pending-install")

    done = await helm.recover_pending(release, namespace)
    assert done == "uninstalled release stuck in pending-install at revision 1"
    assert await helm.status(release, namespace) is None
    assert (await helm.install(release, MINI_CHART, namespace, {})).revision == 1


async def test_recover_pending_leaves_healthy_and_missing_releases_alone(
        helm: HelmGateway, namespace: str) -> None:
    release = unique("mini")
    assert await helm.recover_pending(release, namespace) is None
    await helm.install(release, MINI_CHART, namespace, {})
    assert await helm.recover_pending(release, namespace) is None


async def test_configs_per_namespace_are_bounded_and_never_closed_in_use(kubeconfig: str, kube: KubeGateway
                                                                        ) -> None:
    """A drift round touches every tenant namespace: the gateway keeps only the most recently used
    configs, and evicting one never breaks a call that is using it."""
    helm = HelmGateway(kubeconfig, default_timeout=60, max_configs=2)
    names = [unique("tenant-ct") for _ in range(5)]
    try:
        for ns in names:
            await kube.ensure_namespace(ns, {"soctalk.io/test": "contract"})
        release = unique("mini")
        await helm.install(release, MINI_CHART, names[0], {"greeting": "kept"})
        for _ in range(3):  # many namespaces at once, more than the bound, over and over
            found = await asyncio.gather(*(helm.history(release, ns) for ns in names))
            assert [len(h) for h in found] == [1, 0, 0, 0, 0]
            assert helm.cached_configs <= 2
        assert 'greeting: "kept"' in await helm.manifest(release, names[0])  # re-created after eviction
        await helm.uninstall(release, names[0])
        gc.collect()
        assert len(helm._locks) == 0  # per-release write locks live only while a write holds or awaits one
    finally:
        helm.close()
        for ns in names:
            await kube.delete_namespace(ns)


async def test_helm_calls_run_on_the_gateways_own_threads(kubeconfig: str) -> None:
    """Installs never occupy the default executor, where the service's short jobs run."""
    import threading

    helm = HelmGateway(kubeconfig, default_timeout=60, workers=2)
    try:
        names = await asyncio.gather(*(helm._run("probe", lambda _: threading.current_thread().name, None)
                                       for _ in range(4)))
        assert all(n.startswith("helm") for n in names), names
        assert len(set(names)) <= 2
    finally:
        helm.close()
