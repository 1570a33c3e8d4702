"""Notify on adapter-token and tenant-state changes, so token caches drop them at once.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Revocation must be instant (DESIGN §5): the heartbeat service's token cache listens on these.
    op.execute("""
        CREATE FUNCTION soctalk_token_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('soctalk_token_changed', COALESCE(NEW.prefix, OLD.prefix)); RETURN NULL; END $$;
    """)
    op.execute("""
        CREATE TRIGGER adapter_tokens_changed AFTER UPDATE OR DELETE ON adapter_tokens
        FOR EACH ROW EXECUTE FUNCTION soctalk_token_changed();
    """)
    op.execute("""
        CREATE FUNCTION soctalk_tenant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('soctalk_tenant_changed', COALESCE(NEW.id, OLD.id)::text); RETURN NULL; END $$;
    """)
    op.execute("""
        CREATE TRIGGER tenants_state_changed AFTER UPDATE OF state, deleted_at OR DELETE ON tenants
        FOR EACH ROW EXECUTE FUNCTION soctalk_tenant_changed();
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tenants_state_changed ON tenants")
    op.execute("DROP FUNCTION IF EXISTS soctalk_tenant_changed()")
    op.execute("DROP TRIGGER IF EXISTS adapter_tokens_changed ON adapter_tokens")
    op.execute("DROP FUNCTION IF EXISTS soctalk_token_changed()")
