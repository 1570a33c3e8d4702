"""``soctalk events tail``: history first, then live, filtered by tenant — run as a real CLI process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import pytest
from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.relay import OutboxRelay

pytestmark = pytest.mark.integration


async def _tenant(uow, slug: str) -> uuid.UUID:
    tid = uuid.uuid4()
    async with uow() as tx:
        tx.session.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug=slug,
                                request_id=f"req-{slug}", display_name=slug, state="pending", profile="small-dev",
                                chart_version="v1.1.0", config={}))
        await tx.commit()
    return tid


async def _lifecycle(uow, tenant_id: uuid.UUID, slug: str, type_: str) -> None:
    async with uow() as tx:
        tx.lifecycle(ev.TenantRetryRequested(tenant_id=tenant_id), type_, slug=slug, message=f"{type_} happened")
        await tx.commit()


async def _cli(database_url: str, nats_url: str, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, DATABASE_URL=database_url, NATS_URL=nats_url, COLUMNS="200")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "soctalk_cli.main", "events", "tail", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _wait_published(relay: OutboxRelay, n: int) -> None:
    from tests.support.waiting import eventually

    async def done() -> bool:
        return relay.stats.published >= n

    await eventually(done, what=f"{n} rows published")


async def test_tail_shows_history_then_live_filtered_by_tenant(uow, bus, database_url, nats_url):
    acme = await _tenant(uow, "acme")
    other = await _tenant(uow, "other")
    relay = OutboxRelay(database_url, bus)
    task = asyncio.create_task(relay.run())
    try:
        await _lifecycle(uow, acme, "acme", "TenantAccepted")
        await _lifecycle(uow, other, "other", "TenantAccepted")
        await _lifecycle(uow, acme, "acme", "SecretsReady")
        await _wait_published(relay, 3)

        # History only (no -f): exits by itself after catching up.
        proc = await _cli(database_url, nats_url, "--tenant", "acme", "--output", "json")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        history = [json.loads(x) for x in out.decode().splitlines()]
        assert [h["type"] for h in history] == ["TenantAccepted", "SecretsReady"]
        assert {h["tenant_id"] for h in history} == {str(acme)}

        # Follow: history, then a live event arrives while it runs.
        proc = await _cli(database_url, nats_url, "--tenant", "acme", "-f", "--output", "json")
        assert proc.stdout is not None
        first = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)) for _ in range(2)]
        assert [f["type"] for f in first] == ["TenantAccepted", "SecretsReady"]
        await _lifecycle(uow, other, "other", "ChartApplied")
        await _lifecycle(uow, acme, "acme", "TenantActivated")
        live = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert live["type"] == "TenantActivated" and live["tenant_id"] == str(acme)
        proc.terminate()
        await proc.wait()

        # Text output for people, unknown tenant is a clear error with exit code 3.
        proc = await _cli(database_url, nats_url, "--tenant", "acme")
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert "acme" in out.decode() and "TenantActivated" in out.decode()
        proc = await _cli(database_url, nats_url, "--tenant", "nope")
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 3 and "no tenant 'nope'" in err.decode()
    finally:
        relay.stop()
        await task
