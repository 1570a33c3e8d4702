"""Unit of work: one Postgres transaction holding a handler's state change, its lifecycle events,
the events it emits (outbox rows) and the inbox row of the message that caused it.

A handler does its outside-world side effects first (idempotent by postcondition), then opens the unit
of work, records, and commits. If the commit fails nothing is published and the message is redelivered.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_common import events as ev
from soctalk_common.db import models as m


class AlreadyProcessed(Exception):
    """The inbox already holds (consumer, event_id): another delivery or replica did this work."""


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
        self._outbox: list[dict[str, Any]] = []

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
        stmt = select(m.Tenant).where(m.Tenant.id == tenant_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    # -- writes ----------------------------------------------------------------------------------
    def emit(self, event: ev.Event, *, headers: dict[str, str] | None = None) -> None:
        """Queue an event for publication (outbox row in this transaction)."""
        # Collected and written with one multi-row INSERT at commit: cheaper than ORM objects per row.
        self._outbox.append({"subject": event.subject, "event_type": event.event_type,
                             "payload": event.model_dump_json().encode(), "headers": headers})
        self.emitted.append(event)

    def lifecycle(self, cause: ev.Event, type_: str, *, slug: str | None = None, state_from: str | None = None,
                  state_to: str | None = None, step: str | None = None, message: str = "",
                  details: dict[str, Any] | None = None, tenant_id: uuid.UUID | None = None) -> ev.TenantLifecycleEvent:
        """Record a TenantLifecycleEvent row and mirror it on the lifecycle stream."""
        le = cause.caused(ev.TenantLifecycleEvent, type=type_, slug=slug, state_from=state_from, state_to=state_to,
                          step=step, message=message, details=details or {},
                          **({"tenant_id": tenant_id} if tenant_id else {}))
        self.session.add(
            m.TenantLifecycleEvent(event_id=le.event_id, tenant_id=le.tenant_id, slug=slug, type=type_,
                                   state_from=state_from, state_to=state_to, step=step, message=message,
                                   details=le.details, correlation_id=le.correlation_id,
                                   causation_id=le.causation_id, occurred_at=le.occurred_at)
        )
        self.emit(le)
        return le

    async def commit(self) -> None:
        """Record the inbox row (if bound to a message) and commit atomically.

        Raises ``AlreadyProcessed`` when the inbox row exists: the whole transaction is rolled back.
        """
        record_inbox = self.consumer and self.event_id and not (self._owner and self._owner.inbox_recorded)
        if record_inbox:
            res = await self.session.execute(
                pg_insert(m.Inbox).values(consumer=self.consumer, event_id=self.event_id)
                .on_conflict_do_nothing().returning(m.Inbox.event_id)
            )
            if res.scalar_one_or_none() is None:
                await self.session.rollback()
                self.committed = True
                raise AlreadyProcessed(f"{self.consumer}/{self.event_id}")
        if self._outbox:
            await self.session.execute(insert(m.Outbox), self._outbox)
            self._outbox = []
        try:
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

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.sessionmaker, consumer=self.consumer, event_id=self.event_id, owner=self)

    def bind(self, consumer: str, event_id: uuid.UUID) -> UnitOfWorkFactory:
        return UnitOfWorkFactory(self.sessionmaker, consumer=consumer, event_id=event_id)
