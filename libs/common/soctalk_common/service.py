"""Running one service process: consumers, background loops, health and metrics, graceful shutdown.

Every service exposes ``/healthz`` (the process is alive), ``/readyz`` (its database and bus answer)
and ``/metrics`` (Prometheus). SIGTERM/SIGINT stop pulling new messages, let in-flight ones finish,
then stop the loops — so a rolling update never drops a message halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from sqlalchemy import text

from soctalk_common.runtime import ServiceRuntime

log = structlog.get_logger(__name__)

Loop = Callable[[], Awaitable[Any]]


@dataclass
class PeriodicTask:
    """Run ``fn`` every ``interval_s``; failures are logged and retried next tick, never fatal."""

    name: str
    fn: Loop
    interval_s: float
    runs: int = 0
    failures: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.fn()
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - a loop iteration must not kill the service
                self.failures += 1
                log.warning("periodic.failed", task=self.name, error=type(exc).__name__, detail=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)


class _RuntimeCollector:
    def __init__(self, runtime: ServiceRuntime[Any], extra: Callable[[], dict[str, float]] | None) -> None:
        self.runtime = runtime
        self.extra = extra

    def collect(self):  # type: ignore[no-untyped-def]
        c = CounterMetricFamily("soctalk_messages", "Messages by outcome", labels=["service", "outcome"])
        for outcome, n in self.runtime.counters.items():
            c.add_metric([self.runtime.service, outcome], n)
        yield c
        if self.extra:
            for name, value in self.extra().items():
                f = CounterMetricFamily(f"soctalk_{name}", name, labels=["service"])
                f.add_metric([self.runtime.service], value)
                yield f


@dataclass
class ServiceProcess:
    name: str
    runtime: ServiceRuntime[Any]
    nats_url: str
    tasks: list[PeriodicTask] = field(default_factory=list)
    extra_metrics: Callable[[], dict[str, float]] | None = None
    # All interfaces by default: kubelet probes and Prometheus reach the pod IP. The dev stack and tests
    # set SOCTALK_HTTP_HOST=127.0.0.1.
    http_host: str = field(default_factory=lambda: os.environ.get("SOCTALK_HTTP_HOST", "0.0.0.0"))  # noqa: S104
    http_port: int = 0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    http_routes: list[web.RouteDef] = field(default_factory=list)
    bound_port: int | None = None

    def __post_init__(self) -> None:
        self.registry.register(_RuntimeCollector(self.runtime, self.extra_metrics))  # type: ignore[arg-type]
        self.in_flight = Gauge("soctalk_in_flight", "Messages being handled", ["service"], registry=self.registry)

    async def _ready(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            async with self.runtime.uow.sessionmaker() as s:
                await s.execute(text("SELECT 1"))
            checks["postgres"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["postgres"] = type(exc).__name__
        checks["nats"] = "ok" if self.runtime.bus.nc.is_connected else "disconnected"
        return all(v == "ok" for v in checks.values()), checks

    def _app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "service": self.name})

        async def readyz(_: web.Request) -> web.Response:
            ok, checks = await self._ready()
            return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

        async def metrics(_: web.Request) -> web.Response:
            self.in_flight.labels(self.name).set(self.runtime.in_flight)
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        app = web.Application()
        app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics),
                        *self.http_routes])
        return app

    async def run(self, stop: asyncio.Event | None = None, *, install_signals: bool = False) -> None:
        stop = stop or asyncio.Event()
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.http_host, self.http_port)
        await site.start()
        self.bound_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        if self.runtime.routes:
            await self.runtime.start(self.nats_url)
        loops = [asyncio.create_task(t.run(stop), name=t.name) for t in self.tasks]
        log.info("service.started", service=self.name, http_port=self.bound_port,
                 consumers=sorted(r.consumer for r in self.runtime.routes.values()))
        await stop.wait()
        log.info("service.stopping", service=self.name, in_flight=self.runtime.in_flight)
        await self.runtime.stop()
        for t in loops:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(t, 10)
        for cb in self.on_stop:
            with contextlib.suppress(Exception):
                await cb()
        await runner.cleanup()
