"""Shared harness for the secrets service's integration tests, plus tests of the harness itself.

* One Kubernetes emulator for all secrets tests (``soctalk_kubesim.start_cluster``, in its own thread,
  as in tests/contract), with ``soctalk-system`` and the External Secrets CRD installed; every test
  works with its own tenants (random slugs), so tests never see each other's objects.
* ``FaultyKube`` — a fault-injecting wrapper around the real gateway: after N successful Secret
  writes every further write fails like an API server outage (a crash mid-inventory, from the
  handler's point of view).
* ``EsoSimulator`` — what External Secrets Operator does, done for real against the emulator and
  OpenBao: each ExternalSecret's Vault properties are written into its target Secret with the template
  annotations (and the Secret goes when the ExternalSecret goes).

Other modules import this one as ``h`` and bind its fixtures with ``kube = h.kube`` etc.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import Unavailable
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.gateways.vault import VaultGateway
from soctalk_common.runtime import Ctx
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_kubesim import ClusterHandle, KubeEmulator, start_cluster
from soctalk_secrets.bootstrap import bootstrap
from soctalk_secrets.deps import Deps
from soctalk_secrets.domain import SYSTEM_NAMESPACE
from sqlalchemy import select

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

MSSP = uuid.UUID("5a1e5a1e-0000-4000-8000-00000000a55e")
INSTALL = uuid.UUID("1a57a11e-0000-4000-8000-0000000000a1")
TOKEN_KEY = "test-adapter-signing-key-" + "x" * 16
ESO_V1 = "external-secrets.io/v1"

_cluster: ClusterHandle | None = None


def shared_cluster() -> ClusterHandle:
    """One emulator (own thread) for every secrets test in the session; stopped at exit."""
    global _cluster
    if _cluster is None:
        _cluster = start_cluster()
        atexit.register(_cluster.stop)
    return _cluster


def eso_crd(versions: tuple[str, ...] = ("v1",)) -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "externalsecrets.external-secrets.io"},
        "spec": {"group": "external-secrets.io", "scope": "Namespaced",
                 "names": {"kind": "ExternalSecret", "plural": "externalsecrets",
                           "singular": "externalsecret", "listKind": "ExternalSecretList"},
                 "versions": [{"name": v, "served": True, "storage": i == 0, "schema": schema}
                              for i, v in enumerate(versions)]},
    }


async def prepare_cluster(kube: KubeGateway, *, eso: tuple[str, ...] | None = ("v1",)) -> None:
    await kube.ensure_namespace(SYSTEM_NAMESPACE, {"managed-by": "soctalk"})
    if eso:
        await kube.apply(eso_crd(eso))


@pytest.fixture
async def kube() -> AsyncIterator[KubeGateway]:
    gw = await KubeGateway.from_kubeconfig(shared_cluster().kubeconfig_path)
    await prepare_cluster(gw)
    yield gw
    await gw.close()


@pytest.fixture
async def private_kube() -> AsyncIterator[KubeGateway]:
    """A fresh emulator of its own (no ESO CRD, no soctalk-system yet): for install-level tests."""
    async with KubeEmulator() as emu:
        gw = await KubeGateway.from_kubeconfig(emu.kubeconfig_path)
        yield gw
        await gw.close()


@pytest.fixture
def vault(vault_server) -> Iterator[VaultGateway]:  # type: ignore[no-untyped-def]
    gw = VaultGateway(vault_server.addr, vault_server.token, timeout=5)
    yield gw
    gw.close()


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"token_hash_key": TOKEN_KEY, "mssp_id": MSSP, "install_id": INSTALL,
                              "vault_addr": None, "vault_token": None, "vault_admin_token": None,
                              "max_deliver": 8, "token_overlap_s": 600.0, "eso_sync_timeout_s": 10.0,
                              "lease_ttl_s": 60.0}
    values.update(overrides)
    return Settings(**values)


async def make_deps(uow: UnitOfWorkFactory, kube: Any, *, vault: VaultGateway | None = None,
                    clock: Any = None, **overrides: Any) -> Deps:
    """The deps exactly as the composition root builds them (the process itself is not started)."""
    process = await bootstrap(settings(**overrides), uow=uow, bus=None, kube=kube, vault=vault,  # type: ignore[arg-type]
                              clock=clock)
    deps: Deps = process.runtime.deps
    return deps


def slug() -> str:
    return "t-" + secrets.token_hex(4)


async def add_tenant(uow: UnitOfWorkFactory, *, backend: str = "kubernetes", state: str = "pending",
                     llm_key_source: dict[str, Any] | None = None) -> m.Tenant:
    tenant = m.Tenant(id=uuid.uuid4(), mssp_id=MSSP, install_id=INSTALL, slug=slug(),
                      request_id=uuid.uuid4().hex, display_name="Test tenant", state=state,
                      profile="small-dev", chart_version="v1.1.0", secrets_backend=backend, config={},
                      llm_key_source=llm_key_source)
    async with uow.sessionmaker() as s, s.begin():
        s.add(tenant)
    return tenant


async def set_state(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, state: str) -> None:
    async with uow.sessionmaker() as s, s.begin():
        t = await s.get(m.Tenant, tenant_id)
        assert t is not None
        t.state = state


def accepted(tenant: m.Tenant, *, llm_key: ev.LlmKeySource | None = None, resume: bool = False,
             backend: str | None = None) -> ev.TenantAccepted:
    return ev.TenantAccepted(tenant_id=tenant.id, slug=tenant.slug, namespace=f"tenant-{tenant.slug}",
                             mssp_id=tenant.mssp_id, install_id=tenant.install_id, chart_version="v1.1.0",
                             profile="small-dev", secrets_backend=backend or tenant.secrets_backend,  # type: ignore[arg-type]
                             llm_key=llm_key, resume=resume)


async def handle(handler: Any, event: ev.Event, deps: Deps, uow: UnitOfWorkFactory, *,
                 attempt: int = 1) -> None:
    """Deliver ``event`` to ``handler`` as the runtime would (inbox bound to this message)."""
    consumer = f"secrets--{event.event_type}"
    await handler(event, Ctx(uow=uow.bind(consumer, event.event_id), deps=deps, attempt=attempt))


async def emitted(uow: UnitOfWorkFactory, event_type: str) -> list[ev.Event]:
    async with uow.sessionmaker() as s:
        rows = (await s.execute(select(m.Outbox).where(m.Outbox.event_type == event_type)
                                .order_by(m.Outbox.id))).scalars().all()
    return [ev.parse_event(bytes(r.payload)) for r in rows]


async def lifecycle_types(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[str]:
    async with uow.sessionmaker() as s:
        rows = (await s.execute(select(m.TenantLifecycleEvent.type)
                                .where(m.TenantLifecycleEvent.tenant_id == tenant_id)
                                .order_by(m.TenantLifecycleEvent.id))).scalars().all()
    return list(rows)


async def secret_rows(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[m.TenantSecret]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant_id)
                                     .order_by(m.TenantSecret.id))).scalars().all())


async def token_rows(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> list[m.AdapterToken]:
    async with uow.sessionmaker() as s:
        return list((await s.execute(select(m.AdapterToken).where(m.AdapterToken.tenant_id == tenant_id)
                                     .order_by(m.AdapterToken.created_at))).scalars().all())


def workload(kind: str, name: str, namespace: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     **({"serviceName": name} if kind == "StatefulSet" else {}),
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": "example/img:1"}]}}}}


def restarted_at(obj: dict[str, Any] | None) -> str | None:
    assert obj is not None
    meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (meta.get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")


# --------------------------------------------------------------------------------------------------
# Fault injection and ESO
# --------------------------------------------------------------------------------------------------


class FaultyKube:
    """The real gateway, except that after ``writes_ok`` Secret writes every write fails (503)."""

    def __init__(self, inner: KubeGateway, *, writes_ok: int) -> None:
        self.inner = inner
        self.writes_ok = writes_ok
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _write(self, what: str) -> None:
        if self.writes >= self.writes_ok:
            raise Unavailable(f"{what}: API server answered 503 (injected)")
        self.writes += 1

    async def create_secret(self, namespace: str, name: str, data: dict[str, str], **kw: Any) -> None:
        self._write(f"secret {namespace}/{name}")
        await self.inner.create_secret(namespace, name, data, **kw)

    async def patch_secret(self, namespace: str, name: str, data: dict[str, str], **kw: Any) -> None:
        self._write(f"secret {namespace}/{name}")
        await self.inner.patch_secret(namespace, name, data, **kw)


@dataclass
class EsoSimulator:
    """Syncs every ExternalSecret of the cluster from Vault, as External Secrets Operator would."""

    kube: KubeGateway
    vault: VaultGateway
    api_version: str = ESO_V1
    synced: int = 0

    async def sync_once(self) -> None:
        seen = set()
        for obj in await self.kube.list(self.api_version, "ExternalSecret"):
            meta, spec = obj["metadata"], obj["spec"]
            target = spec["target"]["name"]
            seen.add((meta["namespace"], target))
            data: dict[str, str] = {}
            for item in spec["data"]:
                kv = await self.vault.kv_read(item["remoteRef"]["key"])
                if kv is None or item["remoteRef"]["property"] not in kv.data:
                    break
                data[item["secretKey"]] = kv.data[item["remoteRef"]["property"]]
            else:
                tmeta = spec["target"]["template"]["metadata"]
                label = tmeta["annotations"]["soctalk.io/version-label"]
                current = await self.kube.read_secret(meta["namespace"], target)
                if current is None:
                    await self.kube.create_secret(meta["namespace"], target, data, labels=tmeta["labels"],
                                                  version_label=label)
                    self.synced += 1
                elif current.version_label != label or current.data != data:
                    await self.kube.patch_secret(meta["namespace"], target, data, version_label=label)
                    self.synced += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[EsoSimulator]:
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                await self.sync_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)  # the controller's resync period

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            stop.set()
            await task


# --------------------------------------------------------------------------------------------------
# Tests of the harness itself
# --------------------------------------------------------------------------------------------------


async def test_faulty_kube_fails_writes_after_the_budget(kube: KubeGateway) -> None:
    ns = f"tenant-{slug()}"
    await kube.ensure_namespace(ns, {})
    faulty = FaultyKube(kube, writes_ok=1)
    await faulty.create_secret(ns, "a", {"k": "v"})
    with pytest.raises(Unavailable):
        await faulty.create_secret(ns, "b", {"k": "v"})
    assert await faulty.read_secret(ns, "a") is not None  # reads pass through
    assert await kube.read_secret(ns, "b") is None
    await kube.delete_namespace(ns)


async def test_eso_simulator_syncs_labelled_versions(kube: KubeGateway, vault: VaultGateway) -> None:
    ns = f"tenant-{slug()}"
    await kube.ensure_namespace(ns, {})
    path = f"sim-{secrets.token_hex(4)}/x"
    await vault.kv_write(path, {"p": "one"})
    from soctalk_secrets.domain import external_secret

    await kube.apply(external_secret(api_version=ESO_V1, namespace=ns, name="synced", store="s",
                                     remote_key=path, properties={"k": "p"}, version_label="v3",
                                     labels={"a": "b"}))
    sim = EsoSimulator(kube, vault)
    async with sim.running():
        rec = await eventually(lambda: kube.read_secret(ns, "synced"), what="synced secret")
    assert rec.data == {"k": "one"} and rec.version_label == "v3"
    await vault.kv_delete(path)
    await kube.delete_namespace(ns)
