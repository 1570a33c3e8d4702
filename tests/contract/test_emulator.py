"""The emulator's own contract: the API behaviour our gateways, Helm and kubectl-style clients rely on.

Each test starts a private emulator (``async with KubeEmulator()``), so these run the same whether or
not the suite targets a real cluster. Requests go through kubernetes_asyncio's typed clients where
that is what services would use, and through plain HTTP where the exact wire behaviour matters.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import new_client_from_config
from soctalk_kubesim import KubeEmulator, start_cluster

from tests.support.waiting import eventually

APPLY = "application/apply-patch+yaml"


class Http:
    """Plain HTTP against the emulator: ``await http.call("GET", "/api")`` -> (status, body)."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.session = base, session

    async def call(self, method: str, path: str, body: Any = None, *,
                   content_type: str = "application/json", **params: str) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.base + path, data=data, params=params,
                                        headers={"Content-Type": content_type}) as response:
            raw = await response.read()
            return response.status, (json.loads(raw) if raw.strip().startswith(b"{") else raw.decode())

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, doc = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (status, doc)
        return doc


@pytest.fixture
async def emu() -> AsyncIterator[KubeEmulator]:
    async with KubeEmulator(history=50) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: KubeEmulator) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(emu.url, session)


@pytest.fixture
async def api(emu: KubeEmulator) -> AsyncIterator[client.ApiClient]:
    api_client = await new_client_from_config(emu.kubeconfig_path)
    yield api_client
    await api_client.close()


def cm(name: str, data: dict | None = None, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": data or {}}


def deploy(name: str, image: str = "app:1") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": image}]}}}}


async def test_discovery_documents(http: Http) -> None:
    assert (await http.ok("GET", "/api"))["versions"] == ["v1"]
    core = await http.ok("GET", "/api/v1/")  # trailing slash tolerated
    assert core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["secrets"]["namespaced"] and not by_name["namespaces"]["namespaced"]
    assert "namespaces/status" in by_name
    groups = {g["name"]: g for g in (await http.ok("GET", "/apis"))["groups"]}
    assert groups["apps"]["preferredVersion"]["groupVersion"] == "apps/v1"
    assert (await http.ok("GET", "/apis/apps"))["kind"] == "APIGroup"
    apps = await http.ok("GET", "/apis/apps/v1")
    assert {"deployments", "statefulsets", "deployments/status"} <= {r["name"] for r in apps["resources"]}
    assert (await http.ok("GET", "/version"))["major"] == "1"
    assert (await http.call("GET", "/apis/nope.example/v1"))[0] == 404


async def test_typed_client_crud_and_bookkeeping(api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="tenant-a")))
    secret = await core.create_namespaced_secret("tenant-a", client.V1Secret(
        metadata=client.V1ObjectMeta(name="s1", labels={"tier": "gold"}), string_data={"k": "v"}))
    assert secret.data == {"k": "dg=="} and secret.type == "Opaque"
    assert secret.metadata.uid and secret.metadata.resource_version and secret.metadata.creation_timestamp
    await core.create_namespaced_secret("tenant-a", client.V1Secret(
        metadata=client.V1ObjectMeta(name="s2", labels={"tier": "silver"})))
    listed = await core.list_namespaced_secret("tenant-a", label_selector="tier in (gold,bronze)")
    assert [s.metadata.name for s in listed.items] == ["s1"]
    listed = await core.list_namespaced_secret("tenant-a", field_selector="metadata.name!=s1")
    assert [s.metadata.name for s in listed.items] == ["s2"]

    created = await apps.create_namespaced_deployment("tenant-a", deploy("web"))  # type: ignore[arg-type]
    assert created.metadata.generation == 1
    everywhere = await apps.list_deployment_for_all_namespaces()
    assert [d.metadata.name for d in everywhere.items] == ["web"]

    with pytest.raises(ApiException) as exists:
        await core.create_namespaced_secret("tenant-a",
                                            client.V1Secret(metadata=client.V1ObjectMeta(name="s1")))
    assert exists.value.status == 409
    with pytest.raises(ApiException) as no_ns:
        await core.create_namespaced_secret("tenant-absent", client.V1Secret(
            metadata=client.V1ObjectMeta(name="s1")))
    assert no_ns.value.status == 404
    with pytest.raises(ApiException) as invalid:
        await core.create_namespaced_config_map("tenant-a", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="Bad_Name")))
    assert invalid.value.status == 422
    sa = await core.read_namespaced_service_account("default", "tenant-a")  # the SA controller's job
    assert sa.metadata.name == "default"


async def test_watch_streams_events_and_resumes(api: client.ApiClient, http: Http) -> None:
    core = client.CoreV1Api(api)
    await http.ok("POST", "/api/v1/namespaces/default/configmaps", cm("w", {"a": "1"}))
    events = []
    async with watch.Watch() as w:  # kubernetes_asyncio sends watch=True
        async for event in w.stream(core.list_namespaced_config_map, "default", timeout_seconds=5):
            events.append((event["type"], event["object"].metadata.name))
            if len(events) == 1:
                await http.ok("PATCH", "/api/v1/namespaces/default/configmaps/w", {"data": {"a": "2"}},
                              content_type="application/merge-patch+json")
                await http.ok("DELETE", "/api/v1/namespaces/default/configmaps/w")
            if len(events) == 3:
                break
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]

    first = await http.ok("POST", "/api/v1/namespaces/default/configmaps", cm("x"))
    await http.ok("POST", "/api/v1/namespaces/default/configmaps", cm("y"))
    rv = first["metadata"]["resourceVersion"]
    async with http.session.get(f"{http.base}/api/v1/namespaces/default/configmaps",
                                params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "5"}) as r:
        replay = json.loads(await r.content.readline())
    assert (replay["type"], replay["object"]["metadata"]["name"]) == ("ADDED", "y")  # x is older


async def test_watch_from_an_expired_resource_version_is_gone(http: Http) -> None:
    for n in range(60):  # history=50: the first events fall out
        await http.ok("POST", "/api/v1/namespaces/default/configmaps", cm(f"c{n}"))
    async with http.session.get(f"{http.base}/api/v1/namespaces/default/configmaps",
                                params={"watch": "1", "resourceVersion": "2", "timeoutSeconds": "1"}) as r:
        events = [json.loads(line) async for line in r.content]
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


async def test_optimistic_concurrency_and_generation(http: Http) -> None:
    base = "/apis/apps/v1/namespaces/default/deployments"
    created = await http.ok("POST", base, deploy("web"))
    stale = dict(created)
    created["metadata"]["labels"] = {"x": "y"}
    relabeled = await http.ok("PUT", f"{base}/web", created)
    assert relabeled["metadata"]["generation"] == 1  # metadata is not spec
    status, conflict = await http.call("PUT", f"{base}/web", stale)
    assert status == 409 and conflict["reason"] == "Conflict"

    relabeled["spec"]["template"]["spec"]["containers"][0]["image"] = "app:2"
    relabeled["status"] = {"readyReplicas": 99}  # ignored: status has its own subresource
    changed = await http.ok("PUT", f"{base}/web", relabeled)
    assert changed["metadata"]["generation"] == 2 and changed["status"] == {}
    assert int(changed["metadata"]["resourceVersion"]) > int(relabeled["metadata"]["resourceVersion"])

    with_status = await http.ok("PATCH", f"{base}/web/status", {"status": {"readyReplicas": 1},
                                                                 "spec": {"replicas": 5}},
                                content_type="application/merge-patch+json")
    assert with_status["status"] == {"readyReplicas": 1}
    assert with_status["spec"]["replicas"] == 1 and with_status["metadata"]["generation"] == 2
    same = await http.ok("PUT", f"{base}/web", with_status)  # a no-op write keeps the version
    assert same["metadata"]["resourceVersion"] == with_status["metadata"]["resourceVersion"]


async def test_patch_flavours(http: Http) -> None:
    base = "/apis/apps/v1/namespaces/default/deployments"
    await http.ok("POST", base, deploy("web"))
    sidecar = {"spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "envoy:1"}]}}}}
    merged = await http.ok("PATCH", f"{base}/web", sidecar,
                           content_type="application/strategic-merge-patch+json")
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["main", "proxy"]
    replaced = await http.ok("PATCH", f"{base}/web", sidecar, content_type="application/merge-patch+json")
    assert [c["name"] for c in replaced["spec"]["template"]["spec"]["containers"]] == ["proxy"]
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 3},
           {"op": "add", "path": "/metadata/labels", "value": {"team": "soc"}}]
    patched = await http.ok("PATCH", f"{base}/web", ops, content_type="application/json-patch+json")
    assert patched["spec"]["replicas"] == 3 and patched["metadata"]["labels"] == {"team": "soc"}
    status, _ = await http.call("PATCH", f"{base}/web", [{"op": "remove", "path": "/nope"}],
                                content_type="application/json-patch+json")
    assert status == 422
    status, _ = await http.call("PATCH", f"{base}/absent", {}, content_type="application/merge-patch+json")
    assert status == 404


async def test_server_side_apply(http: Http) -> None:
    path = "/api/v1/namespaces/default/configmaps/settings"
    created = await http.ok("PATCH", path, cm("settings", {"a": "1", "b": "2"}),
                            content_type=APPLY, fieldManager="one")
    assert created["metadata"]["uid"] and created["data"] == {"a": "1", "b": "2"}
    pruned = await http.ok("PATCH", path, cm("settings", {"a": "1"}), content_type=APPLY, fieldManager="one")
    assert pruned["data"] == {"a": "1"}
    both = await http.ok("PATCH", path, cm("settings", {"c": "3"}), content_type=APPLY, fieldManager="two")
    assert both["data"] == {"a": "1", "c": "3"}
    status, conflict = await http.call("PATCH", path, cm("settings", {"a": "9"}),
                                       content_type=APPLY, fieldManager="two")
    assert status == 409 and 'conflict with "one"' in conflict["message"]
    forced = await http.ok("PATCH", path, cm("settings", {"a": "9", "c": "3"}),
                           content_type=APPLY, fieldManager="two", force="true")
    assert forced["data"] == {"a": "9", "c": "3"}
    dry = await http.ok("PATCH", "/api/v1/namespaces/default/configmaps/dry", cm("dry"),
                        content_type=APPLY, fieldManager="one", dryRun="All")
    assert dry["metadata"]["name"] == "dry"
    assert (await http.call("GET", "/api/v1/namespaces/default/configmaps/dry"))[0] == 404


async def test_apply_bodies_in_yaml_and_json_mean_the_same(http: Http) -> None:
    """client-go sends apply patches as JSON; kubectl and people send YAML. Both are decoded alike."""
    path = "/api/v1/namespaces/default/configmaps/yamlish"
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yamlish\ndata:\n  a: '1'\n  when: 2024-01-01\n"
    async with http.session.request("PATCH", http.base + path, data=text, params={"fieldManager": "one"},
                                    headers={"Content-Type": APPLY}) as response:
        assert response.status == 201, await response.text()
    got = await http.ok("GET", path)
    assert got["data"] == {"a": "1", "when": "2024-01-01"}  # a timestamp stays the string it was
    status, _ = await http.call("PATCH", path, None, content_type=APPLY, fieldManager="one")
    assert status in (400, 422)
    async with http.session.request("PATCH", http.base + path, data="data: [unclosed", params={"fieldManager": "x"},
                                    headers={"Content-Type": APPLY}) as response:
        assert response.status == 400 and "cannot decode" in await response.text()


async def test_finalizers_and_namespace_deletion(http: Http) -> None:
    await http.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "tenant-gone"}})
    held = cm("held")
    held["metadata"]["finalizers"] = ["soctalk.io/cleanup"]
    await http.ok("POST", "/api/v1/namespaces/tenant-gone/configmaps", held)
    await http.ok("POST", "/api/v1/namespaces/tenant-gone/secrets", {"metadata": {"name": "s"}})

    terminating = await http.ok("DELETE", "/api/v1/namespaces/tenant-gone")
    assert terminating["status"]["phase"] == "Terminating"
    status, refused = await http.call("POST", "/api/v1/namespaces/tenant-gone/secrets",
                                      {"metadata": {"name": "n"}})
    assert status == 403 and "being terminated" in refused["message"]

    async def gone(path: str) -> bool:
        return (await http.call("GET", path))[0] == 404

    # the namespace controller empties it on its next tick
    await eventually(lambda: gone("/api/v1/namespaces/tenant-gone/secrets/s"), what="secret removed")
    obj = await http.ok("GET", "/api/v1/namespaces/tenant-gone/configmaps/held")
    assert obj["metadata"]["deletionTimestamp"]  # held by its finalizer, and so is the namespace
    assert not await gone("/api/v1/namespaces/tenant-gone")

    obj["metadata"]["finalizers"] = []
    await http.ok("PUT", "/api/v1/namespaces/tenant-gone/configmaps/held", obj)
    await eventually(lambda: gone("/api/v1/namespaces/tenant-gone"), what="namespace removed")


async def test_custom_resource_definitions_serve_new_kinds(http: Http) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "externalsecrets.external-secrets.io"},
           "spec": {"group": "external-secrets.io", "scope": "Namespaced",
                    "names": {"kind": "ExternalSecret", "plural": "externalsecrets"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "subresources": {"status": {}}}]}}
    await http.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    resources = await http.ok("GET", "/apis/external-secrets.io/v1")
    assert {"externalsecrets", "externalsecrets/status"} <= {r["name"] for r in resources["resources"]}
    es = {"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "metadata": {"name": "llm"},
          "spec": {"refreshInterval": "1h"}}
    created = await http.ok("POST", "/apis/external-secrets.io/v1/namespaces/default/externalsecrets", es)
    assert created["metadata"]["generation"] == 1
    await http.ok("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                            "externalsecrets.external-secrets.io")
    assert (await http.call("GET", "/apis/external-secrets.io/v1"))[0] == 404


async def test_access_reviews_are_always_allowed(api: client.ApiClient) -> None:
    authz = client.AuthorizationV1Api(api)
    review = await authz.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user="system:serviceaccount:tenant-a:adapter",
            resource_attributes=client.V1ResourceAttributes(namespace="x", verb="get", resource="secrets"))))
    assert review.status.allowed is True  # documented limitation: RBAC is not enforced
    own = await authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(verb="delete", resource="namespaces"))))
    assert own.status.allowed is True


async def test_fault_injection(emu: KubeEmulator, http: Http) -> None:
    path = "/api/v1/namespaces/default/secrets"
    fault = emu.inject_fault(path, 401, times=2)
    for _ in range(2):
        status, doc = await http.call("GET", path)
        assert (status, doc["reason"], doc["message"]) == (401, "Unauthorized", "Unauthorized")
    assert (await http.call("GET", path))[0] == 200 and fault.hits == 2
    emu.inject_fault(path, 403, method="POST")
    assert (await http.call("GET", path))[0] == 200
    status, doc = await http.call("POST", path, {"metadata": {"name": "x"}})
    assert status == 403 and "forbidden" in doc["message"]
    emu.clear_faults()
    assert (await http.call("POST", path, {"metadata": {"name": "x"}}))[0] == 201


def test_runs_in_its_own_thread_while_the_caller_blocks() -> None:
    emu = KubeEmulator.start_in_thread()
    try:
        with urllib.request.urlopen(f"{emu.url}/api/v1/namespaces/default", timeout=5) as response:  # noqa: S310
            assert json.load(response)["metadata"]["name"] == "default"
    finally:
        emu.stop()
        emu.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{emu.url}/version", timeout=2)  # noqa: S310


async def test_start_cluster_hands_out_an_emulator_or_a_real_kubeconfig(tmp_path: Any) -> None:
    with start_cluster() as handle:
        assert handle.is_emulated and handle.emulator is not None
        async with aiohttp.ClientSession() as session, session.get(f"{handle.emulator.url}/version") as r:
            assert (await r.json())["gitVersion"].startswith("v1.")
        async with handle.kubelet(delay=0.1) as kubelet:
            assert kubelet.delay == 0.1 and kubelet.patched == 0
    real = tmp_path / "kubeconfig"
    real.write_text("apiVersion: v1\nkind: Config\n")
    handle = start_cluster(str(real))
    assert not handle.is_emulated and handle.kubeconfig_path == str(real)
    handle.stop()  # nothing to stop for a real cluster
    with pytest.raises(FileNotFoundError):
        start_cluster(str(tmp_path / "absent"))


def test_port_is_free_and_loopback() -> None:
    emu = KubeEmulator.start_in_thread()
    try:
        assert emu.url.startswith("http://127.0.0.1:")
        with socket.socket() as sock, pytest.raises(OSError):
            sock.bind(("127.0.0.1", emu.port))  # taken by the emulator
    finally:
        emu.stop()


async def test_scale_subresource_and_unsupported_bodies(http: Http) -> None:
    base = "/apis/apps/v1/namespaces/default/deployments"
    await http.ok("POST", base, deploy("web"))
    scale = await http.ok("GET", f"{base}/web/scale")
    assert (scale["kind"], scale["spec"]["replicas"], scale["status"]["selector"]) == ("Scale", 1, "app=web")
    await http.ok("PATCH", f"{base}/web/scale", {"spec": {"replicas": 4}},
                  content_type="application/merge-patch+json")
    scaled = await http.ok("GET", f"{base}/web")
    assert scaled["spec"]["replicas"] == 4 and scaled["metadata"]["generation"] == 2
    assert (await http.call("GET", "/api/v1/namespaces/default/configmaps/x/scale"))[0] == 404
    # Protobuf bodies are read for Secrets, ConfigMaps and Namespaces only; others get 415.
    protobuf = "application/vnd.kubernetes.protobuf"
    status, _ = await http.call("POST", base, deploy("pb"), content_type=protobuf)
    assert status == 415
    status, _ = await http.call("PATCH", f"{base}/web", {}, content_type="text/plain")
    assert status == 415


async def test_watch_list_sends_initial_events_then_a_bookmark(http: Http) -> None:
    await http.ok("POST", "/api/v1/namespaces/default/configmaps", cm("a"))
    params = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
              "allowWatchBookmarks": "true", "timeoutSeconds": "5"}
    async with http.session.get(f"{http.base}/api/v1/namespaces/default/configmaps", params=params) as r:
        first = json.loads(await r.content.readline())
        second = json.loads(await r.content.readline())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "a")
    assert second["type"] == "BOOKMARK"
    assert second["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
