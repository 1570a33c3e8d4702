"""SQLAlchemy 2 models. Names follow the seeds (Tenant, TenantSecret, TenantLifecycleEvent, chart_compatibility).

Invariant (seed 000): no table holds secret material. ``tenant_secrets`` holds references
``(backend, namespace|path, name, key, version_label)``; ``adapter_tokens`` holds keyed hashes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


def _ts(nullable: bool = False, default_now: bool = False) -> Any:
    return mapped_column(
        DateTime(timezone=True), nullable=nullable, server_default=func.now() if default_now else None
    )


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        UniqueConstraint("mssp_id", "slug", name="uq_tenants_mssp_slug"),
        Index("ix_tenants_state", "state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    mssp_id: Mapped[uuid.UUID]
    install_id: Mapped[uuid.UUID]
    slug: Mapped[str] = mapped_column(String(63))
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(32))
    chart_version: Mapped[str] = mapped_column(String(32))
    target_chart_version: Mapped[str | None] = mapped_column(String(32))
    secrets_backend: Mapped[str] = mapped_column(String(16), server_default="kubernetes")
    # Non-secret tenant config as validated; the LLM key appears only as a reference.
    config: Mapped[dict[str, Any]]
    # Ciphertext sealed to the install key (never plaintext); cleared once the secrets service stored it.
    llm_key_source: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    completed_steps: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    failed_step: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    release_revision: Mapped[int | None]
    edge_ports: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Shown by the API/CLI; refreshed at most every heartbeat_tenant_touch_s (30 s) per tenant and at
    # every heartbeat-caused state change. Liveness reads heartbeat_state.last_seen (every heartbeat).
    last_heartbeat_at: Mapped[datetime | None] = _ts(nullable=True)
    last_health: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    activated_at: Mapped[datetime | None] = _ts(nullable=True)
    suspended_from: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = _ts(default_now=True)
    updated_at: Mapped[datetime] = _ts(default_now=True)
    deleted_at: Mapped[datetime | None] = _ts(nullable=True)
    version: Mapped[int] = mapped_column(Integer, server_default="1")

    __mapper_args__ = {"version_id_col": version}


class TenantSecret(Base):
    __tablename__ = "tenant_secrets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name", "key", "version_label", name="uq_tenant_secrets_ref"),
        CheckConstraint("backend IN ('kubernetes','vault')", name="ck_tenant_secrets_backend"),
        CheckConstraint("status IN ('active','retiring','retired')", name="ck_tenant_secrets_status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(16))
    namespace: Mapped[str | None] = mapped_column(String(63))
    path: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(253))
    key: Mapped[str] = mapped_column(String(128))
    version_label: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default="active")
    created_at: Mapped[datetime] = _ts(default_now=True)
    retired_at: Mapped[datetime | None] = _ts(nullable=True)


class TenantLifecycleEvent(Base):
    __tablename__ = "tenant_lifecycle_events"
    __table_args__ = (Index("ix_lifecycle_tenant_time", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    # No FK: lifecycle history outlives a purged tenant row (kept for audit, see docs/operations.md).
    tenant_id: Mapped[uuid.UUID]
    slug: Mapped[str | None] = mapped_column(String(63))
    type: Mapped[str] = mapped_column(String(64))
    state_from: Mapped[str | None] = mapped_column(String(32))
    state_to: Mapped[str | None] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, server_default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    correlation_id: Mapped[uuid.UUID]
    causation_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime] = _ts(default_now=True)


class Outbox(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The writing transaction; the relay publishes only rows of transactions older than every open one.
    txid: Mapped[int] = mapped_column(BigInteger, server_default=text("pg_current_xact_id()::text::bigint"))
    created_at: Mapped[datetime] = _ts(default_now=True)
    published_at: Mapped[datetime | None] = _ts(nullable=True)


class Inbox(Base):
    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    processed_at: Mapped[datetime] = _ts(default_now=True)


class ChartCompatibility(Base):
    __tablename__ = "chart_compatibility"
    __table_args__ = (
        CheckConstraint("status IN ('supported','deprecated','blocked')", name="ck_chart_compat_status"),
    )

    soctalk_system_version: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_chart_version: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[str] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)


class TenantLease(Base):
    """One operation per tenant at a time: holder + expiry, taken with an atomic upsert."""

    __tablename__ = "tenant_leases"

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = _ts()


class Timer(Base):
    """Durable timers (grace, retention, retry, readiness deadline, liveness)."""

    __tablename__ = "timers"
    __table_args__ = (
        Index("ix_timers_due", "due_at", postgresql_where=text("fired_at IS NULL AND cancelled_at IS NULL")),
        Index(
            "uq_timers_open", "tenant_id", "kind", unique=True,
            postgresql_where=text("fired_at IS NULL AND cancelled_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(32))
    due_at: Mapped[datetime] = _ts()
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = _ts(default_now=True)
    fired_at: Mapped[datetime | None] = _ts(nullable=True)
    cancelled_at: Mapped[datetime | None] = _ts(nullable=True)


class ReleaseOperation(Base):
    """A Helm operation whose readiness is being waited for (never by holding a message)."""

    __tablename__ = "release_operations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    operation: Mapped[str] = mapped_column(String(16))
    release: Mapped[str] = mapped_column(String(53))
    namespace: Mapped[str] = mapped_column(String(63))
    chart_version: Mapped[str] = mapped_column(String(32))
    revision: Mapped[int | None]
    previous_revision: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(16), server_default="waiting")  # waiting|succeeded|failed
    deadline: Mapped[datetime] = _ts()
    correlation_id: Mapped[uuid.UUID]
    causation_id: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(default_now=True)
    finished_at: Mapped[datetime | None] = _ts(nullable=True)
    expected_workloads: Mapped[list[Any] | None] = mapped_column(JSONB)  # ``Kind/name``; NULL: read the release


class DriftCheck(Base):
    """When the drift round last checked a tenant's release: it is due again ``drift_interval_s`` after
    this or after its last successful write, whichever is later."""

    __tablename__ = "drift_checks"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    checked_at: Mapped[datetime] = _ts()


class AdapterToken(Base):
    """Adapter tokens: public prefix + keyed hash of the secret part; the token itself is never stored."""

    __tablename__ = "adapter_tokens"

    prefix: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(index=True)
    token_hash: Mapped[str] = mapped_column(String(128))
    version_label: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _ts(default_now=True)
    expires_at: Mapped[datetime | None] = _ts(nullable=True)
    revoked_at: Mapped[datetime | None] = _ts(nullable=True)


class SystemKey(Base):
    """Public keys only (the sealing public key); private halves live in soctalk-system Secrets."""

    __tablename__ = "system_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts(default_now=True)


class HeartbeatState(Base):
    """Owned by the heartbeat service: activation facts and adapter liveness, one row per tenant.

    ``activated_event_id`` is claimed with a conditional UPDATE (exactly one TenantActivated);
    ``degraded`` flips only together with its outbox row; ``last_seen``/``last_health`` are refreshed
    in batches and may lag by one flush interval.
    """

    __tablename__ = "heartbeat_state"
    # No index on last_seen and room on each page: the flush's updates (every heartbeating tenant,
    # every second) are HOT. The liveness sweep scans the table instead (migration 0007).
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    chart_applied_at: Mapped[datetime | None] = _ts(nullable=True)
    chart_correlation_id: Mapped[uuid.UUID | None]
    first_heartbeat_at: Mapped[datetime | None] = _ts(nullable=True)
    activated_event_id: Mapped[uuid.UUID | None]
    activated_at: Mapped[datetime | None] = _ts(nullable=True)
    degraded: Mapped[bool] = mapped_column(server_default=text("false"))
    degraded_at: Mapped[datetime | None] = _ts(nullable=True)
    last_seen: Mapped[datetime | None] = _ts(nullable=True)
    last_health: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # {component: status} as last recorded transactionally: the baseline for ComponentDegraded.
    components: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
