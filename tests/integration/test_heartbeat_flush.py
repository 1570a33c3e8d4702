"""``store.flush_last_seen`` on real Postgres: the batched ``last_seen`` refresh and its guarantees.

* strictly newer: a buffered heartbeat never overwrites a newer (or the same) one already recorded;
* ``tenants.last_heartbeat_at``/``last_health`` only for entries marked ``touch``;
* it never waits: rows another transaction holds are skipped (not returned, nothing written) and the
  call returns while that transaction still holds them (bounded by ``asyncio.wait_for``: a flush that
  waited would hang until the holder lets go, which it does only after the call returned);
* per tenant done, the durable flags; a tenant without a ``heartbeat_state`` row is done (None flags).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from soctalk_common.db import models as m
from soctalk_heartbeat import store
from soctalk_heartbeat.store import Flushed
from sqlalchemy import select, text

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OK = {"adapter_version": "1.0.0", "status": "ok",
      "components": {"wazuh": {"status": "ok", "message": ""}, "cortex": {"status": "ok", "message": ""}}}
WAIT_S = 30.0  # generous: only a flush that waits for a lock gets anywhere near it
NOT_WRITTEN = Flushed(None, None, None)


def health(version: str = "1.0.0", **statuses: str) -> dict[str, Any]:
    comps = {c: {"status": statuses.get(c, "ok"), "message": ""} for c in ("wazuh", "cortex")}
    return {"adapter_version": version, "status": "ok", "components": comps}


async def make_tenant(sessionmaker: Any, *, state_row: bool = True, activated: bool = True,
                      degraded: bool = False, last_seen: datetime | None = T0,
                      components: dict[str, str] | None = None) -> uuid.UUID:
    tid = uuid.uuid4()
    slug = f"t{tid.hex[:10]}"
    async with sessionmaker() as s, s.begin():
        s.add(m.Tenant(id=tid, mssp_id=uuid.uuid4(), install_id=uuid.uuid4(), slug=slug, request_id=str(tid),
                       display_name=slug, state="active", profile="small-dev", chart_version="v1.1.0", config={},
                       last_heartbeat_at=last_seen, last_health=OK if last_seen else None))
        await s.flush()
        if state_row:
            s.add(m.HeartbeatState(
                tenant_id=tid, chart_applied_at=T0 - timedelta(hours=1), first_heartbeat_at=T0 - timedelta(hours=1),
                activated_event_id=uuid.uuid4() if activated else None, degraded=degraded, last_seen=last_seen,
                last_health=OK if last_seen else None,
                components=components if components is not None else {"wazuh": "ok", "cortex": "ok"}))
    return tid


async def hs_row(sessionmaker: Any, tid: uuid.UUID) -> tuple[datetime | None, dict[str, Any] | None]:
    async with sessionmaker() as s:
        row = (await s.execute(select(m.HeartbeatState.last_seen, m.HeartbeatState.last_health)
                               .where(m.HeartbeatState.tenant_id == tid))).one()
        return row[0], row[1]


async def tenant_hb(sessionmaker: Any, tid: uuid.UUID) -> tuple[datetime | None, dict[str, Any] | None]:
    async with sessionmaker() as s:
        row = (await s.execute(select(m.Tenant.last_heartbeat_at, m.Tenant.last_health)
                               .where(m.Tenant.id == tid))).one()
        return row[0], row[1]


@asynccontextmanager
async def holding(sessionmaker: Any, *locks: tuple[str, uuid.UUID]) -> AsyncIterator[None]:
    """Another transaction holding row locks (``("tenants"|"heartbeat_state", id)``, in that order)."""
    async with sessionmaker() as s, s.begin():
        for table, tid in locks:
            col = "id" if table == "tenants" else "tenant_id"
            got = (await s.execute(text(f"SELECT 1 FROM {table} WHERE {col} = :t FOR UPDATE"), {"t": tid})).all()
            assert got, (table, tid)
        yield
        await s.rollback()


async def flush(sessionmaker: Any, *entries: tuple[uuid.UUID, datetime, dict[str, Any], bool]
                ) -> dict[uuid.UUID, Flushed]:
    return await asyncio.wait_for(store.flush_last_seen(sessionmaker, list(entries)), WAIT_S)


# ------------------------------------------------------------------------------------------------


async def test_writes_last_seen_and_health_and_returns_the_durable_flags(sessionmaker):
    healthy = await make_tenant(sessionmaker)
    degraded = await make_tenant(sessionmaker, degraded=True)
    inactive = await make_tenant(sessionmaker, activated=False)
    drifted = await make_tenant(sessionmaker, components={"wazuh": "down", "cortex": "ok"})
    at = T0 + timedelta(seconds=30)
    h = health("1.0.1")

    out = await flush(sessionmaker, *((t, at, h, False) for t in (healthy, degraded, inactive, drifted)))

    assert out == {
        healthy: Flushed(degraded=False, activated=True, components_changed=False),
        degraded: Flushed(degraded=True, activated=True, components_changed=False),
        inactive: Flushed(degraded=False, activated=False, components_changed=False),
        drifted: Flushed(degraded=False, activated=True, components_changed=True),
    }
    for t in out:
        assert await hs_row(sessionmaker, t) == (at, h)
        assert await tenant_hb(sessionmaker, t) == (T0, OK)  # not marked touch: tenant row untouched


async def test_an_older_or_equal_heartbeat_never_overwrites_a_recorded_one(sessionmaker):
    newer = T0 + timedelta(seconds=60)
    tid = await make_tenant(sessionmaker, last_seen=newer)  # e.g. written by the transactional path
    same = await make_tenant(sessionmaker, last_seen=newer)

    out = await flush(sessionmaker, (tid, newer - timedelta(seconds=30), health("old"), True),
                      (same, newer, health("same"), True))

    assert out == {tid: NOT_WRITTEN, same: NOT_WRITTEN}  # done (not retried), nothing written
    for t in (tid, same):
        assert await hs_row(sessionmaker, t) == (newer, OK)
        assert await tenant_hb(sessionmaker, t) == (newer, OK)

    # ...while a strictly newer one is written, both places when marked touch
    later = newer + timedelta(seconds=1)
    assert (await flush(sessionmaker, (tid, later, health("new"), True)))[tid].activated is True
    assert await hs_row(sessionmaker, tid) == (later, health("new"))
    assert await tenant_hb(sessionmaker, tid) == (later, health("new"))


async def test_the_tenant_row_is_refreshed_only_for_entries_marked_touch(sessionmaker):
    touched, quiet = await make_tenant(sessionmaker), await make_tenant(sessionmaker)
    at, h = T0 + timedelta(seconds=30), health("1.0.1")

    out = await flush(sessionmaker, (touched, at, h, True), (quiet, at, h, False))

    assert set(out) == {touched, quiet}
    assert await tenant_hb(sessionmaker, touched) == (at, h)
    assert await tenant_hb(sessionmaker, quiet) == (T0, OK)
    assert await hs_row(sessionmaker, touched) == await hs_row(sessionmaker, quiet) == (at, h)


async def test_a_locked_tenant_row_skips_touch_entries_without_waiting(sessionmaker):
    touch_held = await make_tenant(sessionmaker)
    quiet_held = await make_tenant(sessionmaker)
    free = await make_tenant(sessionmaker)
    at, h = T0 + timedelta(seconds=30), health("1.0.1")

    async with holding(sessionmaker, ("tenants", touch_held), ("tenants", quiet_held)):
        out = await flush(sessionmaker, (touch_held, at, h, True), (quiet_held, at, h, False), (free, at, h, True))

    # A touch entry needs the tenant row: skipped, nothing written, not returned (the caller retries).
    assert touch_held not in out
    assert await hs_row(sessionmaker, touch_held) == (T0, OK)
    assert await tenant_hb(sessionmaker, touch_held) == (T0, OK)
    # A non-touch entry writes only heartbeat_state, whose row was free.
    assert out[quiet_held] == Flushed(False, True, False)
    assert await hs_row(sessionmaker, quiet_held) == (at, h)
    assert out[free] == Flushed(False, True, False)
    assert await tenant_hb(sessionmaker, free) == (at, h)

    # Once the holder is gone, the skipped entry goes through.
    assert touch_held in await flush(sessionmaker, (touch_held, at, h, True))
    assert await tenant_hb(sessionmaker, touch_held) == (at, h)


@pytest.mark.parametrize("touch", [False, True])
async def test_a_locked_heartbeat_state_row_is_skipped_without_waiting(sessionmaker, touch):
    held, free = await make_tenant(sessionmaker), await make_tenant(sessionmaker)
    at, h = T0 + timedelta(seconds=30), health("1.0.1")

    async with holding(sessionmaker, ("heartbeat_state", held)):
        out = await flush(sessionmaker, (held, at, h, touch), (free, at, h, touch))

    assert held not in out
    assert await hs_row(sessionmaker, held) == (T0, OK)
    assert await tenant_hb(sessionmaker, held) == (T0, OK)  # a touch entry needs both rows
    assert out[free] == Flushed(False, True, False)
    assert await hs_row(sessionmaker, free) == (at, h)


async def test_a_state_change_in_flight_is_skipped_and_its_decision_is_returned_next_time(sessionmaker):
    """As ``degrade_silent`` does: tenant row, then heartbeat_state, then the claim; the flush neither
    waits for it nor writes under it, and the next flush reports what it decided."""
    tid = await make_tenant(sessionmaker)
    at, h = T0 + timedelta(seconds=30), health("1.0.1")

    async with sessionmaker() as s, s.begin():
        await s.execute(text("SELECT 1 FROM tenants WHERE id = :t FOR UPDATE"), {"t": tid})
        await s.execute(text("UPDATE heartbeat_state SET degraded = true WHERE tenant_id = :t"), {"t": tid})
        for touch in (False, True):
            assert tid not in await flush(sessionmaker, (tid, at, h, touch))

    assert await flush(sessionmaker, (tid, at, h, False)) == {tid: Flushed(True, True, False)}
    assert await hs_row(sessionmaker, tid) == (at, h)


async def test_tenants_without_a_heartbeat_state_row_are_done(sessionmaker):
    no_row = await make_tenant(sessionmaker, state_row=False)
    purged = uuid.uuid4()  # no tenant row either
    present = await make_tenant(sessionmaker)
    at, h = T0 + timedelta(seconds=30), health("1.0.1")

    out = await flush(sessionmaker, (no_row, at, h, True), (purged, at, h, False), (present, at, h, False))

    assert out == {no_row: NOT_WRITTEN, purged: NOT_WRITTEN, present: Flushed(False, True, False)}
    async with sessionmaker() as s:
        assert (await s.execute(select(m.HeartbeatState).where(m.HeartbeatState.tenant_id == no_row))
                ).scalar_one_or_none() is None


async def test_many_rows_and_repeated_flushes_on_one_connection(sessionmaker):
    """More than five executions of the statement (Postgres may then plan it generically) over more
    rows than one flush slice: every row written each time, flags for each."""
    tids = [await make_tenant(sessionmaker) for _ in range(60)]
    for i in range(8):
        at = T0 + timedelta(seconds=i + 1)
        out = await flush(sessionmaker, *((t, at, OK, i % 3 == 0) for t in tids))
        assert out == dict.fromkeys(tids, Flushed(False, True, False))
    async with sessionmaker() as s:
        seen = set((await s.execute(select(m.HeartbeatState.last_seen)
                                    .where(m.HeartbeatState.tenant_id.in_(tids)))).scalars())
    assert seen == {T0 + timedelta(seconds=8)}
