"""The helm-runner as it runs in production: its process (consumers + watcher + drift loops) on real
NATS JetStream and Postgres, the outbox relay, the emulated cluster with a simulated kubelet — or, with
``SOCTALK_TEST_KUBECONFIG``, a real cluster (same tests, same assertions).

Messages are published on the bus; results are read back as published events (outbox rows the relay
has published) and from the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.clock import FakeClock
from soctalk_common.db import models as m
from soctalk_common.gateways.helm import HelmGateway
from soctalk_common.gateways.kube import KubeGateway
from soctalk_common.relay import OutboxRelay
from soctalk_common.service import ServiceProcess
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_helm_runner.bootstrap import bootstrap
from soctalk_kubesim import SimulatedKubelet
from sqlalchemy import select

from tests.integration import test_helm_runner_harness as h
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

kube, kubelet, helm_gateway = h.kube, h.kubelet, h.helm_gateway
charts_dir, compat_file = h.charts_dir, h.compat_file


@dataclass
class Stack:
    """Helm-runner replicas, the relay, and a ``Runner`` for seeding tenants and probing."""

    bus: Bus
    nats_url: str
    uow: UnitOfWorkFactory
    database_url: str
    runner: h.Runner
    charts_dir: Path
    compat_file: Path
    clock: FakeClock = field(default_factory=FakeClock)
    _running: list[tuple[ServiceProcess, asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)
    _relay: OutboxRelay | None = None
    _relay_task: asyncio.Task[None] | None = None

    async def start(self, helm: Any, *, holder: str = "helm-runner") -> ServiceProcess:
        cfg = h.settings(self.charts_dir, self.compat_file, nats_url=self.nats_url, retry_base_delay_s=0.05,
                         retry_max_delay_s=0.5, ack_wait_s=10.0)
        process = bootstrap(cfg, uow=self.uow, bus=self.bus, kube=self.runner.kube, helm=helm, clock=self.clock,
                            own=h.own_settings(), holder=holder)
        stop = asyncio.Event()
        task = asyncio.create_task(process.run(stop))
        self._running.append((process, stop, task))

        async def consuming() -> bool:
            if task.done():
                task.result()
            return process.runtime.broker is not None and process.bound_port is not None
        await eventually(consuming, timeout=15, what="the helm-runner consuming")
        if self._relay is None:
            self._relay = OutboxRelay(self.database_url, self.bus, sweep_s=0.1)
            self._relay_task = asyncio.create_task(self._relay.run())
        return process

    async def close(self) -> None:
        for _, stop, task in self._running:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        if self._relay is not None and self._relay_task is not None:
            self._relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay_task, 10)

    async def publish(self, event: ev.Event) -> ev.Event:
        await self.bus.publish(event.subject, event.model_dump_json().encode(), msg_id=str(event.event_id))
        return event

    async def published(self, event_type: str, tenant_id: uuid.UUID, n: int = 1, timeout: float = 30.0) -> list[Any]:
        """Wait until ``n`` events of the type for the tenant are published (relayed to JetStream)."""
        async def probe() -> list[Any] | None:
            async with self.uow.sessionmaker() as s:
                rows = (await s.execute(select(m.Outbox).where(m.Outbox.event_type == event_type,
                                                               m.Outbox.published_at.is_not(None))
                                        .order_by(m.Outbox.id))).scalars().all()
            found = [e for e in (ev.parse_event(bytes(r.payload)) for r in rows) if e.tenant_id == tenant_id]
            return found if len(found) >= n else None
        return await eventually(probe, timeout=timeout, what=f"{n} published {event_type}")


@pytest.fixture
async def stack(bus: Bus, nats_url: str, uow: UnitOfWorkFactory, database_url: str, kube: KubeGateway,
                helm_gateway: HelmGateway, charts_dir: Path, compat_file: Path) -> AsyncIterator[Stack]:
    clock = FakeClock()
    runner = h.Runner(uow, kube, h.make_deps(uow, kube, helm_gateway, clock, charts_dir, compat_file), clock)
    s = Stack(bus, nats_url, uow, database_url, runner, charts_dir, compat_file, clock=clock)
    yield s
    await s.close()
    await runner.cleanup()


async def test_install_is_acked_before_readiness_then_chart_applied_is_published(
        stack: Stack, helm_gateway: HelmGateway) -> None:
    slow = h.shared_cluster().kubelet(delay=1.0)
    await slow.start()
    try:
        await stack.start(helm_gateway)
        t = await stack.runner.add_tenant()
        cause = await stack.publish(h.secrets_ready(t))

        async def acked_and_waiting() -> bool:  # the message is done while the workloads are not ready
            async with stack.uow.sessionmaker() as s:
                inbox = (await s.execute(select(m.Inbox).where(m.Inbox.event_id == cause.event_id))).first()
            rows = await h.ops(stack.uow, t.id)
            return inbox is not None and [r.status for r in rows] == ["waiting"]
        await eventually(acked_and_waiting, timeout=20, what="SecretsReady acked with the wait recorded")

        (applied,) = await stack.published("ChartApplied", t.id)
    finally:
        await slow.stop()
    assert (applied.operation, applied.revision, applied.chart_version, applied.causation_id) == (
        "install", 1, "v1.1.0", cause.event_id)
    report = await stack.runner.kube.readiness(t.namespace)
    assert report.ready and len(report.workloads) >= 7


async def test_failing_workload_is_undone_and_reported(stack: Stack, helm_gateway: HelmGateway,
                                                      kubelet: SimulatedKubelet) -> None:
    await stack.start(helm_gateway)
    t = await stack.runner.add_tenant()
    kubelet.fail(f"{t.namespace}/thehive")
    await stack.publish(h.secrets_ready(t))
    (failed,) = await stack.published("ChartFailed", t.id)
    assert (failed.operation, failed.step, failed.undone) == ("install", "readiness", True)
    await h.namespace_gone(stack.runner.kube, t.namespace)
    assert await h.history(helm_gateway, t.namespace) == []


async def test_crash_after_install_is_redelivered_and_never_installs_twice(stack: Stack, helm_gateway: HelmGateway,
                                                                           kubelet: SimulatedKubelet) -> None:
    crashing = h.CrashAfterInstall(helm_gateway)
    process = await stack.start(crashing)
    t = await stack.runner.add_tenant()
    await stack.publish(h.secrets_ready(t))
    (applied,) = await stack.published("ChartApplied", t.id)
    assert applied.revision == 1 and crashing.installs == 1
    assert process.runtime.counters["retried"] >= 1  # the crash made the runtime redeliver
    assert [r.revision for r in await h.history(helm_gateway, t.namespace)] == [1]


async def test_two_replicas_run_one_helm_operation_per_tenant_at_a_time(stack: Stack,
                                                                        kubelet: SimulatedKubelet) -> None:
    stats = h.Concurrency()
    gateways = [HelmGateway(h.shared_cluster().kubeconfig_path, default_timeout=60) for _ in range(2)]
    try:
        for i, gw in enumerate(gateways):
            await stack.start(h.CountingHelm(h.SlowHelm(gw, delay=0.5), stats), holder=f"replica-{i}")
        t = await stack.runner.add_tenant()
        await asyncio.gather(*(stack.publish(h.secrets_ready(t)) for _ in range(3)))
        await stack.published("ChartApplied", t.id)
        await asyncio.gather(stack.publish(ev.SuspendApproved(tenant_id=t.id)),
                             stack.publish(ev.ResumeApproved(tenant_id=t.id)))

        async def settled() -> bool:
            rows = await h.ops(stack.uow, t.id)
            return any(r.operation == "resume" and r.status == "succeeded" for r in rows) and \
                all(r.status != "waiting" for r in rows)
        await eventually(settled, timeout=60, what="suspend and resume applied")
    finally:
        for gw in gateways:
            gw.close()
    assert stats.peak[(t.namespace, "soctalk-tenant")] == 1, stats.calls
    assert [c for c in stats.calls if c[0] == "install"] == [("install", t.namespace)]
