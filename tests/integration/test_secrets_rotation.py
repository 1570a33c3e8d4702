"""SecretRotationRequested on the kubernetes backend: new label, patch, restart only the readers,
verify, retire the old version; adapter token overlap; the tenant lease; a crash mid-rotation."""

from __future__ import annotations

import secrets
import uuid

import pytest
from soctalk_common import events as ev
from soctalk_common import lease, timers
from soctalk_common.clock import FakeClock
from soctalk_common.errors import OperationInProgress, TemporaryError
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import public_key_from_private, seal
from soctalk_secrets import handlers
from soctalk_secrets.domain import SYSTEM_NAMESPACE, Accept, Refuse
from soctalk_secrets.tokens import verify_adapter_token

from tests.integration import test_secrets_harness as h

pytestmark = pytest.mark.integration
kube = h.kube

WORKLOADS = [("StatefulSet", "wazuh-manager"), ("StatefulSet", "wazuh-indexer"),
             ("Deployment", "wazuh-dashboard"), ("Deployment", "thehive"), ("Deployment", "cortex"),
             ("StatefulSet", "cassandra")]


async def provisioned(uow, kube, *, clock=None, state="active", llm: str | None = None):  # type: ignore[no-untyped-def]
    deps = await h.make_deps(uow, kube, clock=clock)
    tenant = await h.add_tenant(uow, state=state)
    key = ev.LlmKeySource(sealed=seal(public_key_from_private(deps.sealing_key), llm)) if llm else None
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=key), deps, uow)
    return deps, tenant


def rotation(tenant, service: str, **kw) -> ev.SecretRotationRequested:  # type: ignore[no-untyped-def]
    return ev.SecretRotationRequested(tenant_id=tenant.id, service=service, **kw)


async def statuses(uow, tenant_id: uuid.UUID) -> dict[tuple[str, str], str]:  # type: ignore[no-untyped-def]
    return {(r.name, r.version_label): r.status for r in await h.secret_rows(uow, tenant_id)}


async def test_rotating_wazuh_restarts_only_wazuh(uow, kube: KubeGateway) -> None:
    deps, tenant = await provisioned(uow, kube)
    ns = f"tenant-{tenant.slug}"
    for kind, name in WORKLOADS:
        await kube.apply(h.workload(kind, name, ns))
    before_bootstrap = await kube.read_secret(ns, "wazuh-bootstrap")
    before_cortex = await kube.read_secret(ns, "cortex-bootstrap")
    event = rotation(tenant, "wazuh")

    await h.handle(handlers.on_rotation_requested, event, deps, uow)

    boot = await kube.read_secret(ns, "wazuh-bootstrap")
    copy = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-wazuh")
    assert boot is not None and copy is not None and before_bootstrap is not None
    assert boot.version_label == copy.version_label == "v2"
    assert boot.annotations["soctalk.io/version-label"] == "v2"
    assert boot.data["admin_password"] != before_bootstrap.data["admin_password"]
    assert len(boot.data["admin_password"]) == 43 and copy.data["api_password"] == boot.data["admin_password"]
    assert await kube.read_secret(ns, "cortex-bootstrap") == before_cortex
    restarted = {name for kind, name in WORKLOADS
                 if h.restarted_at(await kube.get("apps/v1", kind, name, ns))}
    assert restarted == {"wazuh-manager", "wazuh-indexer", "wazuh-dashboard"}

    st = await statuses(uow, tenant.id)
    assert st[("wazuh-bootstrap", "v1")] == st[(f"tenant-{tenant.id}-wazuh", "v1")] == "retired"
    assert st[("wazuh-bootstrap", "v2")] == st[(f"tenant-{tenant.id}-wazuh", "v2")] == "active"
    assert st[("cortex-bootstrap", "v1")] == "active"
    [rotated] = await h.emitted(uow, "SecretRotated")
    assert isinstance(rotated, ev.SecretRotated) and rotated.version_label == "v2"
    assert sorted(rotated.restarted) == ["Deployment/wazuh-dashboard", "StatefulSet/wazuh-indexer",
                                         "StatefulSet/wazuh-manager"]
    assert {r.name for r in rotated.references} == {"wazuh-bootstrap", f"tenant-{tenant.id}-wazuh"}
    actions = [a.action for a in await h.emitted(uow, "SecretAuditEvent")]  # type: ignore[attr-defined]
    assert actions == ["write", "rotate", "retire"]
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretRotated"

    await h.handle(handlers.on_rotation_requested, rotation(tenant, "wazuh"), deps, uow)  # again: v3
    boot3 = await kube.read_secret(ns, "wazuh-bootstrap")
    assert boot3 is not None and boot3.version_label == "v3"


async def test_rotating_the_llm_key_rewrites_the_secret_without_restarts(uow, kube: KubeGateway) -> None:
    deps, tenant = await provisioned(uow, kube, llm="sk-old-" + secrets.token_hex(8))
    new = "sk-new-" + secrets.token_hex(8)
    sealed = seal(public_key_from_private(deps.sealing_key), new)
    await h.handle(handlers.on_rotation_requested,
                   rotation(tenant, "llm", new_llm_key=ev.LlmKeySource(sealed=sealed)), deps, uow)

    rec = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-llm")
    assert rec is not None and rec.data == {"api_key": new} and rec.version_label == "v2"
    [rotated] = await h.emitted(uow, "SecretRotated")
    assert isinstance(rotated, ev.SecretRotated) and rotated.restarted == []
    st = await statuses(uow, tenant.id)
    name = f"tenant-{tenant.id}-llm"
    assert st[(name, "v1")] == "retired" and st[(name, "v2")] == "active"

    await h.handle(handlers.on_rotation_requested, rotation(tenant, "llm"), deps, uow)  # no new key given
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretRotationFailed"
    assert await h.emitted(uow, "SecretsFailed") == []  # a failed rotation does not fail the tenant


async def test_rotating_the_adapter_token_keeps_both_valid_for_the_overlap(uow, kube: KubeGateway) -> None:
    clock = FakeClock()
    deps, tenant = await provisioned(uow, kube, clock=clock)
    ns = f"tenant-{tenant.slug}"
    old = (await kube.read_secret(ns, "adapter-token")).data["token"]  # type: ignore[union-attr]

    async def verify(token: str) -> Accept | Refuse:
        return await verify_adapter_token(uow.sessionmaker, deps.token_key, token, tenant.id, clock.now())

    await h.handle(handlers.on_rotation_requested, rotation(tenant, "adapter", overlap_s=300), deps, uow)
    rec = await kube.read_secret(ns, "adapter-token")
    assert rec is not None and rec.version_label == "v2"
    new = rec.data["token"]
    assert new != old
    assert isinstance(await verify(old), Accept) and isinstance(await verify(new), Accept)
    assert (await statuses(uow, tenant.id))[("adapter-token", "v1")] == "retiring"
    [rotated] = await h.emitted(uow, "SecretRotated")
    assert isinstance(rotated, ev.SecretRotated) and rotated.restarted == []  # the adapter re-reads its file

    clock.advance(299)
    assert await handlers.retire_due(uow, clock) == 0
    assert isinstance(await verify(old), Accept)
    clock.advance(2)
    assert await verify(old) == Refuse("expired") and isinstance(await verify(new), Accept)
    assert await handlers.retire_due(uow, clock) == 1
    assert (await statuses(uow, tenant.id))[("adapter-token", "v1")] == "retired"
    assert [a.action for a in await h.emitted(uow, "SecretAuditEvent")][-1] == "retire"  # type: ignore[attr-defined]
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretRetired"

    await h.handle(handlers.on_rotation_requested, rotation(tenant, "adapter", overlap_s=0), deps, uow)
    newest = (await kube.read_secret(ns, "adapter-token")).data["token"]  # type: ignore[union-attr]
    assert await verify(new) == Refuse("expired") and isinstance(await verify(newest), Accept)
    assert (await statuses(uow, tenant.id))[("adapter-token", "v2")] == "retired"  # no overlap: at once


async def test_rotation_waits_for_the_tenant_lease(uow, kube: KubeGateway) -> None:
    deps, tenant = await provisioned(uow, kube)
    assert await lease.acquire(uow, tenant.id, "helm-runner:x", "upgrade", ttl_s=60, clock=deps.clock)
    with pytest.raises(TemporaryError) as raised:
        await h.handle(handlers.on_rotation_requested, rotation(tenant, "cassandra"), deps, uow)
    assert OperationInProgress.__name__ in str(raised.value)
    rec = await kube.read_secret(f"tenant-{tenant.slug}", "cassandra-creds")
    assert rec is not None and rec.version_label == "v1"

    await lease.release(uow, tenant.id, "helm-runner:x")
    await h.handle(handlers.on_rotation_requested, rotation(tenant, "cassandra"), deps, uow)
    rec = await kube.read_secret(f"tenant-{tenant.slug}", "cassandra-creds")
    assert rec is not None and rec.version_label == "v2"
    async with uow() as tx:  # released afterwards
        assert await timers.pending(tx, tenant.id, handlers.RETIRE_TIMER) is None


async def test_a_crash_mid_rotation_resumes_with_the_version_already_written(uow, kube) -> None:
    deps, tenant = await provisioned(uow, kube)
    ns = f"tenant-{tenant.slug}"
    crashed = await h.make_deps(uow, h.FaultyKube(kube, writes_ok=1))
    event = rotation(tenant, "thehive")
    with pytest.raises(TemporaryError):
        await h.handle(handlers.on_rotation_requested, event, crashed, uow)
    written = await kube.read_secret(ns, "thehive-bootstrap")
    assert written is not None and written.version_label == "v2"  # the copy was not written yet

    await h.handle(handlers.on_rotation_requested, event, deps, uow, attempt=2)
    boot = await kube.read_secret(ns, "thehive-bootstrap")
    copy = await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-thehive")
    assert boot == written  # adopted, not regenerated
    assert copy is not None and copy.version_label == "v2"
    assert copy.data["api_token"] == boot.data["api_token"]
    assert len(await h.emitted(uow, "SecretRotated")) == 1


async def test_nothing_to_rotate_for_a_tenant_being_decommissioned(uow, kube: KubeGateway) -> None:
    deps, tenant = await provisioned(uow, kube)
    await h.set_state(uow, tenant.id, "decommissioning")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, resume=True), deps, uow)  # ignored
    assert len(await h.emitted(uow, "SecretsReady")) == 1 and await h.emitted(uow, "SecretsFailed") == []
    await h.handle(handlers.on_rotation_requested, rotation(tenant, "authd"), deps, uow)
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretRotationFailed"
    rec = await kube.read_secret(f"tenant-{tenant.slug}", "wazuh-authd-secret")
    assert rec is not None and rec.version_label == "v1"


async def test_switching_the_llm_key_to_an_mssp_secret_removes_our_copy(uow, kube: KubeGateway) -> None:
    deps, tenant = await provisioned(uow, kube, llm="sk-old-" + secrets.token_hex(8))
    name = "mssp-llm-" + secrets.token_hex(4)
    await kube.create_secret(SYSTEM_NAMESPACE, name, {"key": "sk-" + secrets.token_hex(8)})
    ref = ev.KubeSecretKeyRef(namespace=SYSTEM_NAMESPACE, name=name, key="key")
    await h.handle(handlers.on_rotation_requested,
                   rotation(tenant, "llm", new_llm_key=ev.LlmKeySource(secret_ref=ref)), deps, uow)

    assert await kube.read_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-llm") is None  # no stale key left
    st = await statuses(uow, tenant.id)
    assert st[(f"tenant-{tenant.id}-llm", "v1")] == "retired" and st[(name, "v2")] == "active"
    await kube.delete_secret(SYSTEM_NAMESPACE, name)
