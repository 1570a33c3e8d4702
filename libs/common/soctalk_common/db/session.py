"""Engine and session factory. Created in a bootstrap, never at import time.

Two pool choices matter for CPU (both found with the pipeline benchmark's profiles):

* **No churn.** A consumer handles up to 16 messages of each route at once, more than a small pool
  holds. With QueuePool overflow, every connection beyond ``pool_size`` was closed on return and a new
  one opened for the next burst (TCP, SCRAM authentication, a Postgres backend started, the dialect's
  codec setup): about one new connection every two messages. The pool now keeps every connection it
  opens, up to the same maximum as before (``2 × pool_size``), and callers beyond that wait for one.
* **Liveness check only after idleness.** SQLAlchemy's ``pool_pre_ping`` costs three round trips per
  checkout on asyncpg (``BEGIN``, ``;``, ``ROLLBACK``). A connection checked in less than
  :data:`PING_AFTER_IDLE_S` ago was just used successfully, so it is handed out as is; an older one is
  checked with one ``;`` first and replaced if Postgres went away meanwhile (restart, failover, idle
  kill). A connection that dies in the short window after its last use fails its statement like one
  that dies right after a ping would: the error is retried by the caller (message redelivery, loop).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

#: Connections idle at least this long are pinged (one round trip) before they are handed out.
PING_AFTER_IDLE_S = 2.0
_CHECKED_IN = "soctalk_checked_in"


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine holding at most ``2 × pool_size`` connections (as QueuePool's size + overflow did)."""
    engine = create_async_engine(
        database_url,
        pool_size=2 * pool_size,
        max_overflow=0,
        # A forgotten open transaction would stall the relay (it publishes only rows older than every
        # open transaction), so Postgres ends such sessions for us.
        connect_args={"server_settings": {"idle_in_transaction_session_timeout": "60000",
                                          "application_name": "soctalk"}},
    )
    install_idle_ping(engine)
    return engine


def install_idle_ping(engine: AsyncEngine, *, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """Ping a pooled connection on checkout only if it sat idle ``idle_s`` or longer (see above)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _checkin(_dbapi: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < idle_s:
            return  # brand new, or used a moment ago
        try:
            await_only(dbapi.driver_connection.fetchrow(";"))
        except Exception as e:  # noqa: BLE001 - any failure means the connection is unusable
            # The pool invalidates this connection and retries the checkout with a fresh one.
            raise exc.DisconnectionError(f"stale pooled connection: {type(e).__name__}") from e


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
