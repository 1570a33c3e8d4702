"""Record the workloads an install/upgrade applied with its readiness wait.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ``Kind/name`` list from the write's own manifest: the watcher then need not read the release back
    # (and parse its manifest) to learn what to wait for. NULL: read the release as before.
    op.add_column("release_operations", sa.Column("expected_workloads", JSONB, nullable=True))


def downgrade() -> None:
    op.drop_column("release_operations", "expected_workloads")
