"""digest_entry.message_id_hash: a cross-posted message enters one digest per person

Revision ID: 0014_digest_crosspost
Revises: 0008_web_unsubscribe
Create Date: 2026-12-02 22:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014_digest_crosspost'
down_revision = '0008_web_unsubscribe'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('digest_entry') as batch:
        batch.add_column(sa.Column('message_id_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('digest_entry') as batch:
        batch.drop_column('message_id_hash')
