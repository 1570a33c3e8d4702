"""The vault backend end to end on a real OpenBao dev server plus ExternalSecret objects in the
emulator: KV v2 layout, ESO objects, seed-004 policies, idempotent reruns, rotation waiting for the
sync, cleanup of the tree; the ExternalSecret API version is discovered (v1, else v1beta1)."""

from __future__ import annotations

import secrets
import uuid

import pytest
from soctalk_common import events as ev
from soctalk_common.errors import TemporaryError
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.gateways.vault import (
    ESO_SYSTEM_READER_POLICY,
    ORCHESTRATOR_POLICY,
    SECRETS_WRITER_POLICY,
    VaultGateway,
    eso_reader_policy_name,
)
from soctalk_common.sealing import public_key_from_private, seal
from soctalk_secrets import handlers
from soctalk_secrets.domain import INVENTORY, SYSTEM_NAMESPACE, VAULT_VERSION_KEY, Gen

from tests.integration import test_secrets_harness as h

pytestmark = pytest.mark.integration
kube = h.kube
private_kube = h.private_kube
vault = h.vault

LENGTH = {Gen.URLSAFE_32: 43, Gen.URLSAFE_48: 64}


def path(tenant, purpose: str) -> str:  # type: ignore[no-untyped-def]
    return f"{h.MSSP}/tenants/{tenant.slug}/{purpose}"


def namespace(tenant, location: str) -> str:  # type: ignore[no-untyped-def]
    return SYSTEM_NAMESPACE if location == "system" else f"tenant-{tenant.slug}"


async def vault_deps(uow, kube, vault_server, vault: VaultGateway, **kw):  # type: ignore[no-untyped-def]
    admin = VaultGateway(vault_server.addr, vault_server.token, timeout=5)
    return await h.make_deps(uow, kube, vault=vault, vault_addr=vault_server.addr,
                             vault_admin_token=vault_server.token, **kw), admin


async def test_vault_backend_end_to_end(uow, kube: KubeGateway, vault_server, vault: VaultGateway) -> None:
    early = await h.add_tenant(uow, backend="vault")  # exists before start: gets its ESO policy at bootstrap
    deps, admin = await vault_deps(uow, kube, vault_server, vault)
    for name in (SECRETS_WRITER_POLICY, ESO_SYSTEM_READER_POLICY, ORCHESTRATOR_POLICY,
                 eso_reader_policy_name(early.slug)):
        assert await admin.policy_read(name), name
    tenant = await h.add_tenant(uow, backend="vault")
    canary = "sk-vault-" + secrets.token_hex(8)
    sealed = seal(public_key_from_private(deps.sealing_key), canary)
    event = h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed))

    await h.handle(handlers.on_tenant_accepted, event, deps, uow)

    for s in INVENTORY:
        kv = await vault.kv_read(path(tenant, s.purpose))
        assert kv is not None and kv.version == 1, s.purpose
        assert sorted(kv.data) == sorted([*s.key_names(), VAULT_VERSION_KEY])
        assert kv.data[VAULT_VERSION_KEY] == "v1"
        for k in s.keys:
            if k.gen in LENGTH:
                assert len(kv.data[k.key]) == LENGTH[k.gen]
        ns = namespace(tenant, s.location)
        es = await kube.get(h.ESO_V1, "ExternalSecret", s.secret_name(tenant.id), ns)
        assert es is not None, s.purpose
        assert es["spec"]["secretStoreRef"]["name"] == "soctalk-vault"
        assert {d["secretKey"]: d["remoteRef"] for d in es["spec"]["data"]} == {
            k: {"key": path(tenant, s.purpose), "property": k} for k in s.key_names()}
        assert await kube.read_secret(ns, s.secret_name(tenant.id)) is None  # ESO's job, not ours
    assert (await vault.kv_read(path(tenant, "llm"))).data["api_key"] == canary  # type: ignore[union-attr]
    rows = await h.secret_rows(uow, tenant.id)
    assert {r.backend for r in rows} == {"vault"}
    assert {(r.name, r.path) for r in rows if r.purpose == "cortex"} == {
        (f"tenant-{tenant.id}-cortex", f"secret/{path(tenant, 'cortex')}")}
    assert await admin.policy_read(eso_reader_policy_name(tenant.slug))

    sim = h.EsoSimulator(kube, vault)
    await sim.sync_once()
    synced = await kube.read_secret(f"tenant-{tenant.slug}", "adapter-token")
    kv_token = await vault.kv_read(path(tenant, "adapter-token"))
    assert synced is not None and kv_token is not None
    assert synced.data == {"token": kv_token.data["token"]} and synced.version_label == "v1"

    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, resume=True), deps, uow)  # rerun
    assert await vault.kv_versions(path(tenant, "wazuh-bootstrap")) == [1]  # nothing rewritten

    await h.set_state(uow, tenant.id, "decommissioning")
    await h.handle(handlers.on_chart_removed, ev.ChartRemoved(
        tenant_id=tenant.id, release=f"tenant-{tenant.slug}", namespace=f"tenant-{tenant.slug}"), deps, uow)
    assert await vault.kv_list(f"{h.MSSP}/tenants/{tenant.slug}") == []
    for s in INVENTORY:
        if s.location == "system":
            name = s.secret_name(tenant.id)
            assert await kube.get(h.ESO_V1, "ExternalSecret", name, SYSTEM_NAMESPACE) is None
    assert await admin.policy_read(eso_reader_policy_name(tenant.slug)) is None
    [done] = await h.emitted(uow, "SecretsRemoved")
    assert isinstance(done, ev.SecretsRemoved) and len(done.references) == len(rows)
    admin.close()
    await kube.delete_namespace(f"tenant-{tenant.slug}")


async def test_vault_rotation_waits_for_external_secrets(uow, kube: KubeGateway, vault_server,
                                                         vault: VaultGateway) -> None:
    deps, admin = await vault_deps(uow, kube, vault_server, vault, eso_sync_timeout_s=0.3)
    admin.close()
    tenant = await h.add_tenant(uow, backend="vault", state="active")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)
    sim = h.EsoSimulator(kube, vault)
    await sim.sync_once()
    ns = f"tenant-{tenant.slug}"
    await kube.apply(h.workload("Deployment", "cortex", ns))
    before = await vault.kv_read(path(tenant, "cortex-bootstrap"))
    event = ev.SecretRotationRequested(tenant_id=tenant.id, service="cortex")

    with pytest.raises(TemporaryError) as raised:  # no ESO running: the new version never arrives
        await h.handle(handlers.on_rotation_requested, event, deps, uow)
    assert "External Secrets Operator has not synced" in str(raised.value)
    # not restarted before the sync
    assert h.restarted_at(await kube.get("apps/v1", "Deployment", "cortex", ns)) is None
    written = await vault.kv_read(path(tenant, "cortex-bootstrap"))
    assert written is not None and written.data[VAULT_VERSION_KEY] == "v2" and written.version == 2

    async with sim.running():  # ESO is back: the retry adopts v2 (no third write), waits, restarts
        await h.handle(handlers.on_rotation_requested, event, deps, uow, attempt=2)
    assert await vault.kv_versions(path(tenant, "cortex-bootstrap")) == [1, 2]
    synced = await kube.read_secret(ns, "cortex-bootstrap")
    copy = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-cortex")
    assert synced is not None and copy is not None and before is not None
    assert synced.version_label == copy.version_label == "v2"
    assert synced.data["api_key"] == copy.data["api_key"] != before.data["api_key"]
    assert h.restarted_at(await kube.get("apps/v1", "Deployment", "cortex", ns))
    [rotated] = await h.emitted(uow, "SecretRotated")
    assert isinstance(rotated, ev.SecretRotated) and rotated.restarted == ["Deployment/cortex"]
    assert {r.path for r in rotated.references} == {f"secret/{path(tenant, p)}" for p in ("cortex-bootstrap",
                                                                                         "cortex")}
    await kube.delete_namespace(ns)


async def test_external_secrets_api_version_is_discovered(uow, private_kube: KubeGateway, vault_server,
                                                          vault: VaultGateway) -> None:
    await h.prepare_cluster(private_kube, eso=None)
    deps = await h.make_deps(uow, private_kube, vault=vault)
    tenant = await h.add_tenant(uow, backend="vault")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)  # no ESO installed
    [failed] = await h.emitted(uow, "SecretsFailed")
    assert isinstance(failed, ev.SecretsFailed) and "External Secrets Operator" in failed.reason

    await private_kube.apply(h.eso_crd(("v1beta1",)))  # an older ESO
    deps = await h.make_deps(uow, private_kube, vault=vault)
    retry = h.accepted(tenant)
    await h.handle(handlers.on_tenant_accepted, retry, deps, uow)
    es = await private_kube.get("external-secrets.io/v1beta1", "ExternalSecret", "adapter-token",
                                f"tenant-{tenant.slug}")
    assert es is not None and es["apiVersion"] == "external-secrets.io/v1beta1"
    assert len(await h.emitted(uow, "SecretsReady")) == 1
    for s in INVENTORY:
        await vault.kv_delete(path(tenant, s.purpose))


async def test_vault_path_llm_key_is_only_referenced(uow, kube: KubeGateway, vault_server,
                                                     vault: VaultGateway) -> None:
    deps, admin = await vault_deps(uow, kube, vault_server, vault)
    admin.close()
    tenant = await h.add_tenant(uow, backend="vault")
    mssp_path = f"mssp-keys/{uuid.uuid4().hex[:8]}/llm"
    await vault.kv_write(mssp_path, {"api_key": "sk-" + secrets.token_hex(8)})
    src = ev.LlmKeySource(vault_path=f"secret/{mssp_path}")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=src), deps, uow)

    assert await vault.kv_read(path(tenant, "llm")) is None  # not copied into the managed tree
    es = await kube.get(h.ESO_V1, "ExternalSecret", f"tenant-{tenant.id}-llm", SYSTEM_NAMESPACE)
    assert es is not None and es["spec"]["data"][0]["remoteRef"]["key"] == mssp_path
    await h.EsoSimulator(kube, vault).sync_once()
    synced = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-llm")
    assert synced is not None and synced.data["api_key"].startswith("sk-")

    await h.set_state(uow, tenant.id, "decommissioning")
    await h.handle(handlers.on_chart_removed, ev.ChartRemoved(
        tenant_id=tenant.id, release=f"tenant-{tenant.slug}", namespace=f"tenant-{tenant.slug}"), deps, uow)
    assert await vault.kv_read(mssp_path) is not None  # the MSSP's path is theirs
    await vault.kv_delete(mssp_path)
    await kube.delete_namespace(f"tenant-{tenant.slug}")
