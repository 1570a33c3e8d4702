"""The heartbeat consumer: a core-NATS queue subscription, handled in big batches.

Why core NATS and not a stream: every heartbeat carries its adapter's bearer token in a header. A
JetStream stream would store that credential (on disk, readable by anyone who can read the stream),
against "no secret material on the bus". Heartbeats are telemetry: the newest one is all that matters,
and a lost one is healed by the next (every 30 s). So they are never stored; replicas share them
through the queue group ``heartbeat``.

Why not the generic ``ServiceRuntime``: it records an inbox row per message, which is one Postgres
transaction per heartbeat — thousands of tenants × one every 30 s. Heartbeats are idempotent by
nature (seeing the same one twice changes nothing: every decision is a conditional UPDATE), so this
loop skips the inbox and pays Postgres only for decisions:

* messages land in a buffer from the subscription callback; ``pull_once`` takes up to ``batch`` of them
  (or waits up to ``fetch_timeout_s`` for the first);
* that buffer is bounded (``max_pending_msgs`` messages / ``max_pending_bytes`` of payload; nats-py's own
  subscription queue gets the same limits). A heartbeat arriving while it is full is dropped, counted
  (``soctalk_heartbeat_dropped_total``) and logged at most once per ``LOG_EVERY_S``. That is the
  intended behaviour under overload, not a loss: core NATS is at-most-once anyway, every adapter
  resends each interval, and a tenant is only marked degraded after ``missed_intervals`` intervals
  without one — while an unbounded buffer turns a burst (every tenant at once, or a backlog after a
  restart) into hundreds of MB of queued messages (~1 KB each in the process);
* one cache check for the whole batch (:meth:`Intake.verify`: no query when every prefix is cached);
* the newest heartbeat per tenant is buffered (``last_seen``, flushed in one statement every
  ``heartbeat_flush_s``) or, when it may change a decision, recorded in a per-tenant transaction;
* refused or malformed messages are dropped (counted by reason); a heartbeat whose tenant's transaction
  failed, or that could not be verified (Postgres down), is retried after ``retry_delay_s`` up to
  ``max_deliver`` times — the durable decisions themselves are transactional.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from soctalk_common.bus import Bus

from soctalk_heartbeat import domain
from soctalk_heartbeat.intake import Incoming, Intake, Verdict

log = structlog.get_logger(__name__)

SUBJECT = "soctalk.adapter.*.heartbeat"
DURABLE = "heartbeat--AdapterHeartbeat"
QUEUE = "heartbeat"
#: Default bounds of the pending buffer: ~0.5–1 s of work at the service's rate, ~12 MB of memory when
#: full (each buffered message costs ~1.1 KB in the process: payload, headers dict, Msg).
MAX_PENDING_MSGS = 10_000
MAX_PENDING_BYTES = 8 * 1024 * 1024  # payload bytes (a heartbeat is ~0.5 KB)
LOG_EVERY_S = 10.0
_NATS_SLACK_MSGS, _NATS_SLACK_BYTES = 4_096, 4 * 1024 * 1024


class HeartbeatConsumer:
    def __init__(self, bus: Bus, intake: Intake, *, durable: str = DURABLE, batch: int = 500,
                 fetch_timeout_s: float = 1.0, ack_wait_s: float = 30.0, max_deliver: int = 5,
                 max_ack_pending: int = 50_000, retry_delay_s: float = 2.0,
                 error_backoff_s: float = 1.0, max_pending_msgs: int = MAX_PENDING_MSGS,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
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
        self.max_pending_msgs = max_pending_msgs
        self.max_pending_bytes = max_pending_bytes
        self._sub: Any = None
        self._attempts: dict[int, int] = {}
        self.settled = {"ack": 0, "term": 0, "nak": 0}
        self._drop_logged = (float("-inf"), 0)  # (when, drops not yet logged)

    async def _subscription(self) -> _Batcher:
        if self._sub is None:
            self._sub = await _Batcher(self.bus.nc, SUBJECT, QUEUE, max_msgs=self.max_pending_msgs,
                                       max_bytes=self.max_pending_bytes, on_drop=self._dropped).start()
        return self._sub

    def _dropped(self) -> None:
        """One heartbeat dropped for a full buffer: counted always, logged at most every LOG_EVERY_S."""
        self.intake.deps.metrics.dropped.inc()
        last, unlogged = self._drop_logged
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            log.warning("heartbeat.dropped", reason="pending_buffer_full", dropped=unlogged + 1,
                        max_pending_msgs=self.max_pending_msgs, max_pending_bytes=self.max_pending_bytes)
            self._drop_logged = (now, 0)
        else:
            self._drop_logged = (last, unlogged + 1)

    async def pull_once(self) -> int:
        """Fetch and settle one batch; returns how many messages it handled. Never raises."""
        try:
            sub = await self._subscription()
            msgs = await sub.fetch(self.batch, self.fetch_timeout_s)
            self.intake.deps.metrics.pending.set(len(sub))
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
        settled = self.settled
        for m, v in zip(msgs, verdicts, strict=True):
            action = _action(v, failed)
            if action == "nak":
                await self._settle(m, action)
            else:  # core NATS: nothing to acknowledge; refused ones are simply not retried
                settled[action] += 1

    async def _settle(self, msg: Any, action: str) -> None:
        self.settled[action] += 1
        if action != "nak" or self._sub is None:
            return
        attempts = self._attempts.get(id(msg), 1)
        if attempts >= self.max_deliver:
            self._attempts.pop(id(msg), None)
            return
        self._attempts[id(msg)] = attempts + 1
        asyncio.get_running_loop().call_later(self.retry_delay_s, self._sub.requeue, msg)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None


class _Batcher:
    """A queue-group subscription whose callback only buffers, up to ``max_msgs`` messages and
    ``max_bytes`` of payload (beyond that ``on_drop`` is called and the message dropped); ``fetch``
    hands out batches."""

    def __init__(self, nc: Any, subject: str, queue: str, *, max_msgs: int = MAX_PENDING_MSGS,
                 max_bytes: int = MAX_PENDING_BYTES, on_drop: Callable[[], None] | None = None) -> None:
        if max_msgs < 1 or max_bytes < 1:
            raise ValueError("the pending buffer needs room for at least one message")
        self.nc = nc
        self.subject = subject
        self.queue = queue
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.dropped = 0
        self._buf: list[Any] = []
        self._bytes = 0
        self._ready = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> _Batcher:
        # nats-py's own queue in front of the callback is bounded too (its defaults are 512k messages /
        # 128 MB). It only holds what the reader parsed before the callback ran — at most one socket
        # buffer (64 KB: a few hundred messages) — so its bound is ours plus that slack, and the drops
        # happen (and are counted) here, never silently inside nats-py.
        self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_msg,
                                            pending_msgs_limit=self.max_msgs + _NATS_SLACK_MSGS,
                                            pending_bytes_limit=self.max_bytes + _NATS_SLACK_BYTES)
        await self.nc.flush()  # the server knows the subscription before anyone relies on it
        return self

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def offer(self, msg: Any) -> bool:
        """Buffer ``msg`` if there is room; otherwise count it dropped. Returns whether it was kept."""
        n = len(msg.data or b"")
        if len(self._buf) >= self.max_msgs or self._bytes + n > self.max_bytes:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return False
        self._buf.append(msg)
        self._bytes += n
        self._ready.set()
        return True

    async def _on_msg(self, msg: Any) -> None:
        self.offer(msg)

    def requeue(self, msg: Any) -> None:
        self.offer(msg)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
        if not self._buf:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        msgs = self._buf[:batch]
        del self._buf[:batch]
        self._bytes -= sum(len(m.data or b"") for m in msgs)
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
    # Core NATS delivers live messages only (no stored backlog), so a heartbeat is as old as now.
    return Incoming(tenant, auth, msg.data or b"", 0.0, "nats")
