"""A stand-in tenant adapter for ``soctalk adapter simulate --tenant SLUG`` (and for tests).

``token_from_cluster(kube, slug)`` reads the token the real adapter mounts: Secret ``adapter-token``,
key ``token``, in namespace ``tenant-<slug>``. ``AdapterSimulator`` then heartbeats exactly as an
adapter does: ``AdapterHeartbeat`` on ``soctalk.adapter.<tenant_id>.heartbeat`` with
``Authorization: Bearer <token>`` in a header, every ``interval_s``.

The token is registered with the log scrubber and never logged, printed or put in a payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import structlog
from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.errors import NotFound
from soctalk_common.logging import register_secret
from soctalk_secrets.domain import tenant_namespace

log = structlog.get_logger(__name__)

TOKEN_SECRET = "adapter-token"
TOKEN_KEY = "token"
DEFAULT_COMPONENTS = ("wazuh", "thehive", "cortex")


class SecretReader(Protocol):
    """The part of the KubeGateway this module needs."""

    async def read_secret(self, namespace: str, name: str) -> Any: ...


async def token_from_cluster(kube: SecretReader, slug: str) -> str:
    """The tenant's adapter token from its cluster Secret. ``NotFound`` names what is missing."""
    namespace = tenant_namespace(slug)  # validates the slug
    record = await kube.read_secret(namespace, TOKEN_SECRET)
    if record is None:
        raise NotFound(f"secret {namespace}/{TOKEN_SECRET} not found")
    token = (record.data or {}).get(TOKEN_KEY)
    if not token or not token.strip():
        raise NotFound(f"secret {namespace}/{TOKEN_SECRET} has no key {TOKEN_KEY!r}")
    token = token.strip()
    register_secret(token)
    return token


class AdapterSimulator:
    """Heartbeats for one tenant. ``components`` maps a name to a status (``ok``/``degraded``/``down``/
    ``unknown``) or to ``(status, message)``; the overall status is the worst of them."""

    def __init__(self, nats_url: str, tenant_id: uuid.UUID | str, token: str, interval_s: float = 30.0, *,
                 components: Mapping[str, str | tuple[str, str]] | None = None,
                 adapter_version: str = "simulator-1.0.0", bus: Bus | None = None) -> None:
        self.nats_url = nats_url
        self.tenant_id = uuid.UUID(str(tenant_id))
        self.token = token
        register_secret(token)
        self.interval_s = interval_s
        self.adapter_version = adapter_version
        self.components: dict[str, ev.ComponentHealth] = {}
        for name, value in (components or dict.fromkeys(DEFAULT_COMPONENTS, "ok")).items():
            status, message = (value, "") if isinstance(value, str) else value
            self.set_component(name, status, message)
        self._bus = bus
        self._own_bus = bus is None
        self.sent = 0
        self.failures = 0

    def set_component(self, name: str, status: str, message: str = "") -> None:
        self.components[name] = ev.ComponentHealth(status=status, message=message)

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.components.values()}
        if "down" in statuses:
            return "down"
        if statuses & {"degraded", "unknown"}:
            return "degraded"
        return "ok"

    def heartbeat(self) -> ev.AdapterHeartbeat:
        return ev.AdapterHeartbeat(tenant_id=self.tenant_id, adapter_version=self.adapter_version,
                                   status=self.status, components=dict(self.components))

    async def beat_once(self) -> ev.AdapterHeartbeat:
        """Publish one heartbeat (core NATS, flushed: never stored, it carries the token); returns it."""
        if self._bus is None:
            self._bus = await Bus.connect(self.nats_url, name=f"adapter-simulator-{self.tenant_id}")
        hb = self.heartbeat()
        await self._bus.publish(hb.subject, hb.model_dump_json().encode(), msg_id=str(hb.event_id),
                                headers={"Authorization": f"Bearer {self.token}"})
        self.sent += 1
        return hb

    async def run(self, stop_event: asyncio.Event) -> None:
        """Heartbeat every ``interval_s`` until ``stop_event`` is set; a failed beat is logged and the
        next one tried on schedule (an adapter never gives up)."""
        try:
            while not stop_event.is_set():
                try:
                    await self.beat_once()
                except Exception as exc:  # noqa: BLE001 - NATS down: try again next interval
                    self.failures += 1
                    log.warning("simulator.beat_failed", tenant_id=str(self.tenant_id),
                                error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), self.interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._bus is not None and self._own_bus:
            await self._bus.close()
            self._bus = None
