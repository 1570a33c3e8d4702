"""Composition root of the heartbeat service. Nothing connects here; ``__main__`` does.

``bootstrap(...)`` returns a :class:`~soctalk_common.service.ServiceProcess` running:

* the ``ChartApplied`` route on the generic runtime (durable ``heartbeat--ChartApplied``, inbox);
* ``heartbeat-consumer``: the batched core-NATS queue subscription (see consumer.py: never stored;
  a bounded pending buffer, drops counted in ``soctalk_heartbeat_dropped_total``);
* ``heartbeat-flush``: the batched ``last_seen`` write, every ``settings.heartbeat_flush_s``
  (``tenants.last_heartbeat_at`` at most once per ``settings.heartbeat_tenant_touch_s`` per tenant);
* ``heartbeat-liveness``: the silence sweep (TenantDegraded);
* ``token-cache-refresh``: every ``token_refresh_s`` (≈1 s) reloads the cached tokens/tenant states the
  LISTEN connection cannot vouch for (all of them while it is down), which bounds how long a
  revocation or decommission can go unseen;
* ``POST /v1/heartbeat/{tenant_id}`` next to /healthz /readyz /metrics.

``process.runtime.deps`` is the :class:`~soctalk_heartbeat.handlers.HeartbeatDeps` (tests and the CLI
reach the cache, buffer and metrics there).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from soctalk_common.bus import Bus
from soctalk_common.clock import Clock, SystemClock
from soctalk_common.errors import PermanentError
from soctalk_common.logging import register_secret
from soctalk_common.notify import PgListener
from soctalk_common.runtime import ServiceRuntime
from soctalk_common.service import PeriodicTask, ServiceProcess
from soctalk_common.settings import Settings
from soctalk_common.uow import UnitOfWorkFactory

from soctalk_heartbeat import handlers
from soctalk_heartbeat.consumer import MAX_PENDING_BYTES, MAX_PENDING_MSGS, HeartbeatConsumer
from soctalk_heartbeat.handlers import HeartbeatConfig, HeartbeatDeps
from soctalk_heartbeat.http import routes
from soctalk_heartbeat.intake import Intake
from soctalk_heartbeat.memory import TenantTouches
from soctalk_heartbeat.metrics import HeartbeatMetrics
from soctalk_heartbeat.tokens import TokenCache

SERVICE = "heartbeat"


def signing_key(settings: Settings) -> bytes:
    """The adapter token HMAC key (``SOCTALK_TOKEN_HASH_KEY``, from ``soctalk-adapter-signing-key``)."""
    if not settings.token_hash_key:
        raise PermanentError("SOCTALK_TOKEN_HASH_KEY is not set: mount soctalk-adapter-signing-key")
    register_secret(settings.token_hash_key)
    return settings.token_hash_key.encode("utf-8")


def bootstrap(settings: Settings, *, uow: UnitOfWorkFactory, bus: Bus, clock: Clock | None = None,
              kube: Any = None, helm: Any = None, vault: Any = None, http_host: str = "127.0.0.1",
              token_refresh_s: float = 1.0, liveness_check_s: float | None = None,
              batch_size: int = 500, fetch_timeout_s: float = 1.0,
              max_pending_msgs: int = MAX_PENDING_MSGS, max_pending_bytes: int = MAX_PENDING_BYTES,
              ) -> ServiceProcess:
    """Build the heartbeat service. ``liveness_check_s`` defaults to a third of an interval (≤ 10 s);
    ``max_pending_*`` bound the heartbeats received and not yet handled (see consumer.py)."""
    registry = CollectorRegistry()
    config = HeartbeatConfig(key=signing_key(settings), interval_s=settings.heartbeat_interval_s,
                             missed_intervals=settings.heartbeat_missed_intervals,
                             flush_s=settings.heartbeat_flush_s)
    deps = HeartbeatDeps(config=config, clock=clock or SystemClock(), uow=uow,
                         tokens=TokenCache(uow.sessionmaker, max_age_s=max(3.0, 3 * token_refresh_s),
                                           refresh_s=token_refresh_s),
                         metrics=HeartbeatMetrics(registry),
                         touches=TenantTouches(settings.heartbeat_tenant_touch_s))
    runtime: ServiceRuntime[HeartbeatDeps] = ServiceRuntime(
        SERVICE, bus=bus, uow=uow, deps=deps, max_deliver=settings.max_deliver,
        ack_wait_s=settings.ack_wait_s, retry_base_s=settings.retry_base_delay_s,
        retry_cap_s=settings.retry_max_delay_s)
    runtime.route("ChartApplied", handlers.on_chart_applied)
    intake = Intake(deps)
    consumer = HeartbeatConsumer(bus, intake, batch=batch_size, fetch_timeout_s=fetch_timeout_s,
                                 ack_wait_s=settings.ack_wait_s, max_pending_msgs=max_pending_msgs,
                                 max_pending_bytes=max_pending_bytes)
    liveness_s = liveness_check_s or min(10.0, settings.heartbeat_interval_s / 3)

    async def final_flush() -> None:
        await handlers.flush(deps)

    listener = PgListener(uow.sessionmaker.kw["bind"].url.render_as_string(hide_password=False), {
        "soctalk_token_changed": deps.tokens.invalidate_token,
        "soctalk_tenant_changed": deps.tokens.invalidate_tenant,
    })
    # While the listener works (its pings come back), the refresh re-reads nothing it has vouched for.
    deps.tokens.coverage = listener.coverage

    return ServiceProcess(
        SERVICE, runtime, settings.nats_url, registry=registry, http_host=http_host,
        http_port=settings.http_port, http_routes=routes(intake),
        tasks=[
            PeriodicTask("heartbeat-consumer", consumer.pull_once, 0),
            PeriodicTask("heartbeat-flush", lambda: handlers.flush(deps), settings.heartbeat_flush_s),
            PeriodicTask("heartbeat-liveness", lambda: handlers.degrade_silent(deps), liveness_s),
            PeriodicTask("token-cache-refresh", deps.tokens.refresh, token_refresh_s),
            PeriodicTask("token-invalidation", listener.tick, 1.0),  # LISTEN + ping; reconnects after a loss
        ],
        on_stop=[listener.close, consumer.close, final_flush],
    )
