"""CPU per message of the provisioner's and the secrets service's consumers, in isolation.

``.venv/bin/python -m bench.handlers_cpu`` (``N=300`` for more tenants). Not a scenario of ``bench.run``:
a tool for working on those two services, whose share of the pipeline is small next to the Helm work
and too noisy to compare there at 100 tenants.

One process, fresh NATS + Postgres, the Kubernetes emulator in a thread. Each phase publishes N
messages of one type first, then runs the service (its real ``bootstrap``: FastStream-free runtime,
handlers, unit of work) until it has handled all N and reports the **main thread's** CPU per message
(``time.thread_time``: the emulator's thread and the gateway's resolver threads are not counted), plus
SQL statements and pool checkouts per message (SQLAlchemy events) and connections opened.
Phases follow one tenant's life: TenantRequested → (provisioner) → TenantAccepted → (secrets) →
SecretsReady → ChartApplied → TenantActivated (provisioner; the last two made up by the bench).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import yaml
from soctalk_api import commands as cmds
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.logging import configure_logging
from soctalk_common.sealing import seal
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_kubesim import start_cluster
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import servers
from bench.seed import EXAMPLE, dsn
from bench.stackrun import KEY

N = int(os.environ.get("N", "100"))
STATS: collections.Counter[str] = collections.Counter()


def _count(engine: AsyncEngine) -> None:
    @sa_event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _stmt(*_a: Any) -> None:
        STATS["statements"] += 1

    @sa_event.listens_for(engine.sync_engine.pool, "connect")
    def _connect(*_a: Any) -> None:
        STATS["connects"] += 1

    @sa_event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(*_a: Any) -> None:
        STATS["checkouts"] += 1


async def _unpublished(url: str, pub: Bus, types: set[str]) -> list[dict[str, Any]]:
    """The outbox rows of ``types`` (published by hand: no relay in this process)."""
    conn = await asyncpg.connect(dsn(url))
    try:
        rows = await conn.fetch("SELECT id, subject, payload, event_type FROM outbox WHERE published_at IS NULL "
                                "ORDER BY id")
        out = []
        for r in rows:
            if r["event_type"] in types:
                await pub.publish(r["subject"], bytes(r["payload"]), msg_id=str(r["id"]))
                out.append(json.loads(bytes(r["payload"])))
        await conn.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
        return out
    finally:
        await conn.close()


async def _phase(name: str, process: Any, publish: Callable[[], Awaitable[object]]) -> float:
    STATS.clear()
    await publish()
    counters = process.runtime.counters
    start = dict(counters)
    before = sum(counters.values())
    stop = asyncio.Event()
    t0 = time.thread_time()
    task = asyncio.create_task(process.run(stop))
    while sum(counters.values()) - before < N:
        await asyncio.sleep(0.05)
    cpu = (time.thread_time() - t0) / N
    stop.set()
    await task
    print(f"{name:16s} {cpu * 1000:6.2f} ms CPU/msg  {STATS['statements'] / N:4.1f} statements/msg  "
          f"{STATS['checkouts'] / N:4.1f} checkouts/msg  {STATS['connects']} connections opened  "
          f"{ {k: v - start.get(k, 0) for k, v in counters.items()} }", flush=True)
    return cpu


async def main() -> None:
    from soctalk_provisioner.bootstrap import bootstrap as provisioner
    from soctalk_secrets.bootstrap import bootstrap as secrets

    async with servers() as (nats_url, db_url):
        cluster = start_cluster()
        os.environ.update(NATS_URL=nats_url, DATABASE_URL=db_url, SOCTALK_TOKEN_HASH_KEY=KEY)
        settings = Settings()
        configure_logging("bench", level="WARNING")
        bus, pub = await Bus.connect(nats_url), await Bus.connect(nats_url)
        await bus.ensure_streams()
        eng_p, eng_s = make_engine(db_url), make_engine(db_url, pool_size=5)
        _count(eng_p)
        _count(eng_s)
        kube = await KubeGateway.from_kubeconfig(cluster.kubeconfig_path)
        try:
            await kube.ensure_namespace("soctalk-system", {})
            prov = provisioner(settings, uow=UnitOfWorkFactory(make_sessionmaker(eng_p)), bus=bus)
            sec = await secrets(settings, uow=UnitOfWorkFactory(make_sessionmaker(eng_s)), bus=bus, kube=kube)
            for step in prov.before_start:
                await step()
            prov.before_start = []
            conn = await asyncpg.connect(dsn(db_url))
            public = await conn.fetchval("SELECT public_key FROM system_keys WHERE name = 'sealing'")
            await conn.close()
            base = yaml.safe_load(EXAMPLE.read_text())["config"]
            requests = []
            for i in range(N):
                slug = f"c{i:05d}-{uuid.uuid4().hex[:4]}"
                config = json.loads(json.dumps(base))
                config.update(slug=slug, displayName=f"Bench {slug}")
                config["wazuhIngress"]["hostname"] = f"{slug}.soc.mssp.example.com"
                config["llm"]["apiKey"] = {"sealed": seal(public, "bench-llm-key-" + uuid.uuid4().hex)}
                requests.append(cmds.tenant_requested(config, f"bench-{slug}"))

            async def publish_all(events: list[ev.Event]) -> None:
                for e in events:
                    await pub.publish(e.subject, e.model_dump_json().encode(), msg_id=str(e.event_id))

            ready: list[ev.SecretsReady] = []

            async def ready_from_outbox() -> None:
                ready.extend(ev.SecretsReady.model_validate(r)
                             for r in await _unpublished(db_url, pub, {"SecretsReady"}))

            cpu = {"TenantRequested": await _phase("TenantRequested", prov, lambda: publish_all(requests)),
                   "TenantAccepted": await _phase("TenantAccepted", sec,
                                                  lambda: _unpublished(db_url, pub, {"TenantAccepted"})),
                   "SecretsReady": await _phase("SecretsReady", prov, ready_from_outbox)}
            cpu["ChartApplied"] = await _phase("ChartApplied", prov, lambda: publish_all([r.caused(
                ev.ChartApplied, operation="install", release="soctalk-tenant", namespace=r.namespace,
                revision=1, chart_version="v0.1.0") for r in ready]))
            cpu["TenantActivated"] = await _phase("TenantActivated", prov, lambda: publish_all([
                r.caused(ev.TenantActivated, adapter_version="bench") for r in ready]))
            per_tenant = sum(v for k, v in cpu.items() if k != "TenantAccepted")
            print(f"per tenant: provisioner {per_tenant * 1000:.2f} ms CPU, "
                  f"secrets {cpu['TenantAccepted'] * 1000:.2f} ms CPU (N={N})")
        finally:
            await kube.close()
            await bus.close()
            await pub.close()
            await eng_p.dispose()
            await eng_s.dispose()
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
