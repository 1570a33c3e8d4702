"""Building and sending upstream commands (used by the HTTP API and the CLI alike).

Commands are published straight to JetStream and confirmed by the PubAck (``Nats-Msg-Id`` = event id,
so a client retrying the same command is deduplicated). They are the *input* of the system; every
effect they cause goes through a service's transaction and the outbox.
"""

from __future__ import annotations

import json
import uuid
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from soctalk_common import events as ev
from soctalk_common.bus import Bus
from soctalk_common.errors import ValidationFailed
from soctalk_common.settings import REPO_ROOT, SOCTALK_NS

TENANT_CONFIG_SCHEMA = REPO_ROOT / "schemas" / "tenant-config.schema.json"


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = json.loads(TENANT_CONFIG_SCHEMA.read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate_tenant_config(config: Any, *, prefix: str = "$") -> list[tuple[str, str]]:
    """JSON-Schema errors as ``(json_path, message)``; empty when valid. Same schema as the provisioner."""
    errors = []
    for err in sorted(_validator().iter_errors(config), key=lambda e: list(e.absolute_path)):
        path = prefix + err.json_path[1:]
        errors.append((path, _message(err)))
    return errors


def _message(err: Any) -> str:
    # jsonschema echoes the offending instance; for a key that may hold material, do not.
    if err.validator in ("pattern", "const", "enum", "format", "type") and isinstance(err.instance, str):
        return f"{err.validator} check failed ({err.validator_value!r})" if err.validator != "type" else (
            f"expected {err.validator_value}")
    return str(err.message)[:300]


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
