"""When each tenant's release was last checked for drift (the drift round's durable schedule).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per tenant, rewritten by each check: a tenant is due again drift_interval_s after its
    # last check or its last successful write, whichever is later, across restarts and replicas.
    op.create_table(
        "drift_checks",
        sa.Column("tenant_id", UUID(as_uuid=True), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("drift_checks")
