"""Secrets domain rules: seed-000 inventory, references, generation, version labels, adapter tokens."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from soctalk_common.errors import PermanentError, ValidationFailed
from soctalk_common.gateways import vault as vault_gateway
from soctalk_secrets import domain as d

pytestmark = pytest.mark.unit

TENANT = uuid.UUID("7d1e0c7a-4f3b-4a57-9b0e-2f7c1d9a5e11")
OTHER_TENANT = uuid.UUID("0a4b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d")
KEY = b"k" * 32
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


# --- inventory (seed 000) --------------------------------------------------------------------------


def test_inventory_placement_follows_seed_000_exactly() -> None:
    placement = {s.purpose: (s.namespace("acme"), s.secret_name(TENANT)) for s in d.INVENTORY}
    tid = str(TENANT)
    assert placement == {
        "wazuh-bootstrap": ("tenant-acme", "wazuh-bootstrap"),
        "thehive-bootstrap": ("tenant-acme", "thehive-bootstrap"),
        "cortex-bootstrap": ("tenant-acme", "cortex-bootstrap"),
        "cassandra-creds": ("tenant-acme", "cassandra-creds"),
        "wazuh-authd-secret": ("tenant-acme", "wazuh-authd-secret"),
        "adapter-token": ("tenant-acme", "adapter-token"),
        "llm": ("soctalk-system", f"tenant-{tid}-llm"),
        "wazuh": ("soctalk-system", f"tenant-{tid}-wazuh"),
        "thehive": ("soctalk-system", f"tenant-{tid}-thehive"),
        "cortex": ("soctalk-system", f"tenant-{tid}-cortex"),
    }


def test_generators_follow_seed_000_conventions() -> None:
    gens = {(s.purpose, k.key): k.gen for s in d.INVENTORY for k in s.keys}
    assert gens == {
        ("wazuh-bootstrap", "admin_username"): d.Gen.FIXED,
        ("wazuh-bootstrap", "admin_password"): d.Gen.URLSAFE_32,
        ("thehive-bootstrap", "admin_username"): d.Gen.FIXED,
        ("thehive-bootstrap", "admin_password"): d.Gen.URLSAFE_32,
        ("thehive-bootstrap", "api_token"): d.Gen.URLSAFE_48,
        ("cortex-bootstrap", "admin_username"): d.Gen.FIXED,
        ("cortex-bootstrap", "admin_password"): d.Gen.URLSAFE_32,
        ("cortex-bootstrap", "api_key"): d.Gen.URLSAFE_48,
        ("cassandra-creds", "username"): d.Gen.FIXED,
        ("cassandra-creds", "password"): d.Gen.URLSAFE_32,
        ("wazuh-authd-secret", "authd_pass"): d.Gen.URLSAFE_48,
        ("adapter-token", "token"): d.Gen.ADAPTER_TOKEN,
        ("llm", "api_key"): d.Gen.SUPPLIED,
        ("wazuh", "api_username"): d.Gen.COPY,
        ("wazuh", "api_password"): d.Gen.COPY,
        ("thehive", "api_token"): d.Gen.COPY,
        ("cortex", "api_key"): d.Gen.COPY,
    }


def test_copy_sources_exist_and_precede_their_copies() -> None:
    order = [s.purpose for s in d.INVENTORY]
    for s in d.INVENTORY:
        for k in s.keys:
            if k.gen is d.Gen.COPY:
                assert k.source is not None
                src_purpose, src_key = k.source
                assert src_key in d.spec(src_purpose).key_names()
                assert order.index(src_purpose) < order.index(s.purpose)


def test_vault_gateway_policy_purposes_match_inventory() -> None:
    # The library cannot import the service, so its copy of the split is checked here.
    assert set(vault_gateway.TENANT_NAMESPACE_PURPOSES) == {
        s.purpose for s in d.INVENTORY if s.location == "tenant"
    }
    assert set(vault_gateway.SYSTEM_NAMESPACE_PURPOSES) == {
        s.purpose for s in d.INVENTORY if s.location == "system"
    }


@pytest.mark.parametrize(
    ("service", "purposes", "restarts"),
    [
        (
            "wazuh",
            ("wazuh-bootstrap", "wazuh"),
            [
                ("StatefulSet", "wazuh-manager"),
                ("StatefulSet", "wazuh-indexer"),
                ("Deployment", "wazuh-dashboard"),
            ],
        ),
        ("thehive", ("thehive-bootstrap", "thehive"), [("Deployment", "thehive")]),
        ("cortex", ("cortex-bootstrap", "cortex"), [("Deployment", "cortex")]),
        ("cassandra", ("cassandra-creds",), [("StatefulSet", "cassandra"), ("Deployment", "thehive")]),
        ("authd", ("wazuh-authd-secret",), [("StatefulSet", "wazuh-manager")]),
        ("adapter", ("adapter-token",), []),  # the adapter re-reads its token file
        ("llm", ("llm",), []),  # the orchestrator reads the Secret per job
    ],
)
def test_rotation_sets_and_restarts(service: str, purposes: tuple[str, ...], restarts: list) -> None:
    assert d.rotation_purposes(service) == purposes
    assert [(w.kind, w.name) for w in d.workloads_to_restart(purposes)] == restarts


def test_restarts_are_deduplicated_across_purposes() -> None:
    names = [w.name for w in d.workloads_to_restart(["cassandra-creds", "thehive-bootstrap"])]
    assert names == ["thehive", "cassandra"]


def test_unknown_service_and_purpose() -> None:
    with pytest.raises(ValidationFailed, match="service"):
        d.rotation_purposes("postgres")
    with pytest.raises(ValidationFailed, match="purpose"):
        d.spec("jwt")


# --- references ------------------------------------------------------------------------------------


def test_plan_inventory_kubernetes() -> None:
    refs = d.plan_inventory(str(TENANT).upper(), "acme", backend="kubernetes")
    assert len(refs) == sum(len(s.keys) for s in d.INVENTORY) == 17
    assert all(r.backend == "kubernetes" and r.version_label == "v1" for r in refs)
    boot = d.SecretRef(
        "kubernetes", "tenant-acme", "wazuh-bootstrap", "admin_password", "v1", "wazuh-bootstrap"
    )
    assert boot in refs and boot.location == "tenant-acme" and boot.path is None
    llm = d.SecretRef("kubernetes", "soctalk-system", f"tenant-{TENANT}-llm", "api_key", "v1", "llm")
    assert llm in refs
    assert refs == d.plan_inventory(TENANT, "acme", backend="kubernetes")  # deterministic


def test_plan_inventory_vault_paths() -> None:
    refs = d.plan_inventory(TENANT, "acme", backend="vault", mssp_id="mssp-abc", version_label="v3")
    by_purpose = {r.purpose: r for r in refs}
    assert by_purpose["llm"].path == "secret/mssp-abc/tenants/acme/llm"  # seed 000's ESO example
    assert by_purpose["llm"].location == by_purpose["llm"].path
    # ESO syncs the llm key into soctalk-system, the adapter token into the tenant namespace.
    assert (by_purpose["llm"].namespace, by_purpose["llm"].name) == ("soctalk-system", f"tenant-{TENANT}-llm")
    assert by_purpose["adapter-token"].path == "secret/mssp-abc/tenants/acme/adapter-token"
    assert (by_purpose["adapter-token"].namespace, by_purpose["adapter-token"].name) == (
        "tenant-acme",
        "adapter-token",
    )
    assert {r.version_label for r in refs} == {"v3"}
    assert d.vault_kv_path("mssp-abc", "acme", "llm") == "mssp-abc/tenants/acme/llm"


def test_plan_inventory_subset() -> None:
    refs = d.plan_inventory(TENANT, "acme", backend="kubernetes", purposes=["wazuh", "wazuh-bootstrap"])
    assert [(r.purpose, r.key) for r in refs] == [
        ("wazuh-bootstrap", "admin_username"),
        ("wazuh-bootstrap", "admin_password"),
        ("wazuh", "api_username"),
        ("wazuh", "api_password"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tenant_id": "acme", "slug": "acme", "backend": "kubernetes"}, "tenant_id"),
        ({"tenant_id": TENANT, "slug": "Acme", "backend": "kubernetes"}, "slug"),
        ({"tenant_id": TENANT, "slug": "a" * 57, "backend": "kubernetes"}, "slug"),
        ({"tenant_id": TENANT, "slug": "acme", "backend": "vault"}, "mssp_id"),
        ({"tenant_id": TENANT, "slug": "acme", "backend": "vault", "mssp_id": "../x"}, "mssp_id"),
        ({"tenant_id": TENANT, "slug": "acme", "backend": "s3"}, "backend"),
        (
            {"tenant_id": TENANT, "slug": "acme", "backend": "kubernetes", "version_label": "1"},
            "version_label",
        ),
    ],
)
def test_plan_inventory_validation(kwargs: dict, field: str) -> None:
    tenant_id, slug = kwargs.pop("tenant_id"), kwargs.pop("slug")
    with pytest.raises(ValidationFailed) as ei:
        d.plan_inventory(tenant_id, slug, **kwargs)
    assert ei.value.errors[0][0] == field


def test_slug_at_the_dns_label_limit() -> None:
    slug = "a" * 56
    refs = d.plan_inventory(TENANT, slug, backend="kubernetes", purposes=["adapter-token"])
    assert len(refs[0].namespace) == 63


@pytest.mark.parametrize(("label", "nxt"), [("v1", "v2"), ("v9", "v10"), ("v41", "v42")])
def test_next_version_label(label: str, nxt: str) -> None:
    assert d.next_version_label(label) == nxt


@pytest.mark.parametrize("bad", ["", "1", "v0", "v01", "V1", "v1.0", "v-1", " v1", "v1\n"])
def test_next_version_label_rejects(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        d.next_version_label(bad)


# --- generation ------------------------------------------------------------------------------------


def test_generate_lengths_and_charset() -> None:
    # token_urlsafe(n) gives ceil(n * 4 / 3) characters: 32 → 43, 48 → 64.
    wazuh = d.generate("wazuh-bootstrap")
    assert wazuh["admin_username"] == "admin"
    assert len(wazuh["admin_password"]) == 43 and URLSAFE.match(wazuh["admin_password"])
    hive = d.generate("thehive-bootstrap")
    assert hive["admin_username"] == "admin@thehive.local"
    assert len(hive["admin_password"]) == 43 and len(hive["api_token"]) == 64
    cortex = d.generate("cortex-bootstrap")
    assert len(cortex["admin_password"]) == 43 and len(cortex["api_key"]) == 64
    cass = d.generate("cassandra-creds")
    assert cass["username"] == "thehive" and len(cass["password"]) == 43
    assert len(d.generate("wazuh-authd-secret")["authd_pass"]) == 64
    token = d.generate("adapter-token")["token"]
    assert d.parse_token(token)


def test_generate_is_fresh_each_time() -> None:
    assert d.generate("wazuh-authd-secret") != d.generate("wazuh-authd-secret")


def test_copies_require_their_source_and_never_echo_values() -> None:
    with pytest.raises(ValidationFailed) as ei:
        d.generate("wazuh")
    assert ei.value.errors[0][0] == "wazuh.api_username"
    boot = d.generate("wazuh-bootstrap")
    assert d.generate("wazuh", linked={"wazuh-bootstrap": boot}) == {
        "api_username": boot["admin_username"],
        "api_password": boot["admin_password"],
    }


def test_llm_key_is_supplied_never_generated() -> None:
    with pytest.raises(ValidationFailed, match="llm.api_key"):
        d.generate("llm")
    secret = "sk-" + "x" * 40
    for bad in ("", "   ", f" {secret}"):
        with pytest.raises(ValidationFailed) as ei:
            d.generate("llm", supplied={"api_key": bad})
        assert secret not in str(ei.value)
    assert d.generate("llm", supplied={"api_key": secret}) == {"api_key": secret}


def test_generate_tenant_material_is_consistent() -> None:
    material = d.generate_tenant_material(llm_api_key="sk-test-key")
    assert set(material) == {s.purpose for s in d.INVENTORY}
    assert material["wazuh"]["api_password"] == material["wazuh-bootstrap"]["admin_password"]
    assert material["thehive"]["api_token"] == material["thehive-bootstrap"]["api_token"]
    assert material["cortex"]["api_key"] == material["cortex-bootstrap"]["api_key"]
    assert material["llm"] == {"api_key": "sk-test-key"}
    for purpose, values in material.items():
        assert set(values) == set(d.spec(purpose).key_names())
    assert "llm" not in d.generate_tenant_material()


# --- adapter tokens --------------------------------------------------------------------------------


def test_mint_format() -> None:
    token, prefix = d.mint_adapter_token()
    assert re.fullmatch(r"sta_[a-z0-9]{12}_[A-Za-z0-9_-]{64}", token)
    assert token.startswith(f"sta_{prefix}_")
    assert d.parse_token(token) == prefix
    assert d.mint_adapter_token()[1] != prefix


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sta_",
        "Bearer sta_abcdefghijkl_" + "a" * 64,
        "sta_ABCDEFGHIJKL_" + "a" * 64,  # prefix is lowercase
        "sta_abcdefghijk_" + "a" * 64,  # 11-char prefix
        "sta_abcdefghijkl_" + "a" * 63,
        "sta_abcdefghijkl_" + "a" * 64 + "\n",
        "stb_abcdefghijkl_" + "a" * 64,
        "sta_abcdefghijkl_" + "a" * 10_000,
    ],
)
def test_parse_token_rejects_without_echo(bad: str) -> None:
    with pytest.raises(ValidationFailed) as ei:
        d.parse_token(bad)
    assert ei.value.errors == [("token", "malformed adapter token")]


def test_hash_and_verify() -> None:
    token, _ = d.mint_adapter_token()
    stored = d.hash_token(KEY, token)
    assert re.fullmatch(r"[0-9a-f]{64}", stored) and token not in stored
    assert d.verify_token(KEY, token, stored)
    assert not d.verify_token(b"other-key-" * 4, token, stored)  # keyed
    assert not d.verify_token(KEY, token[:-1] + ("A" if token[-1] != "A" else "B"), stored)
    assert not d.verify_token(KEY, token, "not-a-hash")
    assert not d.verify_token(KEY, token, stored.upper())
    with pytest.raises(PermanentError):
        d.hash_token(b"short", token)


def _record(**overrides) -> tuple[str, d.AdapterTokenRecord]:
    token, record = d.new_token_record(TENANT, KEY, NOW - timedelta(days=1))
    return token, replace(record, **overrides)


def _decide(record, token: str, *, subject=TENANT, now=NOW, state="active"):
    return d.token_decision(record, subject, now, presented=token, key=KEY, tenant_state=state)


def test_valid_token_is_accepted() -> None:
    token, record = _record()
    assert record.tenant_id == str(TENANT) and token not in repr(record)
    assert _decide(record, token) == d.Accept(tenant_id=str(TENANT), prefix=record.prefix)
    assert _decide(record, token, subject=str(TENANT).upper()) == d.Accept(str(TENANT), record.prefix)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("malformed", "malformed"),
        ("no_record", "unknown_prefix"),
        ("record_for_other_prefix", "unknown_prefix"),
        ("bad_secret", "bad_secret"),
        ("other_tenant", "wrong_tenant"),
        ("garbage_subject", "wrong_tenant"),
        ("revoked", "revoked"),
        ("expired", "expired"),
        ("suspended", "tenant_inactive"),
        ("decommissioned", "tenant_inactive"),
        ("tenant_gone", "tenant_inactive"),
    ],
)
def test_refusal_reasons(case: str, reason: d.RefuseReason) -> None:
    token, record = _record()
    other_token, other_record = _record()
    presented: str = token
    subject: uuid.UUID | str = TENANT
    state: str | None = "active"
    rec: d.AdapterTokenRecord | None = record
    match case:
        case "malformed":
            presented = "hello"
        case "no_record":
            rec = None
        case "record_for_other_prefix":
            rec = other_record
        case "bad_secret":
            presented = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        case "other_tenant":
            subject = OTHER_TENANT
        case "garbage_subject":
            subject = "acme"
        case "revoked":
            rec = d.revoke(record, NOW - timedelta(seconds=1))
        case "expired":
            rec = d.retire_for_rotation(record, NOW - timedelta(hours=1), overlap=timedelta(minutes=5))
        case "suspended" | "decommissioned":
            state = case
        case "tenant_gone":
            state = None
    assert _decide(rec, presented, subject=subject, state=state) == d.Refuse(reason)


def test_check_order_secret_before_record_details() -> None:
    # A wrong secret on a revoked record of another tenant reveals only "bad_secret".
    token, record = _record(tenant_id=str(OTHER_TENANT), revoked_at=NOW - timedelta(days=1))
    forged = token[:-1] + ("x" if token[-1] != "x" else "y")
    assert _decide(record, forged) == d.Refuse("bad_secret")


@pytest.mark.parametrize("state", sorted(d.TOKEN_ACCEPTING_TENANT_STATES))
def test_accepting_states(state: str) -> None:
    token, record = _record()
    assert isinstance(_decide(record, token, state=state), d.Accept)


@pytest.mark.parametrize(
    "state", ["requested", "pending", "suspended", "decommissioning", "decommissioned", "purged", "new-state"]
)
def test_inactive_states(state: str) -> None:
    token, record = _record()
    assert _decide(record, token, state=state) == d.Refuse("tenant_inactive")


def test_rotation_overlap_window() -> None:
    old_token, old = _record()
    new_token, new = d.new_token_record(
        TENANT, KEY, NOW, version_label=d.next_version_label(old.version_label)
    )
    assert (old.version_label, new.version_label) == ("v1", "v2")
    old = d.retire_for_rotation(old, NOW, overlap=timedelta(minutes=10))
    assert old.expires_at == NOW + timedelta(minutes=10)
    inside = NOW + timedelta(minutes=9, seconds=59)
    assert isinstance(_decide(old, old_token, now=inside), d.Accept)
    assert isinstance(_decide(new, new_token, now=inside), d.Accept)
    at_end = NOW + timedelta(minutes=10)
    assert _decide(old, old_token, now=at_end) == d.Refuse("expired")
    assert isinstance(_decide(new, new_token, now=at_end), d.Accept)
    # The new token does not open the old record and vice versa (different prefixes).
    assert _decide(old, new_token, now=inside) == d.Refuse("unknown_prefix")


def test_second_rotation_never_extends_the_old_window() -> None:
    _, old = _record()
    first = d.retire_for_rotation(old, NOW, overlap=timedelta(minutes=10))
    again = d.retire_for_rotation(first, NOW + timedelta(minutes=5), overlap=timedelta(minutes=10))
    assert again.expires_at == NOW + timedelta(minutes=10)
    with pytest.raises(ValidationFailed):
        d.retire_for_rotation(old, NOW, overlap=timedelta(seconds=-1))


def test_revocation_is_immediate_and_idempotent() -> None:
    token, record = _record()
    revoked = d.revoke(record, NOW)
    assert _decide(revoked, token, now=NOW) == d.Refuse("revoked")
    assert d.revoke(revoked, NOW + timedelta(hours=1)).revoked_at == NOW
    # Revocation also beats an open rotation window.
    in_window = d.revoke(d.retire_for_rotation(record, NOW), NOW)
    assert _decide(in_window, token, now=NOW + timedelta(minutes=1)) == d.Refuse("revoked")


def test_naive_datetimes_are_refused() -> None:
    token, record = _record()
    with pytest.raises(ValidationFailed, match="timezone"):
        d.token_decision(
            record, TENANT, datetime(2025, 1, 1), presented=token, key=KEY, tenant_state="active"
        )


@given(st.text(max_size=200))
def test_arbitrary_input_is_never_accepted(presented: str) -> None:
    _, record = _record()
    decision = _decide(record, presented)
    assert isinstance(decision, d.Refuse)
    assert decision.reason in {"malformed", "unknown_prefix", "bad_secret"}
