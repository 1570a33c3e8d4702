"""Engine and session factory. Created in a bootstrap, never at import time."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        # A forgotten open transaction would stall the relay (it publishes only rows older than every
        # open transaction), so Postgres ends such sessions for us.
        connect_args={"server_settings": {"idle_in_transaction_session_timeout": "60000",
                                          "application_name": "soctalk"}},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
