"""Connections the CLI opens on demand (never at import): settings, database, bus."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import typer
from soctalk_common.bus import Bus
from soctalk_common.db import models as m
from soctalk_common.db.session import make_engine, make_sessionmaker
from soctalk_common.errors import Unavailable
from soctalk_common.settings import Settings
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_cli.output import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, err_console


@dataclass
class Conn:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    bus: Bus | None = None


@contextlib.asynccontextmanager
async def connect(*, db: bool = True, nats: bool = False) -> AsyncIterator[Conn]:
    settings = Settings()
    conn = Conn(settings)
    engine = None
    try:
        if db:
            engine = make_engine(settings.database_url, pool_size=2)
            conn.sessionmaker = make_sessionmaker(engine)
        if nats:
            try:
                conn.bus = await Bus.connect(settings.nats_url, name="soctalk-cli", max_reconnect_attempts=2)
            except Unavailable as exc:
                err_console.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(EXIT_UNAVAILABLE) from exc
            await conn.bus.ensure_streams()
        yield conn
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot reach a server: {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from exc
    finally:
        if conn.bus is not None:
            await conn.bus.close()
        if engine is not None:
            await engine.dispose()


async def find_tenant(conn: Conn, ref: str, *, include_deleted: bool = True) -> m.Tenant:
    """A tenant by slug or id; exits with EXIT_NOT_FOUND naming what was looked for."""
    assert conn.sessionmaker is not None
    try:
        as_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        as_id = None
    async with conn.sessionmaker() as s:
        cond = or_(m.Tenant.slug == ref, m.Tenant.id == as_id) if as_id else (m.Tenant.slug == ref)
        stmt = select(m.Tenant).where(cond)
        if not include_deleted:
            stmt = stmt.where(m.Tenant.deleted_at.is_(None))
        tenant = (await s.execute(stmt.order_by(m.Tenant.created_at.desc()).limit(1))).scalar_one_or_none()
    if tenant is None:
        err_console.print(f"[red]error:[/red] no tenant {ref!r}")
        raise typer.Exit(EXIT_NOT_FOUND)
    return tenant
