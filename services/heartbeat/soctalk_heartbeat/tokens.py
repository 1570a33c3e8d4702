"""In-memory view of adapter tokens and tenant states, so verifying a heartbeat costs no query.

What callers can rely on:

* ``ensure(prefixes, tenants)`` loads every prefix/tenant the cache does not hold, or holds for longer
  than ``max_age_s``, in one query per table; afterwards ``record()`` / ``tenant()`` answer from memory.
  A prefix with no row is cached as unknown too (forged tokens cannot turn into a query per message).
* ``refresh()`` (a periodic task, every ``refresh_s`` ≈ 1 s) reloads every cached entry in one query
  per table and evicts entries unused for ``idle_s``. Together with ``max_age_s`` this bounds how long
  a revocation, expiry change or tenant decommission can go unseen: one refresh period normally,
  ``max_age_s`` if the refresh loop is failing. If Postgres is down and an entry is too old, ``ensure``
  raises and the caller retries the messages later — a stale cache never accepts.
* Only public data is held: prefixes, keyed hashes, owners, lifetimes. Never a token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_common.db import models as m
from soctalk_secrets.domain import AdapterTokenRecord


@dataclass
class _Entry:
    value: Any
    loaded: float
    used: float


class TokenCache:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_age_s: float = 3.0,
                 idle_s: float = 600.0, max_entries: int = 200_000) -> None:
        self.sessionmaker = sessionmaker
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self.max_entries = max_entries
        self._tokens: dict[str, _Entry] = {}
        self._tenants: dict[str, _Entry] = {}
        self.loads = 0  # queries issued (observability and tests)

    # -- reads (memory only) ----------------------------------------------------------------------
    def record(self, prefix: str) -> AdapterTokenRecord | None:
        e = self._tokens.get(prefix)
        if e is None:
            return None
        e.used = time.monotonic()
        return e.value

    def tenant(self, tenant_id: str) -> tuple[bool, str | None]:
        """``(known, state)``; ``known`` is False when there is no tenant row."""
        e = self._tenants.get(tenant_id)
        if e is None or e.value is None:
            return False, None
        e.used = time.monotonic()
        return True, e.value

    def __len__(self) -> int:
        return len(self._tokens)

    # -- loading ----------------------------------------------------------------------------------
    async def ensure(self, prefixes: Iterable[str], tenants: Iterable[str] = ()) -> None:
        """Make sure every given prefix (and its owner) and tenant is cached and fresh."""
        now = time.monotonic()
        want_p = {p for p in prefixes if self._stale(self._tokens.get(p), now)}
        if want_p:
            await self._load_tokens(want_p)
        owners = {e.value.tenant_id for p in prefixes if (e := self._tokens.get(p)) and e.value is not None}
        want_t = {t for t in {*owners, *tenants} if self._stale(self._tenants.get(t), now)}
        if want_t:
            await self._load_tenants(want_t)

    async def refresh(self) -> None:
        """Reload everything cached (revocations take effect) and forget what nobody used lately."""
        now = time.monotonic()
        for table in (self._tokens, self._tenants):
            for k in [k for k, e in table.items() if now - e.used > self.idle_s]:
                del table[k]
        if self._tokens:
            await self._load_tokens(set(self._tokens))
        if self._tenants:
            await self._load_tenants(set(self._tenants))

    def _stale(self, e: _Entry | None, now: float) -> bool:
        return e is None or now - e.loaded > self.max_age_s

    async def _load_tokens(self, prefixes: set[str]) -> None:
        stmt = select(m.AdapterToken).where(
            m.AdapterToken.prefix == any_(bindparam("p", sorted(prefixes), type_=ARRAY(String))))
        async with self.sessionmaker() as s:
            found = {r.prefix: _record(r) for r in (await s.execute(stmt)).scalars()}
        self.loads += 1
        now = time.monotonic()
        for p in prefixes:
            old = self._tokens.get(p)
            self._tokens[p] = _Entry(found.get(p), now, old.used if old else now)
        self._bound(self._tokens)

    async def _load_tenants(self, tenant_ids: set[str]) -> None:
        ids = [uuid.UUID(t) for t in tenant_ids]
        stmt = select(m.Tenant.id, m.Tenant.state).where(
            m.Tenant.id == any_(bindparam("t", ids, type_=ARRAY(UUID(as_uuid=True)))))
        async with self.sessionmaker() as s:
            found = {str(r.id): r.state for r in (await s.execute(stmt)).all()}
        self.loads += 1
        now = time.monotonic()
        for t in tenant_ids:
            old = self._tenants.get(t)
            self._tenants[t] = _Entry(found.get(t), now, old.used if old else now)
        self._bound(self._tenants)

    def _bound(self, table: dict[str, _Entry]) -> None:
        # Forged prefixes could grow the table without limit: drop the least recently used first.
        if len(table) > self.max_entries:
            for k, _ in sorted(table.items(), key=lambda kv: kv[1].used)[: len(table) - self.max_entries]:
                del table[k]


def _record(row: m.AdapterToken) -> AdapterTokenRecord:
    return AdapterTokenRecord(prefix=row.prefix, token_hash=row.token_hash, tenant_id=str(row.tenant_id),
                              created_at=row.created_at, version_label=row.version_label,
                              expires_at=row.expires_at, revoked_at=row.revoked_at)
