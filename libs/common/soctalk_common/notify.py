"""Postgres LISTEN/NOTIFY for cache invalidation (the driver stays here, behind a small gateway).

Call ``tick()`` from a ``PeriodicTask`` (every second or so): it (re)connects and LISTENs when the
connection is missing or lost; between ticks the open connection delivers notifications as they come.
Callbacks get the notification payload and must be quick (they run on the event loop).

**Confirmation pings** let a cache trust what it loaded without re-reading it. Each ``tick()`` on a
live connection also sends a NOTIFY on a channel of this listener's own. Postgres delivers the
notifications of different transactions in commit order, so when a ping comes back, every change
committed before it was sent has already reached its callback. Hence :meth:`fresh_as_of`: a value
loaded by a query sent after this connection started listening is known to be current as of the
last confirmed ping (unless a callback has invalidated it since, which the cache handles). A lost
connection, or pings that stop coming back, make ``fresh_as_of`` fall back to the load time, so a
cache then ages its entries out as if there were no listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable

import asyncpg

#: A ping not back after this long means the connection is unusable (half-open, server stuck): reconnect.
PING_DEADLINE_S = 10.0


def fresh_as_of(coverage: tuple[float, float] | None, loaded_at: float) -> float:
    """See :meth:`PgListener.fresh_as_of`; ``coverage`` is one reading of :meth:`PgListener.coverage`."""
    if coverage is not None and loaded_at >= coverage[0]:
        return max(loaded_at, coverage[1])
    return loaded_at


class PgListener:
    def __init__(self, database_url: str, handlers: dict[str, Callable[[str], None]], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.handlers = handlers
        self.connects = 0
        self.pings_confirmed = 0
        self._clock = clock
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        # Our own ping channel: replicas listening with the same handlers never confirm each other.
        self._ping_channel = f"soctalk_ping_{uuid.uuid4().hex[:16]}"
        self._pings: dict[str, float] = {}  # payload → when it was sent (clock)
        self._seq = 0
        self._since: float | None = None  # clock when this connection's LISTENs were in effect
        self._confirmed = float("-inf")  # send time of the newest ping that came back

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    def coverage(self) -> tuple[float, float] | None:
        """``(since, confirmed)`` while connected: a value read by a query sent at or after ``since``
        (``clock`` time) is known current up to ``confirmed``, barring a notification about it."""
        if self._since is None or not self.connected:
            return None
        return self._since, self._confirmed

    def fresh_as_of(self, loaded_at: float) -> float:
        """Up to when a value read by a query sent at ``loaded_at`` is known current, barring a
        notification about it: the last confirmed ping when the query was sent while this connection
        listened, else ``loaded_at`` itself."""
        return fresh_as_of(self.coverage(), loaded_at)

    async def tick(self) -> None:
        if not self.connected:
            await self._connect()
            return
        oldest = min(self._pings.values(), default=None)
        if oldest is not None and self._clock() - oldest > PING_DEADLINE_S:
            await self._connect()  # pings stopped coming back: start over (and distrust what it said)
            return
        await self._ping()

    async def _ping(self) -> None:
        conn = self._conn
        assert conn is not None
        self._seq += 1
        payload = str(self._seq)
        self._pings[payload] = self._clock()
        try:
            await conn.execute(f"SELECT pg_notify('{self._ping_channel}', '{payload}')")
        except (TimeoutError, asyncpg.PostgresError, OSError):
            self._lost.set()  # the next tick reconnects

    def _pong(self, payload: str) -> None:
        sent = self._pings.pop(payload, None)
        if sent is None:
            return
        self._confirmed = max(self._confirmed, sent)
        self.pings_confirmed += 1
        for older in [p for p, t in self._pings.items() if t <= sent]:  # delivered in order: lost
            del self._pings[older]

    async def _connect(self) -> None:
        await self.close()
        lost = asyncio.Event()  # bound per connection: a late callback of an old one must not fire here
        conn = await asyncpg.connect(self.dsn, timeout=5)
        conn.add_termination_listener(lambda _c: lost.set())
        for channel, fn in self.handlers.items():
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload, fn=fn: fn(payload))
        await conn.add_listener(self._ping_channel, lambda _c, _pid, _ch, payload: self._pong(payload))
        self._conn, self._lost = conn, lost
        # Read after every LISTEN is in effect: a query sent from now on sees a snapshot taken while
        # we listen, so any change committed after that snapshot is notified to us.
        self._since = self._clock()
        self.connects += 1

    async def close(self) -> None:
        self._since, self._confirmed = None, float("-inf")
        self._pings.clear()
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
        self._conn = None
