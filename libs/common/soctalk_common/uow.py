"""Unit of work: one Postgres transaction holding a handler's state change, its lifecycle events,
the events it emits (outbox rows) and the inbox row of the message that caused it.

A handler does its outside-world side effects first (idempotent by postcondition), then opens the unit
of work, records, and commits. If the commit fails nothing is published and the message is redelivered.

Round trips are what a handler's transaction costs (each one is a socket write and wake-up on both
sides), so the commit writes the inbox row, the lifecycle rows and the outbox rows with ONE statement:
the inbox insert is a data-modifying CTE, and the lifecycle and outbox inserts only take rows when it
inserted one (``ON CONFLICT DO NOTHING`` found nothing), so a duplicate delivery writes nothing and is
rolled back. Lifecycle and outbox rows are therefore written at :meth:`UnitOfWork.commit`, not
before: a query earlier in the same transaction does not see them.
"""

from __future__ import annotations

import json
import uuid
from types import TracebackType
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from soctalk_common import events as ev
from soctalk_common.db import models as m


class AlreadyProcessed(Exception):
    """The inbox already holds (consumer, event_id): another delivery or replica did this work."""


# --- the commit statement --------------------------------------------------------------------------
# Arrays in, one row per element; ``WITH ORDINALITY … ORDER BY`` keeps outbox ids in emit order (the
# relay publishes in id order). Values go as text and are cast by Postgres: one statement shape per
# (inbox?, lifecycle?, outbox?) combination, so prepared statements are reused.

_INBOX = ("ib AS (INSERT INTO inbox (consumer, event_id) VALUES (:consumer, CAST(:event_id AS uuid)) "
          "ON CONFLICT DO NOTHING RETURNING 1)")
_LIFECYCLE = (
    "INSERT INTO tenant_lifecycle_events (event_id, tenant_id, slug, type, state_from, state_to, step, "
    "message, details, correlation_id, causation_id, occurred_at) "
    "SELECT e::uuid, t::uuid, sl, ty, sf, st, sp, mg, d::jsonb, c::uuid, ca::uuid, o::timestamptz "
    "FROM unnest(CAST(:l_event AS text[]), CAST(:l_tenant AS text[]), CAST(:l_slug AS text[]), "
    "CAST(:l_type AS text[]), CAST(:l_from AS text[]), CAST(:l_to AS text[]), CAST(:l_step AS text[]), "
    "CAST(:l_message AS text[]), CAST(:l_details AS text[]), CAST(:l_corr AS text[]), "
    "CAST(:l_cause AS text[]), CAST(:l_at AS text[])) WITH ORDINALITY "
    "AS u(e, t, sl, ty, sf, st, sp, mg, d, c, ca, o, n)")
_OUTBOX = (
    "INSERT INTO outbox (subject, event_type, payload, headers) "
    "SELECT s, ty, p, h::jsonb FROM unnest(CAST(:o_subject AS text[]), CAST(:o_type AS text[]), "
    "CAST(:o_payload AS bytea[]), CAST(:o_headers AS text[])) WITH ORDINALITY AS u(s, ty, p, h, n)")


def _commit_sql(inbox: bool, lifecycle: bool, outbox: bool) -> str:
    gate = " WHERE EXISTS (SELECT 1 FROM ib)" if inbox else ""
    parts = [_INBOX] if inbox else []
    if lifecycle:
        parts.append(f"lc AS ({_LIFECYCLE}{gate} ORDER BY n)")
    if outbox:
        parts.append(f"ob AS ({_OUTBOX}{gate} ORDER BY n)")
    tail = "SELECT count(*) FROM ib" if inbox else "SELECT 1"
    return "WITH " + ", ".join(parts) + " " + tail


_COMMIT_SQL = {(i, lc, o): text(_commit_sql(i, lc, o))
               for i in (True, False) for lc in (True, False) for o in (True, False) if i or lc or o}
_SEEN_SQL = text("SELECT 1 FROM inbox WHERE consumer = :consumer AND event_id = CAST(:event_id AS uuid)")
_RECORD_INBOX_SQL = text("INSERT INTO inbox (consumer, event_id) VALUES (:consumer, CAST(:event_id AS uuid)) "
                         "ON CONFLICT DO NOTHING")


# Built once: constructing a select and its cache key costs ~60 µs a call; a prebuilt one, nothing.
_TENANT = select(m.Tenant).where(m.Tenant.id == bindparam("tenant_id"))
_TENANT_FOR_UPDATE = _TENANT.with_for_update()


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


class UnitOfWork:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, consumer: str | None = None,
                 event_id: uuid.UUID | None = None, owner: UnitOfWorkFactory | None = None) -> None:
        self._sessionmaker = sessionmaker
        self.consumer = consumer
        self.event_id = event_id
        self._owner = owner
        self.session: AsyncSession
        self.committed = False
        self.emitted: list[ev.Event] = []
        self._outbox: list[tuple[str, str, bytes, str | None]] = []
        self._lifecycle: list[tuple[str | None, ...]] = []

    async def __aenter__(self) -> UnitOfWork:
        self.session = self._sessionmaker()
        await self.session.begin()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self.committed:
            await self.session.rollback()
        await self.session.close()

    # -- reads -----------------------------------------------------------------------------------
    async def tenant(self, tenant_id: uuid.UUID, *, lock: bool = True) -> m.Tenant | None:
        """Lock the tenant row: per-tenant writes serialise, so outbox ids follow commit order per tenant."""
        stmt = _TENANT_FOR_UPDATE if lock else _TENANT
        return (await self.session.execute(stmt, {"tenant_id": tenant_id})).scalar_one_or_none()

    # -- writes ----------------------------------------------------------------------------------
    def emit(self, event: ev.Event, *, headers: dict[str, str] | None = None) -> None:
        """Queue an event for publication (outbox row written at commit)."""
        self._outbox.append((event.subject, event.event_type, event.model_dump_json().encode(),
                             None if headers is None else json.dumps(headers)))
        self.emitted.append(event)

    def lifecycle(self, cause: ev.Event, type_: str, *, slug: str | None = None, state_from: str | None = None,
                  state_to: str | None = None, step: str | None = None, message: str = "",
                  details: dict[str, Any] | None = None, tenant_id: uuid.UUID | None = None) -> ev.TenantLifecycleEvent:
        """Record a TenantLifecycleEvent row (written at commit) and mirror it on the lifecycle stream."""
        le = cause.caused(ev.TenantLifecycleEvent, type=type_, slug=slug, state_from=state_from, state_to=state_to,
                          step=step, message=message, details=details or {},
                          **({"tenant_id": tenant_id} if tenant_id else {}))
        self._lifecycle.append((
            str(le.event_id), str(le.tenant_id), slug, type_, _s(state_from), _s(state_to), _s(step), message,
            json.dumps(le.details), str(le.correlation_id), _s(le.causation_id), le.occurred_at.isoformat()))
        self.emit(le)
        return le

    async def commit(self) -> None:
        """Record the inbox row (if bound to a message) and commit atomically.

        Raises ``AlreadyProcessed`` when the inbox row exists: the whole transaction is rolled back.
        """
        record_inbox = bool(self.consumer and self.event_id
                            and not (self._owner and self._owner.inbox_recorded))
        try:
            await self.session.flush()  # ORM changes (tenant row …) go first
            if record_inbox or self._lifecycle or self._outbox:
                params: dict[str, Any] = {}
                if record_inbox:
                    params.update(consumer=self.consumer, event_id=str(self.event_id))
                if self._lifecycle:
                    cols = list(zip(*self._lifecycle, strict=True))
                    for name, col in zip(("l_event", "l_tenant", "l_slug", "l_type", "l_from", "l_to", "l_step",
                                          "l_message", "l_details", "l_corr", "l_cause", "l_at"), cols,
                                         strict=True):
                        params[name] = list(col)
                if self._outbox:
                    cols = list(zip(*self._outbox, strict=True))
                    for name, col in zip(("o_subject", "o_type", "o_payload", "o_headers"), cols, strict=True):
                        params[name] = list(col)
                stmt = _COMMIT_SQL[(record_inbox, bool(self._lifecycle), bool(self._outbox))]
                inserted = (await self.session.execute(stmt, params)).scalar_one()
                self._lifecycle, self._outbox = [], []
                if record_inbox and not inserted:
                    await self.session.rollback()
                    self.committed = True
                    raise AlreadyProcessed(f"{self.consumer}/{self.event_id}")
            await self.session.commit()
        except IntegrityError:
            await self.session.rollback()
            self.committed = True
            raise
        self.committed = True
        if record_inbox and self._owner is not None:
            self._owner.inbox_recorded = True


class UnitOfWorkFactory:
    """What handlers receive: ``async with uow() as tx: ...; await tx.commit()``."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, consumer: str | None = None,
                 event_id: uuid.UUID | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.consumer = consumer
        self.event_id = event_id
        # Only the first committed transaction of a message carries its inbox row.
        self.inbox_recorded = False
        self._autocommit: AsyncEngine | None = None

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.sessionmaker, consumer=self.consumer, event_id=self.event_id, owner=self)

    def bind(self, consumer: str, event_id: uuid.UUID) -> UnitOfWorkFactory:
        bound = UnitOfWorkFactory(self.sessionmaker, consumer=consumer, event_id=event_id)
        bound._autocommit = self._autocommit
        return bound

    @property
    def autocommit(self) -> AsyncEngine:
        """The same pool in autocommit mode: a single statement costs one round trip (no BEGIN, no
        COMMIT/ROLLBACK). For reads that need no transaction and for one-statement writes."""
        if self._autocommit is None:
            engine = self.sessionmaker.kw.get("bind")
            if not isinstance(engine, AsyncEngine):
                raise TypeError("the sessionmaker is not bound to an AsyncEngine")
            self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit

    async def seen(self, consumer: str, event_id: uuid.UUID) -> bool:
        """Whether the inbox holds (consumer, event_id): one statement, no transaction."""
        async with self.autocommit.connect() as conn:
            row = await conn.execute(_SEEN_SQL, {"consumer": consumer, "event_id": str(event_id)})
            return row.first() is not None

    async def record_inbox(self, consumer: str, event_id: uuid.UUID) -> None:
        """Record (consumer, event_id) alone (a handler that committed nothing): one statement."""
        async with self.autocommit.connect() as conn:
            await conn.execute(_RECORD_INBOX_SQL, {"consumer": consumer, "event_id": str(event_id)})
