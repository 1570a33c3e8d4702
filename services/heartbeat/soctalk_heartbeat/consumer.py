"""The heartbeat consumer: a durable JetStream pull consumer on ``SOCTALK_ADAPTER``, in big batches.

Why not the generic ``ServiceRuntime``: it records an inbox row per message, which is one Postgres
transaction per heartbeat — thousands of tenants × one every 30 s. Heartbeats are idempotent by
nature (seeing the same one twice changes nothing: every decision is a conditional UPDATE), so this
loop skips the inbox and pays Postgres only for decisions:

* one pull request for up to ``batch`` messages (``no_wait``: what is there now; when nothing is,
  one long poll for the next message), collected by a subscription callback — nats-py's ``fetch``
  spends a task and a timer per message, which was the largest cost per heartbeat after parsing;
* one cache check for the whole batch (:meth:`Intake.verify`: no query when every prefix is cached);
* the newest heartbeat per tenant is buffered (``last_seen``, flushed in one statement every
  ``heartbeat_flush_s``) or, when it may change a decision, recorded in a per-tenant transaction;
* then the whole batch is settled in one burst: ``ack`` (done), ``term`` (refused or malformed — never
  redelivered, never stops the loop) or ``nak(delay)`` (its tenant's transaction failed, or the token
  cache could not be refreshed). Acks are fire-and-forget publishes pipelined on the connection.

Several replicas bind the same durable consumer and share the stream. Delivery is at least once; a
lost ``last_seen`` refresh is healed by the next heartbeat 30 s later. A message that waited in the
stream longer than the liveness window (e.g. a backlog after an outage) is acked and ignored: it
proves nothing about the adapter now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import structlog

from soctalk_common.bus import ADAPTER_STREAM, Bus
from soctalk_heartbeat import domain
from soctalk_heartbeat.intake import Incoming, Intake, Verdict

log = structlog.get_logger(__name__)

SUBJECT = "soctalk.adapter.*.heartbeat"
DURABLE = "heartbeat--AdapterHeartbeat"


class HeartbeatConsumer:
    def __init__(self, bus: Bus, intake: Intake, *, durable: str = DURABLE, batch: int = 500,
                 fetch_timeout_s: float = 1.0, ack_wait_s: float = 30.0, max_deliver: int = 5,
                 max_ack_pending: int = 50_000, retry_delay_s: float = 2.0,
                 error_backoff_s: float = 1.0) -> None:
        self.bus = bus
        self.intake = intake
        self.durable = durable
        self.batch = batch
        self.fetch_timeout_s = fetch_timeout_s
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.max_ack_pending = max_ack_pending
        self.retry_delay_s = retry_delay_s
        self.error_backoff_s = error_backoff_s
        self._sub: Any = None
        self.settled = {"ack": 0, "term": 0, "nak": 0}

    async def _subscription(self) -> _Puller:
        if self._sub is None:
            try:
                await self.bus.js.add_consumer(
                    ADAPTER_STREAM, name=self.durable, durable_name=self.durable, filter_subject=SUBJECT,
                    ack_policy="explicit", deliver_policy="all", ack_wait=self.ack_wait_s,
                    max_deliver=self.max_deliver, max_ack_pending=self.max_ack_pending,
                )
            except Exception as exc:  # noqa: BLE001 - exists with another config: bind to it anyway
                log.info("heartbeat.consumer_exists", detail=str(exc)[:200])
            self._sub = await _Puller(self.bus.nc, ADAPTER_STREAM, self.durable).start()
        return self._sub

    async def pull_once(self) -> int:
        """Fetch and settle one batch; returns how many messages it handled. Never raises."""
        try:
            sub = await self._subscription()
            msgs = await sub.fetch(self.batch, self.fetch_timeout_s)
            if not msgs:
                return 0
            await self.handle(msgs)
            return len(msgs)
        except Exception as exc:  # noqa: BLE001 - bus hiccup: back off, then the next tick retries
            log.warning("heartbeat.pull_failed", error=type(exc).__name__, detail=str(exc)[:200])
            await asyncio.sleep(self.error_backoff_s)
            return 0

    async def handle(self, msgs: list[Any]) -> None:
        self.intake.deps.metrics.batch.observe(len(msgs))
        items = [_incoming(m) for m in msgs]
        try:
            verdicts = await self.intake.verify(items)
        except Exception as exc:  # noqa: BLE001 - cannot verify now (Postgres): all retried later
            log.warning("heartbeat.verify_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            for m in msgs:
                await self._settle(m, "nak")
            return
        failed = await self.intake.apply(verdicts)
        for m, v in zip(msgs, verdicts, strict=True):
            await self._settle(m, _action(v, failed))

    async def _settle(self, msg: Any, action: str) -> None:
        with contextlib.suppress(Exception):  # a lost ack means one redelivery, which is harmless
            if action == "ack":
                await msg.ack()
            elif action == "term":
                await msg.term()
            else:
                await msg.nak(delay=self.retry_delay_s)
            self.settled[action] += 1

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class _Puller:
    """Pull requests on a durable consumer; the messages land in a list from a subscription callback.

    ``fetch(batch, timeout)`` returns what the consumer has now (up to ``batch``), else waits up to
    ``timeout`` for the next message; ``[]`` when none came. A request ends with its batch complete
    or with the server's status (404 no messages, 408 expired, 409 ...). After a full batch the next
    request is sent at once, so a backlog streams in while the caller handles the batch. A message
    that arrives after its request was given up is kept for the next fetch, never dropped (one left
    unhandled at shutdown is redelivered after AckWait).
    """

    def __init__(self, nc: Any, stream: str, durable: str) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._buf: list[Any] = []
        self._want = 0
        self._done = asyncio.Event()
        self._prefetching = False
        self._sub: Any = None

    async def start(self) -> _Puller:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Any) -> None:
        if msg.reply:  # a stream message: its reply subject is where it is acked
            self._buf.append(msg)
            if len(self._buf) >= self._want:
                self._done.set()
        elif (msg.headers or {}).get("Status") != "100":  # 100 = idle heartbeat; others end a request
            self._done.set()

    async def _send(self, req: dict[str, Any], want: int) -> None:
        self._want = want
        self._done.clear()
        await self.nc.publish(self.subject, json.dumps(req).encode(), reply=self.inbox)

    async def _wait(self, wait_s: float) -> list[Any]:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._done.wait()
        msgs, self._buf = self._buf, []
        return msgs

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
        if self._prefetching:  # asked for while the previous batch was being handled
            self._prefetching = False
            msgs = await self._wait(max(timeout, 1.0))
        elif self._buf:
            msgs, self._buf = self._buf, []
        else:
            await self._send({"batch": batch, "no_wait": True}, batch)
            msgs = await self._wait(max(timeout, 1.0))
        if not msgs:
            await self._send({"batch": 1, "expires": int(timeout * 1e9)}, 1)
            return await self._wait(timeout + 1.0)
        if len(msgs) >= batch:  # a full batch: more are likely waiting, let them arrive meanwhile
            await self._send({"batch": batch, "no_wait": True}, batch)
            self._prefetching = True
        return msgs

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


def _action(v: Verdict, failed: set[Any]) -> str:
    if v.reason is not None:
        return "term"
    if v.heartbeat is not None and v.heartbeat.tenant_id in failed:
        return "nak"
    return "ack"


def _incoming(msg: Any) -> Incoming:
    headers = msg.headers or {}
    auth = headers.get("Authorization")
    if auth is None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    tenant = domain.subject_tenant(msg.subject) or ""
    age = 0.0
    with contextlib.suppress(Exception):
        # Server-side publish time against our wall clock: both in the same clock domain.
        age = max(0.0, (datetime.now(UTC) - msg.metadata.timestamp).total_seconds())
    return Incoming(tenant=tenant, authorization=auth, body=msg.data or b"", age_s=age, transport="nats")
