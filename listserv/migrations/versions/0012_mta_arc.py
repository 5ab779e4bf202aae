"""list setting arc: ARC-seal posts with the domain's key

Revision ID: 0012_mta_arc
Revises: 0006_readable_mail
Create Date: 2026-12-02 19:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012_mta_arc'
down_revision = '0006_readable_mail'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('arc', sa.Boolean(), nullable=False,
                                   server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('arc')
