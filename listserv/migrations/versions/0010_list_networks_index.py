"""recipients from the index alone: ix_membership_list_role also holds address_id

Revision ID: 0010_list_networks_index
Revises: 0011_importers
Create Date: 2026-12-02 19:10:00
"""
from alembic import op


revision = '0010_list_networks_index'
down_revision = '0011_importers'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A covering index: a post's recipients (flat, or through a list's includes) are read
    # from the index without fetching one membership row per recipient.
    op.drop_index('ix_membership_list_role', table_name='membership')
    op.create_index('ix_membership_list_role', 'membership',
                    ['list_id', 'role', 'delivery_mode', 'enabled', 'address_id'])


def downgrade() -> None:
    op.drop_index('ix_membership_list_role', table_name='membership')
    op.create_index('ix_membership_list_role', 'membership',
                    ['list_id', 'role', 'delivery_mode', 'enabled'])
