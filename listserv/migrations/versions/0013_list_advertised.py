"""web directory: the list setting advertised

Revision ID: 0013_list_advertised
Revises: 0012_mta_arc
Create Date: 2026-12-02 19:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013_list_advertised'
down_revision = '0012_mta_arc'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('advertised', sa.Boolean(), nullable=False,
                                   server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('advertised')
