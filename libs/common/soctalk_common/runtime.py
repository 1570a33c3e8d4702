"""Consumer runtime: durable JetStream pull consumers (FastStream) in front of plain async handlers.

The FastStream subscriber only translates (bytes → ``process``). ``process`` is the one place that maps
outcomes to broker actions, so handlers never ack, retry or publish themselves:

=============================  ===============================================================
outcome                        action
=============================  ===============================================================
handler returned               inbox row committed with the effects (or alone), ``ack``
already in the inbox           ``ack`` (redelivery or another replica did it), no second effect
``TemporaryError`` / unknown   ``nak(delay)``: exponential backoff with jitter, up to MaxDeliver
``PermanentError``             ``term`` + DLQ copy with the reason + lifecycle event for the tenant
last delivery failed           same as permanent
malformed / unknown / too big  ``term`` + DLQ; a payload error with a readable tenant id also gets a
                               ``EventRejected`` lifecycle event naming the fields
=============================  ===============================================================

What handlers can rely on: each message's effects commit at most once (inbox in the same transaction);
a handler runs again only if it did not commit; handlers must keep outside side effects idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from soctalk_common import events as ev
from soctalk_common.bus import DLQ_STREAM, EVENTS_STREAM, MAX_PAYLOAD, Bus, stream_for_subject
from soctalk_common.errors import PermanentError
from soctalk_common.logging import bind_event_context
from soctalk_common.redact import redact, scrub_patterns
from soctalk_common.uow import AlreadyProcessed, UnitOfWorkFactory

log = structlog.get_logger(__name__)

D = TypeVar("D")


@dataclass
class Ctx(Generic[D]):
    """What a handler gets besides its event: a unit-of-work factory bound to this message, and ports."""

    uow: UnitOfWorkFactory
    deps: D
    attempt: int = 1
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Any, Ctx[Any]], Awaitable[None]]


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): uniform(0, min(cap, base·2^(n-1)))."""
    r = rng or random
    return r.uniform(base / 2, min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass
class Route:
    event_type: str
    handler: Handler
    consumer: str


class ServiceRuntime(Generic[D]):
    """Routes for one service plus the machinery to run them on JetStream."""

    def __init__(self, service: str, *, bus: Bus, uow: UnitOfWorkFactory, deps: D, max_deliver: int = 8,
                 ack_wait_s: float = 30.0, retry_base_s: float = 0.5, retry_cap_s: float = 30.0,
                 batch_size: int = 16, pull_timeout_s: float = 1.0) -> None:
        self.service = service
        self.bus = bus
        self.uow = uow
        self.deps = deps
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.batch_size = batch_size
        self.pull_timeout_s = pull_timeout_s
        self.routes: dict[str, Route] = {}
        self.broker: NatsBroker | None = None
        self.counters: dict[str, int] = {"processed": 0, "duplicates": 0, "dead_lettered": 0, "retried": 0}
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def route(self, event_type: str, handler: Handler) -> None:
        if event_type not in ev.CATALOG:
            raise ValueError(f"unknown event type {event_type}")
        self.routes[event_type] = Route(event_type, handler, consumer=f"{self.service}--{event_type}")

    # -- transport -------------------------------------------------------------------------------
    def build_broker(self, nats_url: str) -> NatsBroker:
        # FastStream's per-message INFO lines go to a stdlib logger at DEBUG (filtered; ours are structured).
        broker = NatsBroker(nats_url, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            logger=logging.getLogger("soctalk.faststream"), log_level=logging.DEBUG)
        for r in self.routes.values():
            subject = ev.subject_filter(r.event_type)
            stream = stream_for_subject(subject.replace("*", "x"))

            def make(route: Route) -> Callable[[NatsMessage], Awaitable[None]]:
                async def subscriber(msg: NatsMessage) -> None:
                    await self.process(route, msg.raw_message)

                subscriber.__name__ = f"on_{route.event_type}"
                subscriber.__doc__ = ev.CATALOG[route.event_type].__doc__
                return subscriber

            broker.subscriber(
                subject,
                stream=JStream(stream, declare=False),
                durable=r.consumer,
                config=ConsumerConfig(ack_wait=self.ack_wait_s, max_deliver=self.max_deliver,
                                      max_ack_pending=1000),
                pull_sub=PullSub(batch_size=self.batch_size, timeout=self.pull_timeout_s),
                ack_policy=AckPolicy.MANUAL,  # FastStream's NATS default would drop failed messages
                title=f"{self.service}:{r.event_type}",
            )(make(r))
        self.broker = broker
        return broker

    async def start(self, nats_url: str) -> None:
        broker = self.build_broker(nats_url)
        await broker.start()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop pulling, then wait for in-flight messages to finish (graceful shutdown)."""
        if self.broker is not None:
            for sub in self.broker.subscribers:
                with contextlib.suppress(Exception):
                    await sub.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain_timeout)
            await self.broker.stop()
            self.broker = None

    # -- the one place outcomes become broker actions ----------------------------------------------
    async def process(self, route: Route, raw: Any) -> None:
        self.in_flight += 1
        self._idle.clear()
        try:
            await self._process(route, raw)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _process(self, route: Route, raw: Any) -> None:
        attempt = int(raw.metadata.num_delivered) if raw.metadata else 1
        body: bytes = raw.data or b""
        if len(body) > MAX_PAYLOAD:
            await self._dead_letter(route, raw, f"payload too large: {len(body)} bytes > {MAX_PAYLOAD}", attempt)
            return
        try:
            event = ev.parse_event(body, expected=route.event_type)
        except ValidationError as exc:
            errors = [{"path": _json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
            await self._reject_payload(route, raw, body, errors, attempt)
            return
        except (ValueError, ev.UnknownEventType) as exc:  # JSONDecodeError is a ValueError
            await self._dead_letter(route, raw, f"malformed message: {str(exc)[:300]}", attempt)
            return

        with bind_event_context(event, consumer=route.consumer):
            if await self._seen(route.consumer, event.event_id):
                self.counters["duplicates"] += 1
                await raw.ack()
                return
            ctx: Ctx[D] = Ctx(uow=self.uow.bind(route.consumer, event.event_id), deps=self.deps,
                              attempt=attempt, headers=dict(raw.headers or {}))
            keepalive = asyncio.create_task(self._keepalive(raw))
            try:
                await route.handler(event, ctx)
                if not ctx.uow.inbox_recorded:
                    await self._record_inbox(route.consumer, event.event_id)
            except AlreadyProcessed:
                self.counters["duplicates"] += 1
                await raw.ack()
                return
            except PermanentError as exc:
                await self._fail(route, raw, event, f"{type(exc).__name__}: {exc}", attempt)
                return
            except Exception as exc:  # noqa: BLE001 - classified below; never dropped
                if attempt >= self.max_deliver:
                    await self._fail(route, raw, event, f"gave up after {attempt} deliveries: "
                                     f"{type(exc).__name__}: {str(exc)[:300]}", attempt)
                    return
                delay = getattr(exc, "delay", None) or backoff_delay(
                    attempt, base=self.retry_base_s, cap=self.retry_cap_s)
                log.warning("handler.retry", error=type(exc).__name__, detail=str(exc)[:300], attempt=attempt,
                            delay_s=round(delay, 3))
                self.counters["retried"] += 1
                await raw.nak(delay=delay)
                return
            finally:
                keepalive.cancel()
            self.counters["processed"] += 1
            await raw.ack()

    async def _keepalive(self, raw: Any) -> None:
        # Long handlers (Helm calls) tell JetStream they are alive instead of being redelivered mid-work.
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(self.ack_wait_s / 3)
                await raw.in_progress()

    async def _seen(self, consumer: str, event_id: uuid.UUID) -> bool:
        return await self.uow.seen(consumer, event_id)

    async def _record_inbox(self, consumer: str, event_id: uuid.UUID) -> None:
        await self.uow.record_inbox(consumer, event_id)

    async def _fail(self, route: Route, raw: Any, event: ev.Event, reason: str, attempt: int) -> None:
        log.error("handler.failed", reason=reason[:500], attempt=attempt)
        async with self.uow() as tx:
            tx.lifecycle(event, "MessageDeadLettered", step=route.consumer, message=reason[:1000],
                         details={"event_type": event.event_type, "attempt": attempt})
            await tx.commit()
        await self._dead_letter(route, raw, reason, attempt)

    async def _reject_payload(self, route: Route, raw: Any, body: bytes, errors: list[dict[str, str]],
                              attempt: int) -> None:
        reason = "invalid payload: " + "; ".join(f"{e['path']}: {e['message']}" for e in errors)[:900]
        tenant_id = _tenant_id_of(body, raw.subject)
        if tenant_id is not None:
            cause = ev.TenantRetryRequested(tenant_id=tenant_id)  # a neutral envelope to hang the event on
            async with self.uow() as tx:
                tx.lifecycle(cause, "EventRejected", step=route.consumer, message=reason,
                             details={"event_type": route.event_type, "errors": errors})
                await tx.commit()
        await self._dead_letter(route, raw, reason, attempt)

    async def _dead_letter(self, route: Route, raw: Any, reason: str, attempt: int) -> None:
        self.counters["dead_lettered"] += 1
        seq = raw.metadata.sequence.stream if raw.metadata else None
        data: bytes = raw.data or b""
        original: Any
        if len(data) > 64 * 1024:
            original = {"truncated": True, "size": len(data),
                        "prefix": scrub_patterns(data[:1024].decode("utf-8", "replace"))}
        else:
            try:
                original = redact(json.loads(data))
            except Exception:  # noqa: BLE001 - not JSON: keep a bounded, scrubbed prefix only
                original = scrub_patterns(data[:4096].decode("utf-8", "replace"))
        record = {"consumer": route.consumer, "subject": raw.subject, "reason": reason, "attempt": attempt,
                  "stream_sequence": seq, "original": original}
        payload = json.dumps(record, default=str).encode()
        await self.bus.publish(f"soctalk.dlq.{route.consumer}", payload, msg_id=f"dlq:{route.consumer}:{seq}")
        log.warning("message.dead_lettered", reason=reason[:300], subject=raw.subject)
        await raw.term()


def _json_path(loc: tuple[Any, ...]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _tenant_id_of(body: bytes, subject: str) -> uuid.UUID | None:
    with contextlib.suppress(Exception):
        return uuid.UUID(str(json.loads(body)["tenant_id"]))
    with contextlib.suppress(Exception):
        return uuid.UUID(subject.split(".")[2])
    return None


__all__ = ["Ctx", "ServiceRuntime", "backoff_delay", "EVENTS_STREAM", "DLQ_STREAM"]
