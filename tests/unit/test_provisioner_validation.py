"""Tenant config validation: JSON paths for every rejection, nothing secret echoed, the stored form."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from soctalk_common import events as ev
from soctalk_provisioner.validation import SCHEMA_PATH, TenantConfigValidator, stored_form

pytestmark = pytest.mark.unit

PLAINTEXT = "sk-live-CANARY-0123456789abcdef"
SEALED = "sealed:v1:AAAAbbbbCCCCdddd_-=="


def config(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "slug": "acme", "displayName": "Acme Corp", "profile": "pilot-prod", "secretsBackend": "kubernetes",
        "llm": {"provider": "openai-compatible", "baseUrl": "https://api.openai.com/v1", "model": "gpt-4o",
                "apiKey": {"sealed": SEALED}},
        "allowedLlmHosts": ["api.openai.com"],
        "wazuhIngress": {"mode": "loadbalancer", "hostname": "acme.soc.mssp.example.com"},
    }
    base.update(changes)
    return base


def with_llm(**changes: Any) -> dict[str, Any]:
    c = config()
    c["llm"] = {**c["llm"], **changes}
    return c


@pytest.fixture(scope="module")
def validator() -> TenantConfigValidator:
    return TenantConfigValidator.load()


def paths(validator: TenantConfigValidator, cfg: Any) -> list[str]:
    return [e.path for e in validator.errors(cfg)]


def test_schema_is_draft_2020_12_and_closed() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert schema["properties"]["slug"]["pattern"] == "^[a-z0-9]([a-z0-9-]{0,54}[a-z0-9])?$"


def test_a_complete_config_is_valid(validator: TenantConfigValidator) -> None:
    full = config(
        chartVersion="v1.1.0",
        branding={"appName": "Acme SOC", "logoUrl": "https://acme.example.com/logo.png",
                  "primaryColor": "#1a73e8", "secondaryColor": "#fbbc04", "favicon": ""},
        components={
            "wazuh": {"manager": {"resources": {"requests": {"cpu": "200m", "memory": "512Mi"},
                                                "limits": {"cpu": "500m", "memory": "1Gi"}},
                                  "persistence": {"size": "20Gi"}},
                      "indexer": {"jvm": {"heap": "1g"}}, "dashboard": {"enabled": True}},
            "thehive": {"cassandra": {"resources": {"limits": {"cpu": 1.5, "memory": "4Gi"}}}},
            "cortex": {"analyzers": [], "elasticsearch": {"persistence": {"size": "20Gi"}}},
            "misp": {"enabled": False},
        },
        integrations={"externalCortexUrl": ""},
        wazuhIngress={"mode": "edge-haproxy", "hostname": "acme.soc.mssp.example.com",
                      "tls": {"issuerRef": "letsencrypt-prod", "secretName": "wazuh-tls"}},
    )
    assert validator.errors(full) == []


@pytest.mark.parametrize("key", [
    {"secretRef": {"namespace": "soctalk-system", "name": "acme-llm", "key": "api_key"}},
    {"vaultPath": "secret/mssp/acme/llm"},
    {"sealed": SEALED},
])
def test_each_key_reference_form_is_accepted(validator: TenantConfigValidator, key: dict[str, Any]) -> None:
    assert validator.errors(with_llm(apiKey=key)) == []


@pytest.mark.parametrize(("cfg", "expected"), [
    (config(slug="Acme_Corp"), ["$.slug"]),
    (config(slug="a" * 57), ["$.slug"]),  # tenant-<slug> would exceed a 63-character DNS label
    (config(slug="-acme"), ["$.slug"]),
    (config(slug="acme-"), ["$.slug"]),
    (config(profile="huge"), ["$.profile"]),
    (config(secretsBackend="etcd"), ["$.secretsBackend"]),
    (config(chartVersion="latest"), ["$.chartVersion"]),
    (config(allowedLlmHosts=[]), ["$.allowedLlmHosts"]),
    (config(allowedLlmHosts=["api.openai.com", "Bad_Host"]), ["$.allowedLlmHosts[1]"]),
    (config(allowedLlmHosts=["other.example.com"]), ["$.allowedLlmHosts"]),  # must include the LLM host
    (config(wazuhIngress={"mode": "nodeport", "hostname": "acme.example.com"}), ["$.wazuhIngress.mode"]),
    (config(wazuhIngress={"mode": "loadbalancer"}), ["$.wazuhIngress.hostname"]),
    (config(branding={"primaryColor": "red"}), ["$.branding.primaryColor"]),
    (config(components={"wazuh": {"manager": {"resources": {"requests": {"cpu": "lots"}}}}}),
     ["$.components.wazuh.manager.resources.requests.cpu"]),
    (config(tenant={"id": "x"}), ["$.tenant"]),
    (with_llm(baseUrl="ftp://api.openai.com"), ["$.llm.baseUrl"]),
    (with_llm(apiKey={"sealed": "not-a-sealed-envelope"}), ["$.llm.apiKey.sealed"]),
    (with_llm(apiKey={}), ["$.llm.apiKey"]),
    (with_llm(apiKey={"sealed": SEALED, "vaultPath": "secret/a/b"}), ["$.llm.apiKey"]),
    (with_llm(apiKey={"secretRef": {"namespace": "tenant-other", "name": "x", "key": "k"}}),
     ["$.llm.apiKey.secretRef.namespace"]),  # never another namespace's Secret
    (with_llm(apiKey={"secretRef": {"namespace": "soctalk-system", "name": "x"}}),
     ["$.llm.apiKey.secretRef.key"]),
])
def test_each_rejection_names_its_json_path(validator: TenantConfigValidator, cfg: dict[str, Any],
                                            expected: list[str]) -> None:
    assert paths(validator, cfg) == expected


def test_profile_and_backend_default_to_the_install(validator: TenantConfigValidator) -> None:
    cfg = config()
    del cfg["profile"], cfg["secretsBackend"]
    assert validator.errors(cfg) == []
    stored, _ = stored_form(cfg, tenant_id=uuid.uuid4(), default_chart_version="v1.1.0",
                            system_namespace="soctalk-system", default_profile="small-dev",
                            default_secrets_backend="vault")
    assert (stored["profile"], stored["secretsBackend"]) == ("small-dev", "vault")


def test_missing_required_fields_are_reported_each_at_its_own_path(validator: TenantConfigValidator) -> None:
    cfg = config()
    del cfg["displayName"], cfg["wazuhIngress"]
    del cfg["llm"]["apiKey"]
    assert sorted(paths(validator, cfg)) == ["$.displayName", "$.llm.apiKey", "$.wazuhIngress"]


def test_not_an_object_at_all(validator: TenantConfigValidator) -> None:
    assert paths(validator, ["slug"]) == ["$"]


def test_a_plaintext_key_is_refused_with_how_to_seal_it(validator: TenantConfigValidator) -> None:
    errors = validator.errors(with_llm(apiKey=PLAINTEXT))
    assert [e.path for e in errors] == ["$.llm.apiKey"]
    assert "soctalk keys public" in errors[0].message
    assert PLAINTEXT not in repr(errors)


@pytest.mark.parametrize("cfg", [
    with_llm(api_key=PLAINTEXT),
    with_llm(apiKey={"plaintext": PLAINTEXT}),
    with_llm(apiKey={"sealed": PLAINTEXT}),
    with_llm(apiKey={"sealed": SEALED, "secretRef": PLAINTEXT}),
    with_llm(apiKey=[PLAINTEXT]),
    config(slug=PLAINTEXT, displayName=PLAINTEXT * 20, allowedLlmHosts=[PLAINTEXT]),
])
def test_no_message_repeats_the_value(validator: TenantConfigValidator, cfg: dict[str, Any]) -> None:
    errors = validator.errors(cfg)
    assert errors
    assert PLAINTEXT not in repr(errors)


def test_an_unknown_key_field_tells_to_seal(validator: TenantConfigValidator) -> None:
    [err] = validator.errors(with_llm(api_key=PLAINTEXT))
    assert err.path == "$.llm.api_key" and "soctalk keys public" in err.message


def test_a_chart_values_key_reference_points_to_the_config_form(validator: TenantConfigValidator) -> None:
    cfg = with_llm(apiKeyRef={"namespace": "soctalk-system", "name": "x", "key": "api_key"})
    errors = {e.path: e.message for e in validator.errors(cfg)}
    assert '"secretRef"' in errors["$.llm.apiKeyRef"] and "plaintext" not in errors["$.llm.apiKeyRef"]


def test_stored_form_keeps_references_only() -> None:
    tid = uuid.uuid4()
    stored, source = stored_form(config(), tenant_id=tid, default_chart_version="v1.1.0",
                                 system_namespace="soctalk-system")
    assert source == ev.LlmKeySource(sealed=SEALED)
    assert SEALED not in json.dumps(stored)
    assert "apiKey" not in stored["llm"]
    assert stored["llm"]["apiKeySource"] == "sealed"
    own = {"namespace": "soctalk-system", "name": f"tenant-{tid}-llm", "key": "api_key"}
    assert stored["llm"]["apiKeyRef"] == own
    assert stored["chartVersion"] == "v1.1.0"


def test_stored_form_of_references() -> None:
    tid = uuid.uuid4()
    ref = {"namespace": "soctalk-system", "name": "acme-llm", "key": "api_key"}
    stored, source = stored_form(with_llm(apiKey={"secretRef": ref}), tenant_id=tid,
                                 default_chart_version="v1.1.0", system_namespace="soctalk-system")
    assert source.secret_ref is not None and source.secret_ref.name == "acme-llm"
    assert stored["llm"]["apiKeyRef"] == ref and stored["llm"]["apiKeySource"] == "secretRef"
    stored, source = stored_form(with_llm(apiKey={"vaultPath": "secret/mssp/acme/llm"}), tenant_id=tid,
                                 default_chart_version="v1.1.0", system_namespace="soctalk-system")
    assert source.vault_path == "secret/mssp/acme/llm"
    assert stored["llm"]["apiKeyVaultPath"] == "secret/mssp/acme/llm"


def test_stored_form_does_not_touch_the_request() -> None:
    cfg = config()
    before = copy.deepcopy(cfg)
    stored_form(cfg, tenant_id=uuid.uuid4(), default_chart_version="v1.1.0",
                system_namespace="soctalk-system")
    assert cfg == before
