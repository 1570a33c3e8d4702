"""Drift comparison (rendered vs release vs live) and local chart lookup. No cluster."""

from __future__ import annotations

import copy
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from soctalk_common import charts
from soctalk_helm_runner import chartsrc, drift
from soctalk_helm_runner.drift import Drift

pytestmark = pytest.mark.unit

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "thehive", "labels": {"app.kubernetes.io/name": "thehive"}},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "thehive"}},
             "template": {"metadata": {"labels": {"app": "thehive"}},
                          "spec": {"containers": [
                              {"name": "thehive", "image": "strangebee/thehive:5.2",
                               "ports": [{"containerPort": 9000, "protocol": "TCP"}],
                               "resources": {"limits": {"cpu": 1, "memory": "1.5Gi"},
                                             "requests": {"cpu": "0.5", "memory": "512Mi"}}},
                              {"name": "sidecar", "image": "busybox:1"}],
                              "volumes": [{"name": "tok", "secret": {"secretName": "adapter-token",
                                                                     "defaultMode": 256}}]}}},
}


def live_copy(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: defaults added, quantities normalised, status and bookkeeping."""
    live = copy.deepcopy(obj)
    live["metadata"].update(namespace="tenant-acme", uid="u-1", resourceVersion="42", generation=1,
                            annotations={"deployment.kubernetes.io/revision": "1"})
    spec = live["spec"]
    spec.update(progressDeadlineSeconds=600, revisionHistoryLimit=10, strategy={"type": "RollingUpdate"})
    c = spec["template"]["spec"]["containers"][0]
    c["resources"] = {"limits": {"cpu": "1", "memory": "1536Mi"},
                      "requests": {"cpu": "500m", "memory": "512Mi"}}
    c.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
    spec["template"]["spec"]["containers"].reverse()  # named lists match by name, not position
    live["status"] = {"replicas": 1, "readyReplicas": 1}
    return live


def test_live_object_matching_the_manifest_has_no_drift() -> None:
    assert drift.compare_live(DEPLOYMENT, live_copy(DEPLOYMENT)) == []


def test_out_of_band_edits_name_object_and_field() -> None:
    live = live_copy(DEPLOYMENT)
    live["spec"]["replicas"] = 3
    containers = live["spec"]["template"]["spec"]["containers"]
    next(c for c in containers if c["name"] == "thehive")["image"] = "evil:1"
    live["metadata"]["labels"]["app.kubernetes.io/name"] = "other"
    found = drift.compare_live(DEPLOYMENT, live)
    assert found == [
        Drift("Deployment/thehive", "metadata.labels['app.kubernetes.io/name']", "thehive", "other", "live"),
        Drift("Deployment/thehive", "spec.replicas", "1", "3", "live"),
        Drift("Deployment/thehive", "spec.template.spec.containers[name=thehive].image",
              "strangebee/thehive:5.2", "evil:1", "live"),
    ]


def test_missing_live_object_and_missing_fields() -> None:
    assert drift.compare_live(DEPLOYMENT, None) == [
        Drift("Deployment/thehive", "(object)", "present", "(missing)", "live")]
    live = live_copy(DEPLOYMENT)
    del live["spec"]["template"]["spec"]["volumes"]
    pod = live["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "sidecar"]
    fields = [d.field for d in drift.compare_live(DEPLOYMENT, live)]
    assert fields == ["spec.template.spec.containers[name=sidecar]", "spec.template.spec.volumes"]


@pytest.mark.parametrize(("a", "b", "equal"), [
    (1, "1", True), ("1.5Gi", "1536Mi", True), ("0.5", "500m", True), (2, "2000m", True),
    ("1Gi", "1G", False), ("100m", "0.1", True), ("1e3", "1k", True), (True, "true", False),
    ("abc", "abd", False), (256, "0400", False),
])
def test_scalars_compare_quantities_by_value(a: Any, b: Any, equal: bool) -> None:
    assert drift.scalars_equal(a, b) is equal


def test_release_vs_rendered_is_a_full_comparison() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}}
    rendered = [DEPLOYMENT, config_map]
    release = copy.deepcopy(rendered)
    assert drift.compare_manifests(rendered, release) == []
    release[1]["data"]["b"] = "2"  # an extra key in the release counts here
    release[0]["spec"]["replicas"] = 0
    release.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extra"}})
    found = drift.compare_manifests(rendered, release)
    assert found == [
        Drift("Service/extra", "(object)", "(missing)", "present", "release"),
        Drift("ConfigMap/cfg", "data.b", "(missing)", "2", "release"),
        Drift("Deployment/thehive", "spec.replicas", "1", "0", "release"),
    ]
    assert drift.compare_manifests(rendered, rendered[:1]) == [
        Drift("ConfigMap/cfg", "(object)", "present", "(missing)", "release")]


def test_manifest_parsing_and_workloads() -> None:
    text = "---\n# Source: a\n" + yaml.safe_dump(DEPLOYMENT) + "---\n\n---\n" + yaml.safe_dump(
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "cassandra"}})
    objs = drift.parse_manifest(text)
    assert [drift.object_name(o) for o in objs] == ["Deployment/thehive", "StatefulSet/cassandra"]
    assert drift.workload_names(objs) == ["Deployment/thehive", "StatefulSet/cassandra"]
    assert drift.show("x" * 500).endswith("…") and drift.show({"a": 1}) == '{"a":1}'


@pytest.mark.parametrize("suspended", [False, True])
def test_manifest_workloads_of_the_tenant_chart_match_a_full_parse(suspended: bool) -> None:
    values = charts.load_values_file(charts.deploy_dir() / "examples" / "tenant-acme-values.yaml")
    values["suspended"] = suspended
    text = charts.render(charts.chart_dir(charts.TENANT_CHART), values, release_name="soctalk-tenant")
    full = drift.workload_names(drift.parse_manifest(text))
    assert full, "the tenant chart declares workloads"
    assert drift.manifest_workloads(text) == full


_KINDS = st.sampled_from(["Deployment", "StatefulSet", "Job", "ConfigMap", "Service", "CronJob",
                          "DeploymentList", "List"])
_TEXT = st.lists(st.sampled_from(["a", " ", "\n", "-", "---", "Deployment", "kind: Job", ":", '"', "'", "[",
                                  "]", "{", "}", "#", "\\", ",", "\nkind: Job\n", "\nmetadata:\n  name: x\n"]),
                 max_size=12).map("".join)


_NAMES = st.sampled_from(["a", "b", "0x10", "1.0", "true", "web-1"])
_META = st.one_of(st.none(), st.just("absent"), st.builds(lambda n: {"name": n}, _NAMES),
                  st.builds(lambda n: {"labels": {"kind": "Job"}, "name": n}, _NAMES))


@st.composite
def _doc(draw: Any) -> dict[str, Any]:
    kind = draw(_KINDS)
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "data": {"note": draw(_TEXT)}}
    meta = draw(_META)
    if meta != "absent":
        doc["metadata"] = meta
    if kind.endswith("List"):
        doc["items"] = [{"kind": draw(_KINDS), "metadata": {"name": draw(_NAMES)}}
                        for _ in range(draw(st.integers(0, 2)))]
    keys = draw(st.permutations(list(doc)))
    return {k: doc[k] for k in keys}


def _stream(docs: list[dict[str, Any]], style: str | None, flow: bool | None) -> str:
    return "".join("---\n# Source: t.yaml\n" + yaml.safe_dump(d, default_style=style, sort_keys=False,
                                                                 default_flow_style=flow, width=24 if flow else 80)
                   for d in docs)


@settings(max_examples=600, deadline=None)
@given(st.lists(_doc(), max_size=8), st.sampled_from([None, "|", '"', "'"]), st.sampled_from([False, None, True]))
def test_manifest_workloads_equal_a_full_parse(docs: list[dict[str, Any]], style: str | None,
                                               flow: bool | None) -> None:
    """Skipping documents that name no workload kind, and building only names, never changes the
    answer, whatever the documents hold (``---`` lines and kind names inside strings, block and
    quoted scalars, keys in any order, no or null metadata, names YAML would read as numbers)."""
    text = _stream(docs, style, flow)
    assert drift.manifest_workloads(text) == drift.workload_names(drift.parse_manifest(text))


@pytest.mark.parametrize("text", [
    "x: &m {kind: Job, metadata: {name: j}}\n<<: *m\n",  # merge key at the top
    "---\nx: &meta\n  name: web\nkind: Deployment\nmetadata: *meta\n---\nkind: StatefulSet\nmetadata: {name: s}\n",
    "kind: Deployment\nmetadata:\n  name: a\nkind: ConfigMap\n",  # a repeated key: the last wins
    "--- {kind: Deployment, metadata: {name: flow}}\n--- [1, 2]\n--- plain\n---\n",
    "kind: DeploymentList\nitems:\n- kind: Deployment\n  metadata: {name: x}\n- 3\n- kind: Job\n",
    # flow constructs continued on column-0 lines that look like keys
    'kind: StatefulSet\nmetadata: {name: s}\nspec: {a: "x\nkind: Deployment"}\n',
    'kind: StatefulSet\nspec: [1,\nkind: Job]\nmetadata: {name: s}\n',
    "kind: StatefulSet\nnote: 'it''s\nkind: Job'\nmetadata:\n  name: s\n",
    'a"b: [x, y"\nkind: Job]\nkind: Deployment\nmetadata: {name: d}\n',
    "kind: Deployment\nmetadata:\n  name: &n web\nspec:\n  x: *n\n",
    "kind: Deployment\nspec:\n  x: &n web\nmetadata:\n  name: *n\n",  # alias to a cut entry
    "kind: Deployment\nmetadata:\n  name: a # [unclosed\n",
    "%YAML 1.1\n---\nkind: Job\nmetadata: {name: j}\n",
])
def test_manifest_workloads_unusual_documents(text: str) -> None:
    def outcome(fn: Any) -> Any:  # the answer, or that both refuse the text
        try:
            return fn(text)
        except yaml.YAMLError:
            return "YAMLError"

    full = outcome(lambda t: drift.workload_names(drift.parse_manifest(t)))
    assert outcome(drift.manifest_workloads) == full


# --- local chart versions ----------------------------------------------------------------------------


def copy_chart(root: Path, name: str, version: str) -> Path:
    target = root / name
    shutil.copytree(charts.chart_dir("soctalk-tenant"), target)
    meta = yaml.safe_load((target / "Chart.yaml").read_text())
    meta["version"] = version
    (target / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return target


def test_chart_versions_are_found_as_directories_and_packages(tmp_path: Path) -> None:
    current = charts.chart_dir("soctalk-tenant")
    (tmp_path / "soctalk-tenant").symlink_to(current)
    copy_chart(tmp_path, "soctalk-tenant-v1.2.0", "1.2.0")
    packed = copy_chart(tmp_path / "build", "soctalk-tenant", "1.3.0")
    with tarfile.open(tmp_path / "soctalk-tenant-1.3.0.tgz", "w:gz") as tar:
        tar.add(packed, arcname="soctalk-tenant")
    assert chartsrc.locate(tmp_path, "1.1.0").path == tmp_path / "soctalk-tenant"
    assert chartsrc.locate(tmp_path, "v1.2.0").path == tmp_path / "soctalk-tenant-v1.2.0"
    unpacked = chartsrc.locate(tmp_path, "v1.3.0")
    assert unpacked.version == "v1.3.0" and (unpacked.path / "values.schema.json").is_file()
    assert chartsrc.locate(tmp_path, "v1.3.0").path == unpacked.path  # unpacked once
    assert chartsrc.available(tmp_path) == ["v1.1.0", "v1.2.0", "v1.3.0"]
    with pytest.raises(chartsrc.UnknownChartVersion,
                       match=r"v9\.9\.9 is not available .*v1\.1\.0, v1\.2\.0, v1\.3\.0"):
        chartsrc.locate(tmp_path, "v9.9.9")
    with pytest.raises(chartsrc.UnknownChartVersion, match="not a chart version"):
        chartsrc.locate(tmp_path, "latest")


def test_same_inputs_needs_the_same_chart_version_and_json_equal_values() -> None:
    values = {"tenant": {"id": "t", "replicas": 1, "hosts": ("a", "b")}, "suspended": False}
    stored = {"tenant": {"id": "t", "replicas": 1, "hosts": ["a", "b"]}, "suspended": False}
    assert drift.same_inputs("1.1.0", stored, "v1.1.0", values)  # Helm reports versions without the v
    assert not drift.same_inputs("1.2.0", stored, "v1.1.0", values)
    assert not drift.same_inputs("not-a-version", stored, "v1.1.0", values)
    assert not drift.same_inputs("1.1.0", {**stored, "suspended": True}, "v1.1.0", values)
    assert not drift.same_inputs("1.1.0", {"tenant": {"id": "t", "replicas": 2, "hosts": ["a", "b"]},
                                           "suspended": False}, "v1.1.0", values)
    assert not drift.same_inputs("1.1.0", {}, "v1.1.0", values)
