"""Read the lifecycle stream: history first, then live — the engine behind ``soctalk events tail``.

An ordered (ephemeral, flow-controlled) JetStream consumer starting at ``since`` (or the beginning)
delivers stored history and then keeps delivering new messages without a gap or a duplicate between
the two phases. Without ``follow`` it stops once it has caught up with the stream's last message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from nats.js.api import ConsumerConfig, DeliverPolicy

from soctalk_common import events as ev
from soctalk_common.bus import LIFECYCLE_STREAM, Bus


def lifecycle_subject(tenant_id: uuid.UUID | None, type_: str | None) -> str:
    return f"soctalk.lifecycle.{tenant_id or '*'}.{type_ or '*'}"


async def tail_lifecycle(bus: Bus, *, tenant_id: uuid.UUID | None = None, type_: str | None = None,
                         since: datetime | None = None, follow: bool = False,
                         idle_timeout: float = 0.5) -> AsyncIterator[ev.TenantLifecycleEvent]:
    subject = lifecycle_subject(tenant_id, type_)
    info = await bus.js.stream_info(LIFECYCLE_STREAM)
    if not follow and info.state.messages == 0:
        return
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
                         opt_start_time=since.isoformat() if since else None)
    queue: asyncio.Queue = asyncio.Queue()

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        await queue.put(msg)

    sub = await bus.js.subscribe(subject, stream=LIFECYCLE_STREAM, ordered_consumer=True, config=cfg, cb=on_msg)
    try:
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), idle_timeout)
            except TimeoutError:
                if follow:
                    continue
                return  # nothing matching arrived: caught up
            event = ev.parse_event(msg.data)
            assert isinstance(event, ev.TenantLifecycleEvent)
            yield event
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()
