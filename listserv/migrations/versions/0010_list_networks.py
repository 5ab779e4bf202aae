"""networks of lists: list inclusions, posting rights of included members, moderation log access

Revision ID: 0010_list_networks
Revises: 0007_mta_front_door
Create Date: 2026-12-02 18:40:00
"""
from alembic import op
import sqlalchemy as sa

import listserv.core.models


revision = '0010_list_networks'
down_revision = '0007_mta_front_door'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'list_inclusion',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('parent_id', sa.Integer(), nullable=False),
        sa.Column('child_id', sa.Integer(), nullable=True),
        sa.Column('remote_address', sa.String(length=320), nullable=True),
        sa.Column('created_at', listserv.core.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['parent_id'], ['mailing_list.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['child_id'], ['mailing_list.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('parent_id', 'child_id'),
        sa.UniqueConstraint('parent_id', 'remote_address'),
    )
    op.create_index('ix_list_inclusion_child', 'list_inclusion', ['child_id'])
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('included_members_can_post', sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column('moderation_log', sa.Enum(
            'public', 'members', 'owners', name='logaccess', native_enum=False,
            create_constraint=False, length=32), nullable=False, server_default='owners'))
        batch.add_column(sa.Column('moderation_log_names', sa.Enum(
            'show', 'hide', name='lognames', native_enum=False, create_constraint=False,
            length=32), nullable=False, server_default='show'))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('moderation_log_names')
        batch.drop_column('moderation_log')
        batch.drop_column('included_members_can_post')
    op.drop_index('ix_list_inclusion_child', table_name='list_inclusion')
    op.drop_table('list_inclusion')
