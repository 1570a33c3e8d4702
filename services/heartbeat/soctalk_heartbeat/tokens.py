"""In-memory view of adapter tokens and tenant states, so verifying a heartbeat costs no query.

What callers can rely on:

* ``ensure(prefixes, tenants)`` loads every prefix/tenant the cache does not hold, or holds for longer
  than ``max_age_s``, in one query per table; afterwards ``record()`` / ``tenant()`` answer from memory.
  A prefix with no row is cached as unknown too (forged tokens cannot turn into a query per message).
* ``refresh()`` (a periodic task, every ``refresh_s`` ≈ 1 s) reloads every cached token and tenant
  (``REFRESH_ROWS`` per query) and evicts entries unused for ``idle_s``; unknown prefixes (at most
  ``max_unknown``, oldest dropped first) are looked up again only when presented after ``max_age_s``.
  Together with ``max_age_s`` this bounds how long a revocation, expiry change or tenant decommission
  can go unseen: one refresh period normally, ``max_age_s`` if the refresh loop is failing. If Postgres
  is down and an entry is too old, ``ensure`` raises and the caller retries the messages later — a
  stale cache never accepts.
* Revocation is instant while the LISTEN connection is up: a trigger NOTIFYs every token or tenant-state
  change and ``invalidate_*`` drops the entry, so the very next heartbeat re-reads it.
* Only public data is held: prefixes, keyed hashes, owners, lifetimes. Never a token.
* One small slotted entry per token and per tenant; a refresh that finds a row unchanged keeps the
  record it has (no new objects per cached token per second).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
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
                 idle_s: float = 600.0, max_unknown: int = 10_000) -> None:
        self.sessionmaker = sessionmaker
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self.max_unknown = max_unknown
        self._tokens: dict[str, _Entry] = {}  # prefix → AdapterTokenRecord
        self._unknown: dict[str, float] = {}  # prefix with no row → when that was seen (insertion order)
        self._tenants: dict[str, _Entry] = {}  # tenant id → state (None: no row)
        self.loads = 0  # queries issued (observability and tests)
        self.invalidations = 0

    # -- reads (memory only) ----------------------------------------------------------------------
    def record(self, prefix: str, now: float | None = None) -> AdapterTokenRecord | None:
        """``now``: ``time.monotonic()``, when the caller already has it (one reading per batch)."""
        e = self._tokens.get(prefix)
        if e is None:
            return None
        e.used = time.monotonic() if now is None else now
        return e.value

    def tenant(self, tenant_id: str, now: float | None = None) -> tuple[bool, str | None]:
        """``(known, state)``; ``known`` is False when there is no tenant row."""
        e = self._tenants.get(tenant_id)
        if e is None or e.value is None:
            return False, None
        e.used = time.monotonic() if now is None else now
        return True, e.value

    def __len__(self) -> int:
        return len(self._tokens)

    # -- invalidation (Postgres NOTIFY on revocation / expiry / tenant state change) ----------------
    def invalidate_token(self, prefix: str) -> None:
        """Forget a prefix now: the next heartbeat presenting it reloads the row before any decision."""
        self._tokens.pop(prefix, None)
        self._unknown.pop(prefix, None)
        self.invalidations += 1

    def invalidate_tenant(self, tenant_id: str) -> None:
        self._tenants.pop(tenant_id, None)
        self.invalidations += 1

    # -- loading ----------------------------------------------------------------------------------
    async def ensure(self, prefixes: Iterable[str], tenants: Iterable[str] = ()) -> None:
        """Make sure every given prefix (and its owner) and tenant is cached and fresh."""
        prefixes = set(prefixes)
        now = time.monotonic()
        want_p = {p for p in prefixes if now - self._loaded(p) > self.max_age_s}
        if want_p:
            await self._load_tokens(want_p)
        owners = {e.value.tenant_id for p in prefixes if (e := self._tokens.get(p)) is not None}
        want_t = {t for t in {*owners, *tenants}
                  if (e := self._tenants.get(t)) is None or now - e.loaded > self.max_age_s}
        if want_t:
            await self._load_tenants(want_t)

    async def refresh(self) -> None:
        """Reload every cached token and tenant (revocations take effect), forget what nobody used
        lately. Unknown prefixes are not refreshed: they are looked up again when next presented."""
        now = time.monotonic()
        for table in (self._tokens, self._tenants):
            for k in [k for k, e in table.items() if now - e.used > self.idle_s]:
                del table[k]
        # In slices: with tens of thousands of cached tenants, one query per table would build (and
        # drop) that many rows every second; slices keep the transient memory of a refresh small.
        tokens = list(self._tokens)
        for i in range(0, len(tokens), REFRESH_ROWS):
            await self._load_tokens(set(tokens[i:i + REFRESH_ROWS]))
        tenants = list(self._tenants)
        for i in range(0, len(tenants), REFRESH_ROWS):
            await self._load_tenants(set(tenants[i:i + REFRESH_ROWS]))

    def _loaded(self, prefix: str) -> float:
        e = self._tokens.get(prefix)
        if e is not None:
            return e.loaded
        return self._unknown.get(prefix, float("-inf"))

    async def _load_tokens(self, prefixes: set[str]) -> None:
        t = m.AdapterToken
        # Plain rows, not ORM objects: the refresh reloads every cached token each second.
        # The owner as text: the record keeps it as a string, and no UUID object is built per row.
        stmt = select(t.prefix, t.token_hash, cast(t.tenant_id, String).label("tenant_id"), t.created_at,
                      t.version_label, t.expires_at, t.revoked_at
                      ).where(t.prefix == any_(bindparam("p", sorted(prefixes), type_=ARRAY(String))))
        async with self.sessionmaker() as s:
            found = {r[0]: r for r in (await s.execute(stmt)).all()}
        self.loads += 1
        now = time.monotonic()
        for p in prefixes:
            row = found.get(p)
            if row is not None:
                old = self._tokens.get(p)
                if old is not None and _same(old.value, row):
                    old.loaded = now  # unchanged: keep the record
                else:
                    self._tokens[p] = _Entry(_record(row), now, old.used if old else now)
                self._unknown.pop(p, None)
            else:  # deleted, or never existed (forged): remember briefly, bounded
                self._tokens.pop(p, None)
                self._unknown.pop(p, None)
                self._unknown[p] = now
        while len(self._unknown) > self.max_unknown:
            del self._unknown[next(iter(self._unknown))]

    async def _load_tenants(self, tenant_ids: set[str]) -> None:
        # Ids travel as text both ways (Postgres casts): no UUID object is built per tenant per refresh.
        ids = cast(bindparam("t", sorted(tenant_ids), type_=ARRAY(String)), ARRAY(UUID(as_uuid=True)))
        stmt = select(cast(m.Tenant.id, String), m.Tenant.state).where(m.Tenant.id == any_(ids))
        async with self.sessionmaker() as s:
            found = {r[0]: r[1] for r in (await s.execute(stmt)).all()}
        self.loads += 1
        now = time.monotonic()
        for t in tenant_ids:
            old = self._tenants.get(t)
            state = found.get(t)
            if old is None:
                self._tenants[t] = _Entry(state, now, now)
            else:
                if old.value != state:  # unchanged: keep the object we hold (no churn per second)
                    old.value = state
                old.loaded = now


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
