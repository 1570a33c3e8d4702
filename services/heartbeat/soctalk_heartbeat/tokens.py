"""In-memory view of adapter tokens and tenant states, so verifying a heartbeat costs no query.

What callers can rely on:

* ``ensure(prefixes, tenants)`` loads every prefix/tenant the cache does not hold, or holds for longer
  than ``max_age_s``, in one query per table; afterwards ``record()`` / ``tenant()`` answer from memory.
  A prefix with no row is cached as unknown too (forged tokens cannot turn into a query per message).
* ``refresh()`` (a periodic task, every ``refresh_s`` ≈ 1 s) reloads the cached tokens and tenants that
  are not known to be current (``REFRESH_ROWS`` per query) and evicts entries unused for ``idle_s``;
  unknown prefixes (at most ``max_unknown``, oldest dropped first) are looked up again only when
  presented after ``max_age_s``. Together with ``max_age_s`` this bounds how long a revocation, expiry
  change or tenant decommission can go unseen: about ``2 × refresh_s`` normally, ``max_age_s`` if the
  refresh loop is failing. If Postgres is down and an entry is too old, ``ensure`` raises and the caller
  retries the messages later — a stale cache never accepts.
* Revocation is instant while the LISTEN connection is up: a trigger NOTIFYs every token or tenant-state
  change and ``invalidate_*`` drops the entry, so the very next heartbeat re-reads it.
* Known to be current (``coverage``, the listener's :meth:`~soctalk_common.notify.PgListener.coverage`):
  while the listener works, an entry loaded after it started listening stays current until a
  notification says otherwise — its confirmation pings prove every earlier change was delivered —
  so the refresh re-reads nothing. Without a listener, or while it is down, every entry is re-read
  each refresh, as the bound above requires. A row that did not exist ("no such tenant") is never
  covered this way: creating one notifies nobody. An invalidation that arrives while a load of the
  same key is in flight marks what that load returns as stale (it may predate the change).
* Only public data is held: prefixes, keyed hashes, owners, lifetimes. Never a token.
* One small slotted entry per token and per tenant; a refresh that finds a row unchanged keeps the
  record it has (no new objects per cached token per second).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from soctalk_common.db import models as m
from soctalk_secrets.domain import AdapterTokenRecord
from sqlalchemy import String, any_, bindparam, cast, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

REFRESH_ROWS = 2_000  # rows per refresh query


class _Entry:
    __slots__ = ("value", "loaded", "used")

    def __init__(self, value: Any, loaded: float, used: float) -> None:
        self.value = value
        self.loaded = loaded
        self.used = used


class TokenCache:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_age_s: float = 3.0,
                 idle_s: float = 600.0, max_unknown: int = 10_000, refresh_s: float = 1.0,
                 coverage: Callable[[], tuple[float, float] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``coverage()``: what the LISTEN connection vouches for right now (see the module doc and
        :func:`soctalk_common.notify.fresh_as_of`); entries are dated by ``time.monotonic()`` read
        before their query was sent. None: nothing is vouched for, every refresh re-reads everything."""
        self.sessionmaker = sessionmaker
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self.max_unknown = max_unknown
        self.refresh_s = refresh_s
        self.coverage = coverage
        self._clock = clock  # the listener's clock too (tests move both)
        self._tokens: dict[str, _Entry] = {}  # prefix → AdapterTokenRecord
        self._unknown: dict[str, float] = {}  # prefix with no row → when that was seen (insertion order)
        self._tenants: dict[str, _Entry] = {}  # tenant id → state (None: no row)
        self._in_flight = 0  # loads whose query has been sent and whose rows are not stored yet
        self._raced: set[str] = set()  # keys invalidated while a load was in flight
        self._evicted_at = float("-inf")
        self.loads = 0  # queries issued (observability and tests)
        self.invalidations = 0

    # -- reads (memory only) ----------------------------------------------------------------------
    def record(self, prefix: str, now: float | None = None) -> AdapterTokenRecord | None:
        """``now``: the cache's clock (``time.monotonic``), when the caller already has it (one reading
        per batch)."""
        e = self._tokens.get(prefix)
        if e is None:
            return None
        e.used = self._clock() if now is None else now
        return e.value

    def tenant(self, tenant_id: str, now: float | None = None) -> tuple[bool, str | None]:
        """``(known, state)``; ``known`` is False when there is no tenant row."""
        e = self._tenants.get(tenant_id)
        if e is None or e.value is None:
            return False, None
        e.used = self._clock() if now is None else now
        return True, e.value

    def __len__(self) -> int:
        return len(self._tokens)

    # -- invalidation (Postgres NOTIFY on revocation / expiry / tenant state change) ----------------
    def invalidate_token(self, prefix: str) -> None:
        """Forget a prefix now: the next heartbeat presenting it reloads the row before any decision."""
        self._tokens.pop(prefix, None)
        self._unknown.pop(prefix, None)
        self._invalidated("p:" + prefix)

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)
        self._invalidated("t:" + tenant_id)

    def _invalidated(self, key: str) -> None:
        self.invalidations += 1
        if self._in_flight:  # a load in flight may return the row as it was before this change
            self._raced.add(key)

    def _coverage(self) -> tuple[float, float] | None:
        return self.coverage() if self.coverage is not None else None


    # -- loading ----------------------------------------------------------------------------------
    async def ensure(self, prefixes: Iterable[str], tenants: Iterable[str] = ()) -> None:
        """Make sure every given prefix (and its owner) and tenant is cached and fresh."""
        prefixes = set(prefixes)
        oldest, cutoff = self._cutoffs(self.max_age_s)
        toks, unknown = self._tokens, self._unknown
        want_p = set()
        for p in prefixes:  # per batch on the hot path: one comparison per prefix
            e = toks.get(p)
            if e is None:
                if unknown.get(p, float("-inf")) < oldest:
                    want_p.add(p)
            elif e.loaded < cutoff:
                want_p.add(p)
        if want_p:
            await self._load_tokens(want_p)
            oldest, cutoff = self._cutoffs(self.max_age_s)
        want_t = set()
        for t in {*(e.value.tenant_id for p in prefixes if (e := toks.get(p)) is not None), *tenants}:
            e = self._tenants.get(t)
            if e is None or e.loaded < (oldest if e.value is None else cutoff):  # no row: nobody notifies
                want_t.add(t)
        if want_t:
            await self._load_tenants(want_t)

    def _cutoffs(self, age: float) -> tuple[float, float]:
        """``(oldest, cutoff)`` for entries that must be known current within ``age`` seconds: one loaded
        before ``oldest`` is too old on its own; one the listener can vouch for (a found row) is current
        iff loaded at or after ``cutoff``. That is ``now - fresh_as_of(coverage, loaded) <= age``
        (``soctalk_common.notify``) with the coverage read once, for a whole batch."""
        oldest = self._clock() - age
        cov = self._coverage()
        if cov is not None and cov[1] >= oldest:  # confirmed lately: anything loaded while listening
            return oldest, min(oldest, cov[0])
        return oldest, oldest

    async def refresh(self) -> None:
        """Reload the cached tokens and tenants not known to be current (revocations take effect),
        forget what nobody used lately. Unknown prefixes are not refreshed: they are looked up again
        when next presented."""
        now = self._clock()
        if now - self._evicted_at >= min(60.0, self.idle_s / 10):  # idle entries: no hurry
            self._evicted_at = now
            for table in (self._tokens, self._tenants):
                for k in [k for k, e in table.items() if now - e.used > self.idle_s]:
                    del table[k]
        if self.coverage is None:
            tokens, tenants = list(self._tokens), list(self._tenants)
        else:  # what the listener cannot vouch for lately (all of it while its pings do not come back)
            oldest, cutoff = self._cutoffs(2 * self.refresh_s)
            tokens = [k for k, e in self._tokens.items() if e.loaded < cutoff]
            tenants = [k for k, e in self._tenants.items()
                       if e.loaded < (oldest if e.value is None else cutoff)]
        # In slices: with tens of thousands of cached tenants, one query per table would build (and
        # drop) that many rows every second; slices keep the transient memory of a refresh small.
        for i in range(0, len(tokens), REFRESH_ROWS):
            await self._load_tokens(set(tokens[i:i + REFRESH_ROWS]))
        for i in range(0, len(tenants), REFRESH_ROWS):
            await self._load_tenants(set(tenants[i:i + REFRESH_ROWS]))

    async def _query(self, stmt: Any) -> tuple[float, list[Any], set[str]]:
        """Run a load: (clock read before it was sent, its rows, keys invalidated meanwhile)."""
        started = self._clock()
        self._in_flight += 1
        try:
            async with self.sessionmaker() as s:
                rows = list((await s.execute(stmt)).all())
        finally:
            self._in_flight -= 1
            raced = self._raced
            if not self._in_flight:
                self._raced = set()
            else:
                raced = set(raced)
        self.loads += 1
        return started, rows, raced

    async def _load_tokens(self, prefixes: set[str]) -> None:
        t = m.AdapterToken
        # Plain rows, not ORM objects: the refresh reloads every cached token each second.
        # The owner as text: the record keeps it as a string, and no UUID object is built per row.
        stmt = select(t.prefix, t.token_hash, cast(t.tenant_id, String).label("tenant_id"), t.created_at,
                      t.version_label, t.expires_at, t.revoked_at
                      ).where(t.prefix == any_(bindparam("p", sorted(prefixes), type_=ARRAY(String))))
        started, rows, raced = await self._query(stmt)
        found = {r[0]: r for r in rows}
        now = self._clock()
        for p in prefixes:
            row = found.get(p)
            # Entries are dated by when their query was sent (what ``coverage`` reasons about); a row
            # that raced an invalidation is dated never, so the next ``ensure`` reads it again.
            loaded = float("-inf") if "p:" + p in raced else started
            if row is not None:
                old = self._tokens.get(p)
                if old is not None and _same(old.value, row):
                    old.loaded = loaded  # unchanged: keep the record
                else:
                    self._tokens[p] = _Entry(_record(row), loaded, old.used if old else now)
                self._unknown.pop(p, None)
            else:  # deleted, or never existed (forged): remember briefly, bounded
                self._tokens.pop(p, None)
                self._unknown.pop(p, None)
                self._unknown[p] = loaded
        while len(self._unknown) > self.max_unknown:
            del self._unknown[next(iter(self._unknown))]

    async def _load_tenants(self, tenant_ids: set[str]) -> None:
        # Ids travel as text both ways (Postgres casts): no UUID object is built per tenant per refresh.
        ids = cast(bindparam("t", sorted(tenant_ids), type_=ARRAY(String)), ARRAY(UUID(as_uuid=True)))
        stmt = select(cast(m.Tenant.id, String), m.Tenant.state).where(m.Tenant.id == any_(ids))
        started, rows, raced = await self._query(stmt)
        found = {r[0]: r[1] for r in rows}
        now = self._clock()
        for t in tenant_ids:
            old = self._tenants.get(t)
            state = found.get(t)
            loaded = float("-inf") if "t:" + t in raced else started
            if old is None:
                self._tenants[t] = _Entry(state, loaded, now)
            else:
                if old.value != state:  # unchanged: keep the object we hold (no churn per second)
                    old.value = state
                old.loaded = loaded


def _same(rec: AdapterTokenRecord, row: Any) -> bool:
    """Whether a loaded row says what the cached record says (then the record is kept). Both sides
    are stored values (nothing presented by a client), so plain equality is fine here."""
    return (rec.token_hash == row.token_hash and rec.tenant_id == str(row.tenant_id)
            and rec.created_at == row.created_at and rec.version_label == row.version_label
            and rec.expires_at == row.expires_at and rec.revoked_at == row.revoked_at)


def _record(row: Any) -> AdapterTokenRecord:
    return AdapterTokenRecord(prefix=row.prefix, token_hash=row.token_hash, tenant_id=str(row.tenant_id),
                              created_at=row.created_at, version_label=row.version_label,
                              expires_at=row.expires_at, revoked_at=row.revoked_at)
