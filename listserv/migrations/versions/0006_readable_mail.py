"""readable mail: list setting footer_placement

Revision ID: 0006_readable_mail
Revises: 0010_list_networks_index
Create Date: 2026-12-02 19:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_readable_mail'
down_revision = '0010_list_networks_index'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('footer_placement', sa.Enum(
            'inline', 'part', name='footerplacement', native_enum=False,
            create_constraint=False, length=32), nullable=False, server_default='inline'))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('footer_placement')
