"""Values rendered from the tenant record: they pass the chart's schema, carry references only, follow
the profile and switch off what the cluster cannot serve. Offline (charts are rendered with helm
template, no cluster)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest
from soctalk_common import charts
from soctalk_common.settings import Settings
from soctalk_helm_runner.records import RefView, TenantView
from soctalk_helm_runner.values import ClusterFeatures, render_values
from soctalk_provisioner.validation import stored_form

pytestmark = pytest.mark.unit

TENANT_ID = uuid.UUID("3f6c2a4e-8b1d-4c7a-9e2f-5a6b7c8d9e01")
SETTINGS = Settings()
SEALED = "sealed:v1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"
CANARY = "sk-canary-never-in-values-0123456789"


def request_config(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "slug": "acme", "displayName": "Acme Corp", "profile": "small-dev",
        "llm": {"provider": "openai-compatible", "baseUrl": "https://api.openai.com/v1", "model": "gpt-4o",
                "apiKey": {"sealed": SEALED}},
        "allowedLlmHosts": ["api.openai.com"],
        "wazuhIngress": {"mode": "loadbalancer", "hostname": "acme.soc.mssp.example.com",
                         "tls": {"issuerRef": "letsencrypt-prod", "secretName": "wazuh-tls"}},
        "branding": {"appName": "Acme SOC"},
        "components": {"thehive": {"resources": {"requests": {"cpu": "150m", "memory": "600Mi"},
                                                 "limits": {"cpu": "1", "memory": "2Gi"}}}},
    }
    cfg.update(changes)
    return cfg


def tenant(**changes: Any) -> TenantView:
    config, _ = stored_form(request_config(**changes.pop("config", {})), tenant_id=TENANT_ID,
                            default_chart_version="v1.1.0", system_namespace="soctalk-system")
    view = TenantView(id=TENANT_ID, slug="acme", mssp_id=SETTINGS.mssp_id, install_id=SETTINGS.install_id,
                      display_name="Acme Corp", profile="small-dev", secrets_backend="kubernetes",
                      config=config, edge_ports=None, state="provisioning", chart_version="v1.1.0")
    return replace(view, **changes)


REFS = [
    RefView("llm", "kubernetes", "soctalk-system", f"tenant-{TENANT_ID}-llm", "api_key"),
    RefView("adapter-token", "kubernetes", "tenant-acme", "adapter-token", "token", "retiring"),
    RefView("adapter-token", "kubernetes", "tenant-acme", "adapter-token-v2", "token"),
    RefView("wazuh-bootstrap", "kubernetes", "tenant-acme", "wazuh-bootstrap", "admin_password"),
]


def test_values_pass_the_chart_schema_and_identify_the_tenant() -> None:
    values = render_values(tenant(), REFS, SETTINGS)
    assert charts.validate_values("soctalk-tenant", values) == []
    assert values["tenant"] == {"id": str(TENANT_ID), "slug": "acme", "msspId": str(SETTINGS.mssp_id),
                                "installId": str(SETTINGS.install_id), "displayName": "Acme Corp"}
    assert values["namespaceLabels"] == {
        "tenant": "true", "managed-by": "soctalk", "mssp-id": str(SETTINGS.mssp_id),
        "install-id": str(SETTINGS.install_id), "tenant-id": str(TENANT_ID)}
    assert values["llm"]["apiKeyRef"] == {"namespace": "soctalk-system", "name": f"tenant-{TENANT_ID}-llm",
                                          "key": "api_key"}
    assert values["adapter"]["tokenSecretRef"] == {"name": "adapter-token-v2", "key": "token"}  # active one
    assert values["suspended"] is False and values["secretsBackend"] == "kubernetes"
    assert values["branding"]["appName"] == "Acme SOC"


def test_references_only_never_material() -> None:
    cfg = tenant().config
    cfg["llm"]["apiKey"] = CANARY  # a stored config that (wrongly) kept a key must not leak it
    values = render_values(replace(tenant(), config=cfg), REFS, SETTINGS)
    assert CANARY not in json.dumps(values)
    assert "sealed:v1" not in json.dumps(values)


def test_profile_defaults_sit_under_the_tenant_config() -> None:
    values = render_values(tenant(), REFS, SETTINGS)
    small = charts.load_values_file(charts.deploy_dir() / "values" / "small-dev.yaml")["defaults"]["tenant"]
    assert values["components"]["wazuh"] == small["components"]["wazuh"]  # from the profile
    thehive = values["components"]["thehive"]["resources"]["requests"]
    assert thehive == {"cpu": "150m", "memory": "600Mi"}  # the tenant's own
    assert values["resourceQuota"] == small["resourceQuota"]
    prod = render_values(replace(tenant(), profile="pilot-prod"), REFS, SETTINGS)
    assert prod["components"]["wazuh"] != values["components"]["wazuh"]


def test_references_fall_back_to_the_config_then_the_seed_name() -> None:
    t = tenant(config={"llm": {"provider": "openai-compatible", "baseUrl": "https://api.openai.com/v1",
                               "model": "gpt-4o", "apiKey": {"secretRef": {"namespace": "soctalk-system",
                                                                          "name": "byo-llm", "key": "k"}}}})
    assert render_values(t, [], SETTINGS)["llm"]["apiKeyRef"] == {
        "namespace": "soctalk-system", "name": "byo-llm", "key": "k"}
    bare = replace(t, config={k: v for k, v in t.config.items() if k != "llm"})
    assert render_values(bare, [], SETTINGS)["llm"]["apiKeyRef"]["name"] == f"tenant-{TENANT_ID}-llm"
    assert "adapter" not in render_values(bare, [], SETTINGS)  # the chart default (adapter-token/token)


def test_cluster_features_switch_off_cilium_and_cert_manager() -> None:
    full = charts.render_objects("soctalk-tenant", render_values(tenant(), REFS, SETTINGS),
                                 release_name="soctalk-tenant")
    kinds = {o["kind"] for o in full}
    assert {"CiliumNetworkPolicy", "Certificate"} <= kinds
    bare_values = render_values(tenant(), REFS, SETTINGS,
                                features=ClusterFeatures(cilium=False, cert_manager=False))
    assert bare_values["networkPolicies"]["fqdnEngine"] == "none"
    assert bare_values["wazuhIngress"]["tls"] == {"issuerRef": "", "secretName": "wazuh-tls"}
    bare = charts.render_objects("soctalk-tenant", bare_values, release_name="soctalk-tenant")
    assert not {"CiliumNetworkPolicy", "Certificate"} & {o["kind"] for o in bare}
    assert {o["kind"] for o in bare} >= {"NetworkPolicy", "Deployment", "StatefulSet"}


def test_suspended_scales_every_workload_to_zero() -> None:
    objs = charts.render_objects("soctalk-tenant", render_values(tenant(), REFS, SETTINGS, suspended=True),
                                 release_name="soctalk-tenant")
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) >= 7 and all(o["spec"]["replicas"] == 0 for o in workloads)


def test_edge_mode_needs_the_assigned_ports() -> None:
    edge = {"mode": "edge-haproxy", "hostname": "acme.soc.mssp.example.com"}
    t = tenant(config={"wazuhIngress": edge})
    errors = charts.validate_values("soctalk-tenant", render_values(t, REFS, SETTINGS))
    assert ("$.wazuhIngress.edgePorts", "is required") in errors
    with_ports = replace(t, edge_ports={"events": 15142, "enrollment": 15143})
    values = render_values(with_ports, REFS, SETTINGS)
    assert values["wazuhIngress"]["edgePorts"] == {"events": 15142, "enrollment": 15143}
    assert charts.validate_values("soctalk-tenant", values) == []


def test_rendering_is_deterministic() -> None:
    assert render_values(tenant(), REFS, SETTINGS) == render_values(tenant(), list(REFS), SETTINGS)
