"""The provisioner's composition root: ``bootstrap(settings, *, uow, bus, clock=None) -> ServiceProcess``.

Nothing connects here; the caller owns the bus and the database engine. The returned process, when run:
syncs ``compatibility.yaml`` into ``chart_compatibility`` (before consuming anything, so the gate never
answers from an empty table), starts one durable consumer per routed event, and polls the provisioner's
durable timers every ``settings.timer_poll_s`` with the injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from soctalk_common.bus import Bus
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.compat import load_compatibility
from soctalk_common.runtime import ServiceRuntime
from soctalk_common.service import PeriodicTask, ServiceProcess
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_provisioner import compatibility, timeouts
from soctalk_provisioner.deps import Deps, ProvisionerSettings
from soctalk_provisioner.handlers import ROUTES
from soctalk_provisioner.validation import TenantConfigValidator

log = structlog.get_logger(__name__)

SERVICE = "provisioner"


@dataclass
class ProvisionerProcess(ServiceProcess):
    """A ``ServiceProcess`` that runs ``before_start`` steps (the compatibility sync) before consuming."""

    before_start: list[Callable[[], Awaitable[object]]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event | None = None, *, install_signals: bool = False) -> None:
        for step in self.before_start:
            await step()
        await super().run(stop, install_signals=install_signals)


def bootstrap(settings: Settings, *, uow: UnitOfWorkFactory, bus: Bus, clock: Clock | None = None,
              provisioner: ProvisionerSettings | None = None) -> ProvisionerProcess:
    own = provisioner or ProvisionerSettings()
    deps = Deps(settings=settings, clock=clock or SystemClock(), retry=own.retry_policy(),
                validator=TenantConfigValidator.load(own.tenant_schema))
    runtime: ServiceRuntime[Deps] = ServiceRuntime(
        SERVICE, bus=bus, uow=uow, deps=deps, max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s, retry_base_s=settings.retry_base_delay_s,
        retry_cap_s=settings.retry_max_delay_s)
    for event_type, handler in ROUTES.items():
        # Every effect of a provisioner handler is in its unit of work, whose commit dedupes: no inbox
        # lookup before the handler (see ``Route.precheck``).
        runtime.route(event_type, handler, precheck=False)

    async def sync_compatibility() -> None:
        result = await compatibility.sync(uow, load_compatibility(settings.compatibility_file))
        log.info("compatibility.synced", path=str(settings.compatibility_file), pairs=result.upserted,
                 removed=result.removed)

    async def fire_timers() -> None:
        await timeouts.fire(uow, deps)

    return ProvisionerProcess(
        SERVICE, runtime, settings.nats_url, http_port=settings.http_port,
        tasks=[PeriodicTask("provisioner-timers", fire_timers, settings.timer_poll_s)],
        before_start=[sync_compatibility])
