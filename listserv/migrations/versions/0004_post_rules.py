"""hold rules: administrivia and max_recipients list settings

Revision ID: 0004_post_rules
Revises: 0003_retention_indexes
Create Date: 2026-11-27 00:25:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_post_rules'
down_revision = '0003_retention_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('administrivia', sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column('max_recipients', sa.Integer(), nullable=False,
                                   server_default='10'))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('max_recipients')
        batch.drop_column('administrivia')
