"""A three-node NATS cluster with R3 streams loses one node mid-run: nothing lost, nothing duplicated.

Three nats-server processes on loopback form a cluster (routes between them, JetStream on each);
the stream layout is created at 3 replicas (``Bus(replicas=3)``). A producer commits events into the
outbox in batches (one transaction each, as services do); the outbox relay publishes them; a consumer
runtime (durable pull consumer + inbox) records one effect row per message in the same transaction as
its inbox row. While traffic flows, the node leading the events stream is SIGKILLed; the relay, the
consumer and the producer keep going on the two survivors. Afterwards the stream holds every event
exactly once (``Nats-Msg-Id`` dedupe) and every event had exactly one effect. Finally the killed node
is started again and must catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common import stack
from soctalk_common.bus import EVENTS_STREAM, STREAMS, Bus
from soctalk_common.relay import OutboxRelay
from soctalk_common.runtime import Ctx, ServiceRuntime
from soctalk_common.uow import UnitOfWorkFactory
from sqlalchemy import text

from tests.reliability.conftest import SIZES
from tests.reliability.results import record
from tests.support import reliability_scan as scan
from tests.support.reliability_stack import workdir
from tests.support.waiting import eventually

pytestmark = pytest.mark.reliability

BATCH = 50
PRODUCE_S = 5.0  # the producer spreads its batches over this long


class Cluster:
    def __init__(self, size: int = 3) -> None:
        self.root = workdir("soctalk-natscluster-")
        ports = [stack.free_port() for _ in range(size)]
        cluster_ports = [stack.free_port() for _ in range(size)]
        self.servers = [
            stack.NatsServer(port=ports[i], store_dir=self.root / f"n{i + 1}", cluster_name="soctalk-rel",
                             cluster_port=cluster_ports[i], server_name=f"n{i + 1}",
                             routes=[p for j, p in enumerate(cluster_ports) if j != i])
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> Cluster:
        for s in self.servers:
            s.start()
        return self

    def by_name(self, name: str) -> stack.NatsServer:
        return next(s for s in self.servers if s.server_name == name)

    def kill(self, server: stack.NatsServer) -> None:
        assert server.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        server.proc = None

    def cleanup(self) -> None:
        import shutil

        for s in self.servers:
            s.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


async def _r3_streams(bus: Bus) -> bool:
    try:
        await bus.ensure_streams()  # fails until the JetStream meta group has a leader
        infos = [await bus.js.stream_info(s.name) for s in STREAMS]
    except Exception:  # noqa: BLE001 - cluster still forming
        return False
    return all(i.config.num_replicas == 3 and i.cluster and i.cluster.leader for i in infos)


async def test_losing_a_node_mid_run_loses_and_duplicates_nothing(uow: UnitOfWorkFactory,
                                                                   database_url: str) -> None:
    total = SIZES.cluster_events
    cluster = Cluster().start()
    async with uow.sessionmaker() as s, s.begin():
        await s.execute(text("CREATE TABLE reliability_effects "
                             "(id bigserial primary key, event_id uuid not null, seq int not null)"))

    async def effect(event: ev.TenantRetryRequested, ctx: Ctx[None]) -> None:
        async with ctx.uow() as tx:  # the effect commits with the inbox row, or not at all
            await tx.session.execute(text("INSERT INTO reliability_effects (event_id, seq) VALUES (:e, 0)"),
                                     {"e": event.event_id})
            await tx.commit()

    bus = await Bus.connect(cluster.urls, name="reliability-cluster", replicas=3)  # type: ignore[arg-type]
    runtime: ServiceRuntime[None] = ServiceRuntime("reliability", bus=bus, uow=uow, deps=None,
                                                   ack_wait_s=5, retry_base_s=0.05, retry_cap_s=1.0)
    runtime.route("TenantRetryRequested", effect)
    relay = OutboxRelay(database_url, bus, name="relay-cluster-test", sweep_s=0.2)
    tasks: list[asyncio.Task[Any]] = []
    figures: dict[str, Any] = {"nodes": 3, "replicas": 3, "produced": 0}
    try:
        await eventually(lambda: _r3_streams(bus), timeout=60, what="R3 streams on the three-node cluster")
        await runtime.start(cluster.urls)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(relay.run()))
        tenants = [uuid.uuid4() for _ in range(20)]
        produced: list[uuid.UUID] = []
        killed: stack.NatsServer | None = None
        kill_at = total // 3
        loop = asyncio.get_running_loop()
        for n in range(0, total, BATCH):
            events = [ev.TenantRetryRequested(tenant_id=tenants[(n + i) % len(tenants)])
                      for i in range(min(BATCH, total - n))]
            async with uow() as tx:
                for e in events:
                    tx.emit(e)
                await tx.commit()
            produced += [e.event_id for e in events]
            await asyncio.sleep(PRODUCE_S * BATCH / total)  # producer cadence: traffic spans the kill
            if killed is None and len(produced) >= kill_at:
                await eventually(lambda: _in_flight(uow), timeout=30, what="traffic in flight")
                leader = (await bus.js.stream_info(EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
                killed = cluster.by_name(leader)
                cluster.kill(killed)
                t_kill = loop.time()
                figures["killed"] = f"{leader} (leader of {EVENTS_STREAM})"

                async def failover(old: str = leader, since: float = t_kill) -> None:
                    figures["new_leader"] = await eventually(lambda: _leader_other_than(bus, old), timeout=30,
                                                             what="a new stream leader")
                    figures["failover_s"] = round(loop.time() - since, 2)

                tasks.append(asyncio.create_task(failover()))  # production goes on during the election
        figures["produced"] = len(produced)
        await tasks[-1]  # the new leader was elected

        async def all_effects() -> bool:
            async with uow.sessionmaker() as s:
                n = await s.scalar(text("SELECT count(DISTINCT event_id) FROM reliability_effects"))
            return n == len(produced)

        t0 = time.monotonic()
        with contextlib.suppress(AssertionError):
            await eventually(all_effects, timeout=60 + total / 50, what="every event's effect")
        figures["drain_s"] = round(time.monotonic() - t0, 2)

        async with uow.sessionmaker() as s:
            rows = (await s.execute(text("SELECT event_id FROM reliability_effects"))).scalars().all()
            unpublished = await s.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        effects = Counter(rows)
        stored = await scan.read_stream(bus, EVENTS_STREAM)
        on_stream = Counter(ev.parse_event(m.data).event_id for m in stored)
        lost_effects = len(set(produced) - set(effects))
        dup_effects = sum(n - 1 for n in effects.values() if n > 1)
        lost_stream = len(set(produced) - set(on_stream))
        dup_stream = sum(n - 1 for n in on_stream.values() if n > 1)
        figures.update({
            "stream_messages": len(stored), "effects": len(rows), "lost": lost_effects + lost_stream,
            "duplicated": dup_effects + dup_stream, "lost_on_stream": lost_stream,
            "duplicated_on_stream": dup_stream, "lost_effects": lost_effects,
            "duplicated_effects": dup_effects, "unpublished_outbox_rows": unpublished,
            "redeliveries_skipped_by_inbox": runtime.counters["duplicates"],
            "retried": runtime.counters["retried"], "relay_batches": relay.stats.batches,
        })

        # The killed node comes back and catches up with the survivors.
        assert killed is not None
        t1 = time.monotonic()
        killed.start()
        await eventually(lambda: _replicas_current(bus, killed.server_name or ""), timeout=60,
                         what=f"{killed.server_name} caught up")
        figures["rejoin_s"] = round(time.monotonic() - t1, 2)
    finally:
        record("nats_cluster", figures)
        relay.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.stop(drain_timeout=5)
        await bus.close()
        cluster.cleanup()

    assert figures["produced"] == total
    assert figures["lost"] == 0 and figures["duplicated"] == 0, figures
    assert figures["stream_messages"] == total and figures["unpublished_outbox_rows"] == 0


async def _in_flight(uow: UnitOfWorkFactory) -> bool:
    """Traffic flows end to end: some events already had their effect (the rest is on its way)."""
    async with uow.sessionmaker() as s:
        return bool(await s.scalar(text("SELECT count(*) FROM reliability_effects")))


async def _leader_other_than(bus: Bus, old: str) -> str | None:
    try:
        info = await bus.js.stream_info(EVENTS_STREAM)
    except Exception:  # noqa: BLE001 - no leader yet
        return None
    leader = info.cluster.leader if info.cluster else None
    return leader if leader and leader != old else None


async def _replicas_current(bus: Bus, name: str) -> bool:
    try:
        infos = [await bus.js.stream_info(s.name) for s in STREAMS]
    except Exception:  # noqa: BLE001
        return False
    for info in infos:
        peers = {r.name: r for r in (info.cluster.replicas or [])} if info.cluster else {}
        if info.cluster and info.cluster.leader == name:
            continue
        peer = peers.get(name)
        if peer is None or not peer.current:
            return False
    return True
