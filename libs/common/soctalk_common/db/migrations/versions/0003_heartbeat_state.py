"""heartbeat state: activation and liveness facts of the heartbeat service

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-24 09:00:00

One row per tenant, owned by the heartbeat service. ``chart_applied_at`` and ``first_heartbeat_at``
are the two facts activation waits for; ``activated_event_id`` is set by a conditional UPDATE, so
TenantActivated is emitted once across replicas and redeliveries. ``last_seen`` is refreshed in
batches; ``degraded`` flips only in a transaction that also writes the outbox row.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeat_state",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("chart_applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("chart_correlation_id", sa.UUID(), nullable=True),
        sa.Column("first_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_event_id", sa.UUID(), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("degraded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("degraded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_health", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        # {component: status} as last recorded transactionally: the baseline for ComponentDegraded.
        sa.Column("components", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tenant_id"),
    )
    # The liveness sweep: activated, not yet degraded tenants, oldest heartbeat first.
    op.create_index(
        "ix_heartbeat_state_live", "heartbeat_state", ["last_seen"], unique=False,
        postgresql_where=sa.text("activated_event_id IS NOT NULL AND NOT degraded"),
    )


def downgrade() -> None:
    op.drop_index("ix_heartbeat_state_live", table_name="heartbeat_state",
                  postgresql_where=sa.text("activated_event_id IS NOT NULL AND NOT degraded"))
    op.drop_table("heartbeat_state")
