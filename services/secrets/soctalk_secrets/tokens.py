"""Verifying a presented adapter token against Postgres (the one-shot form; the heartbeat service
keeps a cache in front of the same rule, :func:`soctalk_secrets.domain.token_decision`).

What callers can rely on: the prefix selects the row (an index lookup), the whole token is compared
by keyed hash in constant time, and the answer is ``Accept`` only for the owning tenant, before
revocation and expiry, while the tenant is in a token-accepting state. ``Refuse.reason`` is for audit
and metrics; clients should get one generic 401.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from soctalk_common.db import models as m
from soctalk_common.errors import ValidationFailed
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soctalk_secrets.domain import Accept, Refuse, parse_token, token_decision
from soctalk_secrets.records import token_record


async def verify_adapter_token(sessionmaker: async_sessionmaker[AsyncSession], key: bytes, presented: str,
                               subject_tenant_id: uuid.UUID | str, now: datetime) -> Accept | Refuse:
    try:
        prefix = parse_token(presented)
    except ValidationFailed:
        return Refuse("malformed")
    async with sessionmaker() as s:
        row = await s.get(m.AdapterToken, prefix)
        state = None
        if row is not None:
            state = (await s.execute(select(m.Tenant.state).where(m.Tenant.id == row.tenant_id))).scalar()
    record = token_record(row) if row is not None else None
    return token_decision(record, subject_tenant_id, now, presented=presented, key=key, tenant_state=state)
