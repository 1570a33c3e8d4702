"""The helm-runner's composition root: ``bootstrap(settings, *, uow, bus, kube, helm, clock=None)``.

Nothing connects here; the caller owns the bus, the database engine and both gateways. The returned
process, when run, consumes the five routed events (one durable consumer each) and runs four loops:

* ``helm-runner-watch`` — closes recorded operations (every ``watch_interval_s``, and at once when
  a handler records a new one);
* ``helm-runner-drift`` — the round-trip drift check of the tenants that are due (every
  ``drift_tick_s``; each tenant every ``drift_interval_s``) and vanished-namespace detection;
* ``helm-runner-timers`` — fires due ``helm-ns-missing`` timers (every ``timer_poll_s``);
* ``helm-runner-prune`` — deletes finished release operations older than ``operation_retention_s``
  (every ``prune_interval_s``; the lifecycle stream keeps their history).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from soctalk_common.bus import Bus
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.runtime import ServiceRuntime
from soctalk_common.service import PeriodicTask, ServiceProcess
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_helm_runner import records
from soctalk_helm_runner.deps import Deps, HelmPort, HelmRunnerSettings
from soctalk_helm_runner.handlers import ROUTES
from soctalk_helm_runner.monitor import Monitor
from soctalk_helm_runner.watcher import WakeableTask, Watcher

SERVICE = "helm-runner"
log = structlog.get_logger(__name__)


async def prune(d: Deps) -> int:
    """Finished release operations past the retention, in batches until none is left."""
    before = d.clock.now() - timedelta(seconds=d.own.operation_retention_s)
    total = 0
    while (n := await records.prune_operations(d.uow, before=before)) > 0:
        total += n
    if total:
        log.info("operations.pruned", count=total, before=before.isoformat())
    return total


def bootstrap(settings: Settings, *, uow: UnitOfWorkFactory, bus: Bus, kube: Any, helm: HelmPort,
              clock: Clock | None = None, own: HelmRunnerSettings | None = None,
              holder: str | None = None) -> ServiceProcess:
    """``holder`` names this replica in lease rows (default ``helm-runner``; tests run two)."""
    own = own or HelmRunnerSettings()
    deps = Deps(settings=settings, helm=helm, kube=kube, uow=uow, own=own, clock=clock or SystemClock(),
                holder=holder or SERVICE)
    runtime: ServiceRuntime[Deps] = ServiceRuntime(
        SERVICE, bus=bus, uow=uow, deps=deps, max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s, retry_base_s=settings.retry_base_delay_s,
        retry_cap_s=settings.retry_max_delay_s)
    for event_type, handler in ROUTES.items():
        runtime.route(event_type, handler)
    watcher, monitor = Watcher(deps), Monitor(deps)
    tasks = [
        WakeableTask("helm-runner-watch", watcher.tick, own.watch_interval_s, wake=deps.wake),
        PeriodicTask("helm-runner-drift", monitor.round, own.drift_tick()),
        PeriodicTask("helm-runner-timers", monitor.fire_timers, settings.timer_poll_s),
        PeriodicTask("helm-runner-prune", lambda: prune(deps), own.prune_interval_s),
    ]
    return ServiceProcess(SERVICE, runtime, settings.nats_url, tasks=tasks, http_port=settings.http_port)
