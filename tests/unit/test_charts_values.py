"""values.schema.json of both charts: seed coverage, required fields, patterns, cross-field rules.

Pure: these tests use the schemas and values files only (no Helm). The contract tests in
tests/contract/test_charts_*.py run the same values through Helm.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from soctalk_common import charts

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
TENANT, SYSTEM = charts.TENANT_CHART, charts.SYSTEM_CHART

SYSTEM_FILES = sorted(
    [*(REPO / "deploy/values").glob("*.yaml"), *(REPO / "charts/soctalk-system/ci").glob("*-values.yaml")]
)
TENANT_FILES = sorted((REPO / "charts/soctalk-tenant/ci").glob("*-values.yaml"))
EXAMPLE = REPO / "deploy/examples/tenant-acme-values.yaml"
PROFILES = [REPO / "deploy/values/pilot-prod.yaml", REPO / "deploy/values/small-dev.yaml"]

# Every field of seed 001's drafts, as dotted paths (maps end at the map).
# fmt: off
SEED_SYSTEM_FIELDS = [
    "install.msspId", "install.msspName", "install.installId", "install.installLabel", "image.registry",
    "image.tag", "image.pullPolicy", "postgres.enabled", "postgres.storage.size",
    "postgres.storage.storageClassName", "postgres.external.host", "postgres.external.port",
    "postgres.external.database", "postgres.external.existingSecret", "ingress.enabled",
    "ingress.className", "ingress.tls.secretName", "ingress.tls.issuerRef", "ingress.hostnames.mssp",
    "ingress.hostnames.customer", "auth.mode", "auth.oidc.trustedHeaderUser",
    "auth.oidc.trustedHeaderEmail", "auth.oidc.trustedHeaderGroups", "auth.oidc.trustedProxyCIDRs",
    "defaults.llm.provider", "defaults.llm.baseUrl", "defaults.llm.model", "resources.api.requests.cpu",
    "resources.api.requests.memory", "resources.api.limits.cpu", "resources.api.limits.memory",
    "resources.orchestrator.requests.cpu", "resources.orchestrator.limits.memory",
    "resources.postgres.requests.cpu", "resources.postgres.limits.memory", "admission.engine",
    "licensing.enabled", "telemetry.enabled",
]
SEED_TENANT_FIELDS = [
    "tenant.id", "tenant.slug", "tenant.msspId", "tenant.installId", "tenant.displayName",
    "branding.appName", "branding.logoUrl", "branding.primaryColor", "branding.secondaryColor",
    "branding.favicon", "llm.provider", "llm.baseUrl", "llm.model", "llm.apiKeyRef.namespace",
    "llm.apiKeyRef.name", "llm.apiKeyRef.key", "integrations.externalCortexUrl",
    "components.wazuh.manager.resources.requests.cpu", "components.wazuh.manager.resources.limits.memory",
    "components.wazuh.manager.persistence.size", "components.wazuh.indexer.resources.requests.memory",
    "components.wazuh.indexer.persistence.size", "components.wazuh.indexer.jvm.heap",
    "components.wazuh.dashboard.enabled", "components.wazuh.dashboard.resources.limits.cpu",
    "components.thehive.resources.requests.cpu", "components.thehive.cassandra.resources.limits.cpu",
    "components.thehive.cassandra.persistence.size", "components.cortex.resources.limits.memory",
    "components.cortex.elasticsearch.resources.requests.cpu",
    "components.cortex.elasticsearch.persistence.size", "components.cortex.analyzers",
    "components.misp.enabled", "networkPolicies.enabled", "allowedLlmHosts", "resourceQuota.requests.cpu",
    "resourceQuota.requests.memory", "resourceQuota.limits.cpu", "resourceQuota.limits.memory",
    "resourceQuota.persistentVolumeClaims", "resourceQuota.pods", "wazuhIngress.mode",
    "wazuhIngress.hostname", "wazuhIngress.edgePorts.events", "wazuhIngress.edgePorts.enrollment",
    "wazuhIngress.tls.issuerRef", "wazuhIngress.tls.secretName", "adapter.image.repository",
    "adapter.image.tag", "adapter.image.digest", "adapter.resources.requests.cpu",
    "adapter.resources.limits.memory", "adapter.tokenSecretRef.name", "adapter.tokenSecretRef.key",
    "namespaceLabels.tenant", "namespaceLabels.managed-by", "namespaceLabels.mssp-id",
    "namespaceLabels.install-id", "namespaceLabels.tenant-id",
]
# Keys this project adds to the tenant contract (design decisions), nothing else.
ADDED_TENANT_FIELDS = [
    "suspended", "secretsBackend", "networkPolicies.fqdnEngine", "adapter.heartbeat.natsUrl",
    "adapter.heartbeat.httpUrl", "adapter.heartbeat.intervalSeconds",
]
# fmt: on


def load(path: Path) -> dict[str, Any]:
    return charts.load_values_file(path)


def schema(chart: str) -> dict[str, Any]:
    return charts.load_schema(chart)


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(root["$defs"][node["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return resolve(root, target)
    return node


def schema_node(root: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node = root
    for part in dotted.split("."):
        node = resolve(root, node)
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        else:
            return None
    return resolve(root, node)


def required_nodes(
    root: dict[str, Any], node: dict[str, Any] | None = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every field that must be present (given that its parent is), depth first."""
    node = resolve(root, node if node is not None else root)
    props = node.get("properties", {})
    for name in node.get("required", []):
        child = resolve(root, props.get(name, {}))
        yield (*path, name), child
        yield from required_nodes(root, child, (*path, name))


def json_path(path: tuple[str, ...]) -> str:
    return charts.json_path(path)


def wrong_value(node: dict[str, Any]) -> Any:
    """A value of the wrong type (or outside the enum/const) for a schema node."""
    if "const" in node or "enum" in node:
        return True if node.get("const") == "true" or node.get("type") == "string" else "not-a-choice"
    kind = node.get("type")
    if kind == "string" or "anyOf" in node:
        return 12345
    if kind in ("integer", "number"):
        return "abc"
    if kind == "boolean":
        return "yes"
    if kind == "array":
        return "not-a-list"
    if kind == "object":
        return "not-an-object"
    return []  # unions such as ["string", "number"]


def set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy with path set (bypassing Helm's null-deletes so mistypes stay mistyped)."""
    out = copy.deepcopy(values)
    node = out
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return out


def valid_base(chart: str) -> dict[str, Any]:
    base = (
        load(PROFILES[0])
        if chart == SYSTEM
        else load(REPO / "charts/soctalk-tenant/ci/loadbalancer-kubernetes-values.yaml")
    )
    return charts.merge_values(charts.chart_defaults(chart), base)


def required_cases(chart: str) -> list[tuple[str, ...]]:
    return [path for path, _ in required_nodes(schema(chart))]


# --- every sample is valid -----------------------------------------------------------------------


@pytest.mark.parametrize("path", SYSTEM_FILES, ids=lambda p: p.name)
def test_system_profiles_and_samples_are_valid(path: Path) -> None:
    assert charts.validate_values(SYSTEM, load(path)) == []


@pytest.mark.parametrize("path", [*TENANT_FILES, EXAMPLE], ids=lambda p: p.name)
def test_tenant_samples_are_valid(path: Path) -> None:
    assert charts.validate_values(TENANT, load(path)) == []


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_example_tenant_is_valid_under_every_profile(profile: Path) -> None:
    values = charts.tenant_values(load(profile), load(EXAMPLE))
    assert charts.validate_values(TENANT, values) == []
    assert values["components"] == load(profile)["defaults"]["tenant"]["components"]


def test_ci_samples_cover_both_ingress_modes_and_backends() -> None:
    tenant = [load(p) for p in TENANT_FILES]
    assert {v["wazuhIngress"]["mode"] for v in tenant} == {"loadbalancer", "edge-haproxy"}
    assert {v["secretsBackend"] for v in tenant} == {"kubernetes", "vault"}
    system = [
        charts.merge_values(charts.chart_defaults(SYSTEM), load(p))
        for p in (REPO / "charts/soctalk-system/ci").glob("*-values.yaml")
    ]
    assert {v["postgres"]["enabled"] for v in system} == {True, False}
    assert {v["secrets"]["backend"] for v in system} == {"kubernetes", "vault"}
    assert {v["auth"]["mode"] for v in system} == {"internal", "proxy"}
    assert {v["admission"]["engine"] for v in system} == {"vap", "none"}


# --- the schemas cover the seed drafts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("chart", "fields"), [(SYSTEM, SEED_SYSTEM_FIELDS), (TENANT, SEED_TENANT_FIELDS + ADDED_TENANT_FIELDS)]
)
def test_schema_covers_every_seed_field(chart: str, fields: list[str]) -> None:
    root = schema(chart)
    missing = [f for f in fields if schema_node(root, f) is None]
    assert missing == []


@pytest.mark.parametrize("chart", [SYSTEM, TENANT])
def test_every_object_is_closed(chart: str) -> None:
    """additionalProperties: false everywhere, except label maps (values typed) and subchart internals."""
    root = schema(chart)
    open_objects = []

    def walk(node: dict[str, Any], where: str) -> None:
        node = resolve(root, node)
        extra = node.get("additionalProperties")
        closed = extra is False or isinstance(extra, dict)
        if node.get("type") == "object" and "properties" in node and not closed:
            open_objects.append(where)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{where}.{name}")

    walk(root, "$")
    assert open_objects == []


def test_tenant_sizing_schema_is_shared_by_both_charts() -> None:
    """defaults.tenant in the system chart must validate exactly what the tenant chart accepts."""
    system, tenant = schema(SYSTEM), schema(TENANT)
    for name in (
        "components",
        "resourceQuota",
        "resources",
        "computeResources",
        "persistence",
        "quantity",
        "storageQuantity",
        "count",
    ):
        assert system["$defs"][name] == tenant["$defs"][name], name


def test_required_set_is_small() -> None:
    top = schema(TENANT)["required"]
    no_default = [k for k in top if k not in charts.chart_defaults(TENANT)]
    assert sorted(no_default) == ["namespaceLabels", "tenant"]
    assert "mode" not in charts.chart_defaults(TENANT)["wazuhIngress"]
    assert "apiKeyRef" not in charts.chart_defaults(TENANT)["llm"]


# --- every required field: missing or mistyped is rejected with its JSON path ---------------------


@pytest.mark.parametrize("chart", [SYSTEM, TENANT])
def test_every_required_field_missing_is_rejected_with_its_path(chart: str) -> None:
    base = valid_base(chart)
    assert charts.validate_values(chart, base) == []
    unreported = []
    for path in required_cases(chart):
        # null is how a values file removes a key that has a default (Helm semantics)
        errors = charts.validate_values(chart, set_path(base, path, None))
        if (json_path(path), "is required") not in errors:
            unreported.append((json_path(path), errors))
    assert unreported == []


@pytest.mark.parametrize("chart", [SYSTEM, TENANT])
def test_every_required_field_mistyped_is_rejected_with_its_path(chart: str) -> None:
    root, base = schema(chart), valid_base(chart)
    unreported = []
    for path, node in required_nodes(root):
        errors = charts.validate_values(chart, set_path(base, path, wrong_value(node)))
        if json_path(path) not in {p for p, _ in errors}:
            unreported.append((json_path(path), errors))
    assert unreported == []


def test_paths_use_brackets_for_label_keys() -> None:
    errors = charts.validate_values(
        TENANT, set_path(valid_base(TENANT), ("namespaceLabels", "mssp-id"), None)
    )
    assert ("$.namespaceLabels['mssp-id']", "is required") in errors


def test_edge_ports_are_required_in_edge_mode_only() -> None:
    base = valid_base(TENANT)
    assert "edgePorts" not in base["wazuhIngress"]
    errors = charts.validate_values(
        TENANT, charts.merge_values(base, {"wazuhIngress": {"mode": "edge-haproxy"}})
    )
    assert errors == [("$.wazuhIngress.edgePorts", "is required")]


def test_unknown_keys_are_rejected_with_their_path() -> None:
    values = charts.merge_values(valid_base(TENANT), {"tenant": {"nickname": "acme"}, "extra": 1})
    errors = charts.validate_values(TENANT, values)
    assert ("$.tenant.nickname", "is not allowed (unknown key)") in errors
    assert ("$.extra", "is not allowed (unknown key)") in errors


def test_subchart_internals_are_validated_by_the_subchart_schema() -> None:
    values = charts.merge_values(valid_base(TENANT), {"wazuh": {"images": {"manager": {"digest": "latest"}}}})
    errors = charts.validate_values(TENANT, values)
    assert [p for p, _ in errors] == ["$.wazuh.images.manager.digest"]


def test_messages_never_echo_the_value() -> None:
    canary = "CANARY-not-a-slug-9f1c"
    errors = charts.validate_values(
        TENANT, charts.merge_values(valid_base(TENANT), {"tenant": {"slug": canary}})
    )
    assert [p for p, _ in errors] == ["$.tenant.slug"]
    assert canary not in json.dumps(errors)


def test_namespace_labels_must_describe_the_tenant() -> None:
    values = charts.merge_values(
        valid_base(TENANT), {"namespaceLabels": {"tenant-id": "00000000-0000-4000-8000-000000000000"}}
    )
    assert charts.validate_values(TENANT, values) == [
        ("$.namespaceLabels['tenant-id']", "must equal tenant.id")
    ]


def test_misp_and_licensing_cannot_be_turned_on() -> None:
    assert [
        p
        for p, _ in charts.validate_values(
            TENANT, charts.merge_values(valid_base(TENANT), {"components": {"misp": {"enabled": True}}})
        )
    ] == ["$.components.misp.enabled"]
    assert [
        p
        for p, _ in charts.validate_values(
            SYSTEM, charts.merge_values(valid_base(SYSTEM), {"licensing": {"enabled": True}})
        )
    ] == ["$.licensing.enabled"]


def test_external_postgres_needs_host_and_secret() -> None:
    values = charts.merge_values(
        valid_base(SYSTEM), {"postgres": {"enabled": False, "external": {"host": "", "existingSecret": ""}}}
    )
    assert {p for p, _ in charts.validate_values(SYSTEM, values)} == {
        "$.postgres.external.host",
        "$.postgres.external.existingSecret",
    }


def test_proxy_auth_needs_trusted_cidrs() -> None:
    values = charts.merge_values(
        valid_base(SYSTEM), {"auth": {"mode": "proxy", "oidc": {"trustedProxyCIDRs": []}}}
    )
    assert [p for p, _ in charts.validate_values(SYSTEM, values)] == ["$.auth.oidc.trustedProxyCIDRs"]


def test_vault_backend_needs_an_address() -> None:
    values = charts.merge_values(
        valid_base(SYSTEM), {"secrets": {"backend": "vault", "vault": {"address": ""}}}
    )
    assert [p for p, _ in charts.validate_values(SYSTEM, values)] == ["$.secrets.vault.address"]


# --- patterns --------------------------------------------------------------------------------------

PATTERN_CASES = [
    # (chart, path, good values, bad values)
    (
        SYSTEM,
        ("install", "msspId"),
        ["3f6c2a4e-8b1d-4c7a-9e2f-5a6b7c8d9e01"],
        ["3F6C2A4E-8B1D-4C7A-9E2F-5A6B7C8D9E01", "3f6c2a4e8b1d4c7a9e2f5a6b7c8d9e01", "acme"],
    ),
    (
        TENANT,
        ("tenant", "slug"),
        ["acme", "a", "acme-corp-2", "a" * 56],
        ["Acme", "-acme", "acme-", "acme_corp", "a" * 57, ""],
    ),
    (
        TENANT,
        ("wazuhIngress", "hostname"),
        ["acme.soc.mssp.example.com", ""],
        ["Acme.example.com", "-a.example.com", "a..b", "*.example.com"],
    ),
    (
        TENANT,
        ("allowedLlmHosts",),
        [["api.openai.com", "*.openai.azure.com"]],
        [["https://api.openai.com"], ["api.openai.com", "api.openai.com"]],
    ),
    (
        TENANT,
        ("adapter", "image", "tag"),
        ["v1.1.0", "1.1.0", "v1.1.0-rc.1+b7"],
        ["latest", "v1.1", "1.1.0.0"],
    ),
    (
        TENANT,
        ("adapter", "image", "digest"),
        ["sha256:" + "a" * 64],
        ["sha256:" + "a" * 63, "sha512:" + "a" * 64, "v1.1.0"],
    ),
    (
        TENANT,
        ("components", "wazuh", "manager", "resources", "limits", "cpu"),
        ["500m", 2, 1.5, "2", "0.5"],
        ["500 m", "2 cores", -1, "m"],
    ),
    (
        TENANT,
        ("components", "wazuh", "manager", "resources", "limits", "memory"),
        ["1Gi", "1.5Gi", "512Mi", "1e9", 1073741824],
        ["1GB", "1 Gi", "Gi"],
    ),
    (TENANT, ("components", "wazuh", "manager", "persistence", "size"), ["20Gi"], [20, "20 GB"]),
    (TENANT, ("resourceQuota", "pods"), ["50", 50], ["fifty", -1, "5.5"]),
    (
        TENANT,
        ("llm", "baseUrl"),
        ["https://api.openai.com/v1", "http://ollama.llm.svc:11434"],
        ["api.openai.com", "ftp://x", ""],
    ),
    (TENANT, ("branding", "primaryColor"), ["#1a73e8"], ["1a73e8", "#1a73e", "blue"]),
    (TENANT, ("wazuhIngress", "mode"), ["loadbalancer"], ["nodeport", "LoadBalancer"]),
    (SYSTEM, ("auth", "mode"), ["internal", "proxy"], ["oidc", ""]),
    (SYSTEM, ("admission", "engine"), ["vap", "none"], ["kyverno"]),
    (SYSTEM, ("image", "tag"), ["v1.1.0", "latest"], ["newest", "v1"]),
    (
        SYSTEM,
        ("auth", "oidc", "trustedProxyCIDRs"),
        [["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"]],
        [["10.0.0.0"], ["300.0.0.0/8"], ["10.0.0.0/33"]],
    ),
    (
        SYSTEM,
        ("ingress", "hostnames", "customer"),
        ["*.customers.example.com", "portal.example.com"],
        ["*customers.example.com", "*.*.example.com"],
    ),
    (
        SYSTEM,
        ("nats", "url"),
        ["nats://nats.soctalk-system.svc:4222", "tls://nats:4222"],
        ["http://nats:4222", "nats.soctalk-system.svc"],
    ),
]


@pytest.mark.parametrize(
    ("chart", "path", "good", "bad"),
    PATTERN_CASES,
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else None,
)
def test_patterns(chart: str, path: tuple[str, ...], good: list[Any], bad: list[Any]) -> None:
    base = valid_base(chart)
    for value in good:
        assert charts.validate_values(chart, set_path(base, path, value)) == [], value
    for value in bad:
        errors = charts.validate_values(chart, set_path(base, path, value))
        assert errors and all(p.startswith(json_path(path)) for p, _ in errors), (value, errors)


# --- values merging --------------------------------------------------------------------------------


def test_merge_values_follows_helm() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": {"f": 1}}
    snapshot = copy.deepcopy(base)
    merged = charts.merge_values(base, {"a": {"c": [3]}, "d": None, "e": {"g": 2}}, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": [3]}, "e": {"f": 1, "g": 2}}
    assert base == snapshot


def test_tenant_values_put_profile_defaults_under_the_tenant() -> None:
    profile = load(PROFILES[1])
    tenant = charts.merge_values(
        load(EXAMPLE),
        {"components": {"wazuh": {"dashboard": {"enabled": True}}}, "llm": {"model": "gpt-4.1"}},
    )
    values = charts.tenant_values(profile, tenant)
    assert values["components"]["wazuh"]["dashboard"]["enabled"] is True
    assert (
        values["components"]["wazuh"]["indexer"]
        == profile["defaults"]["tenant"]["components"]["wazuh"]["indexer"]
    )
    assert values["resourceQuota"] == profile["defaults"]["tenant"]["resourceQuota"]
    assert values["llm"]["model"] == "gpt-4.1"
    assert values["llm"]["apiKeyRef"] == load(EXAMPLE)["llm"]["apiKeyRef"]


def test_tenant_values_for_a_named_profile() -> None:
    values = charts.tenant_values_for_profile("small-dev", load(EXAMPLE))
    assert values == charts.tenant_values(load(PROFILES[1]), load(EXAMPLE))
    with pytest.raises(FileNotFoundError):
        charts.tenant_values_for_profile("huge-prod", load(EXAMPLE))


def test_values_files_hold_no_secret_material() -> None:
    """Values carry references only: no key looks like a credential field with a literal value."""
    suspicious = ("password", "passwd", "secretkey", "apikey", "token", "privatekey", "credential")
    files = [
        *SYSTEM_FILES,
        *TENANT_FILES,
        EXAMPLE,
        REPO / "charts/soctalk-system/values.yaml",
        REPO / "charts/soctalk-tenant/values.yaml",
        *(REPO / "charts/soctalk-tenant/charts").glob("*/values.yaml"),
    ]
    found = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                name = str(key).lower().replace("_", "").replace("-", "")
                if (
                    any(s in name for s in suspicious)
                    and not isinstance(value, dict)
                    and not name.endswith(("key", "ref", "secret"))
                ):
                    found.append(f"{where}.{key}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    for path in files:
        walk(load(path), path.name)
    assert found == []
