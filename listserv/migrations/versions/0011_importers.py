"""importers: per-address non-member actions (sender_action) and bans

Revision ID: 0011_importers
Revises: 0009_archive_search
Create Date: 2026-12-02 18:40:00
"""
from alembic import op
import sqlalchemy as sa

from listserv.core.models import UTCDateTime


revision = '0011_importers'
down_revision = '0009_archive_search'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sender_action',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('list_id', sa.Integer(), nullable=False),
        sa.Column('pattern', sa.String(length=400), nullable=False),
        sa.Column('action', sa.Enum('accept', 'hold', 'reject', 'discard', name='action',
                                    native_enum=False, length=32), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['list_id'], ['mailing_list.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('list_id', 'pattern'),
    )
    op.create_table(
        'ban',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('list_id', sa.Integer(), nullable=False),
        sa.Column('pattern', sa.String(length=400), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['list_id'], ['mailing_list.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('list_id', 'pattern'),
    )


def downgrade() -> None:
    op.drop_table('ban')
    op.drop_table('sender_action')
