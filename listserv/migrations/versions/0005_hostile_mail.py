"""hostile mail: automatic_action, sender_headers and sender_post_limit list settings;
inbound_message.body_sha and an index by sender (the flood rules)

Revision ID: 0005_hostile_mail
Revises: 0013_list_advertised
Create Date: 2026-12-02 18:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_hostile_mail'
down_revision = '0013_list_advertised'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_list') as batch:
        batch.add_column(sa.Column(
            'automatic_action',
            sa.Enum('accept', 'hold', 'reject', 'discard', name='action', native_enum=False,
                    length=32),
            nullable=False, server_default='hold'))
        batch.add_column(sa.Column(
            'sender_headers',
            sa.Enum('from', 'from+sender', name='senderheaders', native_enum=False, length=32),
            nullable=False, server_default='from'))
        batch.add_column(sa.Column('sender_post_limit', sa.Integer(), nullable=False,
                                   server_default='10'))
    with op.batch_alter_table('inbound_message') as batch:
        batch.add_column(sa.Column('body_sha', sa.String(length=64), nullable=True))
    op.create_index('ix_inbound_sender', 'inbound_message',
                    ['list_id', 'from_addr', 'received_at'])


def downgrade() -> None:
    op.drop_index('ix_inbound_sender', table_name='inbound_message')
    with op.batch_alter_table('inbound_message') as batch:
        batch.drop_column('body_sha')
    with op.batch_alter_table('mailing_list') as batch:
        batch.drop_column('sender_post_limit')
        batch.drop_column('sender_headers')
        batch.drop_column('automatic_action')
