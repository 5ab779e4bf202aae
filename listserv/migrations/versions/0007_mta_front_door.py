"""delivery failures of the message: delivery.blame, outbound_message.failure_noticed_at

Revision ID: 0007_mta_front_door
Revises: 0004_post_rules
Create Date: 2026-12-02 18:40:00
"""
from alembic import op
import sqlalchemy as sa

import listserv.core.models


revision = '0007_mta_front_door'
down_revision = '0004_post_rules'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery') as batch:
        batch.add_column(sa.Column('blame', sa.String(length=16), nullable=True))
    with op.batch_alter_table('outbound_message') as batch:
        batch.add_column(sa.Column('failure_noticed_at', listserv.core.models.UTCDateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outbound_message') as batch:
        batch.drop_column('failure_noticed_at')
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('blame')
