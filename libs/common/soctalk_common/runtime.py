"""Consumer runtime: durable JetStream pull consumers in front of plain async handlers.

Each route has one durable pull consumer read by a fetch loop (:class:`_PullLoop`), which only hands
messages to ``process``. ``process`` is the one place that maps outcomes to broker actions, so handlers
never ack, retry or publish themselves:

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
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats
import structlog
from nats.aio.client import Client as NatsClient
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
    #: Look the message up in the inbox before running the handler. A handler whose effects are all in
    #: its unit of work may skip it (``precheck=False``): a redelivered message is then decided again,
    #: its commit finds the inbox row and rolls everything back (``AlreadyProcessed`` → ack), so the
    #: outcome is the same and first deliveries save a round trip. Handlers with outside side effects
    #: (Kubernetes, Helm, Vault) keep it.
    precheck: bool = True


class ServiceRuntime(Generic[D]):
    """Routes for one service plus the machinery to run them on JetStream."""

    def __init__(self, service: str, *, bus: Bus, uow: UnitOfWorkFactory, deps: D, max_deliver: int = 8,
                 ack_wait_s: float = 30.0, retry_base_s: float = 0.5, retry_cap_s: float = 30.0,
                 batch_size: int = 16, pull_timeout_s: float = 5.0) -> None:
        self.service = service
        self.bus = bus
        self.uow = uow
        self.deps = deps
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.batch_size = batch_size
        # How long one pull request waits on the server for messages. A message that arrives is
        # delivered at once whatever this is; it only sets how often an idle consumer asks again
        # (two requests per expiry per route: 1 s cost the provisioner's 17 idle routes ~9 ms CPU/s).
        self.pull_timeout_s = pull_timeout_s
        self.routes: dict[str, Route] = {}
        self.broker: NatsClient | None = None  # the consumers' NATS connection while started
        self._loops: list[_PullLoop] = []
        self._stopping = False
        self.counters: dict[str, int] = {"processed": 0, "duplicates": 0, "dead_lettered": 0, "retried": 0}
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def route(self, event_type: str, handler: Handler, *, precheck: bool = True) -> None:
        if event_type not in ev.CATALOG:
            raise ValueError(f"unknown event type {event_type}")
        self.routes[event_type] = Route(event_type, handler, consumer=f"{self.service}--{event_type}",
                                        precheck=precheck)

    # -- transport -------------------------------------------------------------------------------
    # One durable pull consumer per route, read by a loop of nats-py ``fetch`` calls on the runtime's
    # own connection; a fetched batch is handled concurrently and the next fetch waits for it (what
    # FastStream's pull subscriber did — it was the transport until its per-message layers (message
    # object, decoder, middlewares, dependency injection) measured ~185 µs CPU per message, as much
    # as the rest of a provisioner message's Python work). The AsyncAPI document is generated from
    # ``schemagen``'s own broker, not from here.

    @property
    def started(self) -> bool:
        return self.broker is not None

    async def start(self, nats_url: str) -> None:
        nc = await nats.connect(nats_url, name=f"{self.service}-consumers", connect_timeout=2,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5, allow_reconnect=True)
        js = nc.jetstream()
        self._stopping = False
        try:
            for r in self.routes.values():
                subject = ev.subject_filter(r.event_type)
                psub = await js.pull_subscribe(
                    subject, durable=r.consumer, stream=stream_for_subject(subject.replace("*", "x")),
                    config=ConsumerConfig(ack_wait=self.ack_wait_s, max_deliver=self.max_deliver,
                                          max_ack_pending=1000))
                self._loops.append(_PullLoop(self, r, psub))
        except BaseException:
            await nc.close()
            self._loops = []
            raise
        for loop in self._loops:
            loop.start()
        self.broker = nc

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop pulling, then wait for in-flight messages to finish (graceful shutdown)."""
        if self.broker is None:
            return
        self._stopping = True
        for loop in self._loops:
            loop.stop_fetching()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        for loop in self._loops:
            await loop.cancel()
        self._loops = []
        with contextlib.suppress(Exception):
            await self.broker.close()
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
            event = ev.parse_as(body, route.event_type)
        except ValidationError as exc:
            errors = [{"path": _json_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
            await self._reject_payload(route, raw, body, errors, attempt)
            return
        except (ValueError, ev.UnknownEventType) as exc:  # JSONDecodeError is a ValueError
            await self._dead_letter(route, raw, f"malformed message: {str(exc)[:300]}", attempt)
            return

        with bind_event_context(event, consumer=route.consumer):
            if route.precheck and await self._seen(route.consumer, event.event_id):
                self.counters["duplicates"] += 1
                await raw.ack()
                return
            ctx: Ctx[D] = Ctx(uow=self.uow.bind(route.consumer, event.event_id), deps=self.deps,
                              attempt=attempt, headers=dict(raw.headers or {}))
            keepalive = _KeepAlive(raw, self.ack_wait_s / 3)
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


class _PullLoop:
    """One route's consumer: up to ``batch_size`` messages in flight at any time — a slot freed by a
    finished message is refilled by the next fetch, so one slow message (a Helm install) never holds
    back the other fifteen. Transport errors (reconnecting, server restarting) are logged and retried;
    they never end the loop."""

    def __init__(self, runtime: ServiceRuntime[Any], route: Route, psub: Any) -> None:
        self.runtime, self.route, self.psub = runtime, route, psub
        self.task: asyncio.Task[None] | None = None
        self._fetching = False
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"consume:{self.route.consumer}")

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # e.g. the inbox check failed: no ack, JetStream redelivers
            log.warning("consumer.message_failed", consumer=self.route.consumer, error=type(exc).__name__,
                        detail=str(exc)[:300])

    async def _run(self) -> None:
        rt, errors = self.runtime, 0
        while not rt._stopping:
            free = rt.batch_size - len(self._inflight)
            if free <= 0:
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            self._fetching = True
            try:
                msgs = await self.psub.fetch(free, timeout=rt.pull_timeout_s)
            except TimeoutError:  # nats' TimeoutError is an asyncio.TimeoutError: nothing arrived
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection lost / server unavailable: retry
                errors += 1
                log.warning("consumer.fetch_failed", consumer=self.route.consumer, error=type(exc).__name__,
                            detail=str(exc)[:200])
                await asyncio.sleep(min(5.0, 0.1 * 2 ** min(errors, 6)))
                continue
            finally:
                self._fetching = False
            errors = 0
            if rt._stopping:  # fetched while stopping: give them back for another replica / the restart
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.nak()
                return
            for m in msgs:
                task = asyncio.create_task(rt.process(self.route, m))
                self._inflight.add(task)
                task.add_done_callback(self._done)

    def stop_fetching(self) -> None:
        """A loop waiting in ``fetch`` holds no message: end it now (one waiting for a free slot ends
        when it sees the runtime stopping)."""
        if self.task is not None and self._fetching:
            self.task.cancel()

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        for task in list(self._inflight):  # as cancelling a batch did: unacked, JetStream redelivers
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight))
        with contextlib.suppress(Exception):
            await self.psub.unsubscribe()


class _KeepAlive:
    """Long handlers (Helm calls) tell JetStream they are alive instead of being redelivered mid-work:
    ``in_progress`` every ``every_s`` until cancelled. A timer handle, not a task per message: most
    handlers finish long before the first tick, and a task costs a creation, a sleep and a cancel."""

    def __init__(self, raw: Any, every_s: float) -> None:
        self._raw, self._every_s = raw, every_s
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(every_s, self._tick)
        self._pending: set[asyncio.Task[None]] = set()

    def _tick(self) -> None:
        task = self._loop.create_task(self._send())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        self._handle = self._loop.call_later(self._every_s, self._tick)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._raw.in_progress()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


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
