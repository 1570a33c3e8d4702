"""Building and sending upstream commands (used by the HTTP API and the CLI alike).

Commands are published straight to JetStream and confirmed by the PubAck (``Nats-Msg-Id`` = event id,
so a client retrying the same command is deduplicated). They are the *input* of the system; every
effect they cause goes through a service's transaction and the outbox.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.errors import ValidationFailed
from soctalk_common.settings import SOCTALK_NS
from soctalk_provisioner.validation import TenantConfigValidator


@lru_cache(maxsize=1)
def _validator() -> TenantConfigValidator:
    return TenantConfigValidator.load()


def validate_tenant_config(config: Any, *, prefix: str = "$") -> list[tuple[str, str]]:
    """The provisioner's own validation (schema + semantic rules), so the API refuses exactly what the
    provisioner would; messages never echo the offending value. Paths are re-rooted at ``prefix``."""
    return [(prefix + e.path[1:], e.message) for e in _validator().errors(config)]


def tenant_id_for(request_id: str) -> uuid.UUID:
    """Deterministic: the same request id always names the same tenant (idempotent requests)."""
    return uuid.uuid5(SOCTALK_NS, f"tenant-request:{request_id}")


def tenant_requested(config: dict[str, Any], request_id: str | None = None) -> ev.TenantRequested:
    errors = validate_tenant_config(config, prefix="$.config")
    if errors:
        raise ValidationFailed(errors)
    rid = request_id or f"req-{uuid.uuid4()}"
    return ev.TenantRequested(tenant_id=tenant_id_for(rid), request_id=rid, config=config)


async def send(bus: Bus, event: ev.Event) -> int:
    return await bus.publish(event.subject, event.model_dump_json().encode(), msg_id=str(event.event_id))
