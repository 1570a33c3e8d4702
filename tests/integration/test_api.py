"""The HTTP API on real NATS and Postgres: commands are published, bad requests name their fields."""

from __future__ import annotations

import copy
import uuid

import httpx
import pytest
import yaml
from soctalk_api.app import ApiDeps, create_app
from soctalk_api.auth import issue_token
from soctalk_common import events as ev
from soctalk_common.bus import EVENTS_STREAM
from soctalk_common.db import models as m
from soctalk_common.settings import REPO_ROOT, Settings

pytestmark = pytest.mark.integration

KEY = "test-signing-key-0123456789abcdef0123456789"
EXAMPLE = yaml.safe_load((REPO_ROOT / "deploy/examples/tenant-acme.yaml").read_text())


def client(app, peer: str = "127.0.0.1") -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://api")


@pytest.fixture
def settings() -> Settings:
    return Settings(jwt_signing_key=KEY, auth_mode="internal")


@pytest.fixture
def app(settings, bus, sessionmaker):  # type: ignore[no-untyped-def]
    return create_app(ApiDeps(settings=settings, bus=bus, sessionmaker=sessionmaker))


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(KEY, 'ops@mssp')}"}


async def _stream_events(bus) -> list[ev.Event]:  # type: ignore[no-untyped-def]
    info = await bus.js.stream_info(EVENTS_STREAM)
    out = []
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            out.append(ev.parse_event((await bus.js.get_msg(EVENTS_STREAM, seq)).data))
    return out


async def test_request_tenant_publishes_tenant_requested(app, auth, bus):
    async with client(app) as c:
        r = await c.post("/api/mssp/tenants", json=EXAMPLE, headers=auth)
        again = await c.post("/api/mssp/tenants", json=EXAMPLE, headers=auth)
    assert r.status_code == 202, r.text
    body = r.json()
    assert again.json()["tenantId"] == body["tenantId"]  # same request id → same tenant id
    [first, second] = await _stream_events(bus)
    assert isinstance(first, ev.TenantRequested)
    assert str(first.tenant_id) == body["tenantId"] and first.request_id == EXAMPLE["requestId"]
    assert first.config["slug"] == "acme"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["config"].pop("slug"), "$.config"),
        (lambda d: d["config"].update(slug="Not_DNS"), "$.config.slug"),
        (lambda d: d["config"]["llm"].update(apiKey="sk-plaintext-canary-123"), "$.config.llm.apiKey"),
        (lambda d: d["config"]["wazuhIngress"].update(mode="nodeport"), "$.config.wazuhIngress.mode"),
        (lambda d: d.update(unexpected=1), "$.unexpected"),
        (lambda d: d.update(requestId=""), "$.requestId"),
    ],
)
async def test_bad_requests_get_422_naming_the_field_and_publish_nothing(app, auth, bus, mutate, path):
    doc = copy.deepcopy(EXAMPLE)
    mutate(doc)
    async with client(app) as c:
        r = await c.post("/api/mssp/tenants", json=doc, headers=auth)
    assert r.status_code == 422
    paths = [e["path"] for e in r.json()["errors"]]
    assert any(p.startswith(path) for p in paths), paths
    assert "sk-plaintext-canary-123" not in r.text
    assert await _stream_events(bus) == []


async def test_not_json_is_a_4xx(app, auth):
    async with client(app) as c:
        r = await c.post("/api/mssp/tenants", content=b"{nope", headers=auth | {"content-type": "application/json"})
    assert r.status_code == 422


async def test_commands_on_unknown_tenant_are_404(app, auth, bus):
    async with client(app) as c:
        r = await c.post(f"/api/mssp/tenants/{uuid.uuid4()}:upgrade", json={"targetChartVersion": "v1.1.0"},
                         headers=auth)
    assert r.status_code == 404
    assert await _stream_events(bus) == []


async def test_commands_and_reads_on_a_known_tenant(app, auth, bus, uow):
    tid = uuid.uuid4()
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug="acme",
                                request_id="r-1", display_name="Acme", state="active", profile="small-dev",
                                chart_version="v1.1.0", config={}))
        tx.lifecycle(ev.TenantRetryRequested(tenant_id=tid), "TenantActivated", slug="acme", state_to="active")
        await tx.commit()
    async with client(app) as c:
        for action, body in [("upgrade", {"targetChartVersion": "v1.1.0"}), ("suspend", {}), ("resume", None),
                             ("retry", None), ("decommission", {"gracePeriodSeconds": 60}), ("cancel", None)]:
            r = await c.post(f"/api/mssp/tenants/{tid}:{action}", json=body, headers=auth)
            assert r.status_code == 202, (action, r.text)
        bad = await c.post(f"/api/mssp/tenants/{tid}:upgrade", json={"targetChartVersion": "latest"}, headers=auth)
        assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "$.targetChartVersion"
        listing = (await c.get("/api/mssp/tenants", headers=auth)).json()
        shown = (await c.get(f"/api/mssp/tenants/{tid}", headers=auth)).json()
        history = (await c.get(f"/api/mssp/tenants/{tid}/lifecycle", headers=auth)).json()
        spec = (await c.get("/openapi.json")).json()
    assert [t["slug"] for t in listing] == ["acme"] and shown["state"] == "active"
    assert [h["type"] for h in history] == ["TenantActivated"]
    assert "/api/mssp/tenants/{tenant_id}:upgrade" in spec["paths"]
    types = [e.event_type for e in await _stream_events(bus)]
    assert types == ["TenantUpgradeRequested", "TenantSuspendRequested", "TenantResumeRequested",
                     "TenantRetryRequested", "TenantDecommissionRequested", "TenantDecommissionCancelRequested"]


async def test_internal_auth_refuses_missing_forged_and_expired_tokens(app):
    async with client(app) as c:
        assert (await c.get("/api/mssp/tenants")).status_code == 401
        forged = issue_token("another-key-0123456789abcdef0123456789", "x")
        r = await c.get("/api/mssp/tenants", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401 and forged not in r.text
        expired = issue_token(KEY, "x", ttl_s=-10)
        assert (await c.get("/api/mssp/tenants", headers={"Authorization": f"Bearer {expired}"})).status_code == 401


async def test_proxy_mode_trusts_identity_headers_only_from_trusted_cidrs(bus, sessionmaker):
    s = Settings(auth_mode="proxy", auth_trusted_proxy_cidrs="10.0.0.0/8")
    app = create_app(ApiDeps(settings=s, bus=bus, sessionmaker=sessionmaker))
    who = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "mssp-admins"}
    async with client(app, peer="10.1.2.3") as c:
        assert (await c.get("/api/mssp/tenants", headers=who)).status_code == 200
        assert (await c.get("/api/mssp/tenants")).status_code == 401  # trusted peer, no identity
    async with client(app, peer="192.168.1.9") as c:
        r = await c.get("/api/mssp/tenants", headers=who)
        assert r.status_code == 403 and "trusted proxies" in r.json()["detail"]
