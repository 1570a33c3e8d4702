"""ChartRemoved after a decommission uninstall: the tenant's Secrets in soctalk-system go, tokens are
revoked, references retired, SecretsRemoved emitted; nothing is left; reruns and PurgeDue are no-ops.
A ChartRemoved that undoes a failed install keeps everything for the retry."""

from __future__ import annotations

import secrets

import pytest
from soctalk_common import events as ev
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.sealing import public_key_from_private, seal
from soctalk_secrets import handlers
from soctalk_secrets.domain import SYSTEM_NAMESPACE, Refuse
from soctalk_secrets.tokens import verify_adapter_token

from tests.integration import test_secrets_harness as h

pytestmark = pytest.mark.integration
kube = h.kube


def removed(tenant) -> ev.ChartRemoved:  # type: ignore[no-untyped-def]
    ns = f"tenant-{tenant.slug}"
    return ev.ChartRemoved(tenant_id=tenant.id, release=ns, namespace=ns)


async def system_secrets(kube: KubeGateway, tenant) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.name for r in await kube.list_secrets(SYSTEM_NAMESPACE)
                  if r.labels.get("soctalk.io/tenant-id") == str(tenant.id) or str(tenant.id) in r.name)


async def test_decommission_cleanup_leaves_nothing(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow, state="active")
    sealed = seal(public_key_from_private(deps.sealing_key), "sk-" + secrets.token_hex(8))
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=ev.LlmKeySource(sealed=sealed)),
                   deps, uow)
    token = (await kube.read_secret(f"tenant-{tenant.slug}", "adapter-token")).data["token"]  # type: ignore[union-attr]
    assert len(await system_secrets(kube, tenant)) == 4
    await kube.create_secret(SYSTEM_NAMESPACE, f"tenant-{tenant.id}-extra", {"x": "y"},
                             labels={"soctalk.io/tenant-id": str(tenant.id)})  # e.g. left by an older version
    await h.set_state(uow, tenant.id, "decommissioning")
    await kube.delete_namespace(f"tenant-{tenant.slug}", wait=True)  # what the helm-runner did

    event = removed(tenant)
    await h.handle(handlers.on_chart_removed, event, deps, uow)

    assert await system_secrets(kube, tenant) == []
    rows = await h.secret_rows(uow, tenant.id)
    assert rows and {r.status for r in rows} == {"retired"} and all(r.retired_at for r in rows)
    verdict = await verify_adapter_token(uow.sessionmaker, deps.token_key, token, tenant.id, deps.clock.now())
    assert verdict == Refuse("revoked")
    [done] = await h.emitted(uow, "SecretsRemoved")
    assert isinstance(done, ev.SecretsRemoved) and done.causation_id == event.event_id
    assert {r.name for r in done.references} >= {f"tenant-{tenant.id}-llm", "adapter-token"}
    actions = [a.action for a in await h.emitted(uow, "SecretAuditEvent")]  # type: ignore[attr-defined]
    assert actions == ["write", "delete", "revoke"]
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretsRemoved"

    again = removed(tenant)  # a second report (another event id): idempotent
    await h.handle(handlers.on_chart_removed, again, deps, uow)
    second = (await h.emitted(uow, "SecretsRemoved"))[-1]
    assert isinstance(second, ev.SecretsRemoved) and second.references == []
    assert len(await h.emitted(uow, "SecretAuditEvent")) == 3

    await h.set_state(uow, tenant.id, "decommissioned")
    await h.handle(handlers.on_purge_due, ev.PurgeDue(tenant_id=tenant.id, slug=tenant.slug), deps, uow)
    assert "SecretsPurged" not in await h.lifecycle_types(uow, tenant.id)  # nothing was left
    assert await h.token_rows(uow, tenant.id) == []  # the hashes go with the retention window


async def test_purge_sweeps_whatever_a_lost_cleanup_left(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow, state="active")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)
    await h.set_state(uow, tenant.id, "decommissioned")

    await h.handle(handlers.on_purge_due, ev.PurgeDue(tenant_id=tenant.id, slug=tenant.slug), deps, uow)
    assert await system_secrets(kube, tenant) == []
    assert (await h.lifecycle_types(uow, tenant.id))[-1] == "SecretsPurged"
    assert {r.status for r in await h.secret_rows(uow, tenant.id)} == {"retired"}
    await kube.delete_namespace(f"tenant-{tenant.slug}")


async def test_an_undone_install_keeps_the_secrets_for_the_retry(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    tenant = await h.add_tenant(uow, state="provisioning")
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant), deps, uow)
    await h.handle(handlers.on_chart_removed, removed(tenant), deps, uow)

    assert len(await system_secrets(kube, tenant)) == 3  # wazuh, thehive, cortex (no LLM key given)
    assert await h.emitted(uow, "SecretsRemoved") == []
    assert {r.status for r in await h.secret_rows(uow, tenant.id)} == {"active"}
    await kube.delete_namespace(f"tenant-{tenant.slug}")


async def test_a_referenced_mssp_secret_is_never_deleted(uow, kube: KubeGateway) -> None:
    deps = await h.make_deps(uow, kube)
    name = "mssp-llm-" + secrets.token_hex(4)
    await kube.create_secret(SYSTEM_NAMESPACE, name, {"api_key": "sk-" + secrets.token_hex(8)})
    tenant = await h.add_tenant(uow, state="active")
    ref = ev.KubeSecretKeyRef(namespace=SYSTEM_NAMESPACE, name=name, key="api_key")
    src = ev.LlmKeySource(secret_ref=ref)
    await h.handle(handlers.on_tenant_accepted, h.accepted(tenant, llm_key=src), deps, uow)
    await h.set_state(uow, tenant.id, "decommissioning")
    await h.handle(handlers.on_chart_removed, removed(tenant), deps, uow)

    assert await kube.read_secret(SYSTEM_NAMESPACE, name) is not None  # the MSSP's, not ours
    assert await system_secrets(kube, tenant) == []
    await kube.delete_secret(SYSTEM_NAMESPACE, name)
