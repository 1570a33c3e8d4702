"""Request → active through every service, as ``make demo`` does, and once through the HTTP API."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import yaml
from soctalk_api.auth import issue_token
from soctalk_cli.demo import EXAMPLE, provision
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from sqlalchemy import select

from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_demo_flow_reaches_active_with_everything_in_place(devstack):
    code = await provision(devstack, EXAMPLE, timeout=240, keep=False)
    assert code == 0, (devstack.workdir / "logs").as_posix()

    engine = make_engine(devstack.database_url, pool_size=2)
    sm = make_sessionmaker(engine)
    async with sm() as s:
        tenant = (await s.execute(select(m.Tenant).where(m.Tenant.slug == "acme"))).scalar_one()
        refs = list((await s.execute(select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant.id))).scalars())
        types = [r.type for r in (await s.execute(
            select(m.TenantLifecycleEvent).where(m.TenantLifecycleEvent.tenant_id == tenant.id)
            .order_by(m.TenantLifecycleEvent.id))).scalars()]
    await engine.dispose()
    assert tenant.state == "active"
    assert {r.version_label for r in refs} == {"v1"}
    assert {"wazuh-bootstrap", "adapter-token", f"tenant-{tenant.id}-llm"} <= {r.name for r in refs}
    assert types.index("TenantAccepted") < types.index("TenantActivated")

    kube = await KubeGateway.from_kubeconfig(devstack.kubeconfig_path)
    try:
        assert await kube.namespace_exists("tenant-acme")
        assert await kube.read_secret("tenant-acme", "adapter-token") is not None
    finally:
        await kube.close()
    history = await HelmGateway(devstack.kubeconfig_path).history("soctalk-tenant", "tenant-acme")
    assert [h.revision for h in history] == [1]


async def test_onboarding_through_the_http_api(devstack):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["requestId"] = f"api-{uuid.uuid4().hex[:8]}"
    doc["config"]["slug"] = "globex"
    doc["config"]["displayName"] = "Globex"
    token = issue_token(devstack.extra_env["SOCTALK_JWT_SIGNING_KEY"], "e2e")
    base = f"http://127.0.0.1:{devstack.api_port}"
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
        await eventually(lambda: _up(c), what="the API", timeout=30)
        # The secrets service publishes the sealing key; reference an existing Secret instead here.
        kube = await KubeGateway.from_kubeconfig(devstack.kubeconfig_path)
        try:
            await kube.ensure_namespace("soctalk-system", {})
            await kube.create_secret("soctalk-system", "acme-llm-api-key", {"api_key": "e2e-llm-" + uuid.uuid4().hex})
        finally:
            await kube.close()
        r = await c.post("/api/mssp/tenants", json=doc)
        assert r.status_code == 202, r.text
        tenant_id = r.json()["tenantId"]

        async def state() -> str | None:
            resp = await c.get(f"/api/mssp/tenants/{tenant_id}")
            return resp.json()["state"] if resp.status_code == 200 else None

        await eventually(lambda: _in(state(), {"provisioning", "active"}), what="provisioning", timeout=120)
        stop = asyncio.Event()
        sim = asyncio.create_task(_adapter(devstack, tenant_id, "globex", stop))
        try:
            await eventually(lambda: _in(state(), {"active"}), what="active", timeout=120)
        finally:
            stop.set()
            await asyncio.gather(sim, return_exceptions=True)
        lifecycle = (await c.get(f"/api/mssp/tenants/{tenant_id}/lifecycle")).json()
    assert any(e["type"] == "TenantActivated" for e in lifecycle)


async def _up(c: httpx.AsyncClient) -> bool:
    try:
        return (await c.get("/openapi.json")).status_code == 200
    except httpx.HTTPError:
        return False


async def _in(coro, states: set[str]) -> bool:  # type: ignore[no-untyped-def]
    return (await coro) in states


async def _adapter(ds, tenant_id: str, slug: str, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    from soctalk_cli.demo import _adapter as run_adapter

    await run_adapter(ds, None, uuid.UUID(tenant_id), slug, stop)
