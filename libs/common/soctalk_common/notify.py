"""Postgres LISTEN/NOTIFY for cache invalidation (the driver stays here, behind a small gateway).

Call ``tick()`` from a ``PeriodicTask`` (every second or so): it (re)connects and LISTENs when the
connection is missing or lost; between ticks the open connection delivers notifications as they come.
Callbacks get the notification payload and must be quick (they run on the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg


class PgListener:
    def __init__(self, database_url: str, handlers: dict[str, Callable[[str], None]]) -> None:
        self.dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.handlers = handlers
        self.connects = 0
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    async def tick(self) -> None:
        if not self.connected:
            await self._connect()

    async def _connect(self) -> None:
        await self.close()
        lost = asyncio.Event()  # bound per connection: a late callback of an old one must not fire here
        conn = await asyncpg.connect(self.dsn, timeout=5)
        conn.add_termination_listener(lambda _c: lost.set())
        for channel, fn in self.handlers.items():
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload, fn=fn: fn(payload))
        self._conn, self._lost = conn, lost
        self.connects += 1

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
        self._conn = None
