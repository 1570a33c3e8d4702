"""A running provisioner on real NATS JetStream and Postgres, with a fake clock — shared by the
``test_provisioner_*`` integration modules (they import the fixtures from here) — and the tests of its
start-up: the compatibility sync and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.clock import FakeClock
from soctalk_common.db import models as m
from soctalk_common.relay import OutboxRelay
from soctalk_common.runtime import Ctx
from soctalk_common.schemagen import CONSUMES
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory
from soctalk_provisioner import compatibility, timeouts
from soctalk_provisioner.bootstrap import ProvisionerProcess, bootstrap
from soctalk_provisioner.deps import Deps, ProvisionerSettings
from soctalk_provisioner.handlers import ROUTES
from sqlalchemy import func, select

from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SEALED = "sealed:v1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"

RETRY = ProvisionerSettings(step_retry_max=2, step_retry_base_s=10, step_retry_cap_s=60)


def tenant_config(slug: str = "acme", **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "slug": slug, "displayName": f"{slug.title()} Corp", "profile": "small-dev",
        "secretsBackend": "kubernetes",
        "llm": {"provider": "openai-compatible", "baseUrl": "https://api.openai.com/v1", "model": "gpt-4o",
                "apiKey": {"sealed": SEALED}},
        "allowedLlmHosts": ["api.openai.com"],
        "wazuhIngress": {"mode": "loadbalancer", "hostname": f"{slug}.soc.mssp.example.com"},
    }
    cfg.update(changes)
    return cfg


def secret_refs(slug: str = "acme") -> list[ev.SecretRef]:
    return [ev.SecretRef(backend="kubernetes", namespace=f"tenant-{slug}", name="wazuh-bootstrap",
                         key="admin_password", purpose="wazuh-bootstrap"),
            ev.SecretRef(backend="kubernetes", namespace="soctalk-system", name="tenant-x-llm", key="api_key",
                         purpose="llm")]


@dataclass
class Provisioner:
    """The provisioner process (restartable), the outbox relay, the clock, and probes into Postgres."""

    settings: Settings
    uow: UnitOfWorkFactory
    bus: Bus
    database_url: str
    clock: FakeClock = field(default_factory=FakeClock)
    own: ProvisionerSettings = field(default_factory=lambda: RETRY)
    process: ProvisionerProcess | None = None
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None
    _relay: OutboxRelay | None = None
    _relay_task: asyncio.Task[None] | None = None
    starts: int = 0

    @property
    def deps(self) -> Deps:
        assert self.process is not None
        return self.process.runtime.deps  # type: ignore[no-any-return]

    async def start(self) -> Provisioner:
        self.process = bootstrap(self.settings, uow=self.uow, bus=self.bus, clock=self.clock,
                                 provisioner=self.own)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.process.run(self._stop))
        if self._relay is None:
            self._relay = OutboxRelay(self.database_url, self.bus, sweep_s=0.2)
            self._relay_task = asyncio.create_task(self._relay.run())
        process = self.process
        await eventually(self._started(process), timeout=15, what="the provisioner consuming")
        self.starts += 1
        return self

    def _started(self, process: ProvisionerProcess):  # type: ignore[no-untyped-def]
        async def probe() -> bool:
            if self._task is not None and self._task.done():
                self._task.result()  # surface a start-up failure
            return process.bound_port is not None and process.runtime.broker is not None
        return probe

    async def stop(self) -> None:
        """Graceful stop (SIGTERM): stop pulling, drain in-flight messages, stop the timer loop."""
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, 30)
        self.process = self._task = self._stop = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._relay is not None and self._relay_task is not None:
            self._relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay_task, 10)

    # -- driving ------------------------------------------------------------------------------------
    async def publish(self, event: ev.Event) -> ev.Event:
        await self.bus.publish(event.subject, event.model_dump_json().encode(), msg_id=str(event.event_id))
        return event

    async def request(self, cfg: dict[str, Any] | None = None, *, request_id: str | None = None,
                      tenant_id: uuid.UUID | None = None) -> ev.TenantRequested:
        rid = request_id or f"req-{uuid.uuid4().hex[:8]}"
        event = ev.TenantRequested(tenant_id=tenant_id or uuid.uuid4(), request_id=rid,
                                   config=cfg or tenant_config())
        await self.publish(event)
        return event

    async def handle(self, event: ev.Event) -> None:
        """Run the route's handler directly (focused tests: no bus), bound to the message like the runtime."""
        deps = self.deps if self.process is not None else Deps(settings=self.settings, clock=self.clock,
                                                               retry=self.own.retry_policy())
        await ROUTES[event.event_type](event, Ctx(uow=self.uow.bind(f"provisioner--{event.event_type}",
                                                                    event.event_id), deps=deps))

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def fire(self) -> int:
        """Fire due timers now, as the periodic task does (focused tests)."""
        deps = self.deps if self.process is not None else Deps(settings=self.settings, clock=self.clock,
                                                               retry=self.own.retry_policy())
        return await timeouts.fire(self.uow, deps)

    # -- observing ----------------------------------------------------------------------------------
    async def tenant(self, tenant_id: uuid.UUID) -> m.Tenant | None:
        async with self.uow.sessionmaker() as s:
            return await s.get(m.Tenant, tenant_id)

    async def state(self, tenant_id: uuid.UUID) -> str | None:
        t = await self.tenant(tenant_id)
        return t.state if t is not None else None

    async def wait_state(self, tenant_id: uuid.UUID, state: str | None,
                         within: float = 10) -> m.Tenant | None:
        async def probe() -> bool:
            return await self.state(tenant_id) == state
        await eventually(probe, timeout=within, what=f"tenant {tenant_id} {state}")
        return await self.tenant(tenant_id)

    async def lifecycle(self, tenant_id: uuid.UUID, type_: str | None = None) -> list[m.TenantLifecycleEvent]:
        stmt = select(m.TenantLifecycleEvent).where(m.TenantLifecycleEvent.tenant_id == tenant_id)
        if type_ is not None:
            stmt = stmt.where(m.TenantLifecycleEvent.type == type_)
        async with self.uow.sessionmaker() as s:
            return list((await s.execute(stmt.order_by(m.TenantLifecycleEvent.id))).scalars())

    async def wait_lifecycle(self, tenant_id: uuid.UUID, type_: str, n: int = 1,
                             within: float = 10) -> list[m.TenantLifecycleEvent]:
        async def probe() -> list[m.TenantLifecycleEvent] | None:
            rows = await self.lifecycle(tenant_id, type_)
            return rows if len(rows) >= n else None
        return await eventually(probe, timeout=within, what=f"{n} {type_} lifecycle event(s)")

    async def emitted(self, tenant_id: uuid.UUID, event_type: str) -> list[ev.Event]:
        """Events the provisioner put in the outbox for the tenant (in commit order)."""
        async with self.uow.sessionmaker() as s:
            rows = (await s.execute(select(m.Outbox.payload).where(
                m.Outbox.event_type == event_type, m.Outbox.subject.contains(str(tenant_id)))
                .order_by(m.Outbox.id))).scalars()
            return [ev.parse_event(bytes(p)) for p in rows]

    async def wait_emitted(self, tenant_id: uuid.UUID, event_type: str, n: int = 1,
                           within: float = 10) -> list[ev.Event]:
        async def probe() -> list[ev.Event] | None:
            found = await self.emitted(tenant_id, event_type)
            return found if len(found) >= n else None
        return await eventually(probe, timeout=within, what=f"{n} {event_type} emitted")

    async def count(self, model: Any, tenant_id: uuid.UUID) -> int:
        async with self.uow.sessionmaker() as s:
            return int((await s.execute(select(func.count()).select_from(model)
                                        .where(model.tenant_id == tenant_id))).scalar_one())

    async def seed(self, state: str, *, completed: list[str] | None = None, slug: str | None = None,
                   chart_version: str = "v1.1.0", **fields: Any) -> m.Tenant:
        """A tenant row in ``state`` (as if it got there through the flow), for focused tests."""
        slug = slug or f"t{uuid.uuid4().hex[:10]}"
        steps = completed if completed is not None else ["validate", "secrets", "chart", "activate"]
        tenant = m.Tenant(
            id=uuid.uuid4(), mssp_id=self.settings.mssp_id, install_id=self.settings.install_id, slug=slug,
            request_id=f"req-{slug}", display_name=slug, state=state, profile="small-dev",
            chart_version=chart_version,
            secrets_backend="kubernetes", config=tenant_config(slug), llm_key_source={"sealed": SEALED},
            completed_steps=steps, **({"attempts": 0} | fields))
        async with self.uow() as tx:
            tx.session.add(tenant)
            if "secrets" in steps:  # as on_secrets_ready records it: a resume of the chart step re-sends it
                done = ev.SecretsReady(tenant_id=tenant.id, namespace=f"tenant-{slug}",
                                       references=secret_refs(slug))
                tx.lifecycle(done, "StepCompleted", slug=slug, step="secrets",
                             details={"namespace": done.namespace,
                                      "references": [r.model_dump(mode="json") for r in done.references]})
            await tx.commit()
        return tenant


def make_settings(nats_url: str, database_url: str, **overrides: Any) -> Settings:
    return Settings().model_copy(update={
        "nats_url": nats_url, "database_url": database_url, "timer_poll_s": 0.05, "http_port": 0,
        "max_deliver": 20, "retry_base_delay_s": 0.05, "retry_max_delay_s": 0.2, "system_version": "v1.1.0",
        "default_tenant_chart_version": "v1.1.0", "decommission_grace_s": None, "retention_s": None,
        **overrides})


@pytest.fixture
async def prov(bus: Bus, uow: UnitOfWorkFactory, nats_url: str, database_url: str):  # type: ignore[no-untyped-def]
    """A started provisioner; ``prov.restart()`` replaces the process, the database and bus stay."""
    p = Provisioner(make_settings(nats_url, database_url), uow, bus, database_url)
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def idle(uow: UnitOfWorkFactory, database_url: str):  # type: ignore[no-untyped-def]
    """Not started, no bus: handlers are called directly (the compatibility table synced as at start)."""
    p = Provisioner(make_settings("nats://unused:4222", database_url), uow, None, database_url)  # type: ignore[arg-type]
    from soctalk_common.compat import load_compatibility

    await compatibility.sync(uow, load_compatibility(p.settings.compatibility_file))
    yield p
    await p.close()


# ---------------------------------------------------------------------------------------------------
# start-up
# ---------------------------------------------------------------------------------------------------

async def _matrix(uow: UnitOfWorkFactory) -> set[tuple[str, str, str]]:
    async with uow.sessionmaker() as s:
        rows = (await s.execute(select(m.ChartCompatibility))).scalars()
        return {(r.soctalk_system_version, r.tenant_chart_version, r.status) for r in rows}


async def test_start_syncs_the_matrix_idempotently_and_drops_pairs_no_longer_listed(
        bus: Bus, uow: UnitOfWorkFactory, nats_url: str, database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with uow() as tx:
        tx.session.add(m.ChartCompatibility(soctalk_system_version="v0.9.0", tenant_chart_version="v0.9.0",
                                            status="supported"))
        tx.session.add(m.ChartCompatibility(soctalk_system_version="v1.1.0", tenant_chart_version="v1.0.0",
                                            status="blocked", notes="stale"))
        await tx.commit()
    p = Provisioner(make_settings(nats_url, database_url), uow, bus, database_url)
    await p.start()
    try:
        expected = {("v1.0.0", "v1.0.0", "supported"), ("v1.0.1", "v1.0.0", "supported"),
                    ("v1.0.1", "v1.0.1", "supported"), ("v1.1.0", "v1.0.0", "deprecated"),
                    ("v1.1.0", "v1.0.1", "supported"), ("v1.1.0", "v1.1.0", "supported")}
        assert await _matrix(uow) == expected
        await p.restart()  # a second start (or a second replica) changes nothing
        assert await _matrix(uow) == expected
        # the file changes: the table follows, pairs gone from the file are gone from the table
        changed = tmp_path / "compatibility.yaml"
        changed.write_text("- system: v1.1.0\n  tenant:\n    - version: v1.1.0\n      status: supported\n"
                           "    - version: v1.0.1\n      status: blocked\n      notes: CVE\n")
        await p.stop()
        p.settings = p.settings.model_copy(update={"compatibility_file": changed})
        await p.start()
        assert await _matrix(uow) == {("v1.1.0", "v1.1.0", "supported"), ("v1.1.0", "v1.0.1", "blocked")}
        async with uow.sessionmaker() as s:
            assert (await compatibility.can_upgrade(s, "v1.1.0", "v1.0.0")).status == "blocked"  # now unknown
            assert (await compatibility.can_upgrade(s, "1.1.0", "1.1.0")).status == "supported"
    finally:
        await p.close()


async def test_routes_are_the_documented_consumers_and_health_answers(prov: Provisioner) -> None:
    import aiohttp

    assert prov.process is not None
    assert sorted(prov.process.runtime.routes) == sorted(CONSUMES["provisioner"])
    url = f"http://127.0.0.1:{prov.process.bound_port}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200 and (await resp.json())["ready"] is True
