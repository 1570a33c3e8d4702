"""Pure rules added for the secrets service's handlers: labels, ExternalSecret objects, LLM key
sources, version labels, placements and the material scope. No I/O."""

from __future__ import annotations

import uuid

import pytest
from soctalk_common.errors import ValidationFailed
from soctalk_common.logging import _KNOWN
from soctalk_secrets import domain as d
from soctalk_secrets.material import hold, material_scope, scrub
from soctalk_secrets.stores import Placement, label_of, remote_key_of

pytestmark = pytest.mark.unit

TID = uuid.UUID("0b5e4f7a-9d1c-4e2b-8a3f-6c7d8e9f0a1b")
MSSP = "5a1e5a1e-0000-4000-8000-00000000a55e"


def test_namespace_labels_are_seed_001s_exactly() -> None:
    assert d.namespace_labels(tenant_id=TID, mssp_id=MSSP, install_id="i-1") == {
        "tenant": "true", "managed-by": "soctalk", "mssp-id": MSSP, "install-id": "i-1",
        "tenant-id": str(TID)}


def test_secret_labels_name_the_tenant_and_purpose() -> None:
    assert d.secret_labels(str(TID), "llm") == {"managed-by": "soctalk", "soctalk.io/tenant-id": str(TID),
                                                "soctalk.io/purpose": "llm"}
    with pytest.raises(ValidationFailed):
        d.secret_labels(TID, "nope")


@pytest.mark.parametrize("api_version", d.ESO_API_VERSIONS)
def test_external_secret_maps_each_key_to_one_vault_property(api_version: str) -> None:
    obj = d.external_secret(api_version=api_version, namespace="tenant-acme", name="wazuh-bootstrap",
                            store="soctalk-vault", remote_key="m/tenants/acme/wazuh-bootstrap",
                            properties={"admin_password": "admin_password"}, version_label="v2",
                            labels={"managed-by": "soctalk"})
    assert obj["apiVersion"] == api_version and obj["kind"] == "ExternalSecret"
    spec = obj["spec"]
    assert spec["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "soctalk-vault"}
    assert spec["target"]["name"] == "wazuh-bootstrap" and spec["target"]["creationPolicy"] == "Owner"
    assert spec["target"]["template"]["metadata"]["annotations"] == {"soctalk.io/version-label": "v2"}
    remote = {"key": "m/tenants/acme/wazuh-bootstrap", "property": "admin_password"}
    assert spec["data"] == [{"secretKey": "admin_password", "remoteRef": remote}]
    assert label_of(obj) == "v2" and remote_key_of(obj) == "m/tenants/acme/wazuh-bootstrap"
    assert d.VAULT_VERSION_KEY not in str(spec["data"])  # the label property is never synced


def test_external_secret_refuses_unknown_api_and_bad_labels() -> None:
    kw = dict(namespace="n", name="x", store="s", remote_key="k", properties={"a": "a"}, labels={})
    with pytest.raises(ValidationFailed):
        d.external_secret(api_version="external-secrets.io/v2", version_label="v1", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        d.external_secret(api_version=d.ESO_API_VERSIONS[0], version_label="1", **kw)  # type: ignore[arg-type]


def _src(**kw: object) -> d.LlmSource:
    args = dict(sealed=None, secret_ref=None, vault_path=None, system_namespace="soctalk-system",
                mount="secret", mssp_id=MSSP, slug="acme")
    args.update(kw)
    return d.llm_source(**args)  # type: ignore[arg-type]


def test_llm_sources_are_classified() -> None:
    assert _src(sealed="sealed:v1:abc") == d.LlmSealed("sealed:v1:abc")
    assert _src(secret_ref=("soctalk-system", "mssp-openai", "key")) == d.LlmSecretRef(
        "soctalk-system", "mssp-openai", "key")
    v = _src(vault_path="secret/mssp-keys/acme/llm")
    assert v == d.LlmVaultPath("secret", "mssp-keys/acme/llm") and v.full_path == "secret/mssp-keys/acme/llm"
    assert isinstance(_src(vault_path=f"secret/{MSSP}/tenants/acme/llm"), d.LlmVaultPath)  # its own tree
    assert "sealed:v1:abc" not in repr(_src(sealed="sealed:v1:abc"))


@pytest.mark.parametrize(("kw", "field"), [
    ({}, "llm_key"),
    ({"sealed": "sealed:v1:a", "vault_path": "secret/x"}, "llm_key"),
    ({"secret_ref": ("kube-system", "x", "k")}, "llm_key.secret_ref.namespace"),
    ({"secret_ref": ("soctalk-system", "soctalk-sealing-key", "private_key")}, "llm_key.secret_ref.name"),
    ({"secret_ref": ("soctalk-system", f"tenant-{TID}-llm", "api_key")}, "llm_key.secret_ref.name"),
    ({"secret_ref": ("soctalk-system", "ok", "bad key!")}, "llm_key.secret_ref.key"),
    ({"vault_path": "kv/x/llm"}, "llm_key.vault_path"),
    ({"vault_path": "secret"}, "llm_key.vault_path"),
    ({"vault_path": "secret/a/../b"}, "llm_key.vault_path"),
    ({"vault_path": f"secret/{MSSP}/tenants/globex/llm"}, "llm_key.vault_path"),
])
def test_llm_sources_that_are_refused(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        _src(**kw)
    assert [p for p, _ in raised.value.errors] == [field]


def test_latest_version_label_is_numeric() -> None:
    assert d.latest_version_label(["v9", "v10", "v2"]) == "v10"
    assert d.latest_version_label([]) is None
    with pytest.raises(ValidationFailed):
        d.latest_version_label(["v1", "latest"])


def test_copies_and_their_expected_values() -> None:
    assert d.copies_of("wazuh-bootstrap") == ("wazuh",)
    assert d.copies_of("cassandra-creds") == ()
    linked = {"wazuh-bootstrap": {"admin_username": "admin", "admin_password": "p" * 43}}
    assert d.expected_copies("wazuh", linked) == {"api_username": "admin", "api_password": "p" * 43}
    assert d.expected_copies("wazuh-bootstrap", linked) is None


def test_placement_names_everything_from_the_inventory() -> None:
    at = Placement(str(TID), "acme", MSSP, "soctalk-system", "secret")
    assert at.tenant_namespace == "tenant-acme"
    assert (at.namespace("llm"), at.name("llm")) == ("soctalk-system", f"tenant-{TID}-llm")
    assert (at.namespace("adapter-token"), at.name("adapter-token")) == ("tenant-acme", "adapter-token")
    assert at.vault_path("cortex") == f"{MSSP}/tenants/acme/cortex"
    [ref] = at.references("vault", "cortex", "v3")
    assert (ref.path, ref.namespace, ref.version_label) == (
        f"secret/{MSSP}/tenants/acme/cortex", "soctalk-system", "v3")
    other = Placement(str(TID), "acme", MSSP, "soc-ops", "secret")
    assert {r.namespace for r in other.references("kubernetes", "wazuh", "v1")} == {"soc-ops"}


def test_held_material_is_scrubbed_then_forgotten() -> None:
    value = "s3cr3t-" + "q" * 20
    with material_scope() as held:
        hold([value, "admin"])  # short fixed values are not material
        assert held == {value} and value in _KNOWN
        assert scrub(f"boom: {value}") == "boom: [REDACTED]"
    assert value not in _KNOWN
    assert scrub("sta_abcdefghijkl_" + "x" * 64) == "[REDACTED]"  # token shapes, held or not


def test_material_held_by_two_scopes_is_forgotten_after_the_last() -> None:
    value = "shared-" + "z" * 20
    with material_scope():
        hold([value])
        with material_scope():  # e.g. a duplicate delivery reading the same Secret back
            hold([value, value])
        assert value in _KNOWN
    assert value not in _KNOWN
