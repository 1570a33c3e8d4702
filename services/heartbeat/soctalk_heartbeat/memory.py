"""Process-local state of the heartbeat service: what it may skip, and what it has yet to write.

Nothing here is a source of truth. ``Views`` lets a heartbeat that changes nothing skip the database
(activated, not degraded, same component statuses as last recorded); every view is corrected by the
next flush, which returns the durable flags. ``LastSeenBuffer`` holds the newest unwritten heartbeat
per tenant; losing it (a crash) loses at most one flush interval of ``last_seen`` refreshes, never a
decision. ``TenantTouches`` remembers, per tenant, the ``tenants.last_heartbeat_at`` this process last
wrote, so the flush writes that row at most once per ``tenant_touch_s`` (``heartbeat_state.last_seen``
is written for every flushed heartbeat).

All three hold one small entry per tenant (tens of thousands of them): tuples, and the raw body of the
buffered heartbeat (~0.5 KB) rather than its parsed model (~3 KB); the flush parses it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


class View(NamedTuple):
    activated: bool
    degraded: bool
    components: Mapping[str, str]


@dataclass
class Views:
    _views: dict[uuid.UUID, View] = field(default_factory=dict)

    def get(self, tenant_id: uuid.UUID) -> View | None:
        return self._views.get(tenant_id)

    def set(self, tenant_id: uuid.UUID, view: View) -> None:
        self._views[tenant_id] = view

    def update(self, tenant_id: uuid.UUID, **changes: Any) -> None:
        v = self._views.get(tenant_id)
        if v is not None:
            self._views[tenant_id] = v._replace(**changes)

    def prime(self, views: Iterable[tuple[uuid.UUID, View]]) -> None:
        """Views read from the durable flags in bulk; one a concurrent decision already set is kept."""
        for tenant_id, view in views:
            self._views.setdefault(tenant_id, view)

    def forget(self, tenant_id: uuid.UUID) -> None:
        self._views.pop(tenant_id, None)

    def fast_path(self, tenant_id: uuid.UUID, components: Mapping[str, str]) -> bool:
        """True when a valid heartbeat with these component statuses changes no decision."""
        v = self._views.get(tenant_id)
        return v is not None and v.activated and not v.degraded and v.components == components

    def __len__(self) -> int:
        return len(self._views)


class Pending(NamedTuple):
    """A verified heartbeat waiting for the flush: when we received it, and its body (valid JSON of an
    ``AdapterHeartbeat`` — it passed verification; the flush parses it again, once per tenant)."""

    seen_at: datetime
    body: bytes


@dataclass
class LastSeenBuffer:
    """Newest unwritten heartbeat per tenant (bounded by the number of tenants)."""

    _pending: dict[uuid.UUID, Pending] = field(default_factory=dict)

    def put(self, tenant_id: uuid.UUID, p: Pending) -> None:
        cur = self._pending.get(tenant_id)
        if cur is None or cur.seen_at <= p.seen_at:
            self._pending[tenant_id] = p

    def drop_not_newer(self, tenant_id: uuid.UUID, seen_at: datetime) -> None:
        """Forget a buffered heartbeat already superseded by one recorded transactionally."""
        cur = self._pending.get(tenant_id)
        if cur is not None and cur.seen_at <= seen_at:
            del self._pending[tenant_id]

    def take(self) -> dict[uuid.UUID, Pending]:
        out, self._pending = self._pending, {}
        return out

    def restore(self, entries: Mapping[uuid.UUID, Pending]) -> None:
        """Put back entries a flush could not write (a newer one that arrived meanwhile wins)."""
        for t, p in entries.items():
            self.put(t, p)

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class TenantTouches:
    """The ``tenants.last_heartbeat_at`` this process last wrote, per tenant (one datetime each).

    Forgetting it (a restart, another replica) only makes the next flush write the row again."""

    every_s: float = 30.0
    _written: dict[uuid.UUID, datetime] = field(default_factory=dict)

    def due(self, tenant_id: uuid.UUID, seen_at: datetime) -> bool:
        """Whether a heartbeat seen at ``seen_at`` should also refresh the tenant row."""
        last = self._written.get(tenant_id)
        return last is None or (seen_at - last).total_seconds() >= self.every_s

    def wrote(self, tenant_id: uuid.UUID, seen_at: datetime) -> None:
        last = self._written.get(tenant_id)
        if last is None or last < seen_at:
            self._written[tenant_id] = seen_at

    def forget(self, tenant_id: uuid.UUID) -> None:
        self._written.pop(tenant_id, None)

    def __len__(self) -> int:
        return len(self._written)
