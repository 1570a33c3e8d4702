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
from typing import Any

from soctalk_common import events as ev
from soctalk_common.db import models as m
from soctalk_common.errors import PermanentError
from soctalk_common.uow import UnitOfWork, UnitOfWorkFactory
from sqlalchemy import DateTime, Uuid, bindparam, delete, null, select, text, update

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
    """One statement in autocommit (no transaction to open and close): a snapshot to decide on."""
    async with uow.autocommit.connect() as conn:
        row = (await conn.execute(_TENANT_VIEW, {"tenant_id": tenant_id})).first()
    if row is None:
        return None
    return TenantView(row.id, row.slug, str(row.mssp_id), row.secrets_backend, row.state,
                      row.deleted_at is not None)


# Statements built once (building a select and its cache key costs ~60 µs a call).
_T = m.Tenant
_TENANT_VIEW = select(_T.id, _T.slug, _T.mssp_id, _T.secrets_backend, _T.state, _T.deleted_at).where(
    _T.id == bindparam("tenant_id"))
_LOCK_TENANT = select(_T.id).where(_T.id == bindparam("tenant_id")).with_for_update()
_DROP_SEALED_KEY = (update(_T).where(_T.id == bindparam("tenant_id")).values(llm_key_source=null())  # SQL NULL
                    .returning(_T.id).execution_options(synchronize_session=False))
_TS = m.TenantSecret
_REF_COLUMNS = (_TS.backend, _TS.namespace, _TS.name, _TS.key, _TS.version_label, _TS.purpose, _TS.path)
_REFS = (select(*_REF_COLUMNS).where(_TS.tenant_id == bindparam("tenant_id"),
                                     _TS.status.in_(bindparam("statuses", expanding=True)))
         .order_by(_TS.id))
_REFS_OF = _REFS.where(_TS.purpose.in_(bindparam("purposes", expanding=True)))
_SUPERSEDE = text(
    "UPDATE tenant_secrets SET status = :status, retired_at = :retired_at "
    "WHERE tenant_id = :tenant_id AND status = 'active' AND purpose = ANY(CAST(:purposes AS text[])) "
    "AND (name, key, version_label) NOT IN (SELECT * FROM unnest(CAST(:k_name AS text[]), "
    "CAST(:k_key AS text[]), CAST(:k_label AS text[]))) "
    "RETURNING id, backend, namespace, name, key, version_label, purpose, path"
).bindparams(bindparam("tenant_id", type_=Uuid()), bindparam("retired_at", type_=DateTime(timezone=True)))


async def lock_tenant(tx: UnitOfWork, tenant_id: uuid.UUID, *, drop_sealed_key: bool = False) -> None:
    """Lock the tenant row for this transaction (one statement, no ORM object); with
    ``drop_sealed_key`` also clear ``llm_key_source`` (the sealed envelope) if it is set."""
    stmt = _DROP_SEALED_KEY if drop_sealed_key else _LOCK_TENANT
    if (await tx.session.execute(stmt, {"tenant_id": tenant_id})).first() is None:
        raise PermanentError(f"tenant {tenant_id} does not exist")


def _ref(row: Any) -> SecretRef:
    """A ``tenant_secrets`` row (ORM object or plain row with the columns of ``_REF_COLUMNS``)."""
    return SecretRef(row.backend, row.namespace or "", row.name, row.key, row.version_label,
                     row.purpose, row.path)


def event_ref(r: SecretRef) -> ev.SecretRef:
    return ev.SecretRef(backend=r.backend, namespace=r.namespace, path=r.path, name=r.name, key=r.key,
                        version_label=r.version_label, purpose=r.purpose)


async def references(uow: UnitOfWorkFactory, tenant_id: uuid.UUID, *, purposes: Iterable[str] | None = None,
                     statuses: Sequence[str] = ("active",)) -> list[SecretRef]:
    params: dict[str, Any] = {"tenant_id": tenant_id, "statuses": list(statuses)}
    if purposes is not None:
        params["purposes"] = list(purposes)
    async with uow.autocommit.connect() as conn:  # one statement, no transaction around it
        rows = (await conn.execute(_REFS if purposes is None else _REFS_OF, params)).all()
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


# One prepared statement whatever the number of references (a multi-row VALUES insert is compiled by
# SQLAlchemy on every call: ~90 bind parameters for a tenant's inventory, the largest CPU cost of the
# recording transaction).
_UPSERT_REFS = text(
    "INSERT INTO tenant_secrets (tenant_id, purpose, backend, namespace, path, name, key, version_label, status) "
    "SELECT CAST(:tenant_id AS uuid), p, b, ns, pa, n, k, v, 'active' "
    "FROM unnest(CAST(:purpose AS text[]), CAST(:backend AS text[]), CAST(:namespace AS text[]), "
    "CAST(:path AS text[]), CAST(:name AS text[]), CAST(:key AS text[]), CAST(:version_label AS text[])) "
    "WITH ORDINALITY AS u(p, b, ns, pa, n, k, v, o) ORDER BY o "
    "ON CONFLICT ON CONSTRAINT uq_tenant_secrets_ref DO UPDATE SET status = 'active', retired_at = NULL, "
    "backend = excluded.backend, namespace = excluded.namespace, path = excluded.path "
    "WHERE tenant_secrets.status <> 'active' "
    "RETURNING tenant_secrets.name, tenant_secrets.key, tenant_secrets.version_label")


async def record_references(tx: UnitOfWork, tenant_id: uuid.UUID,
                            refs: Sequence[SecretRef]) -> list[SecretRef]:
    """Upsert ``refs`` as active; returns those that were new (or re-activated) — what to audit."""
    if not refs:
        return []
    changed = {tuple(row) for row in (await tx.session.execute(_UPSERT_REFS, {
        "tenant_id": str(tenant_id), "purpose": [r.purpose for r in refs], "backend": [r.backend for r in refs],
        "namespace": [r.namespace for r in refs], "path": [r.path for r in refs], "name": [r.name for r in refs],
        "key": [r.key for r in refs], "version_label": [r.version_label for r in refs]})).all()}
    return [r for r in refs if (r.name, r.key, r.version_label) in changed]


async def supersede(tx: UnitOfWork, tenant_id: uuid.UUID, purposes: Iterable[str], keep: Sequence[SecretRef],
                    *, now: datetime, retiring: bool) -> list[SecretRef]:
    """Active references of ``purposes`` other than ``keep`` → ``retiring`` (overlap) or ``retired``."""
    purposes = list(purposes)
    if not purposes:
        return []
    # One UPDATE … RETURNING instead of SELECT … FOR UPDATE + an ORM update per row.
    rows = (await tx.session.execute(_SUPERSEDE, {
        "tenant_id": tenant_id, "purposes": purposes, "status": "retiring" if retiring else "retired",
        "retired_at": None if retiring else now, "k_name": [r.name for r in keep],
        "k_key": [r.key for r in keep], "k_label": [r.version_label for r in keep]})).all()
    return [_ref(r) for r in sorted(rows, key=lambda r: r.id)]


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


_INSERT_TOKENS = text(
    "INSERT INTO adapter_tokens (prefix, tenant_id, token_hash, version_label, created_at) "
    "SELECT p, t::uuid, h, v, c FROM unnest(CAST(:prefix AS text[]), CAST(:tenant_id AS text[]), "
    "CAST(:token_hash AS text[]), CAST(:version_label AS text[]), CAST(:created_at AS timestamptz[])) "
    "AS u(p, t, h, v, c) ON CONFLICT (prefix) DO NOTHING")


async def record_tokens(tx: UnitOfWork, records: Sequence[AdapterTokenRecord]) -> None:
    """Insert token records (prefix + keyed hash); a prefix already recorded is left as it is."""
    if not records:
        return
    await tx.session.execute(_INSERT_TOKENS, {
        "prefix": [r.prefix for r in records], "tenant_id": [r.tenant_id for r in records],
        "token_hash": [r.token_hash for r in records], "version_label": [r.version_label for r in records],
        "created_at": [r.created_at for r in records]})


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
