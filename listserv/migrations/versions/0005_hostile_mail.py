"""hostile mail: automatic_action and sender_headers list settings

Revision ID: 0005_hostile_mail
Revises: 0007_mta_front_door
Create Date: 2026-12-02 18:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_hostile_mail'
down_revision = '0007_mta_front_door'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column('automatic_action', sa.Enum(
            'accept', 'hold', 'reject', 'discard', name='action', native_enum=False,
            length=32), nullable=False,
                                   server_default='hold'))
        batch.add_column(sa.Column('sender_headers', sa.Enum(
            'from', 'from+sender', name='senderheaders', native_enum=False, length=32), nullable=False,
                                   server_default='from'))


def downgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('sender_headers')
        batch.drop_column('automatic_action')
