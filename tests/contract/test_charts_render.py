"""Both charts through Helm (helm-python-sdk, offline): lint, render, and what the manifests promise.

Every profile (deploy/values/*.yaml), every chart-testing sample (ci/*-values.yaml) and the
example tenant are linted and rendered; the assertions are the contract of seeds 000 and 001.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from soctalk_common import charts
from soctalk_common.errors import ValidationFailed

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
TENANT, SYSTEM = charts.TENANT_CHART, charts.SYSTEM_CHART
PROFILES = sorted((REPO / "deploy/values").glob("*.yaml"))
SYSTEM_CI = sorted((REPO / "charts/soctalk-system/ci").glob("*-values.yaml"))
TENANT_CI = sorted((REPO / "charts/soctalk-tenant/ci").glob("*-values.yaml"))
EXAMPLE = REPO / "deploy/examples/tenant-acme-values.yaml"
LB_SAMPLE = REPO / "charts/soctalk-tenant/ci/loadbalancer-kubernetes-values.yaml"
EDGE_SAMPLE = REPO / "charts/soctalk-tenant/ci/edge-haproxy-vault-values.yaml"

BOOTSTRAP_SECRETS = {
    "adapter-token",
    "wazuh-bootstrap",
    "wazuh-authd-secret",
    "thehive-bootstrap",
    "cassandra-creds",
    "cortex-bootstrap",
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def load(path: Path) -> dict[str, Any]:
    return charts.load_values_file(path)


def tenant_sets() -> dict[str, dict[str, Any]]:
    sets = {p.name: load(p) for p in TENANT_CI}
    sets["tenant-acme.yaml"] = load(EXAMPLE)
    for profile in PROFILES:
        sets[f"tenant-acme+{profile.stem}"] = charts.tenant_values(load(profile), load(EXAMPLE))
    return sets


def system_sets() -> dict[str, dict[str, Any]]:
    return {p.name: load(p) for p in [*PROFILES, *SYSTEM_CI]}


TENANT_SETS, SYSTEM_SETS = tenant_sets(), system_sets()
_cache: dict[tuple[str, str], list[dict[str, Any]]] = {}


def objects(chart: str, name: str) -> list[dict[str, Any]]:
    if (chart, name) not in _cache:
        values = (TENANT_SETS if chart == TENANT else SYSTEM_SETS)[name]
        _cache[(chart, name)] = charts.render_objects(chart, values)
    return _cache[(chart, name)]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in WORKLOADS
    ]


def containers(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{where}/{c['name']}", c)
        for where, spec in pod_specs(objs)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


_QTY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_MULT = {
    None: 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def qty(value: Any) -> Decimal:
    m = _QTY.match(str(value))
    assert m, f"not a quantity: {value!r}"
    return Decimal(m.group(1)) * _MULT[m.group(2)]


# --- lint ------------------------------------------------------------------------------------------

LINT_CASES = [
    *((SYSTEM, p) for p in [*PROFILES, *SYSTEM_CI]),
    *((TENANT, p) for p in [*PROFILES, *TENANT_CI, EXAMPLE]),
]


@pytest.mark.parametrize(
    ("chart", "values_file"), LINT_CASES, ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_helm_lint_has_zero_errors(chart: str, values_file: Path) -> None:
    report = charts.lint_report(chart, [values_file])
    assert report.errors == []
    assert charts.lint(chart, [values_file]) == []


def test_profile_files_are_what_the_cli_lints() -> None:
    assert charts.profile_values_files(SYSTEM) == [
        REPO / "deploy/values/pilot-prod.yaml",
        REPO / "deploy/values/small-dev.yaml",
    ]
    with pytest.raises(FileNotFoundError):
        charts.profile_values_files(TENANT, ["no-such-profile"])


def test_lint_reports_errors_for_missing_values() -> None:
    problems = charts.lint(TENANT, [])
    assert problems and any("missing propert" in p for p in problems)


# --- Helm agrees with the schema: every required field, missing or mistyped --------------------------


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(root["$defs"][node["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _resolve(root, target)
    return node


def _required(
    root: dict[str, Any], node: dict[str, Any], path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    node = _resolve(root, node)
    out = []
    for name in node.get("required", []):
        child = _resolve(root, node.get("properties", {}).get(name, {}))
        out.append(((*path, name), child))
        out += _required(root, child, (*path, name))
    return out


def _set(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    import copy

    out = copy.deepcopy(values)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


def _wrong(node: dict[str, Any]) -> Any:
    if "const" in node or "enum" in node:
        return True if node.get("const") == "true" or node.get("type") == "string" else "not-a-choice"
    return {
        "string": 12345,
        "integer": "abc",
        "number": "abc",
        "boolean": "yes",
        "array": "x",
        "object": "x",
    }.get(node.get("type") if isinstance(node.get("type"), str) else "", [] if "anyOf" not in node else 12345)


@pytest.mark.parametrize("chart", [SYSTEM, TENANT])
def test_helm_rejects_every_missing_or_mistyped_required_field_with_its_path(chart: str) -> None:
    base = load(REPO / "deploy/values/pilot-prod.yaml") if chart == SYSTEM else load(LB_SAMPLE)
    base = charts.merge_values(charts.chart_defaults(chart), base)
    root = charts.load_schema(chart)
    unreported = []
    with helm.Chart.load(charts.chart_dir(chart)) as loaded:
        loaded.validate_schema(base)
        for path, node in _required(root, root):
            slash = "/" + "/".join(path)
            parent = "/" + "/".join(path[:-1]) if len(path) > 1 else ""
            for label, value in (("missing", None), ("mistyped", _wrong(node))):
                try:
                    loaded.validate_schema(_set(base, path, value))
                except helm.HelmValuesError as exc:
                    text = str(exc)
                    missing_ok = f"at '{parent}': missing propert" in text and f"'{path[-1]}'" in text
                    if (label == "missing" and missing_ok) or f"at '{slash}'" in text:
                        continue
                    unreported.append((label, slash, text))
                else:
                    unreported.append((label, slash, "accepted"))
    assert unreported == []


def test_render_refuses_invalid_values_with_json_paths() -> None:
    values = charts.merge_values(
        load(LB_SAMPLE), {"tenant": {"slug": "Not_A_Slug"}, "wazuhIngress": {"mode": "nodeport"}}
    )
    with pytest.raises(ValidationFailed) as excinfo:
        charts.render(TENANT, values)
    paths = [p for p, _ in excinfo.value.errors]
    assert paths == ["$.tenant.slug", "$.wazuhIngress.mode"]
    assert "$.tenant.slug" in str(excinfo.value)


def test_helm_schema_errors_are_parsed_to_json_paths() -> None:
    with helm.Chart.load(charts.chart_dir(TENANT)) as loaded, pytest.raises(helm.HelmValuesError) as excinfo:
        loaded.render(
            charts.merge_values(load(LB_SAMPLE), {"adapter": {"heartbeat": {"intervalSeconds": "often"}}}),
            namespace="tenant-acme",
        )
    assert charts.parse_helm_schema_errors(str(excinfo.value)) == [
        ("$.adapter.heartbeat.intervalSeconds", "got string, want integer")
    ]


def test_templates_refuse_labels_of_another_tenant() -> None:
    """The template guard behind the schema: Helm itself fails, naming the field."""
    values = charts.merge_values(
        load(LB_SAMPLE), {"namespaceLabels": {"tenant-id": "00000000-0000-4000-8000-000000000000"}}
    )
    with (
        helm.Chart.load(charts.chart_dir(TENANT)) as loaded,
        pytest.raises(helm.HelmRenderError, match=r"namespaceLabels\.tenant-id .* must equal tenant\.id"),
    ):
        loaded.render(values, namespace="tenant-acme")


def test_render_is_a_helm_template_stream() -> None:
    text = charts.render(TENANT, load(LB_SAMPLE))
    assert text.startswith("---\n# Source: soctalk-tenant/templates/")
    assert "NOTES.txt" not in text


# --- tenant chart ------------------------------------------------------------------------------------

TENANT_NAMES = list(TENANT_SETS)
SYSTEM_NAMES = list(SYSTEM_SETS)


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_tenant_chart_renders_no_secret(name: str) -> None:
    objs = objects(TENANT, name)
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Secret"] == []
    assert [o["kind"] for o in objs if "data" in o or "stringData" in o] in ([], ["ConfigMap"])


def test_values_reach_no_secret_even_when_planted() -> None:
    """A canary in every free-text value lands only in the non-sensitive ConfigMap and labels."""
    canary = "canary-7f3a9c"
    values = charts.merge_values(
        load(LB_SAMPLE),
        {"tenant": {"displayName": canary}, "branding": {"appName": canary}, "llm": {"model": canary}},
    )
    holders = {
        (o["kind"], o["metadata"]["name"]) for o in charts.render_objects(TENANT, values) if canary in str(o)
    }
    assert holders == {("ConfigMap", "soctalk-tenant-config")}


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_tenant_credentials_come_only_from_bootstrap_secrets(name: str) -> None:
    objs, values = objects(TENANT, name), TENANT_SETS[name]
    tls = values["wazuhIngress"]["tls"]["secretName"]
    for where, c in containers(objs):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in BOOTSTRAP_SECRETS, (where, env["name"])
            else:
                assert not re.search(r"(PASS(WORD)?|TOKEN|_KEY|_USER(NAME)?)$", env["name"]), (
                    where,
                    env["name"],
                )
    for where, spec in pod_specs(objs):
        for vol in spec.get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in {"adapter-token", "wazuh-certs", tls}, where


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_every_tenant_container_is_pinned_sized_probed_and_locked_down(name: str) -> None:
    objs = objects(TENANT, name)
    assert containers(objs)
    for where, c in containers(objs):
        assert re.search(r"@sha256:[a-f0-9]{64}$", c["image"]), where
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, where
        assert c["readinessProbe"] and c["livenessProbe"], where
        sc = c["securityContext"]
        assert (sc["allowPrivilegeEscalation"], sc["readOnlyRootFilesystem"], sc["runAsNonRoot"]) == (
            False,
            True,
            True,
        ), where
        assert sc["capabilities"]["drop"] == ["ALL"], where
    for where, spec in pod_specs(objs):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is (spec["serviceAccountName"] == "soctalk-adapter"), (
            where
        )


def test_component_sizing_reaches_the_subcharts() -> None:
    values = TENANT_SETS["tenant-acme+small-dev"]
    objs = objects(TENANT, "tenant-acme+small-dev")
    sts = by_kind(objs, "StatefulSet")
    sizing = values["components"]
    assert (
        sts["wazuh-indexer"]["spec"]["template"]["spec"]["containers"][0]["resources"]
        == sizing["wazuh"]["indexer"]["resources"]
    )
    assert (
        sts["cassandra"]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == sizing["thehive"]["cassandra"]["persistence"]["size"]
    )
    assert (
        env_of(sts["wazuh-indexer"]["spec"]["template"]["spec"]["containers"][0])["OPENSEARCH_JAVA_OPTS"][
            "value"
        ]
        == "-Xms512m -Xmx512m"
    )
    assert "wazuh-dashboard" not in by_kind(objs, "Deployment")  # small-dev turns the dashboard off


def test_subchart_labels_carry_their_pinned_versions() -> None:
    sts = by_kind(objects(TENANT, LB_SAMPLE.name), "StatefulSet")
    assert sts["wazuh-manager"]["metadata"]["labels"]["helm.sh/chart"] == "wazuh-0.3.2-soctalk-v1"
    assert sts["cassandra"]["metadata"]["labels"]["helm.sh/chart"] == "thehive-5.2.0-soctalk-v1"
    assert sts["cortex-elasticsearch"]["metadata"]["labels"]["helm.sh/chart"] == "cortex-3.1.8-soctalk-v1"


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_namespace_labels_are_on_every_object(name: str) -> None:
    labels = TENANT_SETS[name]["namespaceLabels"]
    for o in objects(TENANT, name):
        assert labels.items() <= o["metadata"]["labels"].items(), f"{o['kind']}/{o['metadata']['name']}"
    for where, spec in pod_specs(objects(TENANT, name)):
        assert spec is not None and where


def test_adapter_role_reads_only_its_own_token() -> None:
    objs = objects(TENANT, LB_SAMPLE.name)
    role = by_kind(objs, "Role")["soctalk-adapter"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["adapter-token"],
            "verbs": ["get", "watch"],
        }
    ]
    binding = by_kind(objs, "RoleBinding")["soctalk-adapter"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "soctalk-adapter", "namespace": "tenant-acme"}
    ]
    assert set(by_kind(objs, "Role")) == {"soctalk-adapter"}


def test_adapter_deployment() -> None:
    values = TENANT_SETS[LB_SAMPLE.name]
    dep = by_kind(objects(TENANT, LB_SAMPLE.name), "Deployment")["soctalk-adapter"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    defaults = charts.chart_defaults(TENANT)["adapter"]["image"]
    assert c["image"] == f"{defaults['repository']}:{defaults['tag']}@{defaults['digest']}"
    env = env_of(c)
    assert env["SOCTALK_ADAPTER_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "adapter-token", "key": "token"}
    }
    assert env["SOCTALK_TENANT_ID"]["value"] == values["tenant"]["id"]
    assert env["SOCTALK_NATS_URL"]["value"] == "nats://nats.soctalk-system.svc:4222"
    assert env["SOCTALK_HEARTBEAT_INTERVAL_S"]["value"] == "30"
    assert dep["spec"]["replicas"] == 1


def test_network_policies_default_deny_with_needed_allowances() -> None:
    objs = objects(TENANT, LB_SAMPLE.name)
    nps = by_kind(objs, "NetworkPolicy")
    deny = nps["default-deny-all"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert {p["port"] for p in nps["allow-dns"]["spec"]["egress"][0]["ports"]} == {53}
    system_egress = nps["allow-adapter-to-soctalk-system"]["spec"]["egress"][0]
    assert system_egress["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "soctalk-system"
    }
    assert {p["port"] for p in system_egress["ports"]} == {4222, 8080}
    agents = nps["allow-wazuh-agents"]["spec"]["ingress"][0]
    assert {p["port"] for p in agents["ports"]} == {1514, 1515}
    assert agents["from"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]

    cnp = by_kind(objs, "CiliumNetworkPolicy")["allow-llm-egress"]["spec"]
    fqdn = next(rule for rule in cnp["egress"] if "toFQDNs" in rule)
    assert fqdn["toFQDNs"] == [{"matchName": "api.openai.com"}]
    assert fqdn["toPorts"][0]["ports"] == [{"port": "443", "protocol": "TCP"}]


def test_fqdn_egress_supports_wildcards_and_explicit_ports() -> None:
    values = charts.merge_values(
        load(LB_SAMPLE),
        {
            "allowedLlmHosts": ["llm.example.com", "*.openai.azure.com"],
            "llm": {"baseUrl": "https://llm.example.com:8443/v1"},
        },
    )
    cnp = by_kind(charts.render_objects(TENANT, values), "CiliumNetworkPolicy")["allow-llm-egress"]["spec"]
    fqdn = next(rule for rule in cnp["egress"] if "toFQDNs" in rule)
    assert fqdn["toFQDNs"] == [{"matchName": "llm.example.com"}, {"matchPattern": "*.openai.azure.com"}]
    assert fqdn["toPorts"][0]["ports"][0]["port"] == "8443"


def test_edge_mode_admits_agents_only_from_the_edge_haproxy() -> None:
    objs = objects(TENANT, EDGE_SAMPLE.name)
    agents = by_kind(objs, "NetworkPolicy")["allow-wazuh-agents"]["spec"]["ingress"][0]["from"]
    assert agents == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "soctalk-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "soctalk-edge-haproxy"}},
        }
    ]
    assert "CiliumNetworkPolicy" not in {o["kind"] for o in objs}  # fqdnEngine: none


def test_network_policies_can_be_disabled() -> None:
    values = charts.merge_values(load(LB_SAMPLE), {"networkPolicies": {"enabled": False}})
    kinds = {o["kind"] for o in charts.render_objects(TENANT, values)}
    assert not kinds & {"NetworkPolicy", "CiliumNetworkPolicy"}


def test_wazuh_agent_service_in_both_modes() -> None:
    lb = by_kind(objects(TENANT, LB_SAMPLE.name), "Service")["wazuh-agents"]
    assert lb["spec"]["type"] == "LoadBalancer"
    assert lb["spec"]["externalTrafficPolicy"] == "Local"
    assert {p["port"] for p in lb["spec"]["ports"]} == {1514, 1515}
    assert (
        lb["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"]
        == "acme.soc.mssp.example.com"
    )

    edge = by_kind(objects(TENANT, EDGE_SAMPLE.name), "Service")["wazuh-agents"]
    assert edge["spec"]["type"] == "ClusterIP"
    assert edge["metadata"]["annotations"]["soctalk.io/edge-events-port"] == "15142"
    assert edge["metadata"]["annotations"]["soctalk.io/edge-enrollment-port"] == "15143"
    assert {p["port"] for p in edge["spec"]["ports"]} == {1514, 1515}


def test_quota_and_limit_range_follow_the_values() -> None:
    objs, values = objects(TENANT, EDGE_SAMPLE.name), TENANT_SETS[EDGE_SAMPLE.name]
    hard = by_kind(objs, "ResourceQuota")["tenant-quota"]["spec"]["hard"]
    q = values["resourceQuota"]
    assert hard == {
        "requests.cpu": q["requests"]["cpu"],
        "requests.memory": q["requests"]["memory"],
        "limits.cpu": q["limits"]["cpu"],
        "limits.memory": q["limits"]["memory"],
        "persistentvolumeclaims": q["persistentVolumeClaims"],
        "pods": q["pods"],
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    assert (
        by_kind(objects(TENANT, LB_SAMPLE.name), "ResourceQuota")["tenant-quota"]["spec"]["hard"][
            "services.loadbalancers"
        ]
        == "1"
    )
    limits = by_kind(objs, "LimitRange")["tenant-limits"]["spec"]["limits"][0]
    assert limits["max"] == {"cpu": q["limits"]["cpu"], "memory": q["limits"]["memory"]}


@pytest.mark.parametrize("name", TENANT_NAMES)
def test_quota_fits_the_rendered_stack(name: str) -> None:
    """The namespace quota must admit every pod the chart starts, or the tenant never becomes ready."""
    objs = objects(TENANT, name)
    hard = by_kind(objs, "ResourceQuota")["tenant-quota"]["spec"]["hard"]
    total: dict[str, Decimal] = {}
    pods = 0
    pvcs = len(by_kind(objs, "PersistentVolumeClaim"))
    for o in objs:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        replicas = max(o["spec"]["replicas"], 1)  # a suspended tenant must fit again when resumed
        pods += replicas
        pvcs += replicas * len(o["spec"].get("volumeClaimTemplates", []))
        for c in o["spec"]["template"]["spec"]["containers"]:
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    key = f"{kind}.{res}"
                    total[key] = total.get(key, Decimal(0)) + replicas * qty(c["resources"][kind][res])
    for key, used in total.items():
        assert used <= qty(hard[key]), (key, used, hard[key])
    assert pods <= int(hard["pods"]) and pvcs <= int(hard["persistentvolumeclaims"])


def test_suspended_scales_every_workload_to_zero() -> None:
    objs = objects(TENANT, EDGE_SAMPLE.name)
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert workloads and all(o["spec"]["replicas"] == 0 for o in workloads)
    assert "wazuh-agents" in by_kind(objs, "Service")  # the agent endpoint stays
    running = [o for o in objects(TENANT, LB_SAMPLE.name) if o["kind"] in ("Deployment", "StatefulSet")]
    assert all(o["spec"]["replicas"] == 1 for o in running)


def test_external_cortex_replaces_the_in_namespace_one() -> None:
    objs = objects(TENANT, EDGE_SAMPLE.name)
    names = {o["metadata"]["name"] for o in objs}
    assert not {"cortex", "cortex-elasticsearch"} & names
    thehive = by_kind(objs, "Deployment")["thehive"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(thehive)["TH_CORTEX_URL"]["value"] == "https://cortex.globex.example.com"
    assert "TH_CORTEX_KEY" not in env_of(thehive)  # the in-namespace key does not fit another Cortex
    local = by_kind(objects(TENANT, LB_SAMPLE.name), "Deployment")["thehive"]["spec"]["template"]["spec"]
    key_ref = env_of(local["containers"][0])["TH_CORTEX_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref == {"name": "cortex-bootstrap", "key": "api_key"}
    assert {"cortex", "cortex-elasticsearch"} <= {
        o["metadata"]["name"] for o in objects(TENANT, LB_SAMPLE.name)
    }


def test_certificate_only_with_issuer_and_hostname() -> None:
    cert = by_kind(objects(TENANT, LB_SAMPLE.name), "Certificate")["wazuh-agent-tls"]["spec"]
    assert cert["secretName"] == "wazuh-tls" and cert["dnsNames"] == ["acme.soc.mssp.example.com"]
    assert cert["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "letsencrypt-prod",
    }
    assert "Certificate" not in {o["kind"] for o in objects(TENANT, EDGE_SAMPLE.name)}


def test_tenant_config_map_holds_references_only() -> None:
    import json

    cm = by_kind(objects(TENANT, LB_SAMPLE.name), "ConfigMap")["soctalk-tenant-config"]
    config = json.loads(cm["data"]["tenant.json"])
    assert config["llm"]["apiKeyRef"] == {
        "namespace": "soctalk-system",
        "name": "tenant-3f6c2a4e-8b1d-4c7a-9e2f-5a6b7c8d9e01-llm",
        "key": "api_key",
    }
    assert config["chartVersion"] == "1.1.0"


# --- system chart ------------------------------------------------------------------------------------

SERVICES = ("api", "provisioner", "secrets", "helm-runner", "heartbeat", "outbox-relay")


@pytest.mark.parametrize("name", SYSTEM_NAMES)
def test_system_chart_runs_every_service_under_its_own_account(name: str) -> None:
    objs = objects(SYSTEM, name)
    deps = by_kind(objs, "Deployment")
    assert set(deps) == {f"soctalk-{s}" for s in SERVICES}
    accounts = set(by_kind(objs, "ServiceAccount"))
    for service in SERVICES:
        spec = deps[f"soctalk-{service}"]["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == f"soctalk-{service}-sa"
        assert spec["serviceAccountName"] in accounts
        assert spec["automountServiceAccountToken"] is (service in ("api", "secrets", "helm-runner"))
        c = spec["containers"][0]
        assert c["args"] == ["serve", service]
        assert c["readinessProbe"] and c["livenessProbe"] and c["resources"]["limits"]
        assert (
            c["securityContext"]["runAsNonRoot"] is True
            and c["securityContext"]["readOnlyRootFilesystem"] is True
        )
    assert {
        "soctalk-api-sa",
        "soctalk-orchestrator-sa",
        "soctalk-secrets-sa",
        "soctalk-helm-runner-sa",
    } <= accounts


def test_the_helm_runner_gets_the_go_runtime_settings_in_its_environment() -> None:
    """The Helm SDK's Go runtime reads GOGC/GOMEMLIMIT at process start only: the chart must put them
    in the helm-runner container's environment (the same default as ``soctalk dev up``), and only there."""
    from soctalk_common.memory import HELM_GO_ENV

    name = SYSTEM_NAMES[0]
    deps = by_kind(objects(SYSTEM, name), "Deployment")
    runner = env_of(deps["soctalk-helm-runner"]["spec"]["template"]["spec"]["containers"][0])
    assert {k: runner[k]["value"] for k in HELM_GO_ENV} == HELM_GO_ENV and "GOMEMLIMIT" not in runner
    for service in SERVICES:
        if service != "helm-runner":
            c = deps[f"soctalk-{service}"]["spec"]["template"]["spec"]["containers"][0]
            assert "GOGC" not in env_of(c)
    values = _set(SYSTEM_SETS[name], ("services", "helmRunner", "goMemLimit"), "1GiB")
    values = _set(values, ("services", "helmRunner", "goGC"), 100)
    deps = by_kind(charts.render_objects(SYSTEM, values), "Deployment")
    runner = env_of(deps["soctalk-helm-runner"]["spec"]["template"]["spec"]["containers"][0])
    assert runner["GOGC"]["value"] == "100" and runner["GOMEMLIMIT"]["value"] == "1GiB"
    with pytest.raises(ValidationFailed, match=r"\$\.services\.helmRunner\.goMemLimit"):
        charts.render_objects(SYSTEM, _set(SYSTEM_SETS[name], ("services", "helmRunner", "goMemLimit"), "lots"))


@pytest.mark.parametrize("name", SYSTEM_NAMES)
def test_system_chart_renders_no_secret_and_no_literal_credentials(name: str) -> None:
    objs = objects(SYSTEM, name)
    assert "Secret" not in {o["kind"] for o in objs}
    for where, c in containers(objs):
        for env in c.get("env", []):
            if env["name"].endswith("DATABASE_URL"):
                assert re.match(r"^postgresql\+asyncpg://\$\((\w+)\):\$\((\w+)\)@", env["value"]), where
            elif re.search(r"PASS|TOKEN|SECRET|_KEY$|_USER$", env["name"]):
                assert "valueFrom" in env, (where, env["name"])


def test_least_privilege_rbac() -> None:
    objs = objects(SYSTEM, "pilot-prod.yaml")
    roles, cluster_roles = by_kind(objs, "Role"), by_kind(objs, "ClusterRole")
    assert roles["soctalk-api-secrets-read"]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    ]
    assert roles["soctalk-orchestrator-secrets-read"]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
    ]
    for role in [*roles.values(), *cluster_roles.values()]:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert not {
                "clusterroles",
                "clusterrolebindings",
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
            } & set(rule["resources"])
    secrets_rules = cluster_roles["soctalk-secrets-tenants"]["rules"]
    assert {
        "apiGroups": [""],
        "resources": ["namespaces"],
        "verbs": ["get", "create", "update", "patch", "delete"],
    } in secrets_rules
    bound = {
        (b["roleRef"]["name"], s["name"])
        for kind in ("RoleBinding", "ClusterRoleBinding")
        for b in by_kind(objs, kind).values()
        for s in b["subjects"]
    }
    assert bound == {
        ("soctalk-api-secrets-read", "soctalk-api-sa"),
        ("soctalk-orchestrator-secrets-read", "soctalk-orchestrator-sa"),
        ("soctalk-secrets-system", "soctalk-secrets-sa"),
        ("soctalk-secrets-tenants", "soctalk-secrets-sa"),
        ("soctalk-helm-runner-tenants", "soctalk-helm-runner-sa"),
    }


def test_tenant_chart_kinds_are_all_covered_by_the_helm_runner_role() -> None:
    """The helm-runner must be allowed to create everything the tenant chart renders."""
    rules = by_kind(objects(SYSTEM, "pilot-prod.yaml"), "ClusterRole")["soctalk-helm-runner-tenants"]["rules"]
    writable = {
        (g, r)
        for rule in rules
        if "create" in rule["verbs"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    plural = {
        "NetworkPolicy": "networkpolicies",
        "CiliumNetworkPolicy": "ciliumnetworkpolicies",
        "ResourceQuota": "resourcequotas",
        "LimitRange": "limitranges",
        "ServiceAccount": "serviceaccounts",
        "ConfigMap": "configmaps",
        "Service": "services",
        "Deployment": "deployments",
        "StatefulSet": "statefulsets",
        "Role": "roles",
        "RoleBinding": "rolebindings",
        "Certificate": "certificates",
        "PersistentVolumeClaim": "persistentvolumeclaims",
    }
    for name in TENANT_NAMES:
        for o in objects(TENANT, name):
            group = o["apiVersion"].rpartition("/")[0]
            assert (group, plural[o["kind"]]) in writable, o["kind"]


def test_admission_policy_confines_the_controllers() -> None:
    objs = objects(SYSTEM, "pilot-prod.yaml")
    vap = by_kind(objs, "ValidatingAdmissionPolicy")["soctalk-controller-tenant-scope"]["spec"]
    users = vap["matchConditions"][0]["expression"]
    assert "system:serviceaccount:soctalk-system:soctalk-secrets-sa" in users
    assert "system:serviceaccount:soctalk-system:soctalk-helm-runner-sa" in users
    text = " ".join(v["expression"] for v in vap["validations"])
    assert "startsWith('tenant-')" in text
    for label in ("'tenant'", "'managed-by'", "'mssp-id'", "'install-id'", "'tenant-id'"):
        assert label in text
    assert "'22222222-2222-4222-8222-222222222222'" in text
    binding = by_kind(objs, "ValidatingAdmissionPolicyBinding")["soctalk-controller-tenant-scope"]["spec"]
    assert binding == {"policyName": "soctalk-controller-tenant-scope", "validationActions": ["Deny"]}
    none = objects(SYSTEM, "external-postgres-values.yaml")
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & {o["kind"] for o in none}


def test_internal_and_external_postgres() -> None:
    internal = objects(SYSTEM, "small-dev.yaml")
    assert "soctalk-postgres" in by_kind(internal, "StatefulSet")
    api = env_of(by_kind(internal, "Deployment")["soctalk-api"]["spec"]["template"]["spec"]["containers"][0])
    assert api["SOCTALK_DB_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": "soctalk-postgres-app-creds",
        "key": "username",
    }
    assert api["SOCTALK_MSSP_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "soctalk-postgres-mssp-creds",
        "key": "password",
    }
    assert "@soctalk-postgres.soctalk-system.svc:5432/soctalk" in api["SOCTALK_DATABASE_URL"]["value"]

    external = objects(SYSTEM, "pilot-prod.yaml")
    assert "StatefulSet" not in {o["kind"] for o in external}
    prov = env_of(
        by_kind(external, "Deployment")["soctalk-provisioner"]["spec"]["template"]["spec"]["containers"][0]
    )
    assert prov["SOCTALK_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "soctalk-postgres-external",
        "key": "app_password",
    }
    assert "@soctalk-pg.db.example.internal:5432/soctalk" in prov["SOCTALK_DATABASE_URL"]["value"]
    assert "SOCTALK_MSSP_DB_USER" not in prov  # only the API uses the mssp role


def test_only_the_migration_job_uses_the_admin_role() -> None:
    for name in SYSTEM_NAMES:
        for where, c in containers(objects(SYSTEM, name)):
            refs = {
                e["valueFrom"]["secretKeyRef"]["key"]
                if "external" in e["valueFrom"]["secretKeyRef"]["name"]
                else e["valueFrom"]["secretKeyRef"]["name"]
                for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            uses_admin = bool(refs & {"admin_user", "admin_password", "soctalk-postgres-admin-creds"})
            assert uses_admin == (
                where.startswith("Job/") or where.startswith("StatefulSet/soctalk-postgres")
            ), where


def test_auth_mode_and_trusted_headers_reach_the_config() -> None:
    proxy = by_kind(objects(SYSTEM, "pilot-prod.yaml"), "ConfigMap")["soctalk-config"]["data"]
    assert proxy["SOCTALK_AUTH_MODE"] == "proxy"
    assert proxy["SOCTALK_AUTH_TRUSTED_HEADER_USER"] == "X-Forwarded-User"
    assert proxy["SOCTALK_AUTH_TRUSTED_HEADER_GROUPS"] == "X-Forwarded-Groups"
    assert proxy["SOCTALK_AUTH_TRUSTED_PROXY_CIDRS"] == "10.0.0.0/8"
    ci = by_kind(objects(SYSTEM, "external-postgres-values.yaml"), "ConfigMap")["soctalk-config"]["data"]
    assert ci["SOCTALK_AUTH_TRUSTED_PROXY_CIDRS"] == "10.42.0.0/16,fd00:10:42::/48"
    internal = by_kind(objects(SYSTEM, "small-dev.yaml"), "ConfigMap")["soctalk-config"]["data"]
    assert internal["SOCTALK_AUTH_MODE"] == "internal"
    assert not [k for k in internal if k.startswith("SOCTALK_AUTH_TRUSTED")]


def test_nats_install_identity_and_tenant_defaults_reach_the_services() -> None:
    objs = objects(SYSTEM, "pilot-prod.yaml")
    maps = by_kind(objs, "ConfigMap")
    config = maps["soctalk-config"]["data"]
    assert config["SOCTALK_NATS_URL"] == "nats://nats.soctalk-system.svc:4222"
    assert config["SOCTALK_INSTALL_ID"] == "22222222-2222-4222-8222-222222222222"
    assert config["SOCTALK_DEFAULT_PROFILE"] == "pilot-prod"
    assert config["SOCTALK_SECRETS_BACKEND"] == "vault" and config["SOCTALK_VAULT_ADDR"].startswith(
        "https://"
    )
    import json

    defaults = json.loads(maps["soctalk-tenant-defaults"]["data"]["tenant-defaults.json"])
    assert defaults == SYSTEM_SETS["pilot-prod.yaml"]["defaults"]["tenant"]
    api = by_kind(objs, "Deployment")["soctalk-api"]["spec"]["template"]["spec"]
    assert {
        "name": "nats-creds",
        "secret": {
            "secretName": "soctalk-nats-creds",
            "defaultMode": 0o400,
            "items": [{"key": "nats.creds", "path": "nats.creds"}],
        },
    } in api["volumes"]


def test_ingress_routes_both_uis_to_the_api() -> None:
    ing = by_kind(objects(SYSTEM, "pilot-prod.yaml"), "Ingress")["soctalk"]
    assert ing["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert [r["host"] for r in ing["spec"]["rules"]] == ["mssp.example.com", "*.customers.example.com"]
    assert ing["spec"]["tls"] == [
        {"secretName": "soctalk-tls", "hosts": ["mssp.example.com", "*.customers.example.com"]}
    ]
