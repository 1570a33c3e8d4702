"""TenantAccepted → namespace + seed 000 inventory (kubernetes backend), on the emulator and Postgres.

Covers: names, namespaces, keys and lengths; references = plan; token hash; events; idempotency by
postcondition (a crash after N writes, then a rerun: nothing regenerated); the LLM key sources;
failures recorded as SecretsFailed; the install keys created once across replicas.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import TemporaryError
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import generate_keypair, public_key_from_private, seal
from soctalk_secrets import handlers
from soctalk_secrets.domain import (
    INVENTORY,
    SYSTEM_NAMESPACE,
    Gen,
    hash_token,
    parse_token,
    plan_inventory,
)
from soctalk_secrets.keys import SEALING_SECRET, SIGNING_SECRET
from sqlalchemy import select

from tests.integration import test_secrets_harness as h

pytestmark = pytest.mark.integration
kube = h.kube
private_kube = h.private_kube

LENGTH = {Gen.URLSAFE_32: 43, Gen.URLSAFE_48: 64}
TOKEN_RE = re.compile(r"^sta_[a-z0-9]{12}_[A-Za-z0-9_-]{64}$")


async def public_key(uow) -> str:  # type: ignore[no-untyped-def]
    """What ``soctalk keys public`` prints."""
    async with uow.sessionmaker() as s:
        row = await s.get(m.SystemKey, "sealing")
    assert row is not None
    return row.public_key


async def snapshot(kube: KubeGateway, tenant: m.Tenant) -> dict[str, tuple[str | None, dict[str, str]]]:
    out = {}
    for s in INVENTORY:
        ns = SYSTEM_NAMESPACE if s.location == "system" else f"tenant-{tenant.slug}"
        rec = await kube.read_secret(ns, s.secret_name(tenant.id))
        if rec is not None:
            out[s.purpose] = (rec.version_label, rec.data)
    return out


async def test_full_inventory_is_written_where_seed_000_places_it(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    canary = "sk-canary-" + secrets.token_hex(16)
    sealed = seal(await public_key(uow), canary)
    tenant = await h.add_tenant(uow, llm_key_source={"sealed": sealed})
    event = h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed))

    await h.handle(handlers.on_tenant_accepted, event, deps, uow)

    ns = await kube.get("v1", "Namespace", f"tenant-{tenant.slug}")
    assert ns is not None
    labels = ns["metadata"]["labels"]
    assert {k: labels[k] for k in ("tenant", "managed-by", "mssp-id", "install-id", "tenant-id")} == {
        "tenant": "true", "managed-by": "soctalk", "mssp-id": str(h.MSSP), "install-id": str(h.INSTALL),
        "tenant-id": str(tenant.id)}
    found = await snapshot(kube, tenant)
    assert set(found) == {s.purpose for s in INVENTORY}
    for s in INVENTORY:
        label, data = found[s.purpose]
        assert label == "v1"
        assert sorted(data) == sorted(s.key_names()), s.purpose
        for k in s.keys:
            if k.gen in LENGTH:
                assert len(data[k.key]) == LENGTH[k.gen], (s.purpose, k.key)
            elif k.gen == Gen.FIXED:
                assert data[k.key] == k.value
            elif k.gen == Gen.COPY:
                assert k.source is not None
                assert data[k.key] == found[k.source[0]][1][k.source[1]]
    assert found["llm"][1] == {"api_key": canary}
    token = found["adapter-token"][1]["token"]
    assert TOKEN_RE.fullmatch(token)
    assert found["wazuh"][1]["api_password"] == found["wazuh-bootstrap"][1]["admin_password"]
    assert len({found[p][1].get("admin_password") for p in ("wazuh-bootstrap", "thehive-bootstrap",
                                                           "cortex-bootstrap")}) == 3
    rec = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-llm")
    assert rec is not None and rec.labels["soctalk.io/tenant-id"] == str(tenant.id)

    plan = plan_inventory(tenant.id, tenant.slug, backend="kubernetes")
    rows = await h.secret_rows(uow, tenant.id)
    assert {(r.backend, r.namespace, r.path, r.name, r.key, r.version_label, r.purpose, r.status)
            for r in rows} == {(p.backend, p.namespace, None, p.name, p.key, "v1", p.purpose, "active")
                               for p in plan}
    [tok] = await h.token_rows(uow, tenant.id)
    assert tok.prefix == parse_token(token) and tok.version_label == "v1"
    assert tok.token_hash == hash_token(h.TOKEN_KEY.encode(), token) and token not in tok.token_hash

    [ready] = await h.emitted(uow, "SecretsReady")
    assert isinstance(ready, ev.SecretsReady) and ready.namespace == f"tenant-{tenant.slug}"
    assert ready.causation_id == event.event_id and ready.correlation_id == event.correlation_id
    assert {(r.namespace, r.name, r.key) for r in ready.references} == {
        (p.namespace, p.name, p.key) for p in plan}
    [audit] = await h.emitted(uow, "SecretAuditEvent")
    assert isinstance(audit, ev.SecretAuditEvent) and audit.action == "write"
    assert len(audit.references) == len(plan)
    assert audit.subject == f"soctalk.audit.secrets.{tenant.id}"
    assert await h.lifecycle_types(uow, tenant.id) == ["SecretsReady"]
    async with uow.sessionmaker() as s:
        t = await s.get(m.Tenant, tenant.id)
        inbox = await s.get(m.Inbox, ("secrets--TenantAccepted", event.event_id))
    assert t is not None and t.llm_key_source is None  # the ciphertext is no longer kept
    assert inbox is not None


@pytest.mark.parametrize("writes_ok", [2, 5, 7])
async def test_rerun_after_a_crash_mid_inventory_regenerates_nothing(uow, kube: KubeGateway,
                                                                     writes_ok: int) -> None:
    deps = await h.make_deps(uow, kube)
    sealed = seal(await public_key(uow), "sk-" + secrets.token_hex(16))
    tenant = await h.add_tenant(uow)
    event = h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed))
    faulty = h.FaultyKube(kube, writes_ok=writes_ok)
    crashed = await h.make_deps(uow, faulty)

    with pytest.raises(TemporaryError):
        await h.handle(handlers.on_tenant_accepted, event, crashed, uow, attempt=1)
    before = await snapshot(kube, tenant)
    assert len(before) == writes_ok
    assert await h.secret_rows(uow, tenant.id) == [] and await h.emitted(uow, "SecretsReady") == []

    await h.handle(handlers.on_tenant_accepted, event, deps, uow, attempt=2)  # the redelivery
    after = await snapshot(kube, tenant)
    assert len(after) == len(INVENTORY)
    assert {p: after[p] for p in before} == before  # same values, still v1: nothing regenerated
    assert all(label == "v1" for label, _ in after.values())
    assert after["wazuh"][1]["api_password"] == after["wazuh-bootstrap"][1]["admin_password"]
    assert after["thehive"][1]["api_token"] == after["thehive-bootstrap"][1]["api_token"]
    [tok] = await h.token_rows(uow, tenant.id)
    assert tok.token_hash == hash_token(h.TOKEN_KEY.encode(), after["adapter-token"][1]["token"])

    resumed = h.accepted(tenant, resume=True)  # a :retry later: the sealed key is no longer needed
    await h.handle(handlers.on_tenant_accepted, resumed, deps, uow)
    assert await snapshot(kube, tenant) == after
    assert len(await h.emitted(uow, "SecretsReady")) == 2
    assert len(await h.emitted(uow, "SecretAuditEvent")) == 1  # the resume wrote nothing new
    assert len(await h.token_rows(uow, tenant.id)) == 1


class CountingKube:
    """The real gateway, counting Secret reads and creates."""

    def __init__(self, inner: KubeGateway) -> None:
        self.inner = inner
        self.reads: list[str] = []
        self.creates: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_secret(self, namespace: str, name: str) -> Any:
        self.reads.append(name)
        return await self.inner.read_secret(namespace, name)

    async def create_secret(self, namespace: str, name: str, data: dict[str, str], **kw: Any) -> None:
        self.creates.append(name)
        await self.inner.create_secret(namespace, name, data, **kw)


async def test_a_first_provisioning_creates_without_reading_and_a_rerun_reads_back(uow, kube: KubeGateway) -> None:
    """Nothing recorded yet: each Secret is created straight away (one API call), except the LLM key,
    which is read first so a sealed key is opened only when its Secret is missing. Recorded: reads."""
    counting = CountingKube(kube)
    deps = await h.make_deps(uow, counting)
    sealed = seal(await public_key(uow), "sk-" + secrets.token_hex(16))
    tenant = await h.add_tenant(uow)
    counting.reads.clear()  # the install keys made by make_deps
    counting.creates.clear()
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed)),
                   deps, uow)
    llm = f"tenant-{tenant.id}-llm"
    assert sorted(counting.creates) == sorted(s.secret_name(tenant.id) for s in INVENTORY)
    assert counting.reads == [llm]
    first = await snapshot(kube, tenant)

    counting.reads.clear()
    counting.creates.clear()
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, resume=True), deps, uow)
    assert counting.creates == [] and len(counting.reads) >= len(INVENTORY)
    assert await snapshot(kube, tenant) == first


async def test_copies_follow_a_regenerated_source(uow, kube: KubeGateway) -> None:
    """A Secret lost (with its namespace) is regenerated as the next version, and its copy in
    soctalk-system is re-synced to it; the older references are retired."""
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow)
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)
    old = await snapshot(kube, tenant)
    await kube.delete_secret(f"tenant-{tenant.slug}", "wazuh-bootstrap")

    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, resume=True), deps, uow)
    new = await snapshot(kube, tenant)
    assert new["wazuh-bootstrap"][1]["admin_password"] != old["wazuh-bootstrap"][1]["admin_password"]
    assert new["wazuh-bootstrap"][0] == "v2"
    assert new["wazuh"] == ("v2", {"api_username": "admin",
                                   "api_password": new["wazuh-bootstrap"][1]["admin_password"]})
    assert new["cortex-bootstrap"] == old["cortex-bootstrap"]
    status = {(r.name, r.version_label): r.status for r in await h.secret_rows(uow, tenant.id)}
    for name in ("wazuh-bootstrap", f"tenant-{tenant.id}-wazuh"):
        assert (status[(name, "v1")], status[(name, "v2")]) == ("retired", "active")
    assert status[("cortex-bootstrap", "v1")] == "active"


async def test_an_llm_secret_ref_is_referenced_not_copied(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    name = "mssp-llm-" + secrets.token_hex(4)
    await kube.create_secret(SYSTEM_NAMESPACE, name, {"openai": "sk-" + secrets.token_hex(8)})
    tenant = await h.add_tenant(uow, llm_key_source={"secret_ref": {"namespace": SYSTEM_NAMESPACE,
                                                                     "name": name, "key": "openai"}})
    src = ev.LlmKeySource(secret_ref=ev.KubeSecretKeyRef(namespace=SYSTEM_NAMESPACE, name=name, key="openai"))
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=src), deps, uow)

    assert await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-llm") is None
    [llm] = [r for r in await h.secret_rows(uow, tenant.id) if r.purpose == "llm"]
    assert (llm.backend, llm.namespace, llm.name, llm.key, llm.path) == (
        "kubernetes", SYSTEM_NAMESPACE, name, "openai", None)
    async with uow.sessionmaker() as s:
        t = await s.get(m.Tenant, tenant.id)
    assert t is not None and t.llm_key_source is not None  # a reference is not material: kept for a resume


async def test_an_llm_vault_path_becomes_an_external_secret(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow)
    path = f"secret/{h.MSSP}/llm-keys/{tenant.slug}"
    await h.handle(handlers.on_tenant_accepted,
                   h.accepted(tenant, llm_key=ev.LlmKeySource(vault_path=path)), deps, uow)

    es = await kube.get(h.ESO_V1, "ExternalSecret", f"tenant-{tenant.id}-llm", SYSTEM_NAMESPACE)
    assert es is not None
    assert es["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "soctalk-vault"}
    assert es["spec"]["data"] == [{"secretKey": "api_key",
                                   "remoteRef": {"key": path.removeprefix("secret/"), "property": "api_key"}}]
    [llm] = [r for r in await h.secret_rows(uow, tenant.id) if r.purpose == "llm"]
    assert (llm.backend, llm.path, llm.name) == ("vault", path, f"tenant-{tenant.id}-llm")


@pytest.mark.parametrize("source", [
    ev.LlmKeySource(secret_ref=ev.KubeSecretKeyRef(namespace="kube-system", name="x", key="k")),
    ev.LlmKeySource(secret_ref=ev.KubeSecretKeyRef(namespace=SYSTEM_NAMESPACE, name=SEALING_SECRET,
                                                   key="private_key")),
    ev.LlmKeySource(secret_ref=ev.KubeSecretKeyRef(namespace=SYSTEM_NAMESPACE,
                                                   name=f"tenant-{uuid.uuid4()}-llm", key="api_key")),
    ev.LlmKeySource(vault_path=f"secret/{h.MSSP}/tenants/someone-else/llm"),
    ev.LlmKeySource(vault_path="other-mount/llm"),
], ids=["other-namespace", "install-key", "other-tenant", "other-tenant-vault", "other-mount"])
async def test_an_llm_reference_may_not_borrow_someone_elses_key(uow, kube: KubeGateway,
                                                                 source: ev.LlmKeySource) -> None:
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow)
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=source), deps, uow)

    [failed] = await h.emitted(uow, "SecretsFailed")
    assert isinstance(failed, ev.SecretsFailed) and failed.step == "secrets"
    assert "ValidationFailed" in failed.reason and "llm_key" in failed.reason
    assert await h.lifecycle_types(uow, tenant.id) == ["SecretsFailed"]
    assert not await kube.namespace_exists(f"tenant-{tenant.slug}")  # refused before any side effect


async def test_a_key_sealed_to_another_install_fails_without_revealing_it(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    _, foreign = generate_keypair()
    sealed = seal(foreign, "sk-not-ours-" + secrets.token_hex(8))
    tenant = await h.add_tenant(uow)
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed)),
                   deps, uow)

    [failed] = await h.emitted(uow, "SecretsFailed")
    assert isinstance(failed, ev.SecretsFailed) and failed.reason.startswith("UnsealFailed")
    assert sealed[10:40] not in failed.reason and "sk-not-ours" not in failed.reason
    assert await h.secret_rows(uow, tenant.id) == []


async def test_temporary_failures_are_retried_then_recorded_one_delivery_early(uow, kube) -> None:
    deps = await h.make_deps(uow, h.FaultyKube(kube, writes_ok=0), max_deliver=5)
    tenant = await h.add_tenant(uow)
    event = h.accepted(tenant)
    with pytest.raises(TemporaryError) as raised:
        await h.handle(handlers.on_tenant_accepted, event, deps, uow, attempt=3)
    assert "503 (injected)" in str(raised.value)
    assert await h.emitted(uow, "SecretsFailed") == []

    await h.handle(handlers.on_tenant_accepted, event, deps, uow, attempt=4)  # max_deliver - 1: give up
    [failed] = await h.emitted(uow, "SecretsFailed")
    assert isinstance(failed, ev.SecretsFailed) and "Unavailable" in failed.reason
    assert await h.lifecycle_types(uow, tenant.id) == ["SecretsFailed"]


async def test_the_vault_backend_needs_vault(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)  # no VAULT_ADDR
    tenant = await h.add_tenant(uow, backend="vault")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)
    [failed] = await h.emitted(uow, "SecretsFailed")
    assert isinstance(failed, ev.SecretsFailed) and "vault" in failed.reason


async def test_install_keys_are_created_once_across_replicas(uow, private_kube: KubeGateway) -> None:
    await private_kube.ensure_namespace(SYSTEM_NAMESPACE, {})
    replicas = await asyncio.gather(*(h.make_deps(uow, private_kube, token_hash_key=None) for _ in range(3)))

    assert len({d.sealing_key for d in replicas}) == 1 and len({d.token_key for d in replicas}) == 1
    sealing = await private_kube.read_secret(SYSTEM_NAMESPACE, SEALING_SECRET)
    signing = await private_kube.read_secret(SYSTEM_NAMESPACE, SIGNING_SECRET)
    assert sealing is not None and signing is not None
    assert sealing.data["private_key"] == replicas[0].sealing_key
    assert signing.data["key"].encode() == replicas[0].token_key and len(signing.data["key"]) == 64
    assert await public_key(uow) == public_key_from_private(replicas[0].sealing_key)
    async with uow.sessionmaker() as s:
        assert len((await s.execute(select(m.SystemKey))).scalars().all()) == 1

    again = await h.make_deps(uow, private_kube, token_hash_key=None)  # a restart reuses them
    assert again.sealing_key == replicas[0].sealing_key and again.token_key == replicas[0].token_key
