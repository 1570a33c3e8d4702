"""The outbox relay: the only publisher of committed events.

What callers can rely on:
* A committed outbox row reaches JetStream exactly once: it is published with ``Nats-Msg-Id`` = row id,
  marked only after its PubAck, and a re-publish after a crash is dropped by JetStream's dedupe window.
* A rolled-back transaction publishes nothing (its rows never become visible).
* Rows are published in id order, and only once every transaction that began before them has ended
  (``txid < pg_snapshot_xmin``), so a slower transaction cannot commit an older row behind our back.
  Per tenant, handlers lock the tenant row first, so id order is commit order.
* Exactly one relay is active per install: leadership is a Postgres session advisory lock held on the
  relay's own connection; if that process or connection dies, the lock is released and a standby,
  retrying every ``standby_poll_s``, takes over (well under 5 s).
* Latency is not a polling interval: an INSERT trigger NOTIFYs ``soctalk_outbox``; a sweep every
  ``sweep_s`` is the safety net for lost notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from soctalk_common.bus import Bus, publish_batch
from soctalk_common.errors import Unavailable

log = structlog.get_logger(__name__)

RELAY_LOCK_KEY = 0x50C7A1C0  # arbitrary, stable: "the relay" advisory lock
FETCH = """
SELECT id, subject, payload, headers FROM outbox
WHERE published_at IS NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY id LIMIT $1
"""


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    leader: bool = False
    became_leader_at: float | None = None
    last_lag_ms: list[float] = field(default_factory=list)


class OutboxRelay:
    def __init__(self, database_url: str, bus: Bus, *, name: str = "relay", batch_size: int = 500,
                 sweep_s: float = 1.0, standby_poll_s: float = 0.5, prune_after_s: float = 3600.0,
                 on_published: Callable[[list[int]], None] | None = None) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.bus = bus
        self.name = name
        self.batch_size = batch_size
        self.sweep_s = sweep_s
        self.standby_poll_s = standby_poll_s
        self.prune_after_s = prune_after_s
        self.on_published = on_published
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Campaign for leadership, then relay until stopped. Never raises on transient failures."""
        while not self._stop.is_set():
            try:
                await self._campaign_and_relay()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, Unavailable) as exc:
                log.warning("relay.interrupted", relay=self.name, error=type(exc).__name__, detail=str(exc)[:200])
            finally:
                self.stats.leader = False
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._conn.close(), 2)
                    self._conn = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.standby_poll_s)

    async def _campaign_and_relay(self) -> None:
        conn = self._conn = await asyncpg.connect(self.dsn, timeout=5)
        while not self._stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.standby_poll_s)
        else:
            return
        self.stats.leader = True
        self.stats.became_leader_at = time.monotonic()
        log.info("relay.leader", relay=self.name)
        await conn.add_listener("soctalk_outbox", lambda *_: self._wake.set())
        last_prune = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            await self._drain(conn)
            if time.monotonic() - last_prune > 60:
                await conn.execute(
                    "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)", self.prune_after_s
                )
                last_prune = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_s)

    async def _drain(self, conn: asyncpg.Connection) -> None:
        while not self._stop.is_set():
            rows = await conn.fetch(FETCH, self.batch_size)
            if not rows:
                return
            await publish_batch(
                self.bus,
                [(r["subject"], bytes(r["payload"]), str(r["id"]), _headers(r["headers"])) for r in rows],
            )
            ids = [r["id"] for r in rows]
            await self._mark(conn, ids)
            self.stats.published += len(ids)
            self.stats.batches += 1
            if self.on_published:
                self.on_published(ids)


    async def _mark(self, conn: asyncpg.Connection, ids: list[int]) -> None:
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids)


def _headers(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        import json

        raw = json.loads(raw)
    if not isinstance(raw, dict):  # JSON null
        return None
    return {str(k): str(v) for k, v in raw.items()}


async def _main() -> None:
    """``python -m soctalk_common.relay``: one relay process (run two or more; one leads)."""
    import os
    import signal

    from soctalk_common.logging import configure_logging
    from soctalk_common.settings import Settings

    settings = Settings()
    configure_logging("relay", level=settings.log_level, json_output=settings.log_json)
    bus = await Bus.connect(settings.nats_url, name="relay", duplicate_window_s=settings.duplicate_window_s)
    await bus.ensure_streams()
    relay = OutboxRelay(settings.database_url, bus, name=f"relay-{os.getpid()}")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()
    await bus.close()


if __name__ == "__main__":
    from soctalk_common.memory import tune_process

    tune_process()  # as every service's entry point does (soctalk_common/memory.py)
    asyncio.run(_main())
