"""The compatibility gate: ``compatibility.yaml`` → ``chart_compatibility`` table → verdicts.

What callers can rely on:

* :func:`sync` makes the table equal to the file in one transaction (upsert every pair, delete pairs the
  file no longer lists). Idempotent and safe from every replica at once (an advisory lock serialises it).
  The provisioner runs it at start, before it consumes anything.
* :func:`can_upgrade` answers from the table: ``supported`` / ``deprecated`` / ``blocked``; a pair the
  table does not list — or a version that is not semantic — is ``blocked``.
* :func:`gate` is the same decision over in-memory entries (pure; what the unit tests table-test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from soctalk_common.compat import CompatEntry, Verdict, table_rows, verdict
from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWorkFactory
from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

_SYNC_LOCK = 0x50C7C0A7  # "compatibility sync" advisory lock


@dataclass(frozen=True)
class SyncResult:
    upserted: int
    removed: int


def gate(entries: Sequence[CompatEntry], system: str, tenant: str) -> Verdict:
    """``verdict`` that never raises: a malformed version is a blocked, unknown pair."""
    try:
        return verdict(entries, system, tenant)
    except ValueError as exc:
        return Verdict(system=str(system), tenant=str(tenant), status="blocked", notes=str(exc), known=False)


async def sync(uow: UnitOfWorkFactory, entries: Sequence[CompatEntry]) -> SyncResult:
    rows = table_rows(entries)
    async with uow() as tx:
        await tx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SYNC_LOCK})
        if rows:
            stmt = pg_insert(m.ChartCompatibility).values(rows)
            key = [m.ChartCompatibility.soctalk_system_version, m.ChartCompatibility.tenant_chart_version]
            await tx.session.execute(stmt.on_conflict_do_update(
                index_elements=key, set_={"status": stmt.excluded.status, "notes": stmt.excluded.notes}))
        keep = [(r["soctalk_system_version"], r["tenant_chart_version"]) for r in rows]
        stale = delete(m.ChartCompatibility)
        if keep:
            stale = stale.where(tuple_(m.ChartCompatibility.soctalk_system_version,
                                       m.ChartCompatibility.tenant_chart_version).not_in(keep))
        removed = (await tx.session.execute(stale)).rowcount or 0
        await tx.commit()
    return SyncResult(upserted=len(rows), removed=int(removed))


_C = m.ChartCompatibility
_ENTRIES = select(_C.soctalk_system_version, _C.tenant_chart_version, _C.status, _C.notes)  # built once


async def table_entries(session: AsyncSession) -> list[CompatEntry]:
    rows = (await session.execute(_ENTRIES)).all()  # plain rows: no ORM objects for a read-only lookup
    return [CompatEntry(system=r.soctalk_system_version, tenant=r.tenant_chart_version, status=r.status,
                        notes=r.notes) for r in rows]


async def can_upgrade(session: AsyncSession, system: str, tenant: str) -> Verdict:
    """The gate for applying tenant chart ``tenant`` under soctalk-system ``system`` (seed 001
    ``controller.can_upgrade``), from the synced table. Used for installs and upgrades alike."""
    return gate(await table_entries(session), system, tenant)
