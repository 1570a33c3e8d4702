"""NATS JetStream gateway: connection, stream layout and publishing with dedupe ids.

Stream layout and the duplicate window
--------------------------------------
* ``SOCTALK_EVENTS``   ``soctalk.tenant.>``      commands and step results (limits, 7 days)
* ``soctalk.adapter.>`` heartbeats are deliberately NOT in any stream: each carries its adapter's bearer
  token in a header, and a stream would store that credential (on disk, readable with ``nats stream
  view``). They travel on core NATS to a queue group; a lost heartbeat is healed by the next one.
* ``SOCTALK_LIFECYCLE`` ``soctalk.lifecycle.>``  the lifecycle stream ops tail (limits, 90 days)
* ``SOCTALK_AUDIT``    ``soctalk.audit.>``       secret audit, references only (limits, 400 days)
* ``SOCTALK_DLQ``      ``soctalk.dlq.>``         poison messages with their reason (limits, 30 days)

Dedupe has two layers. JetStream drops a re-publish with the same ``Nats-Msg-Id`` (= outbox row id)
inside ``duplicate_window`` (default 120 s); that covers the relay crashing between PubAck and marking
the row, since a standby takes over within 5 s. Consumers record ``(consumer, event_id)`` in the inbox,
kept 7 days, which covers every redelivery: AckWait (30 s) × MaxDeliver (8) = 240 s ≥ duplicate window
(120 s), and inbox lifetime (7 d) ≥ both. So: inbox lifetime ≥ AckWait × MaxDeliver ≥ duplicate window.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from soctalk_common.errors import Unavailable


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float


STREAMS = [
    StreamSpec("SOCTALK_EVENTS", ["soctalk.tenant.>"], 7 * 86400),
    StreamSpec("SOCTALK_LIFECYCLE", ["soctalk.lifecycle.>"], 90 * 86400),
    StreamSpec("SOCTALK_AUDIT", ["soctalk.audit.>"], 400 * 86400),
    StreamSpec("SOCTALK_DLQ", ["soctalk.dlq.>"], 30 * 86400),
]
EVENTS_STREAM = "SOCTALK_EVENTS"
ADAPTER_STREAM = "SOCTALK_ADAPTER"  # retired name: kept so a stream left by an older install is removed
EPHEMERAL_PREFIXES = ("soctalk.adapter.",)  # subjects that carry credentials: core NATS only, never stored
LIFECYCLE_STREAM = "SOCTALK_LIFECYCLE"
DLQ_STREAM = "SOCTALK_DLQ"
MAX_PAYLOAD = 256 * 1024  # our messages are small; anything bigger is refused before it reaches a handler


def stream_for_subject(subject: str) -> str:
    family = subject.split(".", 2)[1]
    return {"tenant": EVENTS_STREAM, "lifecycle": LIFECYCLE_STREAM, "audit": "SOCTALK_AUDIT",
            "dlq": DLQ_STREAM}[family]


class Bus:
    """A connected NATS client plus its JetStream context."""

    def __init__(self, nc: Client, *, replicas: int = 1, duplicate_window_s: float = 120.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.replicas = replicas
        self.duplicate_window_s = duplicate_window_s

    @classmethod
    async def connect(cls, url: str, *, name: str = "soctalk", connect_timeout: float = 2.0,
                      replicas: int = 1, duplicate_window_s: float = 120.0,
                      max_reconnect_attempts: int = -1) -> Bus:
        try:
            nc = await nats.connect(
                url, name=name, connect_timeout=connect_timeout, max_reconnect_attempts=max_reconnect_attempts,
                reconnect_time_wait=0.5, allow_reconnect=True,
            )
        except Exception as exc:  # noqa: BLE001 - nats raises several unrelated types here
            raise Unavailable(f"NATS at {url} unreachable: {type(exc).__name__}") from exc
        return cls(nc, replicas=replicas, duplicate_window_s=duplicate_window_s)

    async def ensure_streams(self) -> None:
        """Create or update the stream layout (idempotent; safe from every replica)."""
        with contextlib.suppress(Exception):  # an older layout stored heartbeats (and their tokens): drop it
            await self.js.delete_stream(ADAPTER_STREAM)
        for spec in STREAMS:
            cfg = StreamConfig(
                name=spec.name, subjects=spec.subjects, retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE, max_age=spec.max_age_s, num_replicas=self.replicas,
                duplicate_window=self.duplicate_window_s, discard=DiscardPolicy.OLD,
                max_msg_size=1024 * 1024 * 2,
            )
            try:
                await self.js.add_stream(cfg)
            except BadRequestError:
                with contextlib.suppress(BadRequestError):
                    await self.js.update_stream(cfg)

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None,
                      headers: dict[str, str] | None = None, timeout: float = 5.0) -> int:
        """Publish to JetStream and wait for the PubAck; returns the stream sequence.

        Credential-carrying subjects (``EPHEMERAL_PREFIXES``) go out on core NATS instead (flushed, never
        stored) and return 0."""
        if subject.startswith(EPHEMERAL_PREFIXES):
            await self.nc.publish(subject, payload, headers=headers)
            await self.nc.flush(timeout=timeout)
            return 0
        hdrs = dict(headers or {})
        if msg_id is not None:
            hdrs["Nats-Msg-Id"] = msg_id  # nats-py has no msg_id= argument
        ack = await self.js.publish(subject, payload, headers=hdrs or None, timeout=timeout)
        return int(ack.seq)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()


async def publish_batch(bus: Bus, items: list[tuple[str, bytes, str, dict[str, str] | None]],
                        *, timeout: float = 10.0) -> None:
    """Pipeline many publishes on one connection (order on the server = order sent) and wait for every
    PubAck. Raises ``Unavailable`` if any is missing, so the caller marks nothing and retries all."""
    import asyncio

    futures = []
    try:
        # One deadline for the whole batch (sending, then every PubAck): ``wait_stall`` per message
        # costs a task and a timer each, a third of the relay's CPU per event.
        async with asyncio.timeout(timeout):
            for subject, payload, msg_id, headers in items:
                hdrs = dict(headers or {})
                hdrs["Nats-Msg-Id"] = msg_id
                futures.append(await bus.js.publish_async(subject, payload, headers=hdrs))
            acks = await asyncio.gather(*futures)
    except Exception as exc:  # noqa: BLE001 - timeouts, no responders, API errors
        for f in futures:
            f.cancel()
        raise Unavailable(f"JetStream did not acknowledge a batch of {len(items)}: {type(exc).__name__}") from exc
    for ack in acks:
        if getattr(ack, "stream", None) is None:
            raise Unavailable(f"JetStream refused a publish: {ack!r}")
