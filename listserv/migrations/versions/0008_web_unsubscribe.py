"""one-click unsubscribe: membership.unsub_nonce, outbound_message.per_member

Revision ID: 0008_web_unsubscribe
Revises: 0005_hostile_mail
Create Date: 2026-12-02 19:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_web_unsubscribe'
down_revision = '0005_hostile_mail'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('membership') as batch:
        batch.add_column(sa.Column('unsub_nonce', sa.String(length=32), nullable=True))
    # every existing membership gets its own random nonce (128 bits from the database's
    # cryptographic generator)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE membership SET unsub_nonce = replace(gen_random_uuid()::text, '-', '')")
    else:
        op.execute("UPDATE membership SET unsub_nonce = lower(hex(randomblob(16)))")
    with op.batch_alter_table('membership') as batch:
        batch.alter_column('unsub_nonce', existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table('outbound_message') as batch:
        batch.add_column(sa.Column('per_member', sa.Boolean(), nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('outbound_message') as batch:
        batch.drop_column('per_member')
    with op.batch_alter_table('membership') as batch:
        batch.drop_column('unsub_nonce')
