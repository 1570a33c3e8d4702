"""What the secrets service records in Postgres: references (``tenant_secrets``) and adapter token
hashes (``adapter_tokens``). Never material.

Functions taking ``tx`` run inside the caller's unit of work (the handler's one transaction); the
others read with a short session of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from soctalk_secrets.domain import (
    AdapterTokenRecord,
    SecretRef,
    latest_version_label,
    retire_for_rotation,
    revoke,
)

#: Tenant states in which the tenant is being (or has been) taken down: a ChartRemoved then means
#: "decommission cleanup", not "undo a failed install" (whose secrets a retry will reuse).
TEARDOWN_STATES = frozenset({"decommissioning", "decommissioned", "purged"})
ANY_STATUS = ("active", "retiring", "retired")


@dataclass(frozen=True)
class TenantView:
    id: uuid.UUID
    slug: str
    mssp_id: str
    backend: str
    state: str
    deleted: bool

    @property
    def torn_down(self) -> bool:
        return self.deleted or self.state in TEARDOWN_STATES


async def tenant_view(uow: UnitOfWorkFactory, tenant_id: uuid.UUID) -> TenantView | None:
    async with uow.sessionmaker() as s:
        t = await s.get(m.Tenant, tenant_id)
        if t is None:
            return None
        return TenantView(t.id, t.slug, str(t.mssp_id), t.secrets_backend, t.state, t.deleted_at is not None)


def _ref(row: m.TenantSecret) -> SecretRef:
    return SecretRef(row.backend, row.namespace or "", row.name, row.key, row.version_label,
                     row.purpose, row.path)


def event_ref(r: SecretRef) -> ev.SecretRef:
    return ev.SecretRef(backend=r.backend, namespace=r.namespace, path=r.path, name=r.name, key=r.key,
                        version_label=r.version_label, purpose=r.purpose)


async def references(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, *, purposes: Iterable[str] | None = None,
                     statuses: Sequence[str] = ("active",)) -> list[SecretRef]:
    stmt = select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant_id,
                                        m.TenantSecret.status.in_(list(statuses)))
    if purposes is not None:
        stmt = stmt.where(m.TenantSecret.purpose.in_(list(purposes)))
    async with uow.sessionmaker() as s:
        rows = (await s.execute(stmt.order_by(m.TenantSecret.id))).scalars().all()
    return [_ref(r) for r in rows]


async def all_references(tx: UnitOfWork, tenant_id: uuid.UUID, purpose: str) -> list[SecretRef]:
    """Every reference of ``purpose`` whatever its status (for audit after everything is retired)."""
    rows = (await tx.session.execute(select(m.TenantSecret).where(
        m.TenantSecret.tenant_id == tenant_id, m.TenantSecret.purpose == purpose))).scalars().all()
    return [_ref(r) for r in rows]


def current_label(refs: Iterable[SecretRef], purpose: str) -> str | None:
    return latest_version_label(r.version_label for r in refs if r.purpose == purpose)


def latest_labels(refs: Iterable[SecretRef]) -> dict[str, str]:
    """The highest version label recorded per purpose."""
    refs = list(refs)
    out = {}
    for purpose in {r.purpose for r in refs}:
        label = current_label(refs, purpose)
        if label is not None:
            out[purpose] = label
    return out


async def record_references(tx: UnitOfWork, tenant_id: uuid.UUID,
                            refs: Sequence[SecretRef]) -> list[SecretRef]:
    """Upsert ``refs`` as active; returns those that were new (or re-activated) — what to audit."""
    if not refs:
        return []
    stmt = pg_insert(m.TenantSecret).values([
        {"tenant_id": tenant_id, "purpose": r.purpose, "backend": r.backend, "namespace": r.namespace,
         "path": r.path, "name": r.name, "key": r.key, "version_label": r.version_label, "status": "active"}
        for r in refs
    ])
    upsert = stmt.on_conflict_do_update(
        constraint="uq_tenant_secrets_ref",
        set_={"status": "active", "retired_at": None, "backend": stmt.excluded.backend,
              "namespace": stmt.excluded.namespace, "path": stmt.excluded.path},
        where=m.TenantSecret.status != "active",
    ).returning(m.TenantSecret.name, m.TenantSecret.key, m.TenantSecret.version_label)
    changed = {tuple(row) for row in (await tx.session.execute(upsert)).all()}
    return [r for r in refs if (r.name, r.key, r.version_label) in changed]


async def supersede(tx: UnitOfWork, tenant_id: uuid.UUID, purposes: Iterable[str], keep: Sequence[SecretRef],
                    *, now: datetime, retiring: bool) -> list[SecretRef]:
    """Active references of ``purposes`` other than ``keep`` → ``retiring`` (overlap) or ``retired``."""
    kept = {(r.name, r.key, r.version_label) for r in keep}
    rows = (await tx.session.execute(
        select(m.TenantSecret).where(m.TenantSecret.tenant_id == tenant_id, m.TenantSecret.status == "active",
                                     m.TenantSecret.purpose.in_(list(purposes))).with_for_update()
    )).scalars().all()
    out = []
    for row in rows:
        if (row.name, row.key, row.version_label) in kept:
            continue
        row.status = "retiring" if retiring else "retired"
        row.retired_at = None if retiring else now
        out.append(_ref(row))
    return out


async def finish_retiring(tx: UnitOfWork, tenant_id: uuid.UUID, purposes: Iterable[str],
                          now: datetime) -> list[SecretRef]:
    rows = (await tx.session.execute(
        update(m.TenantSecret)
        .where(m.TenantSecret.tenant_id == tenant_id, m.TenantSecret.status == "retiring",
               m.TenantSecret.purpose.in_(list(purposes)))
        .values(status="retired", retired_at=now).returning(m.TenantSecret)
    )).scalars().all()
    return [_ref(r) for r in rows]


async def retire_all(tx: UnitOfWork, tenant_id: uuid.UUID, now: datetime) -> list[SecretRef]:
    rows = (await tx.session.execute(
        update(m.TenantSecret)
        .where(m.TenantSecret.tenant_id == tenant_id, m.TenantSecret.status != "retired")
        .values(status="retired", retired_at=now).returning(m.TenantSecret)
    )).scalars().all()
    return [_ref(r) for r in rows]


# --- adapter tokens ------------------------------------------------------------------------------


def token_record(row: m.AdapterToken) -> AdapterTokenRecord:
    return AdapterTokenRecord(prefix=row.prefix, token_hash=row.token_hash, tenant_id=str(row.tenant_id),
                              created_at=row.created_at, version_label=row.version_label,
                              expires_at=row.expires_at, revoked_at=row.revoked_at)


async def record_tokens(tx: UnitOfWork, records: Sequence[AdapterTokenRecord]) -> None:
    """Insert token records (prefix + keyed hash); a prefix already recorded is left as it is."""
    for r in records:
        await tx.session.execute(
            pg_insert(m.AdapterToken).values(prefix=r.prefix, tenant_id=uuid.UUID(r.tenant_id),
                                             token_hash=r.token_hash, version_label=r.version_label,
                                             created_at=r.created_at)
            .on_conflict_do_nothing(index_elements=[m.AdapterToken.prefix]))


async def _live_tokens(tx: UnitOfWork, tenant_id: uuid.UUID) -> Sequence[m.AdapterToken]:
    return (await tx.session.execute(
        select(m.AdapterToken)
        .where(m.AdapterToken.tenant_id == tenant_id, m.AdapterToken.revoked_at.is_(None))
        .with_for_update())).scalars().all()


async def overlap_old_tokens(tx: UnitOfWork, tenant_id: uuid.UUID, keep: Iterable[str], *, now: datetime,
                             overlap: timedelta) -> list[str]:
    """Every other token of the tenant stays valid until ``now + overlap`` at most, then expires."""
    keep = set(keep)
    changed = []
    for row in await _live_tokens(tx, tenant_id):
        if row.prefix in keep:
            continue
        retired = retire_for_rotation(token_record(row), now, overlap=overlap)
        if retired.expires_at != row.expires_at:
            row.expires_at = retired.expires_at
            changed.append(row.prefix)
    return changed


async def revoke_tokens(tx: UnitOfWork, tenant_id: uuid.UUID, now: datetime) -> list[str]:
    """Revoke every token of the tenant from ``now`` on (refused at once by every verifier)."""
    out = []
    for row in await _live_tokens(tx, tenant_id):
        row.revoked_at = revoke(token_record(row), now).revoked_at
        out.append(row.prefix)
    return out


async def delete_tokens(tx: UnitOfWork, tenant_id: uuid.UUID) -> int:
    res = await tx.session.execute(
        delete(m.AdapterToken).where(m.AdapterToken.tenant_id == tenant_id).returning(m.AdapterToken.prefix))
    return len(res.all())
